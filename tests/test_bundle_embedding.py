"""Embedding bundles: a model whose output is one vector per sample, not class logits, and which has no labels.

The model is written with onnx.helper, no torch: a word-level tokenizer (test_bundle's) -> an (vocabulary, 8) word
table -> the mean over the text's real tokens (the mask matters: the padding row is huge) -> float (N, 8) -> MatMul
-> (N, 4). Its embeddings are computed with numpy too, so every runtime's answer is known in advance. The bundle
ships with ``output="embedding"``, labels.json ``[]`` and a validation slice of (N, 4) reference embeddings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_bundle import text_files, text_preprocess  # noqa: F401 - a fixture: a word-level tokenizer.json
from typer.testing import CliRunner

from edgetl.bundle import Artifact, ValidationSlice, ship, verify
from edgetl.errors import BundleError
from edgetl.predict import load_bundle

DIM = 4
TEXTS = ["my card was stolen", "where is my refund ?", "how do i top up", "money back please", "pin",
         "card pin stolen", "top up my card", "i was stolen"]
RUNTIMES = {"onnxruntime:CPUExecutionProvider": "onnx-fp32", "openvino:CPU": "openvino-fp32"}
GATE = {"max_accuracy_drop": 1.0, "min_agreement": 0.99, "max_abs_logit_diff": 0.0, "min_accuracy": 0.0,
        "min_cosine": 0.999}


def passing(**extra) -> dict:
    """A passing embedding validation report, as ``validate(..., output="embedding")`` writes one."""
    return {"passed": True, "reasons": [], "accuracy": None, "agreement": 1.0, "mean_cosine": 0.99995,
            "min_cosine": 0.9998, "output": "embedding", "gate": GATE, **extra}


@pytest.fixture(scope="module")
def embedder(text_files, tmp_path_factory) -> dict:  # noqa: F811 - the imported fixture
    """The embedding model as ONNX and OpenVINO IR, its weights (for the numpy reference) and its preprocessing."""
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer

    folder = tmp_path_factory.mktemp("embedding-model")
    preprocess = text_preprocess(text_files)
    vocabulary = Tokenizer.from_file(str(text_files["tokenizer"])).get_vocab_size()
    rng = np.random.default_rng(7)
    table = rng.standard_normal((vocabulary, 8)).astype(np.float32)
    table[0] = 100.0  # [PAD]: an embedding that forgot the attention mask is far off
    weight = rng.standard_normal((8, DIM)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["tokens"]),  # (N, L, 8)
            helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mask", "last"], ["mask3"]),
            helper.make_node("Mul", ["tokens", "mask3"], ["kept"]),
            helper.make_node("ReduceSum", ["kept", "sequence"], ["summed"], keepdims=0),
            helper.make_node("ReduceSum", ["mask", "sequence"], ["count"], keepdims=1),
            helper.make_node("Div", ["summed", "count"], ["pooled"]),  # float (N, 8)
            helper.make_node("MatMul", ["pooled", "weight"], ["embedding"]),  # (N, 4)
        ],
        "embedder",
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "length"])
         for name in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", DIM])],
        initializer=[numpy_helper.from_array(table, "table"), numpy_helper.from_array(weight, "weight"),
                     numpy_helper.from_array(np.array([2], np.int64), "last"),
                     numpy_helper.from_array(np.array([1], np.int64), "sequence")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx_path = folder / "embedder.onnx"
    onnx.save(model, onnx_path)
    xml = folder / "ov" / "embedder.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)

    def reference(texts: list[str]) -> np.ndarray:
        tokens = preprocess.encode(texts)
        mask = tokens["attention_mask"].astype(np.float32)[..., None]
        pooled = (table[tokens["input_ids"]] * mask).sum(1) / mask.sum(1)
        return (pooled @ weight).astype(np.float32)

    return {"onnx": onnx_path, "xml": xml, "preprocess": preprocess, "reference": reference,
            "tokenizer": text_files["tokenizer"]}


def embedding_slice(embedder, *, flip: bool = False) -> ValidationSlice:
    """The texts tokenized, unlabelled (-1), with the numpy embeddings as reference (``flip``: their negatives)."""
    reference = embedder["reference"](TEXTS)
    return ValidationSlice(embedder["preprocess"].encode(TEXTS), np.full(len(TEXTS), -1, np.int64),
                           -reference if flip else reference, reference="numpy")


def ship_embedder(embedder, output_dir: Path, *, validation: dict | None = None, **overrides):
    xml = embedder["xml"]
    options = dict(
        name="embedder", output_dir=output_dir, labels=[], preprocess=embedder["preprocess"], recipe_toml="",
        recipe_hash="embedder", card={"backbone": "word table + linear"}, output="embedding",
        extra_files={"tokenizer.json": embedder["tokenizer"]}, validation_slice=embedding_slice(embedder),
    )
    options.update(overrides)
    validation = validation or passing()
    return ship([Artifact("onnx-fp32", "onnx", [embedder["onnx"]], "onnxruntime:CPUExecutionProvider", validation),
                 Artifact("openvino-fp32", "openvino", [xml, xml.with_suffix(".bin")], "openvino:CPU", validation)],
                **options)


@pytest.fixture(scope="module")
def shipped(embedder, tmp_path_factory):
    return ship_embedder(embedder, tmp_path_factory.mktemp("shipped"))


def edit_manifest(root: Path, **changes) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    path.write_text(json.dumps(manifest))


def rewrite_listed(root: Path, rel: str, content: str) -> None:
    """Replace a bundle file and its manifest checksum: a consistent bundle that says something else."""
    import hashlib

    (root / rel).write_text(content)
    manifest = json.loads((root / "manifest.json").read_text())
    data = (root / rel).read_bytes()
    manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (root / "manifest.json").write_text(json.dumps(manifest))


# -- ship ---------------------------------------------------------------------------------------------------


def test_an_embedding_bundle_records_its_output_and_has_no_labels(shipped):
    manifest = shipped.manifest
    assert manifest["output"] == "embedding" and manifest["embedding_dim"] == DIM  # taken from the slice
    assert manifest["num_labels"] == 0 and manifest["kind"] == "text"
    assert json.loads((shipped.path / "labels.json").read_text()) == []
    assert manifest["validation_slice"] == {"file": "validation/slice.npz", "samples": len(TEXTS), "reference": "numpy"}
    with np.load(shipped.path / "validation/slice.npz") as npz:
        assert npz["reference_logits"].shape == (len(TEXTS), DIM)  # the key devices read, holding embeddings

    readme = (shipped.path / "README.md").read_text()
    for expected in ("| Output | 4-dim embedding |", "| Task | text embedding |", "Text embedding model shipped",
                     "## Agreement with the reference", "| NN agreement | Mean cosine | Min cosine | Gate |",
                     "| 1 | 0.999950 | 0.999800 | passed |", '.embed(["where is my card?"]).shape)  # (1, 4)',
                     "Turning texts into 4-dim vectors", "# dimension, L2 norm and first values"):
        assert expected in readme, expected
    for classifier_only in ("Classes", "Accuracy %", "top_k=3", "forced into one of the classes"):
        assert classifier_only not in readme, classifier_only


def test_embedding_dim_can_be_given_and_every_inconsistency_is_refused(embedder, tmp_path):
    without_cosine = passing(mean_cosine=None, min_cosine=None)
    given = ship_embedder(embedder, tmp_path / "given", validation_slice=None, embedding_dim=DIM,
                          validation=without_cosine)
    assert given.manifest["embedding_dim"] == DIM and "validation_slice" not in given.manifest
    readme = (given.path / "README.md").read_text()
    assert "| NN agreement | Gate |" in readme and "Mean cosine" not in readme  # cosine columns only when measured
    assert verify(given.path).ok

    refused = {
        r"needs its dimension: pass embedding_dim=D": dict(validation_slice=None),
        r"reference embeddings \(8, 4\) must agree \(N, a 5-dim embedding\)": dict(embedding_dim=5),
        r"an embedding model has no labels, got 2; pass labels=\[\]": dict(labels=["a", "b"]),
        r"embedding_dim must be a positive integer": dict(validation_slice=None, embedding_dim=0),
        r"output must be one of embedding, logits, regression, got 'segmentation'": dict(output="segmentation"),
        r"labels must be a non-empty list": dict(output="logits", validation_slice=None),
        r"embedding_dim is for output='embedding' bundles": dict(output="logits", labels=["a"], embedding_dim=4),
    }
    for message, overrides in refused.items():
        with pytest.raises(BundleError, match=message):
            ship_embedder(embedder, tmp_path / "refused", **overrides)
    assert not (tmp_path / "refused").exists()  # refused before anything was written


# -- verify -------------------------------------------------------------------------------------------------


def test_verify_runs_each_artifact_on_folder_and_archive(shipped):
    for bundle in (shipped.path, shipped.archive):
        report = verify(bundle)
        assert report.ok, report.problems
        assert sorted(report.loaded_artifacts) == ["onnx-fp32", "openvino-fp32"]


def test_verify_catches_tampering_and_an_inconsistent_embedding_bundle(embedder, tmp_path):
    tampered = ship_embedder(embedder, tmp_path / "tampered").path
    model = tampered / "model/onnx-fp32/embedder.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    assert "model/onnx-fp32/embedder.onnx: sha256 does not match the manifest (modified or corrupted)" \
        in verify(tampered).problems
    with pytest.raises(BundleError, match="embedder.onnx is missing or does not match the manifest"):
        load_bundle(tampered)

    wider = ship_embedder(embedder, tmp_path / "wider").path
    edit_manifest(wider, embedding_dim=5)  # the models return 4 columns
    problems = verify(wider).problems
    assert "artifact onnx-fp32: outputs (1, 4), the manifest's embedding_dim expects (1, 5)" in problems
    assert any("reference embeddings (8, 4) must agree (N, a 5-dim embedding)" in p for p in problems), problems

    no_dim = ship_embedder(embedder, tmp_path / "no-dim").path
    edit_manifest(no_dim, embedding_dim=None)
    assert "manifest's embedding_dim None is not a positive integer; re-ship the bundle" in verify(no_dim).problems

    as_logits = ship_embedder(embedder, tmp_path / "as-logits").path
    edit_manifest(as_logits, output=None)  # an old manifest is a classifier's, and a classifier needs labels
    assert any(p.startswith("labels.json is empty, but only an embedding bundle") for p in verify(as_logits).problems)
    with pytest.raises(BundleError, match="labels.json is empty"):
        load_bundle(as_logits)

    labelled = ship_embedder(embedder, tmp_path / "labelled").path
    rewrite_listed(labelled, "labels.json", '["a", "b", "c", "d"]')
    assert any("labels.json lists 4 labels, but an embedding bundle has none" in p for p in verify(labelled).problems)


def test_a_manifest_without_output_is_a_classifier_as_before(text_files, tmp_path):  # noqa: F811
    from test_bundle import ship_words

    words = ship_words(text_files, tmp_path).path
    assert json.loads((words / "manifest.json").read_text())["output"] == "logits"
    edit_manifest(words, output=None)  # as bundles shipped before embeddings
    assert verify(words).ok
    with load_bundle(words) as model:
        assert model.output == "logits" and model.embedding_dim is None
        assert model.predict(["how do i top up"])[0].label == "top_up"
        with pytest.raises(BundleError, match=r"is a classifier over 3 labels, not an embedding model.*predict\("):
            model.embed(["how do i top up"])


# -- embed and predict --------------------------------------------------------------------------------------


def test_embed_returns_the_models_vectors_and_predict_is_refused(embedder, shipped):
    expected = embedder["reference"](TEXTS)
    for runtime, artifact in RUNTIMES.items():
        with load_bundle(shipped.archive, runtime=runtime) as model:
            assert (model.artifact, model.output, model.embedding_dim) == (artifact, "embedding", DIM)
            vectors = model.embed(TEXTS, batch_size=3)  # several batches, padded to different lengths
            assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), DIM)
            np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-5)
            assert model.embed([]).shape == (0, DIM)
            for method in (model.predict, model.predict_logits):
                with pytest.raises(BundleError, match=r"is an embedding model \(a 4-dim embedding per sample, no "
                                                      r"labels\).*call embed\(samples\) for its float32 \(N, 4\)"):
                    method(TEXTS[:1])


def test_cli_predict_prints_dimension_norm_and_first_values(embedder, shipped):
    from edgetl.cli import app

    texts = TEXTS[:3]
    result = CliRunner().invoke(app, ["predict", str(shipped.path), *texts], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == len(texts)
    for line, text, vector in zip(lines, texts, embedder["reference"](texts)):
        values = ", ".join(f"{v:.4f}" for v in vector)
        assert line == f"{text}: 4-dim embedding, L2 norm {np.linalg.norm(vector):.4f}, [{values}]"
    verified = CliRunner().invoke(app, ["verify", str(shipped.archive)])
    assert verified.exit_code == 0 and verified.output.startswith("ok: "), verified.output


def test_embed_and_verify_never_import_torch(shipped):
    code = f"""
import json, sys
from edgetl.bundle import verify
from edgetl.predict import load_bundle
shape = list(load_bundle({str(shipped.archive)!r}).embed(["top up please"]).shape)
ok = verify({str(shipped.archive)!r}).ok
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "optimum"))
print(json.dumps({{"shape": shape, "ok": ok, "heavy": heavy}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"shape": [1, DIM], "ok": True, "heavy": []}


# -- on a target: the device's embeddings held to the reference by cosine similarity ------------------------
# These need edgetl.validate.validate(..., output="embedding") and GateConfig.min_cosine (the lead's).


def test_a_device_is_held_to_the_reference_embeddings(shipped):
    from test_targets import quick

    from edgetl.bench.remote import bench_target

    result = bench_target(shipped.path, quick("local-cpu", batch_sizes=[1]))
    assert result.error is None
    for runtime in RUNTIMES:
        verdict = result.runtime(runtime).validation
        assert verdict["output"] == "embedding" and verdict["passed"], verdict
        assert verdict["accuracy"] is None and verdict["agreement"] == 1.0 and verdict["samples"] == len(TEXTS)
        assert verdict["min_cosine"] > 0.99999 and verdict["mean_cosine"] <= 1.0 + 1e-6


def test_a_device_whose_embeddings_point_elsewhere_fails(embedder, tmp_path):
    from test_targets import quick

    from edgetl.bench.remote import bench_target

    flipped = ship_embedder(embedder, tmp_path, validation_slice=embedding_slice(embedder, flip=True))
    profile = quick("local-cpu", runtimes=["onnxruntime:CPUExecutionProvider"], batch_sizes=[1])
    verdict = bench_target(flipped.path, profile).runtime("onnxruntime:CPUExecutionProvider").validation
    # The nearest neighbours of negated vectors are the same ones: only the cosine check can catch this.
    assert verdict["passed"] is False and verdict["agreement"] == 1.0 and verdict["min_cosine"] < -0.9999
    assert any("cosine similarity" in reason for reason in verdict["reasons"]), verdict["reasons"]
