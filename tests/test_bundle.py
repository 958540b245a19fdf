"""Bundles: ship, verify and predict on tiny hand-built models, with no torch anywhere.

The image model is written with onnx.helper: mean colour per channel -> linear layer -> 4 logits
("red", "green", "blue", "dark"), so its answers on solid-colour images are known in advance. The text model
(a word-level tokenizer.json and a bag-of-words ONNX graph with named int64 inputs) answers "card", "refund" or
"top_up" by counting the words of each class, so the same code paths are checked for a tokenized bundle.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.bundle import BENCH_FILE, Artifact, ValidationSlice, ship, verify
from edgetl.preprocess import ImagePreprocess, TextPreprocess
from edgetl.errors import BackendUnavailable, BundleError, DataError
from edgetl.predict import load_bundle

LABELS = ["red", "green", "blue", "dark"]
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "dark": (0, 0, 0)}
PREPROCESS = ImagePreprocess(image_size=8, channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
RUNTIMES = {"onnxruntime:CPUExecutionProvider": "onnx-fp32", "openvino:CPU": "openvino-fp32"}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, list[Path]]:
    """The colour model as ONNX, as ONNX with external weights, and as OpenVINO IR (.xml + .bin)."""
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path_factory.mktemp("colour-model")
    # After normalisation a pure channel is +1 and an absent one -1: logit k = 3 * channel k for the colours,
    # and "dark" = -3 * (r + g + b) - 4.5, which wins only when every channel is low.
    weight = 3.0 * np.array([[1, 0, 0, -1], [0, 1, 0, -1], [0, 0, 1, -1]], dtype=np.float32)
    bias = np.array([0, 0, 0, -4.5], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["features"]),
            helper.make_node("MatMul", ["features", "weight"], ["scores"]),
            helper.make_node("Add", ["scores", "bias"], ["logits"]),
        ],
        "colours",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx_path = folder / "colours.onnx"
    onnx.save(model, onnx_path)
    # The same model with its weights in a side file, as torch's dynamo exporter writes large models.
    external = folder / "external" / "colours.onnx"
    external.parent.mkdir()
    onnx.save(onnx.ModelProto.FromString(model.SerializeToString()), external, save_as_external_data=True,
              location="colours.onnx.data", size_threshold=0)
    xml_path = folder / "ov" / "colours.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    return {
        "onnx": [onnx_path],
        "openvino": [xml_path, xml_path.with_suffix(".bin")],
        "onnx-external": [external, external.with_suffix(".onnx.data")],
    }


def passing(**extra) -> dict:
    return {"passed": True, "reasons": [], "accuracy": 100.0, "macro_f1": 100.0, "agreement": 1.0, **extra}


def artifacts(files: dict[str, list[Path]], *, onnx_validation: dict | None = None) -> list[Artifact]:
    # OpenVINO first on purpose: the default must still be the ONNX artifact.
    return [
        Artifact("openvino-fp32", "openvino", files["openvino"], "openvino:CPU", passing()),
        Artifact(
            "onnx-fp32",
            "onnx",
            files["onnx"],
            "onnxruntime:CPUExecutionProvider",
            onnx_validation or passing(),
            {  # the shape of edgetl.bench's BenchResult.to_dict()
                "runtime": "onnxruntime:CPUExecutionProvider",
                "threads": 2,
                "stats": [{"batch_size": 1, "median_ms": 0.031, "p90_ms": 0.05, "median_rel_ci": 0.01}],
                "environment": {"cpu": "Test CPU 3000"},
            },
        ),
    ]


def ship_colours(items: list[Artifact], output_dir: Path, **overrides):
    options = dict(
        name="colours",
        output_dir=output_dir,
        labels=LABELS,
        preprocess=PREPROCESS,
        recipe_toml='[run]\nname = "colours"\n',
        recipe_hash="abc123",
        card={"backbone": "hand-written linear", "dataset": "solid colours", "dataset_license": "CC-BY-4.0",
              "test_accuracy": 99.5},
    )
    options.update(overrides)
    return ship(items, **options)


def colour_pngs(folder: Path) -> list[Path]:
    paths = []
    for name, rgb in COLOURS.items():
        path = folder / f"{name}.png"
        Image.new("RGB", (20, 20), rgb).save(path)
        paths.append(path)
    return paths


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can notice
    path.write_bytes(bytes(data))


# -- ship ----------------------------------------------------------------------------------------


def test_ship_writes_folder_archive_and_checksums(model_files, tmp_path):
    shipped = ship_colours(artifacts(model_files), tmp_path)

    assert shipped.path == tmp_path / "colours" and shipped.archive == tmp_path / "colours.tar.gz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["colours", "colours.tar.gz"]  # no staging left over
    manifest = json.loads((shipped.path / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(shipped.manifest))
    on_disk = {p.relative_to(shipped.path).as_posix() for p in shipped.path.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {"manifest.json"}
    assert {"model/onnx-fp32/colours.onnx", "model/openvino-fp32/colours.xml", "model/openvino-fp32/colours.bin",
            "labels.json", "preprocess.json", "recipe.toml", "README.md", "predict.py"} == set(manifest["files"])
    for rel, meta in manifest["files"].items():
        data = (shipped.path / rel).read_bytes()
        assert meta == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}, rel

    assert manifest["default_artifact"] == "onnx-fp32"
    assert manifest["recipe_hash"] == "abc123" and manifest["num_labels"] == 4
    assert {"onnxruntime", "openvino", "numpy"} <= set(manifest["runtime_versions"])
    assert manifest["artifacts"]["openvino-fp32"]["files"] == [
        "model/openvino-fp32/colours.xml", "model/openvino-fp32/colours.bin"]
    assert manifest["artifacts"]["onnx-fp32"]["benchmark"]["stats"][0]["median_ms"] == 0.031
    assert json.loads((shipped.path / "labels.json").read_text()) == LABELS
    assert ImagePreprocess.from_dict(json.loads((shipped.path / "preprocess.json").read_text())) == PREPROCESS

    with tarfile.open(shipped.archive) as tar:
        archived = {m.name for m in tar.getmembers() if m.isfile()}
    assert archived == {f"colours/{rel}" for rel in on_disk}

    readme = (shipped.path / "README.md").read_text()
    for expected in ("# colours", "red, green, blue, dark", "hand-written linear", "CC-BY-4.0", "edgetl predict",
                     "edgetl verify", "| onnx-fp32 | onnx | onnxruntime:CPUExecutionProvider | 100 |",
                     "| onnx-fp32 | Test CPU 3000 | onnxruntime:CPUExecutionProvider | 2 | 1 | 0.031 | 0.05 |",
                     "- test_accuracy: 99.5", "8×8"):
        assert expected in readme, expected


def test_ship_refuses_failed_artifact_and_names_it(model_files, tmp_path):
    failed = {"passed": False, "reasons": ["accuracy drop 3.1 > 1.0 points"], "accuracy": 80.0, "agreement": 0.9}
    with pytest.raises(BundleError, match=r"onnx-fp32: accuracy drop 3\.1 > 1\.0 points") as info:
        ship_colours(artifacts(model_files, onnx_validation=failed), tmp_path)
    assert "openvino-fp32" not in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BundleError, match="nothing to ship"):
        ship_colours([], tmp_path)


def test_failed_ship_leaves_previous_bundle_intact_and_a_good_one_replaces_it(model_files, tmp_path):
    first = ship_colours(artifacts(model_files), tmp_path)
    manifest_before = (first.path / "manifest.json").read_bytes()
    archive_before = first.archive.read_bytes()

    broken = artifacts(model_files)
    broken[1] = Artifact("onnx-fp32", "onnx", [*model_files["onnx"], tmp_path / "gone.onnx.data"],
                         "onnxruntime:CPUExecutionProvider", passing())
    with pytest.raises(BundleError, match="gone.onnx.data"):
        ship_colours(broken, tmp_path, recipe_hash="second")
    assert (first.path / "manifest.json").read_bytes() == manifest_before
    assert first.archive.read_bytes() == archive_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["colours", "colours.tar.gz"]
    assert verify(first.path).ok

    ship_colours(artifacts(model_files)[1:], tmp_path, recipe_hash="third")
    assert json.loads((first.path / "manifest.json").read_text())["recipe_hash"] == "third"
    assert not (first.path / "model" / "openvino-fp32").exists()  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["colours", "colours.tar.gz"]
    assert verify(first.archive).ok


def test_ship_keeps_onnx_external_data_beside_its_model(model_files, tmp_path):
    weights = model_files["onnx-external"][1]
    assert weights.stat().st_size == 4 * (12 + 4)  # the weights really are in the side file
    runtime = "onnxruntime:CPUExecutionProvider"
    item = Artifact("onnx-external", "onnx", model_files["onnx-external"], runtime, passing())
    shipped = ship_colours([item], tmp_path)
    assert shipped.manifest["artifacts"]["onnx-external"]["files"] == [
        "model/onnx-external/colours.onnx", "model/onnx-external/colours.onnx.data"]
    report = verify(shipped.archive)
    assert report.ok and report.loaded_artifacts == ["onnx-external"], report.problems
    with load_bundle(shipped.path) as model:
        assert model.predict([np.full((4, 4, 3), (0, 200, 0), dtype=np.uint8)])[0].label == "green"


# -- verify --------------------------------------------------------------------------------------


def test_verify_accepts_fresh_folder_and_archive(model_files, tmp_path):
    shipped = ship_colours(artifacts(model_files), tmp_path)
    for target in (shipped.path, shipped.archive):
        report = verify(target)
        assert report.ok, report.problems
        assert report.checked_files == len(shipped.manifest["files"]) == 8  # predict.py among them
        assert sorted(report.loaded_artifacts) == ["onnx-fp32", "openvino-fp32"]


def test_verify_detects_a_tampered_model_byte(model_files, tmp_path):
    shipped = ship_colours(artifacts(model_files), tmp_path)
    flip_byte(shipped.path / "model/onnx-fp32/colours.onnx")
    report = verify(shipped.path)
    assert not report.ok
    assert any("model/onnx-fp32/colours.onnx" in p and "sha256" in p for p in report.problems), report.problems
    assert "onnx-fp32" not in report.loaded_artifacts  # a damaged model is not run


def test_verify_detects_a_missing_labels_file(model_files, tmp_path):
    shipped = ship_colours(artifacts(model_files), tmp_path)
    (shipped.path / "labels.json").unlink()
    report = verify(shipped.path)
    assert not report.ok
    assert any(p.startswith("labels.json: missing") for p in report.problems), report.problems


def test_verify_detects_an_unlisted_file(model_files, tmp_path):
    shipped = ship_colours(artifacts(model_files), tmp_path)
    (shipped.path / "model/onnx-fp32/notes.txt").write_text("sneaked in")
    report = verify(shipped.path)
    assert report.problems == ["model/onnx-fp32/notes.txt: unlisted file (not in the manifest)"]


def test_verify_runs_each_artifact_and_checks_the_output_shape(model_files, tmp_path):
    shipped = ship_colours(artifacts(model_files), tmp_path, labels=[*LABELS, "white"])  # 5 labels, 4 outputs
    assert verify(shipped.path, load=False).ok  # the files themselves are consistent
    problems = verify(shipped.path).problems
    assert len(problems) == 2 and all("expects (1, 5)" in p for p in problems), problems


@pytest.mark.parametrize("member", ["../escape.txt", "/tmp/edgetl-escape.txt"])
def test_verify_rejects_unsafe_archive_members(tmp_path, member):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    report = verify(archive)
    assert not report.ok and "unsafe path" in report.problems[0]
    assert not (tmp_path / "escape.txt").exists()


# -- predict -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_colours(model_files, tmp_path_factory):
    return ship_colours(artifacts(model_files), tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_predict_returns_labels_and_probabilities(shipped_colours, tmp_path, runtime):
    with load_bundle(shipped_colours.path, runtime=runtime) as model:
        assert model.artifact == RUNTIMES[runtime] and model.runtime == runtime
        paths = colour_pngs(tmp_path)
        in_memory = [Image.new("RGB", (5, 5), (250, 10, 10)), np.full((9, 9, 3), (5, 5, 240), dtype=np.uint8)]
        predictions = model.predict([*paths, *in_memory], top_k=4)

    # The same known answers on both runtimes: their top labels agree.
    assert [p.label for p in predictions] == ["red", "green", "blue", "dark", "red", "blue"]
    assert [p.source for p in predictions[:4]] == [str(p) for p in paths]
    for prediction in predictions:
        assert prediction.index == LABELS.index(prediction.label)
        assert [label for label, _ in prediction.top_k][0] == prediction.label
        probabilities = [p for _, p in prediction.top_k]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-6)  # top_k=4 covers every label
        assert probabilities == sorted(probabilities, reverse=True)
        assert prediction.probability == probabilities[0] > 0.5


def test_runtimes_agree_on_probabilities_and_archives_load(shipped_colours, tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
    outputs = {}
    for runtime in RUNTIMES:
        with load_bundle(shipped_colours.archive, runtime=runtime) as model:
            outputs[runtime] = np.array([[p for _, p in pred.top_k] for pred in model.predict(list(noise), top_k=2)])
    ort, ov = outputs.values()
    # FP32 artifacts run in f32 on OpenVINO too (the runner overrides the bf16 default of CPUs
    # with AVX512_BF16), so the two runtimes agree to float rounding.
    np.testing.assert_allclose(ort, ov, atol=1e-5)
    with load_bundle(shipped_colours.path) as model:
        assert model.artifact == "onnx-fp32"  # the manifest's default
        assert len(model.predict([noise[0]], top_k=10)[0].top_k) == 4


def test_predict_names_a_corrupt_or_missing_image(shipped_colours, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    good = colour_pngs(tmp_path)[0]
    with load_bundle(shipped_colours.path) as model:
        with pytest.raises(DataError, match="broken.png"):
            model.predict([good, broken])
        with pytest.raises(DataError, match="missing.png"):
            model.predict([tmp_path / "missing.png"])
        with pytest.raises(DataError, match=r"^image #3: image arrays must be uint8"):  # counted across batches
            model.predict([good, good, good, np.zeros((4, 4, 3))], batch_size=2)


def test_load_bundle_refuses_a_tampered_model(model_files, tmp_path):
    shipped = ship_colours(artifacts(model_files), tmp_path)
    flip_byte(shipped.path / "model/openvino-fp32/colours.bin")
    with pytest.raises(BundleError, match="colours.bin"):
        load_bundle(shipped.path, runtime="openvino:CPU")
    assert load_bundle(shipped.path).artifact == "onnx-fp32"  # the untouched artifact still loads


def test_an_artifact_validated_on_gpu_still_runs_on_a_cpu_host(model_files, tmp_path):
    item = Artifact("onnx-cuda", "onnx", model_files["onnx"], "onnxruntime:NoSuchExecutionProvider", passing())
    shipped = ship_colours([item], tmp_path)
    report = verify(shipped.path)
    assert report.ok and report.loaded_artifacts == ["onnx-cuda"], report.problems
    assert any("NoSuchExecutionProvider" in note for note in report.notes)
    with load_bundle(shipped.path) as model:  # no runtime asked for: the CPU default will do
        assert model.runtime == "onnxruntime:CPUExecutionProvider"
    with pytest.raises(BackendUnavailable, match="NoSuchExecutionProvider"):
        load_bundle(shipped.path, runtime="onnxruntime:NoSuchExecutionProvider")  # asked for: no silent swap


def test_predict_and_verify_never_import_torch(shipped_colours, tmp_path):
    image = colour_pngs(tmp_path)[2]
    code = f"""
import json, sys
from edgetl.bundle import verify
from edgetl.predict import load_bundle
labels = [load_bundle({str(shipped_colours.path)!r}, runtime=rt).predict([{str(image)!r}])[0].label
          for rt in ("onnxruntime:CPUExecutionProvider", "openvino:CPU")]
ok = verify({str(shipped_colours.archive)!r}).ok
print(json.dumps({{"labels": labels, "ok": ok, "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch")}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"labels": ["blue", "blue"], "ok": True, "torch": []}


# -- benchmark inputs travel in the bundle --------------------------------------------------------


def test_bench_inputs_are_shipped_listed_and_verified(model_files, tmp_path):
    inputs = PREPROCESS.encode([Image.new("RGB", (8, 8), rgb) for rgb in COLOURS.values()])
    shipped = ship_colours(artifacts(model_files), tmp_path, bench_inputs=inputs, bench_description="4 solid colours")
    manifest = shipped.manifest
    assert manifest["bench_inputs"] == {"file": BENCH_FILE, "rows": 4, "description": "4 solid colours"}
    assert BENCH_FILE in manifest["files"] and manifest["kind"] == "image" and manifest["input_shape"] == [3, 8, 8]
    with np.load(shipped.path / BENCH_FILE) as npz:
        assert npz.files == ["inputs"] and npz["inputs"].dtype == np.float32
        np.testing.assert_array_equal(npz["inputs"], inputs)
    assert verify(shipped.archive).ok

    (shipped.path / BENCH_FILE).write_bytes(b"not an npz")
    assert any(BENCH_FILE in p for p in verify(shipped.path).problems)
    with pytest.raises(BundleError, match=r"benchmark inputs inputs have shape \(3, 4, 4\)"):
        ship_colours(artifacts(model_files), tmp_path / "wrong", bench_inputs=np.zeros((2, 3, 4, 4), np.float32))
    assert not (tmp_path / "wrong").exists()


# -- a text bundle: the same code, a tokenizer in the bundle ---------------------------------------

TEXT_LABELS = ["card", "refund", "top_up"]
CLASS_WORDS = {"card": ["card", "stolen", "pin"], "refund": ["refund", "money", "back"], "top_up": ["top", "up"]}
TEXT_CASES = {"my card was stolen": "card", "Where is my REFUND?": "refund", "how do i top up": "top_up"}


@pytest.fixture(scope="module")
def text_files(tmp_path_factory) -> dict[str, Path]:
    """A word-level tokenizer.json and a bag-of-words model (ONNX and OpenVINO) taking input_ids + attention_mask."""
    pytest.importorskip("tokenizers", reason="text bundles need the tokenizers package")
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    folder = tmp_path_factory.mktemp("text-model")
    words = [w for group in CLASS_WORDS.values() for w in group] + ["my", "was", "where", "is", "how", "do", "i", "?"]
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer.save(str(folder / "tokenizer.json"))

    embedding = np.zeros((len(vocab), len(TEXT_LABELS)), dtype=np.float32)  # a class word votes for its class
    for label, group in CLASS_WORDS.items():
        for word in group:
            embedding[vocab[word], TEXT_LABELS.index(label)] = 1.0
    embedding[vocab["[PAD]"], TEXT_LABELS.index("top_up")] = 5.0  # padding would win if the mask were ignored
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["embedding", "input_ids"], ["votes"]),
            helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mask", "last"], ["mask3"]),
            helper.make_node("Mul", ["votes", "mask3"], ["kept"]),
            helper.make_node("ReduceSum", ["kept", "sequence"], ["logits"], keepdims=0),
        ],
        "words",
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "length"])
         for name in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(TEXT_LABELS)])],
        initializer=[numpy_helper.from_array(embedding, "embedding"),
                     numpy_helper.from_array(np.array([2], dtype=np.int64), "last"),
                     numpy_helper.from_array(np.array([1], dtype=np.int64), "sequence")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, folder / "words.onnx")
    ov.save_model(ov.convert_model(str(folder / "words.onnx")), str(folder / "ov" / "words.xml"), compress_to_fp16=False)
    return {"tokenizer": folder / "tokenizer.json", "onnx": folder / "words.onnx", "xml": folder / "ov" / "words.xml"}


def text_preprocess(text_files) -> TextPreprocess:
    return TextPreprocess(max_length=16, input_names=("input_ids", "attention_mask"),
                          root=text_files["tokenizer"].parent)


def ship_words(text_files, output_dir: Path, **overrides):
    xml = text_files["xml"]
    options = dict(
        name="words", output_dir=output_dir, labels=TEXT_LABELS, preprocess=text_preprocess(text_files),
        recipe_toml="", recipe_hash="words", card={"backbone": "bag of words"},
        extra_files={"tokenizer.json": text_files["tokenizer"]},
    )
    options.update(overrides)
    return ship([Artifact("onnx-fp32", "onnx", [text_files["onnx"]], "onnxruntime:CPUExecutionProvider", passing()),
                 Artifact("openvino-fp32", "openvino", [xml, xml.with_suffix(".bin")], "openvino:CPU", passing())],
                **options)


def test_text_bundle_ships_its_tokenizer_and_token_inputs(text_files, tmp_path):
    preprocess = text_preprocess(text_files)
    texts = list(TEXT_CASES)
    tokens = preprocess.encode(texts)
    labels = np.array([TEXT_LABELS.index(label) for label in TEXT_CASES.values()])
    reference = np.eye(len(TEXT_LABELS), dtype=np.float32)[labels]
    shipped = ship_words(text_files, tmp_path, validation_slice=ValidationSlice(tokens, labels, reference),
                         bench_inputs=tokens, bench_description="3 test texts")
    manifest = shipped.manifest
    assert manifest["kind"] == "text" and manifest["inputs"] == ["input_ids", "attention_mask"]
    assert manifest["tokenizer"] == "tokenizer.json" and "tokenizer.json" in manifest["files"]
    assert manifest["bench_inputs"] == {"file": BENCH_FILE, "rows": 3, "description": "3 test texts"}
    for rel in (BENCH_FILE, "validation/slice.npz"):
        with np.load(shipped.path / rel) as npz:  # named int64 arrays: a device needs no tokenizer
            assert {"inputs.input_ids", "inputs.attention_mask"} <= set(npz.files)
            np.testing.assert_array_equal(npz["inputs.input_ids"], tokens["input_ids"])
            assert npz["inputs.input_ids"].dtype == np.int64
    readme = (shipped.path / "README.md").read_text()
    for expected in ("text classification", "int64 input_ids, attention_mask", "`tokenizers` package",
                     "no torch, no transformers", '"where is my card?"', "Sorting texts into the 3 classes",
                     "texts unlike it"):
        assert expected in readme, expected

    report = verify(shipped.archive)
    assert report.ok and sorted(report.loaded_artifacts) == ["onnx-fp32", "openvino-fp32"], report.problems
    for runtime in RUNTIMES:
        with load_bundle(shipped.path, runtime=runtime) as model:
            assert model.kind == "text"
            predictions = model.predict(texts, top_k=2)
        assert [p.label for p in predictions] == list(TEXT_CASES.values())
        assert [p.source for p in predictions] == texts and all(len(p.top_k) == 2 for p in predictions)


def test_text_bundle_refuses_a_missing_or_swapped_tokenizer(text_files, tmp_path):
    with pytest.raises(BundleError, match=r"needs tokenizer.json .*extra_files=\{'tokenizer.json': path\}"):
        ship_words(text_files, tmp_path / "none", extra_files={})
    one = ValidationSlice({"input_ids": np.zeros((1, 4), np.int64)}, np.zeros(1), np.zeros((1, 3), np.float32))
    with pytest.raises(BundleError, match=r"validation slice inputs \['input_ids'\] are not the model's token"):
        ship_words(text_files, tmp_path / "none", validation_slice=one)
    assert not (tmp_path / "none").exists()

    shipped = ship_words(text_files, tmp_path)
    tokenizer = shipped.path / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"refund"', '"refunt"'))  # same size
    assert any("tokenizer.json: sha256" in p for p in verify(shipped.path).problems)
    with pytest.raises(BundleError, match="tokenizer.json"):
        load_bundle(shipped.path)
    tokenizer.unlink()
    manifest = json.loads((shipped.path / "manifest.json").read_text())
    del manifest["files"]["tokenizer.json"]
    (shipped.path / "manifest.json").write_text(json.dumps(manifest))
    assert "manifest does not list tokenizer.json, which preprocess.json needs" in verify(shipped.path).problems


def test_text_predict_and_verify_import_neither_torch_nor_transformers(text_files, tmp_path):
    shipped = ship_words(text_files, tmp_path)
    code = f"""
import json, sys
from edgetl.bundle import verify
from edgetl.predict import load_bundle
label = load_bundle({str(shipped.archive)!r}).predict(["top up please"])[0].label
ok = verify({str(shipped.archive)!r}).ok
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "optimum"))
print(json.dumps({{"label": label, "ok": ok, "heavy": heavy}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"label": "top_up", "ok": True, "heavy": []}
