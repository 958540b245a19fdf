"""End to end: `edgetl run` on a small real recipe, then verify, predict and a resumed rerun."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from conftest import needs_fashion_mnist

pytestmark = [pytest.mark.slow, needs_fashion_mnist]

SMALL = [
    "run.name='e2e'", "model.image_size=32", "data.train_per_class=30", "data.val_per_class=10",
    "data.test_per_class=20", "finetune.probe_epochs=10", "finetune.unfreeze=[2]", "finetune.stage_epochs=[1]",
    "bench.batch_sizes=[1]", "bench.min_runs=5", "bench.max_seconds=0.3", "bench.warmup=2",
    "validate.gate.min_agreement=0.97", "distill.epochs=1", "distill.min_relative_accuracy=0.5",
    "quantize.calibration_size=40",
]
FP32 = ["torch-fp32", "onnx-fp32", "openvino-fp32"]
QUANTIZED = ["onnx-int8-static", "onnx-int8-static-acc", "openvino-int8"]


def _edgetl(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "edgetl", *args], capture_output=True, text=True, cwd=tmp_path)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    args = ["run", "--quiet"] + [a for item in SMALL for a in ("--set", item)]
    result = _edgetl(root, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, args, result


def test_run_ships_a_verified_bundle_with_a_table(finished_run):
    root, _, result = finished_run
    expected = FP32 + QUANTIZED + [f"student-{name}" for name in FP32 + QUANTIZED]
    for variant in expected:
        assert variant in result.stdout
    summary = json.loads((root / "runs/e2e/summary.json").read_text())
    made = {row["variant"] for row in summary["variants"]}
    # an accuracy-aware variant that cannot pass the gate is skipped, with its reason; every other one is made
    assert made <= set(expected) and all(name.endswith("-acc") for name in set(expected) - made)
    assert all(summary["decisions"][name]["status"] == "skipped" for name in set(expected) - made)
    assert summary["test_accuracy"] > 30  # 10 classes: chance is 10%
    assert summary["distill"]["baseline_test_accuracy"] is not None  # the no-teacher ablation ran
    assert all(row["median_ms"] > 0 for row in summary["variants"])
    # Every artifact is either shipped, a torch reference, or has a reason it lost.
    decisions = summary["decisions"]
    assert set(decisions) == set(expected) and all(d["reason"] for d in decisions.values())
    shipped = {name for name, d in decisions.items() if d["status"] == "shipped"}
    # The passing artifacts were raced: every one of them is in race.json's rounds and its decision says by what ratio
    race = json.loads((root / "runs/e2e/race.json").read_text())["result"]
    raced = {name for name, d in decisions.items() if d["status"] in ("shipped", "lost") and "ratio" in d}
    assert set(race["times_ms"]) == raced and shipped <= raced and len(raced) >= 2
    assert all(d["ratio"]["rounds"] == race["rounds"] for name, d in decisions.items() if name in raced)
    manifest = json.loads((root / "models/e2e/manifest.json").read_text())
    assert set(manifest["artifacts"]) == shipped and manifest["default_artifact"] == summary["default_artifact"]
    card = (root / "models/e2e/README.md").read_text()
    assert len(manifest["data_sha256"]) == 64 and manifest["data_sha256"][:16] in card
    assert f"- {summary['default_artifact']}: {decisions[summary['default_artifact']]['reason']}" in card  # why it shipped
    assert all(manifest["artifacts"][name]["validation"]["passed"] for name in shipped)
    assert (root / "models/e2e/validation/slice.npz").is_file()
    assert (root / "models/e2e.tar.gz").is_file() and (root / "runs/e2e/recipe.toml").is_file()
    verify = _edgetl(root, "verify", "models/e2e")
    assert verify.returncode == 0, verify.stderr
    # the report: in the run folder and, checksummed, in the bundle; it names the shipped default artifact
    for folder in ("runs/e2e", "models/e2e"):
        page = (root / folder / "report.html").read_text()
        assert summary["default_artifact"] in page and page.count("<svg") >= 5
    assert {"report.html", "report.json", "predict.py"} <= set(manifest["files"])
    verify_archive = _edgetl(root, "verify", "models/e2e.tar.gz")
    assert verify_archive.returncode == 0, verify_archive.stderr


def test_predict_classifies_a_fashion_mnist_image(finished_run):
    from edgetl.data.sources import find_fashion_mnist, read_fashion_mnist

    root, _, _ = finished_run
    images, labels = read_fashion_mnist(find_fashion_mnist(), "test")
    paths = []
    for i in range(20):
        paths.append(root / f"item{i}.png")
        Image.fromarray(images[i]).save(paths[-1])
    result = _edgetl(root, "predict", "models/e2e", *map(str, paths), "--runtime", "openvino:CPU")
    assert result.returncode == 0, result.stderr
    manifest_labels = json.loads((root / "models/e2e/labels.json").read_text())
    predicted = [line.split(": ", 1)[1].split(" (")[0] for line in result.stdout.splitlines() if ": " in line]
    assert len(predicted) == 20 and set(predicted) <= set(manifest_labels)
    hits = sum(p == manifest_labels[y] for p, y in zip(predicted, labels[:20]))
    assert hits >= 6  # far above the 2 of 20 that chance gives


def test_rerun_skips_finished_stages(finished_run):
    root, args, _ = finished_run
    before = json.loads((root / "runs/e2e/summary.json").read_text())
    result = _edgetl(root, *args)
    assert result.returncode == 0, result.stderr
    for stage in ("export:", "quantize:", "validate:", "bench:", "race:"):
        assert stage not in result.stdout
    after = json.loads((root / "runs/e2e/summary.json").read_text())
    assert after["default_artifact"] == before["default_artifact"] and after["decisions"] == before["decisions"]


@pytest.mark.parametrize("ptq_passes", [True, False], ids=["ptq-passes", "ptq-fails"])
def test_qat_runs_only_when_post_training_int8_misses_the_gate(finished_run, monkeypatch, ptq_passes):
    from edgetl import pipeline
    from edgetl.pipeline import stages
    from edgetl.recipe import load_recipe

    root, _, _ = finished_run
    monkeypatch.chdir(root)
    # The teacher (about 70% accurate here); the one-epoch student is near chance, so its agreement means little.
    recipe = load_recipe(root / "runs/e2e/recipe.toml", ["quantize.qat=true", "quantize.qat_epochs=1",
                                                         "quantize.models=['teacher']"])
    ctx = pipeline.RunContext(recipe, progress=False, log=lambda _: None)
    real = pipeline.validate_artifact
    # The verdict on the post-training variant is what decides; force it both ways.
    monkeypatch.setattr(stages, "validate_artifact", lambda ctx, a: {**real(ctx, a), "passed": ptq_passes})
    made = pipeline.qat_stage(ctx)
    assert list(made) == ["openvino-int8-qat"]
    folder = root / "runs/e2e/artifacts/openvino-int8-qat"
    if ptq_passes:
        assert made["openvino-int8-qat"] is None
        assert "openvino-int8 passed the gate" in json.loads((folder / "skipped.json").read_text())["reason"]
        return
    assert (folder / "model.xml").is_file() and not (folder / "skipped.json").exists()
    report = real(ctx, next(a for a in ctx.plan() if a.name == "openvino-int8-qat"))
    ptq = real(ctx, next(a for a in ctx.plan() if a.name == "openvino-int8"))
    # The QAT model is the teacher, quantized: it agrees with it about as well as post-training INT8 does.
    assert report["samples"] == 200 and report["agreement"] >= ptq["agreement"] - 0.1, (report, ptq)
    assert pipeline.qat_stage(ctx)["openvino-int8-qat"]["method"] == "openvino-int8-qat"  # fresh: reused
