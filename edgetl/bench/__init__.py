"""Local latency benchmark: warm-up, timed runs until the median is stable or the budget ends,
statistics with a distribution-free confidence interval, machine facts, and a printable table.

Needs numpy and a runtime only (no torch, and rich only to print), so the device agent can use it.

>>> from edgetl.bench import benchmark, print_table, rows_from_result
>>> runner = open_runner("model.onnx", "onnxruntime:CPUExecutionProvider", threads=2)
>>> result = benchmark(runner, batch_sizes=[1, 8], config=BenchConfig(threads=2), model_path="model.onnx")
>>> print_table(rows_from_result(result, variant="fp32"))

On target devices (profiles in ``edgetl/targets/*.toml``; ``edgetl bench BUNDLE --target NAME ...``):

>>> from edgetl.bench.remote import bench_targets
>>> report = bench_targets("models/fmnist.tar.gz", ["local-cpu", "local-cpu-1core", "raspberry-pi-4"])
>>> print_table(report.rows())
"""

from .environment import environment, package_versions, peak_rss_mb, runtime_settings
from .stats import LatencyStats, median_ci, median_ci_ranks, relative_ci, summarize
from .table import format_table, print_table, rows_from_result
from .timing import BenchResult, benchmark, measure, measure_cold_start, model_size_bytes, random_input

__all__ = [
    "BenchResult",
    "LatencyStats",
    "benchmark",
    "environment",
    "format_table",
    "measure",
    "measure_cold_start",
    "median_ci",
    "median_ci_ranks",
    "model_size_bytes",
    "package_versions",
    "peak_rss_mb",
    "print_table",
    "random_input",
    "relative_ci",
    "rows_from_result",
    "runtime_settings",
    "summarize",
]
