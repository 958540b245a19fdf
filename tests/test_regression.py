"""Regression heads: a model the user brings whose outputs are real values (N, K), not class logits.

Validation holds every variant to the original by relative error (``validate(output="regression")``, gate
``max_relative_error``); bundles record ``"output": "regression"`` and ``output_dim``, ``predict`` returns the values,
``edgetl predict`` prints them. The model is a tiny torch CNN (3x32x32 -> 2 values) exported to ONNX in the test,
the data a flat folder of 32x32 PNGs made here: nothing is downloaded.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgetl.bundle import Artifact, ValidationSlice, ship, verify
from edgetl.errors import BundleError, DataError, RecipeError
from edgetl.predict import load_bundle
from edgetl.settings import GateConfig
from edgetl.validate import relative_errors, validate

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
FAST = ["bench.batch_sizes=[1]", "bench.max_seconds=0.2", "bench.min_runs=5", "bench.warmup=2",
        "quantize.calibration_size=20", "quantize.min_calibration_size=8",
        "quantize.methods=['onnx-int8-static', 'openvino-int8']"]
ORT = "onnxruntime:CPUExecutionProvider"


class Unlabelled:
    """What ``validate`` reads from a data set when the outputs are given: its labels (none here)."""

    def __init__(self, n: int) -> None:
        self.labels = np.full(n, -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)


def judged(out, ref, gate=None):
    out, ref = np.asarray(out, np.float32), np.asarray(ref, np.float32)
    return validate(None, Unlabelled(len(ref)), None, logits=out, reference=ref, gate=gate, output="regression")


# -- the comparison, on hand-made numbers ----------------------------------------------------------------------


def test_relative_error_per_sample_with_a_floor_from_the_references_scale():
    ref = np.array([[3, 4], [0, 0], [4, 3], [0, 0]], np.float32)  # RMS over every value: sqrt(50 / 8) = 2.5
    out = np.array([[3, 4.5], [0.003, 0.004], [4, 3], [0, 0]], np.float32)
    errors, floor = relative_errors(out, ref)
    assert floor == pytest.approx(0.0025)  # 1e-3 of the RMS: (0, 0) is judged against it, not against 0
    np.testing.assert_allclose(errors, [0.1, 2.0, 0.0, 0.0], rtol=1e-5, atol=1e-9)  # 0.5/5; 0.005/0.0025

    report = judged(out, ref, GateConfig(max_relative_error=0.25, min_agreement=0.0))
    assert report.output == "regression" and report.samples == 4
    assert report.accuracy is None and report.macro_f1 is None and report.reference_accuracy is None
    assert report.mean_relative_error == pytest.approx(0.525, rel=1e-5)
    assert report.p99_relative_error == pytest.approx(0.1 + 0.97 * 1.9, rel=1e-5)  # numpy's linear percentile
    assert report.max_relative_error == pytest.approx(2.0, rel=1e-5)
    assert report.relative_error_floor == pytest.approx(0.0025)
    assert report.agreement == 0.75  # 3 of 4 samples within the gate's 0.25
    np.testing.assert_allclose(report.max_abs_diff_per_output, [0.003, 0.5], rtol=1e-5)
    assert report.max_abs_logit_diff == pytest.approx(0.5)
    assert report.mean_kl is None and report.mean_cosine is None
    # over the 0.25 allowed: says which number failed and by how much
    assert report.reasons == [("mean relative error 0.525 > 0.25 allowed (over by 0.275, 2.10× the limit; worst "
                               "sample 2)")], report.reasons
    assert judged(out, ref).agreement == 0.5  # no gate: the default tolerance, 0.02


def test_the_gate_passes_a_close_output_and_fails_a_perturbed_one():
    rng = np.random.default_rng(0)
    ref = rng.uniform(10, 60, (50, 3)).astype(np.float32)  # e.g. ages
    close = ref * (1 + 0.001 * rng.standard_normal(ref.shape)).astype(np.float32)
    report = judged(close, ref, GateConfig())
    assert report.passed and report.reasons == [] and report.agreement == 1.0
    assert 0 < report.mean_relative_error < 0.002 and report.gate["max_relative_error"] == 0.02
    assert "relative error mean" in report.summary() and report.summary().endswith("-> PASS")

    off = ref * 1.05  # every value 5% high
    bad = judged(off, ref, GateConfig())
    assert not bad.passed and bad.agreement == 0.0
    assert bad.mean_relative_error == pytest.approx(0.05, rel=1e-4)
    assert bad.reasons == ["agreement (samples within relative error 0.02) 0.00% < 99.00% required",
                           ("mean relative error 0.05 > 0.02 allowed (over by 0.03, 2.50× the limit; worst sample "
                            "0.05)")], bad.reasons
    saved = bad.to_dict()
    assert saved["mean_relative_error"] == bad.mean_relative_error and saved["output"] == "regression"
    assert judged(off, ref, GateConfig(max_relative_error=0.06)).passed  # the threshold is data
    capped = judged(off, ref, GateConfig(max_relative_error=0.06, max_abs_logit_diff=1.0))
    assert not capped.passed and capped.reasons[0].startswith("max |Δ| ")

    near_zero = np.zeros((4, 3), np.float32)
    near_zero[0] = 40.0  # sets the scale; the three zero references are not divided by zero
    nudged = near_zero + np.float32(0.001)
    errors, floor = relative_errors(nudged, near_zero)
    assert np.isfinite(errors).all() and errors[1] == pytest.approx(np.sqrt(3) * 0.001 / floor, rel=1e-4)


def test_outputs_that_are_not_one_row_per_sample_are_refused():
    with pytest.raises(DataError, match=r"reference values have shape \(4, 2\), the artifact's \(4, 3\)"):
        judged(np.zeros((4, 3)), np.ones((4, 2)))
    with pytest.raises(DataError, match="output must be one of embedding, logits, regression, got 'scores'"):
        validate(None, Unlabelled(2), None, logits=np.zeros((2, 1)), output="scores")

    class Flat:
        name = "flat"

        def predict(self, batch):
            return np.zeros(len(batch), np.float32)  # (N,), not (N, K)

    from edgetl.data import LabeledImages
    from edgetl.preprocess import ImagePreprocess

    images = LabeledImages(np.zeros((3, 32, 32, 3), np.uint8), np.full(3, -1, np.int64), [])
    with pytest.raises(DataError, match=r"flat returned outputs of shape \(3,\); a regression model returns \(N, K\) "
                                        r"values: export one value per sample as shape \(N, 1\)"):
        validate(Flat(), images, ImagePreprocess(image_size=32), output="regression")


# -- a tiny regressor, its images, and its bundle ------------------------------------------------------------


@pytest.fixture(scope="module")
def regressor(tmp_path_factory) -> dict:
    """A small CNN with two real outputs exported to ONNX with a dynamic batch axis, and 30 smooth 32x32 PNGs
    straight in a folder (no classes)."""
    import torch

    root = tmp_path_factory.mktemp("regressor")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2)).eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(root / "reg.onnx"), input_names=["image"],
                      output_names=["values"], dynamic_axes={"image": {0: "n"}, "values": {0: "n"}},
                      opset_version=17, dynamo=False)
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:32, 0:32] / 31.0
    for i in range(30):
        a, b, c = rng.uniform(0, 1, 3)
        image = np.stack([a * x + (1 - a) * y, b * (1 - x) * y + c * x, np.abs(np.sin(6 * a * x + 4 * c * y))], -1)
        image = np.clip(image * 255 + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(photos / f"{i:02d}.png")
    return {"onnx": root / "reg.onnx", "photos": photos, "root": root}


def normalized(paths) -> np.ndarray:
    """The images as the model takes them, computed here: 32x32 already, so only scaled and normalised (NCHW)."""
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) / 255 for p in paths])
    return ((pixels - np.float32(MEAN)) / np.float32(STD)).transpose(0, 3, 1, 2).astype(np.float32)


def onnxruntime_values(model: Path, paths) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=[ORT.split(":")[1]])
    return session.run(None, {"image": normalized(paths)})[0]


def printed_values(line: str) -> list[float]:
    return [float(v) for v in re.search(r"\[(.*)\]", line).group(1).split(", ")]


def test_a_regression_bundle_ships_verifies_and_predicts_values(regressor, tmp_path):
    from edgetl.preprocess import ImagePreprocess

    paths = sorted(regressor["photos"].iterdir())[:8]
    reference = onnxruntime_values(regressor["onnx"], paths)
    preprocess = ImagePreprocess(image_size=32, mean=tuple(MEAN), std=tuple(STD))
    report = judged(reference, reference, GateConfig()).to_dict()
    sliced = ValidationSlice(normalized(paths), np.full(len(paths), -1, np.int64), reference, reference="source model")
    options = dict(name="reg", output_dir=tmp_path, labels=[], preprocess=preprocess, recipe_toml="", recipe_hash="r",
                   card={"backbone": "tiny CNN"}, output="regression", validation_slice=sliced)
    shipped = ship([Artifact("onnx-fp32", "onnx", [regressor["onnx"]], ORT, report)], **options)

    manifest = shipped.manifest
    assert manifest["output"] == "regression" and manifest["output_dim"] == 2 and manifest["num_labels"] == 0
    assert "embedding_dim" not in manifest and json.loads((shipped.path / "labels.json").read_text()) == []
    readme = (shipped.path / "README.md").read_text()
    for expected in ("| Output | 2 real value(s) |", "| Task | image regression |", "Image regression model shipped",
                     "| Within tolerance | Mean rel. error | p99 rel. error | Max rel. error | Gate |",
                     ".predict(['photo.jpg']))  # float32 (1, 2)"):
        assert expected in readme, (expected, readme)
    assert "Classes" not in readme and "top_k" not in readme

    report_ok = verify(shipped.archive)
    assert report_ok.ok and report_ok.loaded_artifacts == ["onnx-fp32"], report_ok.problems
    with load_bundle(shipped.archive) as model:
        assert (model.output, model.output_dim, model.embedding_dim) == ("regression", 2, None)
        values = model.predict([str(p) for p in paths], batch_size=3)
        assert isinstance(values, np.ndarray) and values.dtype == np.float32 and values.shape == (8, 2)
        np.testing.assert_allclose(values, reference, rtol=1e-5, atol=1e-6)
        for method in (model.embed, model.predict_logits):
            with pytest.raises(BundleError, match=r"is a regression model \(2 values per sample, no labels\), so "
                                                  r"it has no \w+; call predict\(samples\) for its float32 \(N, 2\) "
                                                  r"values"):
                method([str(paths[0])])
        lines = model.describe_outputs([str(paths[0])])
        assert lines[0].startswith(f"{paths[0]}: 2 values: [")

    code = (f"import json, sys\nfrom edgetl.bundle import verify\nfrom edgetl.predict import load_bundle\n"
            f"shape = list(load_bundle({str(shipped.archive)!r}).predict([{str(paths[0])!r}]).shape)\n"
            f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
            f"print(json.dumps([shape, verify({str(shipped.archive)!r}).ok, heavy]))")
    light = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert json.loads(light.stdout.strip().splitlines()[-1]) == [[1, 2], True, []], light.stderr  # never torch

    refused = {
        r"a regression model has no labels, got 1; pass labels=\[\]": dict(labels=["age"]),
        r"embedding_dim is for output='embedding' bundles; pass output_dim for a regression bundle":
            dict(embedding_dim=2),
        r"reference values \(8, 2\) must agree \(N, 3 values\)": dict(output_dim=3),
        r"a regression bundle needs its dimension: pass output_dim=D": dict(validation_slice=None),
        r"output_dim is for bundles without labels": dict(output="logits", labels=["a", "b"], output_dim=2),
    }
    for message, overrides in refused.items():
        with pytest.raises(BundleError, match=message):
            ship([Artifact("onnx-fp32", "onnx", [regressor["onnx"]], ORT, report)],
                 **{**options, "output_dir": tmp_path / "refused", **overrides})
    assert not (tmp_path / "refused").exists()

    wider = shipped.path
    manifest_file = wider / "manifest.json"
    manifest_file.write_text(json.dumps({**manifest, "output_dim": 3}))
    problems = verify(wider).problems
    assert "artifact onnx-fp32: outputs (1, 2), the manifest's output_dim expects (1, 3)" in problems, problems
    manifest_file.write_text(json.dumps({k: v for k, v in manifest.items() if k != "output_dim"}))
    assert "manifest's output_dim None is not a positive integer; re-ship the bundle" in verify(wider).problems


def test_the_task_needs_a_source_and_refuses_accuracy_aware_quantizers(regressor):
    from edgetl.recipe import load_recipe

    with pytest.raises(RecipeError, match="model.task image-regression needs model.source"):
        load_recipe(None, ["model.task=image-regression"])
    source = [f"model.source={json.dumps(str(regressor['onnx']))}", "model.task=image-regression",
              f"model.mean={MEAN}", f"model.std={STD}"]
    with pytest.raises(RecipeError, match="quantize.methods: onnx-int8-static-acc searches by top-1 agreement of "
                                          "class logits; for a regression model use"):
        load_recipe(None, [*source, "quantize.methods=['onnx-int8-static-acc']", "quantize.qat=false"])
    recipe = load_recipe(None, [*source, "quantize.methods=['onnx-int8-static']", "quantize.qat=false",
                                "distill.enabled=false", "quantize.models=['teacher']"])
    from edgetl.tasks import get_task

    assert get_task(recipe).output == "regression" and get_task(recipe).kind == "image"


def test_class_folders_are_read_as_unlabelled_images(regressor, tmp_path, monkeypatch):
    """No classes for a regression model: sub-folders, if any, are only where the images are."""
    import shutil

    from edgetl.pipeline.context import RunContext
    from edgetl.pipeline.optimize import optimize_overrides
    from edgetl.recipe import load_recipe

    for i, path in enumerate(sorted(regressor["photos"].iterdir())):
        folder = tmp_path / "photos" / ("young" if i % 2 else "old")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(None, [*optimize_overrides(regressor["onnx"], tmp_path / "photos", task="image-regression",
                                                    mean=MEAN, std=STD), *FAST])
    ctx = RunContext(recipe, progress=False, log=lambda m: None)
    for split in (ctx.splits.train, ctx.splits.val, ctx.splits.test):
        assert not split.labelled and split.classes == [] and (split.labels == -1).all()
    assert ctx.model()[1]["classes"] == []
    assert ctx.reference_logits().shape == (len(ctx.splits.test), 2)


# -- end to end: optimize -> verify -> edgetl predict ----------------------------------------------------------


def test_optimize_a_regressor_ships_a_bundle_whose_predictions_match_onnxruntime(regressor, tmp_path, monkeypatch):
    """The gate is set so tight (1e-4 mean relative error) that only the FP32 variants pass: what ships is known,
    and the INT8 variants' failures name the number that failed."""
    from edgetl.cli import app
    from edgetl.pipeline.optimize import optimize

    monkeypatch.chdir(tmp_path)
    logged: list[str] = []
    summary = optimize(regressor["onnx"], regressor["photos"], task="image-regression", size=32, mean=MEAN, std=STD,
                       out=tmp_path / "models" / "reg", overrides=[*FAST, "validate.gate.max_relative_error=1e-4"],
                       progress=False, log=logged.append)
    assert summary["test_accuracy"] is None
    assert {row["variant"] for row in summary["variants"]} == {"onnx-fp32", "openvino-fp32", "onnx-int8-static",
                                                               "openvino-int8"}
    artifacts = tmp_path / "runs" / "reg" / "artifacts"
    reports = {name: json.loads((artifacts / name / "validation.json").read_text())["report"]
               for name in ("onnx-fp32", "openvino-fp32", "onnx-int8-static", "openvino-int8")}
    for name, report in reports.items():
        assert report["output"] == "regression" and report["accuracy"] is None, report
        assert report["mean_relative_error"] is not None and len(report["max_abs_diff_per_output"]) == 2
    for name in ("onnx-fp32", "openvino-fp32"):
        assert reports[name]["passed"] and reports[name]["mean_relative_error"] < 1e-5, reports[name]
    for name in ("onnx-int8-static", "openvino-int8"):
        decision = summary["decisions"][name]
        assert decision["status"] == "lost" and "mean relative error" in decision["reason"], decision

    bundle = tmp_path / "models" / "reg"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["output"] == "regression" and manifest["output_dim"] == 2
    assert set(manifest["artifacts"]) == {"onnx-fp32", "openvino-fp32"}
    runner = CliRunner()
    verified = runner.invoke(app, ["verify", str(tmp_path / "models" / "reg.tar.gz")])
    assert verified.exit_code == 0 and verified.output.startswith("ok: "), verified.output

    photos = sorted(regressor["photos"].iterdir())[:3]
    expected = onnxruntime_values(regressor["onnx"], photos)
    result = runner.invoke(app, ["predict", str(bundle), *map(str, photos), "--runtime", ORT], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == len(photos)
    for line, photo, values in zip(lines, photos, expected):
        assert line.startswith(f"{photo}: 2 values: ["), line
        np.testing.assert_allclose(printed_values(line), values, atol=1e-4)
