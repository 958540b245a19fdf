"""Pure latency statistics: a summary of timed runs and a distribution-free confidence interval
for the median. Numpy only, no clock and no runner, so every number here is testable on a fixed array.

>>> stats = summarize(samples_ns, batch_size=8, stopped_by="ci")
>>> stats.median_ms, stats.median_rel_ci
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Sequence

import numpy as np

StopReason = Literal["ci", "time", "runs"]

CONFIDENCE = 0.95
_NS_PER_MS = 1e6


@dataclass
class LatencyStats:
    """Latency of one runner at one batch size; times in milliseconds per call (the whole batch)."""

    batch_size: int
    runs: int  # timed runs, warm-up excluded
    min_ms: float
    median_ms: float
    mean_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float  # sample standard deviation (ddof=1)
    max_ms: float
    # Half-width of the 95% confidence interval of the median, divided by the median:
    # 0.02 reads "median ± 2%". inf when there are too few runs for a 95% interval. It treats runs as
    # independent, so it measures the precision within this window, not drift between invocations.
    median_rel_ci: float
    throughput: float  # items per second at the median latency: batch_size / median
    stopped_by: StopReason  # "ci": the median was stable; "time": the budget ran out; "runs": a run count decided
    # Peak resident set size of the whole process so far (getrusage), not of this model alone:
    # it never goes down, so it includes whatever the process loaded before. None where unsupported.
    peak_rss_mb: float | None = None
    first_run_ms: float | None = None  # the first warm-up call on this runner, slower if it was freshly opened
    warmup_runs: int = 0
    timed_seconds: float = 0.0  # wall time of the timed phase

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; an undefined value (inf) becomes None, since JSON has no infinity."""
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(self).items()}


@functools.lru_cache(maxsize=512)
def median_ci_ranks(n: int, confidence: float = CONFIDENCE) -> tuple[int, int] | None:
    """0-based indices ``(lo, hi)`` into the sorted sample whose values bracket the population median
    with at least ``confidence`` probability, whatever the distribution; None when ``n`` is too small
    (fewer than 6 samples for 95%).

    The count of samples below the median is Binomial(n, 1/2), so ``[x[lo], x[hi]]`` with symmetric
    ranks covers the median with probability ``1 - 2 * P(B <= lo)``; we take the narrowest such pair.
    Latencies are skewed and multi-modal, which is why no normal approximation is used.
    """
    if n < 1:
        return None
    tail = (1.0 - confidence) / 2.0
    k = np.arange(n // 2 + 1, dtype=np.float64)
    # log C(n, k) built from the ratios C(n, k+1) / C(n, k): no overflow or underflow for large n.
    log_comb = np.concatenate(([0.0], np.cumsum(np.log(n - k[:-1]) - np.log(k[:-1] + 1.0))))
    cdf = np.cumsum(np.exp(log_comb - n * math.log(2.0)))  # cdf[j] = P(B <= j)
    allowed = int(np.searchsorted(cdf, tail, side="right"))  # how many j have P(B <= j) <= tail
    if allowed == 0:
        return None
    return allowed - 1, n - allowed


def median_ci(samples: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The distribution-free ``confidence`` interval ``(low, high)`` of the median of ``samples``."""
    ordered = np.sort(np.asarray(samples, dtype=np.float64))
    ranks = median_ci_ranks(len(ordered), confidence)
    if ranks is None:
        return None
    return float(ordered[ranks[0]]), float(ordered[ranks[1]])


def relative_ci(samples: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> float:
    """Half-width of the median's confidence interval divided by the median; inf when undefined."""
    ordered = np.sort(np.asarray(samples, dtype=np.float64))
    return _relative_ci_sorted(ordered, confidence)


def _relative_ci_sorted(ordered: np.ndarray, confidence: float = CONFIDENCE) -> float:
    ranks = median_ci_ranks(len(ordered), confidence)
    if ranks is None:
        return math.inf
    half_width = (ordered[ranks[1]] - ordered[ranks[0]]) / 2.0
    median = float(np.median(ordered))
    if half_width == 0.0:
        return 0.0  # identical samples: perfectly stable even if the median is 0
    return float(half_width / median) if median > 0 else math.inf


def summarize(
    samples_ns: Sequence[int] | np.ndarray,
    *,
    batch_size: int,
    stopped_by: StopReason,
    peak_rss_mb: float | None = None,
    first_run_ms: float | None = None,
    warmup_runs: int = 0,
    timed_seconds: float = 0.0,
) -> LatencyStats:
    """Summarize per-call latencies given in nanoseconds (as ``time.perf_counter_ns`` differences)."""
    if len(samples_ns) == 0:
        raise ValueError("no timed runs to summarize")
    ms = np.sort(np.asarray(samples_ns, dtype=np.float64) / _NS_PER_MS)
    median = float(np.median(ms))
    p90, p99 = (float(v) for v in np.percentile(ms, [90.0, 99.0]))
    return LatencyStats(
        batch_size=batch_size,
        runs=len(ms),
        min_ms=float(ms[0]),
        median_ms=median,
        mean_ms=float(ms.mean()),
        p90_ms=p90,
        p99_ms=p99,
        std_ms=float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        max_ms=float(ms[-1]),
        median_rel_ci=_relative_ci_sorted(ms),
        throughput=batch_size * 1000.0 / median if median > 0 else math.inf,
        stopped_by=stopped_by,
        peak_rss_mb=peak_rss_mb,
        first_run_ms=first_run_ms,
        warmup_runs=warmup_runs,
        timed_seconds=timed_seconds,
    )
