"""Progress of the long stages (edgetl.progress): a line per step in a log, a rich bar on a terminal, nothing with
--quiet; and the stages' own loops reporting through it (the accuracy-aware layer search, the benchmark's batch
sizes, the race's rounds)."""

from __future__ import annotations

import io
import itertools
import re
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console

from edgetl import progress
from edgetl.progress import steps, substeps

from conftest import fit_briefly, pattern_images


def plain() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, width=120)


def terminal() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=120)


@pytest.fixture
def one_second_steps(monkeypatch):
    """A clock that moves one second per reading: every step takes 1.0 s."""
    ticks = itertools.count()
    monkeypatch.setattr(progress, "_now", lambda: float(next(ticks)))


def test_a_log_gets_one_line_per_step(one_second_steps):
    lines: list[str] = []
    console = plain()
    with steps(3, "export", log=lines.append, console=console) as bar:
        for name in ["onnx-fp32", "openvino-fp32", "student-onnx-fp32"]:
            bar.show(f"{name} ...")
            bar.advance(name)
    assert lines == ["export 1/3 onnx-fp32 (1.0 s)", "export 2/3 openvino-fp32 (1.0 s)",
                     "export 3/3 student-onnx-fp32 (1.0 s)"]
    assert console.file.getvalue() == ""  # no bar drawn into a log


def test_a_long_job_logs_every_kth_step_and_always_the_last(one_second_steps):
    lines: list[str] = []
    with steps(250, "quantize", log=lines.append, console=plain()) as bar:
        for index in range(250):
            bar.advance(f"conv_{index}")
    assert len(lines) <= progress.MAX_LINES
    assert lines[0] == "quantize 3/250 conv_2 (1.0 s)" and lines[-1] == "quantize 250/250 conv_249 (1.0 s)"


def test_reused_steps_move_the_count_but_write_no_line(one_second_steps):
    """A rerun reuses its records: those steps count, and only the work done gets lines."""
    lines: list[str] = []
    with steps(4, "validate", log=lines.append, console=plain()) as bar:
        for name, reused in [("a", True), ("b", False), ("c", True), ("d", True)]:
            bar.advance(name, reused=reused)
    assert bar.done == 4 and lines == ["validate 2/4 b (1.0 s)"]


def test_quiet_prints_nothing_at_any_depth(capsys, one_second_steps):
    lines: list[str] = []
    with steps(2, "quantize", enabled=False, log=lines.append, console=terminal()) as bar:
        for name in ["a", "b"]:
            with substeps(3, "layer") as inner:
                for _ in range(3):
                    inner.advance("conv")
            bar.advance(name)
    assert lines == [] and capsys.readouterr() == ("", "")


def test_substeps_report_under_the_open_stage_and_are_silent_alone(one_second_steps):
    lines: list[str] = []
    with substeps(2, "alone") as alone:  # a library call (quantize_file from Python): no bar is open
        alone.advance("x")
    with steps(1, "quantize", log=lines.append, console=plain()) as bar:
        with substeps(2, "onnx-int8-static-acc: layer") as layers:
            layers.advance("conv_1 agreement 98.00%")
            layers.advance("conv_2 agreement 100.00%")
        bar.advance("onnx-int8-static-acc")
    assert lines == ["quantize: onnx-int8-static-acc: layer 1/2 conv_1 agreement 98.00% (1.0 s)",
                     "quantize: onnx-int8-static-acc: layer 2/2 conv_2 agreement 100.00% (1.0 s)",
                     "quantize 1/1 onnx-int8-static-acc (5.0 s)"]


def test_a_terminal_gets_a_rich_bar_and_no_log_lines():
    lines: list[str] = []
    console = terminal()
    with steps(2, "bench", log=lines.append, console=console) as bar:
        for name in ["onnx-fp32 batch 1", "onnx-fp32 batch 8"]:
            bar.show(f"{name} ...")
            with substeps(3, "inner") as inner:
                for _ in range(3):
                    inner.advance()
            bar.advance(name)
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", console.file.getvalue())
    assert lines == [] and "bench" in drawn and "2/2" in drawn and "onnx-fp32 batch 8" in drawn
    assert "3/3" in drawn  # the sub-job's bar was drawn under the stage's


def test_an_early_end_fills_the_bar_to_what_was_done():
    console = terminal()
    with steps(5, "search", log=print, console=console) as bar:
        bar.advance()
        bar.advance()
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", console.file.getvalue())
    assert "2/5" in drawn and "2/2" in drawn.rsplit("2/5", 1)[1]  # drawn full at the end, not left at 2/5


def test_training_bar_is_the_shared_construction():
    from edgetl.train.loop import progress_bar, ticker

    console = terminal()
    bar = progress.bar("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:5.1f}%", console=console)
    assert [type(c).__name__ for c in bar.columns] == [type(c).__name__ for c in progress_bar(True).columns]
    with bar:
        ticker(bar, "probe", 2)(0.5, 90.0)
    assert "loss 0.5000" in console.file.getvalue()


# -- the stages' loops report through it ------------------------------------------------------------------------


def test_a_stage_step_that_rewrote_no_record_writes_no_line(tmp_path, one_second_steps):
    """A rerun: onnx-fp32's record was fresh and kept, openvino-fp32's was made again (replaced whole)."""
    from edgetl._io import write_json
    from edgetl.pipeline.stages import _each

    ctx = SimpleNamespace(artifact_dir=lambda artifact: tmp_path / artifact.name)
    artifacts = [SimpleNamespace(name=name) for name in ("onnx-fp32", "openvino-fp32")]
    for artifact in artifacts:
        write_json(ctx.artifact_dir(artifact) / "export.json", {"made": "earlier"})

    def work(artifact):
        if artifact.name == "openvino-fp32":
            write_json(ctx.artifact_dir(artifact) / "export.json", {"made": "now"})
        return artifact.name

    lines: list[str] = []
    with steps(2, "export", log=lines.append, console=plain()) as bar:
        assert _each(ctx, bar, artifacts, work, "export.json", "skipped.json") == {
            "onnx-fp32": "onnx-fp32", "openvino-fp32": "openvino-fp32"}
    assert bar.done == 2 and lines == ["export 2/2 openvino-fp32 (1.0 s)"]


class CountingRunner:
    name = "fake:cpu"

    def __init__(self):
        from edgetl.runners import InputSpec

        self.input_spec = InputSpec((None, 4))
        self.closed = False

    def predict(self, batch):
        return np.asarray(batch).sum()

    def close(self):
        self.closed = True


def test_benchmark_reports_each_batch_size_as_it_is_measured():
    from edgetl.bench import benchmark
    from edgetl.settings import BenchConfig

    seen: list[tuple[int, float]] = []
    config = BenchConfig(threads=1, batch_sizes=[4, 1, 2], warmup=1, min_runs=3, max_seconds=0.001)
    result = benchmark(CountingRunner(), config=config, on_measured=lambda s: seen.append((s.batch_size, s.median_ms)))
    assert seen == [(s.batch_size, s.median_ms) for s in result.stats] and [b for b, _ in seen] == [4, 1, 2]


def test_the_race_reports_round_n_of_n(tmp_path):
    from edgetl.pipeline.race import race
    from edgetl.recipe import load_recipe

    config = load_recipe(None, ["bench.race_rounds=6", "bench.race_calls=1", "bench.batch_sizes=[1]",
                                "bench.warmup=1"]).bench
    lines: list[str] = []
    runners: list[CountingRunner] = []

    def open_(artifact, threads):
        runners.append(CountingRunner())
        return runners[-1], None

    ctx = SimpleNamespace(
        recipe=SimpleNamespace(bench=config), open=open_,
        task=SimpleNamespace(bench_setup=lambda ctx, model, runner: (runner, {}, {})),
        steps=lambda total, description: steps(total, description, log=lines.append, console=plain()))
    candidates = [SimpleNamespace(name=name, model="teacher") for name in ("onnx-fp32", "openvino-fp32")]
    result = race(ctx, candidates)
    assert {k: len(v) for k, v in result["times_ms"].items()} == {"onnx-fp32": 6, "openvino-fp32": 6}
    assert [line.split(" (")[0] for line in lines] == [f"race round {n}/6" for n in range(1, 7)]
    assert all(runner.closed for runner in runners)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A tiny CNN fitted to the band patterns and exported to ONNX, with its train and test images."""
    import torch

    from edgetl.backbones import create_model
    from edgetl.export import export_onnx
    from edgetl.preprocess import ImagePreprocess

    preprocess = ImagePreprocess(image_size=32, channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    torch.manual_seed(0)
    train, test = pattern_images(40, seed=1), pattern_images(20, seed=2)
    model = fit_briefly(create_model("tiny_convnet", num_classes=3, image_size=32, weights=None), preprocess, train)
    path = tmp_path_factory.mktemp("progress") / "model.onnx"
    export_onnx(model.eval(), path, input_shape=(3, 32, 32), metadata={"labels": train.classes})
    return path, preprocess, train, test


def test_the_accuracy_aware_search_reports_layer_n_of_n(tiny_onnx, tmp_path):
    """Calibrated 20x too dim, all-INT8 fails the strict gate, so the search ranks every layer (one line each) and
    then bisects how many stay FP32."""
    from edgetl.quantize import ValidationSet, calibration_images, quantize_file
    from edgetl.recipe import QuantizeConfig

    path, preprocess, train, test = tiny_onnx
    config = QuantizeConfig(calibration_size=48, min_calibration_size=8, validation_size=60, min_agreement=1.0,
                            max_accuracy_drop=0.0)
    lines: list[str] = []
    with steps(1, "quantize", log=lines.append, console=plain()) as bar:
        info = quantize_file(path, "onnx-int8-static-acc", tmp_path, config=config,
                             calibration=calibration_images(train, preprocess, config.calibration_size) * 0.05,
                             validation=ValidationSet(test, preprocess))
        bar.advance("onnx-int8-static-acc")
    ranked = info.settings["ranked_layers"]
    assert ranked > 1 and info.settings["fp32_layers"]
    layer_lines = [line for line in lines if line.startswith("quantize: onnx-int8-static-acc: layer ")]
    assert [re.search(r"layer (\d+/\d+)", line)[1] for line in layer_lines] == [f"{n}/{ranked}" for n in
                                                                                range(1, ranked + 1)]
    assert "agreement" in layer_lines[0]
    search = [line for line in lines if line.startswith("quantize: onnx-int8-static-acc: FP32 layers ")]
    assert search and "kept: pass" in search[0]  # every candidate layer in FP32 passes first
    assert lines[-1].startswith("quantize 1/1 onnx-int8-static-acc (")
