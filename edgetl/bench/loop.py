"""The timing loop itself: warm-up calls, then timed calls until the median is stable or the budget ends.

Stdlib + numpy + the sibling ``stats`` module only, and importable outside the package: the device agent
ships this file to the device beside itself, so the host and every device stop on the same rule.

>>> run = timed_runs(lambda: runner.predict(batch), warmup=10, min_runs=30, max_seconds=5.0)
>>> run.samples_ns[:3], run.stopped_by
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable

try:
    from .stats import StopReason, relative_ci
except ImportError:  # loaded as a top-level module beside the device agent
    from stats import StopReason, relative_ci  # type: ignore[no-redef]


@dataclass
class TimedRuns:
    """Raw result of ``timed_runs``: per-call nanoseconds, why it stopped, the first warm-up call."""

    samples_ns: list[int]
    stopped_by: StopReason
    first_run_ms: float | None
    timed_seconds: float


def timed_runs(
    call: Callable[[], object],
    *,
    warmup: int,
    min_runs: int,
    max_seconds: float,
    target_rel_ci: float = 0.02,
    max_runs: int | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> TimedRuns:
    """Call ``call()`` ``warmup`` times untimed (the first is kept as ``first_run_ms``), then time calls until
    there are at least ``min_runs`` and either the median's 95% interval is within ``± target_rel_ci``
    (``"ci"``) or ``max_seconds`` of timed calls have passed (``"time"``); ``min_runs`` outlasts the budget
    (``"runs"``), as does ``max_runs``. ``target_rel_ci=0`` never stops early."""
    first_run_ms: float | None = None
    for index in range(warmup):
        start = clock()
        call()
        if index == 0:
            first_run_ms = (clock() - start) / 1e6

    samples: list[int] = []
    budget_ns = int(max_seconds * 1e9)
    runs_when_budget_ended: int | None = None
    next_check = min_runs
    stopped_by: StopReason = "runs"
    # A collector pause inside a timed call would be charged to the model, so collect now and
    # keep the cyclic collector off while timing (as timeit does); refcounting still frees arrays.
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    phase_start = clock()
    try:
        while True:
            start = clock()
            call()
            end = clock()
            samples.append(end - start)
            count = len(samples)
            if runs_when_budget_ended is None and end - phase_start >= budget_ns:
                runs_when_budget_ended = count
            if count < min_runs:
                continue
            # Sorting every run would cost more than a fast model's inference: check again
            # only after ~10% more samples, which overshoots the needed count by at most that.
            if target_rel_ci > 0 and count >= next_check:
                if relative_ci(samples) <= target_rel_ci:
                    stopped_by = "ci"
                    break
                next_check = count + max(1, count // 10)
            if runs_when_budget_ended is not None:
                stopped_by = "time" if runs_when_budget_ended >= min_runs else "runs"
                break
            if max_runs is not None and count >= max_runs:
                stopped_by = "runs"
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return TimedRuns(samples, stopped_by, first_run_ms, (clock() - phase_start) / 1e9)
