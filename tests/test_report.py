"""report.html: the record gathered from a run folder, the figures, the page, bundles and their saved target results.

The run folder is made by hand, but its records come from the code that writes them in a real run: validation
reports from ``edgetl.validate.validate`` on synthetic logits, benchmarks from ``BenchResult``, target results from
``TargetResult``; the rest (summary, export records, metrics) copies the shapes of a real run's files.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from edgetl.bench import environment
from edgetl.bench.results import RuntimeResult, TargetResult
from edgetl.bench.stats import summarize
from edgetl.bench.timing import BenchResult
from edgetl.errors import EdgetlError
from edgetl.report import collect, render_html, write_report
from edgetl.report.plotting import frontier as _frontier
from edgetl.report.record import class_errors
from edgetl.settings import GateConfig
from edgetl.validate import validate

LABELS = ["T-shirt", "Trouser", "Pull<over> & co"]  # the markup in a label checks the escaping
ORT, OV, TORCH = "onnxruntime:CPUExecutionProvider", "openvino:CPU", "torch:cpu"
DEFAULT = "student-onnx-int8-static-acc"
TITLES = {
    "accuracy-latency": "Accuracy vs latency (batch 1)",
    "accuracy-size": "Accuracy vs model size",
    "throughput": "Throughput at batch 8",
    "targets": "Latency on target devices vs this host",
    "training": "Training curves",
    "sensitivity": "Accuracy-aware quantization: per-layer sensitivity",
    "confusion": f"Confusion matrix of the shipped artifact ({DEFAULT})",
}
LAYERS = ["/stem/Conv", "/blocks.0/Conv", "/blocks.1/Conv", "/blocks.2/Conv", "/head/Gemm"]


@dataclass
class Labelled:
    """What ``validate`` reads from a split when the outputs are given: the labels."""

    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


TEST = Labelled(np.repeat(np.arange(3), 20))


def logits_for(predictions: np.ndarray) -> np.ndarray:
    return np.eye(3, dtype=np.float32)[predictions] * 5 + np.float32(0.01) * np.arange(3, dtype=np.float32)


def predictions(wrong: list[int]) -> np.ndarray:
    """The true labels, with the samples at ``wrong`` predicted as the next class."""
    pred = TEST.labels.copy()
    pred[wrong] = (pred[wrong] + 1) % 3
    return pred


TEACHER_WRONG, STUDENT_WRONG = [0, 1, 25, 26, 45, 46], [0, 25, 45, 46]
# (name, model, runtime, format, method, wrong predictions, batch-1 ms, batch-8 ms, size bytes)
ARTIFACTS = [
    ("torch-fp32", "teacher", TORCH, "torch", None, TEACHER_WRONG, 40.0, 120.0, None),
    ("onnx-fp32", "teacher", ORT, "onnx", None, TEACHER_WRONG, 5.0, 20.0, 13_500_000),
    ("onnx-int8-static", "teacher", ORT, "onnx", "onnx-int8-static", TEACHER_WRONG + [2, 3, 4, 5], 1.2, 9.0, 3_800_000),
    ("student-torch-fp32", "student", TORCH, "torch", None, STUDENT_WRONG, 30.0, 100.0, None),
    ("student-onnx-fp32", "student", ORT, "onnx", None, STUDENT_WRONG, 0.47, 7.9, 5_600_000),
    (DEFAULT, "student", ORT, "onnx", "onnx-int8-static-acc", STUDENT_WRONG, 0.41, 7.0, 1_750_000),
    ("student-openvino-fp32", "student", OV, "openvino", None, STUDENT_WRONG, 2.2, 9.0, 5_680_000),
]
DECISIONS = {
    "torch-fp32": {"status": "reference", "reason": "torch model: the reference, not shipped"},
    "onnx-fp32": {"status": "lost", "reason": "teacher model: the bundle ships the student, whose "
                  f"{DEFAULT} is faster (0.41 vs 5 ms at batch 1)"},
    "onnx-int8-static": {"status": "lost", "reason": "failed the gate: top-1 agreement 83.33% < 99.00% required"},
    "student-torch-fp32": {"status": "reference", "reason": "torch model: the reference, not shipped"},
    "student-onnx-fp32": {"status": "lost", "reason": f"slower than {DEFAULT}: <b>1.15×</b> its latency"},
    DEFAULT: {"status": "shipped", "default": True, "reason": "fastest passing artifact (0.41 ms at batch 1)"},
    "student-openvino-fp32": {"status": "shipped", "default": False,
                              "reason": "fastest passing openvino artifact (2.2 ms at batch 1)"},
}


def bench_record(runtime: str, ms1: float, ms8: float, size: int | None) -> dict:
    stats = [summarize(np.linspace(ms * 0.9, ms * 1.1, 31) * 1e6, batch_size=batch, stopped_by="ci")
             for batch, ms in ((1, ms1), (8, ms8))]
    return BenchResult(runtime, 2, stats, environment(), model_size_bytes=size).to_dict()


def history(stages: list[tuple[str, int, int]]) -> list[dict]:
    """Metrics rows as the trainer writes them: (stage, groups, epochs) per stage."""
    rows, accuracy = [], 60.0
    for stage, groups, epochs in stages:
        for epoch in range(1, epochs + 1):
            accuracy += 3.0
            rows.append({"stage": stage, "groups": groups, "epoch": epoch, "train_loss": round(100 / accuracy, 4),
                         "train_accuracy": accuracy + 2, "val_accuracy": accuracy, "lr": 1e-3, "seconds": 1.0})
    return rows


def make_run(root: Path, *, training: bool = True, quantization: bool = True) -> Path:
    """A finished run folder ``root/runs/tiny`` (and ``root/models/tiny``'s name in its summary)."""
    run = root / "runs" / "tiny"
    references = {"teacher": logits_for(predictions(TEACHER_WRONG)), "student": logits_for(predictions(STUDENT_WRONG))}
    for name, model, runtime, fmt, method, wrong, ms1, ms8, size in ARTIFACTS:
        folder = run / "artifacts" / name
        folder.mkdir(parents=True)
        report = validate(None, TEST, None, reference=references[model], gate=GateConfig(), artifact=name,
                          logits=logits_for(predictions(wrong))).to_dict()
        report.update(runtime=runtime, model=model, teacher_agreement=0.95)
        (folder / "validation.json").write_text(json.dumps({"key": {}, "report": report}))
        (folder / "benchmark.json").write_text(json.dumps({"key": {}, "result": bench_record(runtime, ms1, ms8, size)}))
        if fmt == "torch":
            continue
        export = {"key": {}, "variant": name, "format": fmt, "files": ["model.onnx"], "runtime": runtime,
                  "metadata": {"labels": json.dumps(LABELS), "backbone": "tiny", "producer": "edgetl"}}
        if method:
            export["method"] = method
            export["settings"] = {"format": "qdq", "types": "u8s8"}
        if method == "onnx-int8-static-acc" and quantization:
            export["settings"] |= {
                "validation_samples": 60, "min_agreement": 0.995, "max_accuracy_drop_points": 1.0,
                "all_int8_agreement": 0.95, "all_int8_accuracy_drop": 1.5, "agreement": 1.0, "accuracy_drop": 0.0,
                "fp32_layers": LAYERS[:2], "ranked_layers": len(LAYERS), "search_seconds": 2.0,
                "layer_costs": [{"layer": layer, "agreement": 0.9 + 0.02 * i, "mean_kl": 0.1 / (i + 1)}
                                for i, layer in enumerate(LAYERS)]}
        (folder / "export.json").write_text(json.dumps(export))
    if training:
        for rel, stages in (("finetune/metrics.json", [("probe", 0, 4), ("stage0", 3, 2), ("stage1", 9, 3)]),
                            ("distill/metrics.json", [("distill", None, 4)]),
                            ("distill/baseline/metrics.json", [("baseline", None, 4)])):
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            (run / rel).write_text(json.dumps(history(stages)))
    (run / "recipe.toml").write_text("[run]\nname = \"tiny\"\n\n[quantize]\nmin_agreement = 0.995\nmax_accuracy_drop = "
                                     "1.0\n\n[validate.gate]\nmax_accuracy_drop = 1.0\nmin_agreement = 0.99\n"
                                     "max_abs_logit_diff = 0.0\nmin_accuracy = 0.0\n")
    (run / "race.json").write_text(json.dumps({"key": {}, "result": {
        "batch_size": 1, "rounds": 3,
        "times_ms": {DEFAULT: [0.4, 0.41, 0.42], "student-onnx-fp32": [0.47, 0.5, 0.46]}}}))
    summary = {
        "run": "tiny", "task": "image-classification", "probe_test_accuracy": 80.0, "test_accuracy": 90.0,
        "transfer": {"probe": 80.0, "finetuned": 90.0, "scratch": None, "beat_probe": True, "beat_scratch": None,
                     "negative_transfer": False, "verdict": "fine-tuning beat the linear probe by 10.00 points"},
        "distill": {"student": "tiny_slim", "teacher": "tiny", "student_test_accuracy": 93.33,
                    "teacher_test_accuracy": 90.0, "relative_accuracy": 1.037, "baseline_test_accuracy": 91.67},
        "variants": [{"variant": name, "batch": batch} for name, *_ in ARTIFACTS for batch in (1, 8)],
        "decisions": DECISIONS, "default_artifact": DEFAULT, "bundle": "models/tiny", "archive": "models/tiny.tar.gz",
        "stage_seconds": {"finetune": 10.0, "bench": 2.5}, "seconds": 12.5,
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def sections(html: str) -> dict[str, str]:
    """The page's figure sections by id."""
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', html, flags=re.DOTALL))


def target_result(name: str, ms: float, *, passed: bool = True, emulated: bool = False) -> TargetResult:
    """A target's result as ``bench_target`` returns it: the default artifact timed at batch 1 and validated on
    the device."""
    verdict = validate(None, TEST, None, reference=logits_for(predictions(STUDENT_WRONG)), gate=GateConfig(),
                       artifact=DEFAULT, logits=logits_for(predictions(STUDENT_WRONG if passed else [0, 1, 2, 3, 4])))
    stats = summarize(np.linspace(ms * 0.9, ms * 1.1, 31) * 1e6, batch_size=1, stopped_by="ci").to_dict()
    runtime = RuntimeResult(ORT, "ok", DEFAULT, 0.2, stats=[stats], validation=verdict.to_dict(),
                            model_size_bytes=1_750_000)
    missing = RuntimeResult(OV, "not available: no such device")
    return TargetResult(name, "local", emulated=emulated, runtimes=[runtime, missing])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("report"))


# -- the record -----------------------------------------------------------------------------------------------
def test_the_record_is_plain_json_with_every_part(run: Path):
    record = collect(run)
    assert json.loads(json.dumps(record)) == record
    assert record["default_artifact"] == DEFAULT and record["labels"] == LABELS
    assert [a["name"] for a in record["artifacts"]] == [name for name, *_ in ARTIFACTS]  # the run table's order
    default = next(a for a in record["artifacts"] if a["name"] == DEFAULT)
    assert default["status"] == "shipped" and default["default"] and default["size_mb"] == 1.75
    assert [s["batch_size"] for s in default["latency"]] == [1, 8]
    assert default["latency"][0]["median_ms"] == pytest.approx(0.41)
    failed = next(a for a in record["artifacts"] if a["name"] == "onnx-int8-static")
    assert failed["passed"] is False and any("agreement" in reason for reason in failed["reasons"])
    assert record["confusion"]["artifact"] == DEFAULT
    assert record["confusion"]["matrix"] == [[19, 1, 0], [0, 19, 1], [2, 0, 18]]
    assert set(record["training"]) == {"finetune", "distill", "no_teacher"}
    assert record["quantization"][0]["fp32_layers"] == LAYERS[:2]
    assert record["gate"]["min_agreement"] == 0.99 and record["quantize_gate"]["min_agreement"] == 0.995
    assert record["race"]["median_ms"][DEFAULT] == pytest.approx(0.41)
    assert record["environment"]["cpu"] and record["environment"]["source"].startswith("the machine that ran")
    assert all("confusion" not in a and "environment" not in a for a in record["artifacts"])  # kept once


def test_worst_classes_come_first_with_what_they_are_taken_for():
    rows = class_errors({"matrix": [[19, 1, 0], [0, 20, 0], [5, 0, 15]]}, ["a", "b", "c"])
    assert [r["class"] for r in rows] == ["c", "a", "b"]
    assert rows[0]["recall"] == 75.0 and rows[0]["confused_with"] == "a" and rows[0]["confused_count"] == 5
    assert rows[1]["precision"] == pytest.approx(100 * 19 / 24)


def test_the_pareto_frontier_keeps_only_points_nothing_beats():
    points = [(1.0, 90.0), (2.0, 89.0), (3.0, 92.0), (0.5, 80.0), (3.0, 91.0), (5.0, 92.0)]
    assert _frontier(points) == [(0.5, 80.0), (1.0, 90.0), (3.0, 92.0)]


# -- the page -------------------------------------------------------------------------------------------------
def test_a_run_report_has_every_figure_and_marks_the_shipped_artifact(run: Path):
    path = write_report(run)
    assert path == run / "report.html" and (run / "report.json").is_file()
    assert json.loads((run / "report.json").read_text())["default_artifact"] == DEFAULT
    html = path.read_text()
    found = sections(html)
    assert list(found) == list(TITLES)
    for key, title in TITLES.items():
        assert f"<h2>{title.replace('&', '&amp;')}</h2>" in found[key], key
    assert html.count("<svg") == 6  # every figure but the targets', which has no data in a run without bench --target
    assert "no target results" in found["targets"] and "<svg" not in found["targets"]
    assert not re.search(r"\bsrc=|href=\"(?!#|data:)|<script|<link|@import", html)  # nothing fetched, nothing runs
    # the shipped default is marked in the trade-off figures, the throughput bars and the table
    assert f"SHIPPED (default): {DEFAULT}" in found["accuracy-latency"]
    assert f"SHIPPED (default): {DEFAULT}" in found["accuracy-size"]
    assert "shipped: student-openvino-fp32" in found["accuracy-latency"]
    assert f"★ {DEFAULT} (shipped, default)" in found["throughput"]
    assert re.search(rf'<tr class="default"><td>{DEFAULT}</td>', html)
    # the gate is drawn: each model's FP32 accuracy less 1 point
    assert "teacher gate: ≥ 89.00%" in found["accuracy-latency"] and "student gate: ≥ 92.33%" in found[
        "accuracy-latency"]
    # the decisions and verdicts, escaped
    assert "&lt;b&gt;1.15×&lt;/b&gt;" in html and "<b>1.15×</b>" not in html
    assert "Pull&lt;over&gt; &amp; co" in html and "Pull<over>" not in html
    assert "fine-tuning beat the linear probe by 10.00 points" in html
    assert "distilled tiny_slim: 93.33% test accuracy (103.7% of the teacher's 90.00%); without the teacher " \
           "91.67%" in html
    # the sensitivity ranking names the layers, the FP32 ones listed; the worst class is in the table
    assert "/blocks.2/Conv" in found["sensitivity"] and "kept in FP32" in found["sensitivity"]
    assert "<td>2</td><td><code>/blocks.0/Conv</code></td>" in found["sensitivity"]
    assert re.search(r"<td>Pull&lt;over&gt; &amp; co</td><td class=\"num\">20</td><td class=\"num\">90.0</td>",
                     found["confusion"])
    # ids are unique across the inline SVGs
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    assert "AMD" in html or "Intel" in html or "cpu" in html.lower()  # the environment table


def test_missing_data_gives_a_note_not_a_crash(tmp_path: Path):
    run = make_run(tmp_path, training=False, quantization=False)
    for folder in (run / "artifacts").iterdir():  # validated before confusion matrices were recorded
        record = json.loads((folder / "validation.json").read_text())
        record["report"].pop("confusion")
        (folder / "validation.json").write_text(json.dumps(record))
    (run / "race.json").unlink()
    found = sections(write_report(run).read_text())
    assert list(found) == list(TITLES)
    assert all("<svg" in found[key] for key in ("accuracy-latency", "accuracy-size", "throughput"))
    for key, note in (("training", "no training history"), ("sensitivity", "no accuracy-aware INT8 search"),
                      ("confusion", "no confusion matrix"), ("targets", "no target results")):
        assert "<svg" not in found[key] and note in found[key], key


def test_without_layer_costs_the_search_shows_its_agreement_and_says_why(tmp_path: Path):
    run = make_run(tmp_path)
    export_path = run / "artifacts" / DEFAULT / "export.json"
    export = json.loads(export_path.read_text())
    del export["settings"]["layer_costs"]
    export_path.write_text(json.dumps(export))
    found = sections(write_report(run).read_text())
    assert "<svg" in found["sensitivity"] and "did not record each layer" in found["sensitivity"]
    assert "all layers INT8" in found["sensitivity"] and "<code>/stem/Conv</code>" in found["sensitivity"]


def test_unlabelled_runs_plot_agreement(tmp_path: Path):
    record = collect(make_run(tmp_path))
    for artifact in record["artifacts"]:
        artifact["accuracy"] = artifact["reference_accuracy"] = None
    found = sections(render_html(record))
    assert "<h2>Agreement vs latency (batch 1)</h2>" in found["accuracy-latency"]
    assert "gate: agreement ≥ 99.0%" in found["accuracy-latency"]


# -- bundles and their target results ------------------------------------------------------------------------
def test_a_bundle_report_merges_its_saved_target_results(run: Path, tmp_path: Path):
    bundle = tmp_path / "models" / "tiny"
    (bundle / "targets").mkdir(parents=True)
    (bundle / "manifest.json").write_text(json.dumps({"files": {}, "default_artifact": DEFAULT}))
    (bundle / "report.json").write_text(json.dumps(collect(run)))
    for name, ms, passed in (("pi", 3.3, True), ("local-cpu-1core", 0.8, False)):
        result = target_result(name, ms, passed=passed, emulated=name != "pi")
        (bundle / "targets" / f"{name}.json").write_text(json.dumps(
            {"bundle": str(bundle), "created": "2026-12-04T04:00:00+00:00", "target": result.to_dict(),
             "choice": {"artifact": DEFAULT, "runtime": ORT, "batch_size": 1, "median_ms": ms, "validated": True}}))
    path = write_report(bundle)
    assert path == bundle / "report.html"
    html = path.read_text()
    found = sections(html)
    assert "<svg" in found["targets"] and html.count("<svg") == 7
    assert "pi, onnxruntime:CPUExecutionProvider, batch 1" in found["targets"]
    assert "this host, onnxruntime:CPUExecutionProvider, batch 1" in found["targets"]
    table = html.split("<h2>Per target</h2>")[1]
    assert re.search(r"<td>pi</td><td>onnxruntime:CPUExecutionProvider</td><td>student-onnx-int8-static-acc</td>"
                     r"<td>1</td><td class=\"num\">3.3</td><td class=\"num\">0.41</td><td class=\"num\">8.05</td>"
                     r"<td>pass \(100.00%\)</td>", table)
    assert "local-cpu-1core (emulated)" in table and "FAIL" in table and "not available: no such device" in table
    assert "pi: use student-onnx-int8-static-acc on onnxruntime:CPUExecutionProvider (3.3 ms at batch 1)" in table
    # a bundle that checksums its own report.html keeps it: the new page goes beside the folder
    (bundle / "manifest.json").write_text(json.dumps({"files": {"report.html": {}}, "default_artifact": DEFAULT}))
    assert write_report(bundle) == tmp_path / "models" / "tiny.report.html"


def test_bench_saves_each_targets_result_in_the_bundle_and_report_draws_it(tmp_path: Path):
    from test_targets import make_bundle, quick

    from edgetl.bench.remote import bench_targets
    from edgetl.bundle import verify

    bundle = make_bundle(tmp_path)
    archive = bundle.parent / f"{bundle.name}.tar.gz"
    bench_targets(archive, [quick("local-cpu", batch_sizes=[1], runtimes=[ORT])])  # saved in the folder beside it
    saved = json.loads((bundle / "targets" / "local-cpu.json").read_text())
    assert saved["target"]["target"] == "local-cpu" and saved["choice"]["runtime"] == ORT
    assert saved["target"]["runtimes"][0]["validation"]["passed"] is True
    path = write_report(bundle)  # a bundle without report.json: its manifest, and the saved target
    html = path.read_text()
    assert "carries no report.json" in html
    assert re.search(r"<td>local-cpu</td><td>onnxruntime:CPUExecutionProvider</td><td>onnx-fp32</td><td>1</td>", html)
    assert "<svg" in sections(html)["targets"]
    report = verify(bundle)  # targets/ and the page are not in the manifest, and verify lets them be
    assert report.ok, report.problems
    (bundle / "stray.txt").write_text("x")
    assert verify(bundle).problems == ["stray.txt: unlisted file (not in the manifest)"]
    bare = tmp_path / "moved"
    shutil.copy(archive, tmp_path / "moved.tar.gz")  # no bundle folder beside this archive: nothing saved anywhere
    bench_targets(tmp_path / "moved.tar.gz", [quick("local-cpu", batch_sizes=[1], runtimes=[ORT])])
    assert not bare.exists()
    assert write_report(tmp_path / "moved.tar.gz") == tmp_path / "moved.report.html"


# -- the command and the errors ------------------------------------------------------------------------------
def test_report_command_prints_the_path(run: Path, tmp_path: Path):
    from edgetl.cli.report_commands import report

    app = typer.Typer()
    app.command()(report)
    app.command("other")(lambda: None)  # two commands: the app keeps `report` as a subcommand
    out = tmp_path / "page.html"
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"report: {out}" and out.read_text().startswith("<!DOCTYPE html>")


def test_a_folder_that_is_neither_run_nor_bundle_is_refused(tmp_path: Path):
    with pytest.raises(EdgetlError, match="neither a run folder"):
        write_report(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(EdgetlError, match="not a bundle archive"):
        write_report(tmp_path / "notes.txt")


def test_without_matplotlib_the_error_says_what_to_install(run: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(EdgetlError, match="pip install matplotlib"):
        render_html(collect(run))


def test_validation_records_the_confusion_matrix_only_with_labels():
    report = validate(None, TEST, None, logits=logits_for(predictions([0, 59])))
    assert report.confusion == [[19, 1, 0], [0, 20, 0], [1, 0, 19]]
    unlabelled = validate(None, Labelled(np.full(60, -1)), None, logits=logits_for(predictions([])))
    assert unlabelled.confusion is None and unlabelled.accuracy is None
