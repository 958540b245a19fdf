"""The measuring loop: warm-up, then timed runs until the median is stable or the time budget ends.

Talks only to a Runner, so the same loop times onnxruntime, OpenVINO, torch or a remote device.

>>> runner = open_runner("model.onnx", "onnxruntime:CPUExecutionProvider", threads=2)
>>> stats = measure(runner, batch_size=8)
>>> stats.median_ms, stats.median_rel_ci, stats.stopped_by
>>> result = benchmark(runner, batch_sizes=[1, 8], config=BenchConfig(), model_path="model.onnx")
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..errors import EdgetlError
from .environment import environment, peak_rss_mb, runtime_settings
from .loop import timed_runs
from .stats import CONFIDENCE, LatencyStats, summarize

if TYPE_CHECKING:  # types only: keeps this module loadable with numpy and a runtime alone
    from ..settings import BenchConfig
    from ..runners import InputSpec, Runner

Clock = Callable[[], int]


@dataclass
class BenchResult:
    """Latency of one model on one runtime over several batch sizes, with the facts to reproduce it."""

    runtime: str
    threads: int  # as configured when the runner was opened; runtime_settings says what the runtime chose
    stats: list[LatencyStats]
    environment: dict[str, Any]
    model_path: str | None = None
    model_size_bytes: int | None = None  # the model file plus its weight sidecar (.bin, .onnx.data)
    cold_start_s: float | None = None  # opening a fresh runner plus its first inference
    settings: dict[str, Any] = field(default_factory=dict)  # the measurement policy used
    runtime_settings: dict[str, Any] = field(default_factory=dict)
    created: str = ""  # UTC, ISO 8601

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what the report and the bundle manifest reuse)."""
        data = asdict(self)
        data["stats"] = [s.to_dict() for s in self.stats]
        return data

    def for_batch(self, batch_size: int) -> LatencyStats:
        """The stats measured at ``batch_size``."""
        for stats in self.stats:
            if stats.batch_size == batch_size:
                return stats
        raise KeyError(f"batch size {batch_size} was not measured (measured: {[s.batch_size for s in self.stats]})")


def random_input(
    spec: InputSpec, batch_size: int, input_shape: Sequence[int] | None = None, *, seed: int = 0
) -> np.ndarray:
    """A reproducible random batch for ``spec``: the batch axis set to ``batch_size``.

    ``input_shape`` is the shape of one item without the batch axis, e.g. ``(3, 224, 224)``; it is
    required when the spec does not say (a torch runner knows only its batch axis, or other axes are dynamic).
    """
    if input_shape is not None:
        item_shape = tuple(int(d) for d in input_shape)
    else:
        item_shape = tuple(spec.shape[1:])
        if not item_shape or any(d is None for d in item_shape):
            raise EdgetlError(
                f"the runner's input shape {spec.shape} does not fix one item's shape; "
                "pass input_shape=(C, H, W) (without the batch axis)"
            )
    shape = (batch_size, *item_shape)
    # Generated in the runner's own dtype so that the timed call does not include a cast.
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32).astype(spec.dtype, copy=False)


def measure(
    runner: Runner,
    *,
    batch_size: int,
    warmup: int = 10,
    min_runs: int = 30,
    max_seconds: float = 5.0,
    target_rel_ci: float = 0.02,
    make_input: Callable[[int], np.ndarray] | None = None,
    input_shape: Sequence[int] | None = None,
    max_runs: int | None = None,
    clock: Clock = time.perf_counter_ns,
) -> LatencyStats:
    """Time ``runner.predict`` on one batch until the median is stable or the budget is spent.

    After ``warmup`` calls that are not counted (the first is kept as ``first_run_ms``), timed calls
    continue until there are at least ``min_runs`` and either the median's 95% confidence interval is
    within ``± target_rel_ci`` of it (``stopped_by="ci"``) or ``max_seconds`` of timed calls, warm-up
    excluded, have passed (``"time"``). ``min_runs`` wins over the budget: a
    slow model still gets ``min_runs`` calls, and then ``stopped_by="runs"``, as it does at ``max_runs``.

    ``make_input(batch_size)`` builds the batch; by default a random one from ``runner.input_spec``
    (``input_shape``, one item's shape, fills what the spec leaves open). ``target_rel_ci=0`` never
    stops early. ``clock`` returns integer nanoseconds (tests pass a fake one).

    >>> measure(runner, batch_size=1, max_seconds=2.0).median_ms
    """
    _check_policy(batch_size=batch_size, warmup=warmup, min_runs=min_runs, max_seconds=max_seconds)
    if target_rel_ci < 0:
        raise EdgetlError(f"target_rel_ci must be >= 0, got {target_rel_ci}")
    if max_runs is not None and max_runs < min_runs:
        raise EdgetlError(f"max_runs ({max_runs}) must be at least min_runs ({min_runs})")
    batch = make_batch(runner, batch_size, make_input, input_shape)
    run = timed_runs(
        lambda: runner.predict(batch),
        warmup=warmup,
        min_runs=min_runs,
        max_seconds=max_seconds,
        target_rel_ci=target_rel_ci,
        max_runs=max_runs,
        clock=clock,
    )
    return summarize(
        run.samples_ns,
        batch_size=batch_size,
        stopped_by=run.stopped_by,
        peak_rss_mb=peak_rss_mb(),
        first_run_ms=run.first_run_ms,
        warmup_runs=warmup,
        timed_seconds=run.timed_seconds,
    )


def measure_cold_start(open_fn: Callable[[], Runner], batch: np.ndarray) -> float:
    """Seconds from calling ``open_fn()`` (session creation, graph compilation) to the end of the first
    ``predict(batch)`` on the fresh runner, which is then closed. Excludes importing the runtime
    library only if it was imported before."""
    start = time.perf_counter_ns()
    runner = open_fn()
    try:
        runner.predict(batch)
        return (time.perf_counter_ns() - start) / 1e9
    finally:
        runner.close()


def model_size_bytes(path: str | os.PathLike) -> int:
    """Bytes of a model file plus its weight sidecar: the ``.bin`` of an OpenVINO ``.xml``, the
    ``.onnx.data`` (or ``.data``) of an ONNX file with external data."""
    path = Path(path)
    if not path.is_file():
        raise EdgetlError(f"model file not found: {path}; export it first (`edgetl export`)")
    sidecars: list[Path] = []
    if path.suffix == ".xml":
        sidecars.append(path.with_suffix(".bin"))
    elif path.suffix == ".onnx":
        # torch's dynamo exporter writes model.onnx.data; onnx's own helpers often model.data.
        sidecars += [path.with_name(path.name + ".data"), path.with_suffix(".data")]
    return path.stat().st_size + sum(p.stat().st_size for p in sidecars if p.is_file())


def benchmark(
    runner: Runner,
    *,
    batch_sizes: Sequence[int] | None = None,
    config: BenchConfig,
    input_shape: Sequence[int] | None = None,
    model_path: str | os.PathLike | None = None,
    target_rel_ci: float = 0.02,
    make_input: Callable[[int], np.ndarray] | None = None,
    open_fn: Callable[[], Runner] | None = None,
    on_measured: Callable[[LatencyStats], None] | None = None,
) -> BenchResult:
    """Measure ``runner`` at each batch size (default ``config.batch_sizes``, in that order) with ``config``'s policy.

    ``config.threads`` is recorded as given: threads are set when the runner is opened, so open it
    with the same value. ``model_path`` adds the model's size on disk; ``open_fn`` (a function that
    opens a fresh runner) adds the cold start at the smallest batch size. ``on_measured(stats)`` is called
    after each batch size, outside the timed calls (a progress bar's step).

    >>> result = benchmark(runner, batch_sizes=[1, 8], config=recipe.bench, model_path="model.onnx")
    >>> write_json(run_dir / "bench.json", result.to_dict())
    """
    sizes = list(config.batch_sizes if batch_sizes is None else batch_sizes)
    if not sizes:
        raise EdgetlError("no batch sizes to benchmark; set bench.batch_sizes, e.g. [1, 8]")
    for size in sizes:
        _check_policy(
            batch_size=size, warmup=config.warmup, min_runs=config.min_runs, max_seconds=config.max_seconds
        )
    size_bytes = model_size_bytes(model_path) if model_path is not None else None

    cold_start_s: float | None = None
    if open_fn is not None:
        smallest = min(sizes)
        cold_start_s = measure_cold_start(open_fn, make_batch(runner, smallest, make_input, input_shape))

    stats: list[LatencyStats] = []
    for size in sizes:
        stats.append(
            measure(
                runner,
                batch_size=size,
                warmup=config.warmup,
                min_runs=config.min_runs,
                max_seconds=config.max_seconds,
                target_rel_ci=target_rel_ci,
                make_input=make_input,
                input_shape=input_shape,
            )
        )
        if on_measured is not None:
            on_measured(stats[-1])
    return BenchResult(
        runtime=runner.name,
        threads=config.threads,
        stats=stats,
        environment=environment(),
        model_path=str(model_path) if model_path is not None else None,
        model_size_bytes=size_bytes,
        cold_start_s=cold_start_s,
        settings={
            "warmup": config.warmup,
            "min_runs": config.min_runs,
            "max_seconds": config.max_seconds,
            "target_rel_ci": target_rel_ci,
            "confidence": CONFIDENCE,
            "input_shape": list(input_shape) if input_shape is not None else None,
            "input": "custom" if make_input is not None else "random normal, seed 0",
        },
        runtime_settings=runtime_settings(runner),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def make_batch(
    runner: Runner,
    batch_size: int,
    make_input: Callable[[int], np.ndarray] | None,
    input_shape: Sequence[int] | None,
) -> np.ndarray:
    """The batch of ``batch_size`` a runner is timed on: ``make_input(batch_size)``, else a random one of the
    runner's input spec (``input_shape`` filling what it leaves open)."""
    if make_input is None:
        return random_input(runner.input_spec, batch_size, input_shape)
    batch = np.asarray(make_input(batch_size))
    if batch.ndim == 0 or batch.shape[0] != batch_size:
        # Throughput is batch_size / latency, so a batch of another size would report a wrong number.
        raise EdgetlError(f"make_input({batch_size}) returned shape {batch.shape}; its first axis must be {batch_size}")
    return batch


def _check_policy(*, batch_size: int, warmup: int, min_runs: int, max_seconds: float) -> None:
    if batch_size < 1:
        raise EdgetlError(f"batch size must be >= 1, got {batch_size}")
    if warmup < 0:
        raise EdgetlError(f"bench.warmup must be >= 0, got {warmup}")
    if min_runs < 1:
        raise EdgetlError(f"bench.min_runs must be >= 1, got {min_runs}")
    if not (max_seconds >= 0 and math.isfinite(max_seconds)):
        raise EdgetlError(f"bench.max_seconds must be a finite number >= 0, got {max_seconds}")
