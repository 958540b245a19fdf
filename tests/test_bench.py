"""The latency benchmark: statistics on known arrays, the stopping rules on a fake clock, real
onnxruntime and OpenVINO runs of a tiny MatMul+Add graph, model sizes, the table, and light imports."""

from __future__ import annotations

import io
import itertools
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgetl.bench import (
    BenchResult,
    LatencyStats,
    benchmark,
    environment,
    format_table,
    measure,
    median_ci,
    median_ci_ranks,
    model_size_bytes,
    print_table,
    relative_ci,
    rows_from_result,
    runtime_settings,
    summarize,
)
from edgetl.bench.environment import RELEVANT_CPU_FLAGS
from edgetl.errors import EdgetlError
from edgetl.recipe import BenchConfig
from edgetl.runners import InputSpec, open_runner

ROOT = Path(__file__).resolve().parents[1]
FEATURES, CLASSES = 64, 10
RUNTIMES = ["onnxruntime:CPUExecutionProvider", "openvino:CPU"]


# -- fakes and fixtures --------------------------------------------------------------------


class FakeClock:
    """Integer nanoseconds that move only when the fake runner "computes": timings are exact."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


class FakeRunner:
    """A Runner whose every predict takes the next latency from a cycle, on the fake clock."""

    name = "fake:cpu"

    def __init__(self, clock: FakeClock, latencies_ms: list[float], shape: tuple[int | None, ...] = (None, 4)):
        self.clock = clock
        self.latencies_ns = itertools.cycle([int(ms * 1e6) for ms in latencies_ms])
        self.input_spec = InputSpec(shape)
        self.shapes: list[tuple[int, ...]] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.shapes.append(batch.shape)
        self.clock.now += next(self.latencies_ns)
        return np.zeros((batch.shape[0], 2), np.float32)

    def close(self) -> None:
        pass


class SleepRunner:
    """A real-clock runner that sleeps a fixed time per call."""

    name = "sleep:cpu"
    input_spec = InputSpec((None, 4))

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def predict(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        return batch

    def close(self) -> None:
        pass


def _matmul_add_model():
    """Y = X @ W + B with a dynamic batch axis, built with the onnx helper API (no torch)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((FEATURES, CLASSES)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(CLASSES).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["XW"]), helper.make_node("Add", ["XW", "B"], ["Y"])],
        "matmul_add",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", CLASSES])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime and OpenVINO we support
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    import onnx

    path = tmp_path_factory.mktemp("onnx") / "matmul_add.onnx"
    onnx.save(_matmul_add_model(), path)
    return path


@pytest.fixture(scope="module")
def ir_path(onnx_path: Path, tmp_path_factory) -> Path:
    import openvino as ov

    path = tmp_path_factory.mktemp("ir") / "matmul_add.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(path), compress_to_fp16=False)
    return path


def _model_for(runtime: str, onnx_path: Path, ir_path: Path) -> Path:
    return ir_path if runtime.startswith("openvino") else onnx_path


# -- statistics ----------------------------------------------------------------------------


def test_summarize_matches_numpy():
    samples_ns = np.random.default_rng(1).lognormal(mean=14.0, sigma=0.3, size=501).astype(np.int64)
    stats = summarize(samples_ns, batch_size=8, stopped_by="time")
    ms = samples_ns / 1e6
    assert stats.runs == 501
    assert stats.median_ms == pytest.approx(np.median(ms))
    assert stats.mean_ms == pytest.approx(ms.mean())
    assert stats.p90_ms == pytest.approx(np.percentile(ms, 90))
    assert stats.p99_ms == pytest.approx(np.percentile(ms, 99))
    assert stats.std_ms == pytest.approx(ms.std(ddof=1))
    assert (stats.min_ms, stats.max_ms) == (pytest.approx(ms.min()), pytest.approx(ms.max()))
    assert stats.throughput == pytest.approx(8 * 1000 / np.median(ms))
    assert stats.min_ms < stats.median_ms < stats.p90_ms < stats.p99_ms < stats.max_ms


def test_median_ci_ranks_match_the_binomial_table():
    # Textbook values: n=100 -> ranks 40 and 61 (1-based); n=6 is the smallest sample with a 95% interval.
    assert median_ci_ranks(100) == (39, 60)
    assert median_ci_ranks(6) == (0, 5)
    assert median_ci_ranks(5) is None
    lo, hi = median_ci_ranks(1_000_000)
    assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(1_000_000) / 2, rel=0.01)


def test_median_ci_covers_the_true_median_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    trials = rng.exponential(size=(4000, 31))  # skewed, like latencies; true median ln 2
    lo, hi = median_ci_ranks(31)
    ordered = np.sort(trials, axis=1)
    coverage = np.mean((ordered[:, lo] <= math.log(2)) & (math.log(2) <= ordered[:, hi]))
    assert 0.95 - 0.01 <= coverage <= 0.995  # at least nominal, and not a needlessly wide interval
    assert median_ci(trials[0]) == (ordered[0, lo], ordered[0, hi])


def test_relative_ci_shrinks_with_more_samples():
    samples = np.random.default_rng(3).lognormal(mean=0.0, sigma=0.2, size=10_000)
    small, large = relative_ci(samples[:100]), relative_ci(samples)
    assert large < small / 5  # ~ 1/sqrt(n): 10x for 100x the samples
    assert relative_ci(np.full(50, 3.0)) == 0.0
    assert relative_ci(samples[:5]) == math.inf


def test_latency_stats_to_dict_is_strict_json():
    stats = summarize([1_000_000] * 3, batch_size=1, stopped_by="runs")  # too few runs for an interval
    assert stats.median_rel_ci == math.inf
    data = stats.to_dict()
    assert data["median_rel_ci"] is None
    json.dumps(data, allow_nan=False)  # raises on inf/nan


# -- the measuring loop on a fake clock ----------------------------------------------------


def test_measure_stops_on_ci_with_a_constant_latency():
    clock = FakeClock()
    runner = FakeRunner(clock, [2.0])
    stats = measure(runner, batch_size=4, warmup=3, min_runs=20, max_seconds=60, clock=clock)
    assert stats.stopped_by == "ci"
    assert stats.runs == 20 and len(runner.shapes) == 3 + 20
    assert set(runner.shapes) == {(4, 4)}  # None in the spec became the batch size
    assert stats.median_ms == 2.0 and stats.median_rel_ci == 0.0
    assert stats.throughput == pytest.approx(4 / 0.002)
    assert stats.first_run_ms == 2.0


def test_measure_stops_on_time_budget_when_the_median_never_settles():
    clock = FakeClock()
    runner = FakeRunner(clock, [1.0, 3.0])  # bimodal: the median's interval spans both modes
    # max_runs only turns a broken budget into a failure instead of an endless loop.
    stats = measure(runner, batch_size=1, warmup=2, min_runs=10, max_seconds=0.1, max_runs=1000, clock=clock)
    assert stats.stopped_by == "time"
    assert stats.runs == 50  # 25 pairs of 1 ms + 3 ms = the 100 ms budget
    assert stats.median_rel_ci > 0.02
    assert stats.timed_seconds == pytest.approx(0.1)


def test_min_runs_outlasts_the_budget_and_max_runs_caps_it():
    clock = FakeClock()
    stats = measure(
        FakeRunner(clock, [1.0, 3.0]), batch_size=1, warmup=0, min_runs=80, max_seconds=0.1, max_runs=1000, clock=clock
    )
    assert (stats.runs, stats.stopped_by) == (80, "runs")
    stats = measure(
        FakeRunner(clock, [1.0, 3.0]), batch_size=1, warmup=0, min_runs=10, max_seconds=60, max_runs=40, clock=clock
    )
    assert (stats.runs, stats.stopped_by) == (40, "runs")


def test_target_rel_ci_zero_never_stops_early():
    clock = FakeClock()
    runner = FakeRunner(clock, [2.0])
    stats = measure(runner, batch_size=1, min_runs=10, max_seconds=0.05, target_rel_ci=0, max_runs=1000, clock=clock)
    assert (stats.runs, stats.stopped_by) == (25, "time")


def test_measure_with_the_real_clock():
    stats = measure(SleepRunner(0.001), batch_size=2, warmup=2, min_runs=20, max_seconds=10, target_rel_ci=0.5)
    assert stats.stopped_by == "ci" and stats.runs == 20
    assert stats.min_ms >= 1.0  # sleep never returns early
    stats = measure(SleepRunner(0.001), batch_size=2, warmup=0, min_runs=5, max_seconds=0.2, target_rel_ci=0)
    assert stats.stopped_by == "time"
    assert 0.2 <= stats.timed_seconds < 2.0
    assert stats.runs <= 200


def test_input_shape_is_required_when_the_spec_knows_only_the_batch_axis():
    clock = FakeClock()
    runner = FakeRunner(clock, [1.0], shape=(None,))  # what the torch runner reports
    with pytest.raises(EdgetlError, match="input_shape"):
        measure(runner, batch_size=2, clock=clock)
    with pytest.raises(EdgetlError, match="input_shape"):  # dynamic spatial axes: no size to guess
        measure(FakeRunner(clock, [1.0], shape=(None, 3, None, None)), batch_size=2, clock=clock)
    measure(runner, batch_size=2, warmup=1, min_runs=6, input_shape=(3, 8, 8), clock=clock)
    assert set(runner.shapes) == {(2, 3, 8, 8)}
    with pytest.raises(EdgetlError, match="first axis"):
        measure(runner, batch_size=2, make_input=lambda n: np.zeros((n + 1, 4), np.float32), clock=clock)


def test_make_input_is_what_gets_timed():
    clock = FakeClock()
    runner = FakeRunner(clock, [1.0])
    measure(runner, batch_size=3, warmup=1, min_runs=6, make_input=lambda n: np.ones((n, 7), np.float32), clock=clock)
    assert set(runner.shapes) == {(3, 7)}


# -- real runtimes ---------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_measure_a_real_model(runtime: str, onnx_path: Path, ir_path: Path):
    runner = open_runner(_model_for(runtime, onnx_path, ir_path), runtime, threads=1)
    try:
        stats = measure(runner, batch_size=4, warmup=3, min_runs=15, max_seconds=0.5)
        settings = runtime_settings(runner)
    finally:
        runner.close()
    assert stats.runs >= 15 and stats.batch_size == 4
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.throughput == pytest.approx(4 * 1000 / stats.median_ms)
    assert stats.stopped_by in {"ci", "time", "runs"}
    assert stats.peak_rss_mb is not None and stats.peak_rss_mb > 10
    assert stats.first_run_ms is not None and stats.first_run_ms > 0
    # The settings the runtime really chose are recorded, not just what was asked for.
    if runtime.startswith("openvino"):
        assert settings["inference_num_threads"] == 1
        assert settings["inference_precision_hint"] in {"f32", "bf16", "f16"}
    else:
        assert settings["intra_op_num_threads"] == 1
        assert settings["providers"] == ["CPUExecutionProvider"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_benchmark_a_real_model(runtime: str, onnx_path: Path, ir_path: Path):
    path = _model_for(runtime, onnx_path, ir_path)
    config = BenchConfig(threads=1, batch_sizes=[1, 4], warmup=2, min_runs=10, max_seconds=0.3)
    runner = open_runner(path, runtime, threads=config.threads)
    try:
        result = benchmark(
            runner,
            batch_sizes=[1, 4],
            config=config,
            model_path=path,
            open_fn=lambda: open_runner(path, runtime, threads=config.threads),
        )
    finally:
        runner.close()
    assert isinstance(result, BenchResult)
    assert result.runtime == runtime and result.threads == 1
    assert [s.batch_size for s in result.stats] == [1, 4]
    assert all(isinstance(s, LatencyStats) and s.runs >= 10 for s in result.stats)
    expected_size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
    assert result.model_size_bytes == expected_size
    assert result.cold_start_s is not None and result.cold_start_s > 0
    assert result.environment["versions"]["numpy"] == np.__version__
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["stats"][1]["batch_size"] == 4 and data["settings"]["min_runs"] == 10
    assert result.for_batch(4) is result.stats[1]


def test_model_size_includes_the_weight_sidecars(onnx_path: Path, ir_path: Path, tmp_path: Path):
    import onnx

    bin_size = ir_path.with_suffix(".bin").stat().st_size
    assert bin_size >= FEATURES * CLASSES * 4  # the float32 weights live in the .bin
    assert model_size_bytes(ir_path) == ir_path.stat().st_size + bin_size

    external = tmp_path / "external.onnx"
    onnx.save_model(
        _matmul_add_model(), external, save_as_external_data=True, location="external.onnx.data", size_threshold=0
    )
    data_size = (tmp_path / "external.onnx.data").stat().st_size
    assert data_size >= FEATURES * CLASSES * 4
    assert model_size_bytes(external) == external.stat().st_size + data_size
    assert model_size_bytes(onnx_path) == onnx_path.stat().st_size
    with pytest.raises(EdgetlError, match="not found"):
        model_size_bytes(tmp_path / "missing.xml")


# -- environment, table, imports ------------------------------------------------------------


def test_environment_reports_this_machine():
    env = environment()
    assert env["logical_cores"] >= 1 and env["memory_total_mb"] > 0
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(env["cpu_flags"]) <= set(RELEVANT_CPU_FLAGS)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and " avx2" in cpuinfo.read_text():
        assert "avx2" in env["cpu_flags"]
    import onnxruntime

    assert env["versions"]["onnxruntime"] == onnxruntime.__version__


def test_import_and_environment_do_not_import_torch():
    code = (
        "import json, sys\n"
        "import edgetl.bench as bench\n"
        "env = bench.environment()\n"
        "bench.format_table([{'runtime': 'x', 'batch': 1, 'median_ms': 1.0}])\n"
        "print(json.dumps({'torch_loaded': 'torch' in sys.modules, 'versions': env['versions']}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["torch_loaded"] is False
    try:
        import importlib.metadata

        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    assert report["versions"]["torch"] == torch_version  # known from metadata, without importing it


def _render(rows: list[dict]) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=240, record=True, color_system=None)
    print_table(rows, title="bench", console=console)
    return console.export_text()


def test_table_shows_known_optional_and_extra_columns():
    rows = [
        {"variant": "fp32", "runtime": "openvino:CPU", "batch": 8, "accuracy": 91.25, "median_ms": 1.23456,
         "p90_ms": 1.5, "p99_ms": 2.0, "throughput": 6480.2, "size_mb": 4.5, "median_rel_ci": 0.015,
         "agreement": 0.9987},
        {"variant": "int8", "runtime": "openvino:CPU", "batch": 8, "accuracy": None, "median_ms": 250.0,
         "p90_ms": 260.0, "p99_ms": 300.0, "throughput": 32.0, "size_mb": 1.2, "median_rel_ci": math.inf},
    ]
    table = format_table(rows)
    headers = [str(c.header) for c in table.columns]
    assert headers == ["variant", "runtime", "batch", "accuracy %", "median ms", "p90 ms", "p99 ms", "items/s",
                       "size MB", "spread", "agreement"]
    text = _render(rows)
    for shown in ("91.25", "1.235", "250.0", "6,480", "±1.5%", "0.9987", "int8"):
        assert shown in text
    assert "inf" not in text  # undefined values print as "-"

    without_accuracy = [{k: v for k, v in row.items() if k != "accuracy"} for row in rows]
    assert "accuracy %" not in [str(c.header) for c in format_table(without_accuracy).columns]


def test_rows_from_result_feed_the_table():
    stats = [summarize([1_000_000, 1_100_000, 1_200_000] * 4, batch_size=b, stopped_by="ci") for b in (1, 8)]
    result = BenchResult(runtime="onnxruntime:CPUExecutionProvider", threads=2, stats=stats, environment={},
                         model_size_bytes=2_500_000)
    rows = rows_from_result(result, variant="fp32")
    assert [r["batch"] for r in rows] == [1, 8]
    assert rows[1]["throughput"] == pytest.approx(8 / 0.0011)
    assert rows[0]["size_mb"] == 2.5 and rows[0]["variant"] == "fp32"
    assert "2.50" in _render(rows)


def test_table_shortens_millions_of_items_per_second():
    assert "1.32M" in _render([{"runtime": "onnxruntime:CPUExecutionProvider", "batch": 64, "throughput": 1_320_000.0}])
