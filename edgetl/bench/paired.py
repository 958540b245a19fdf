"""Which model is faster, decided so that a noisy machine cannot flip it: paired, interleaved rounds and the
confidence interval of the latency *ratio*.

Timing each model on its own, minutes apart, and comparing medians lets a burst of load on a shared machine (2-4x
at sub-millisecond latencies) decide what ships. Here every round times every candidate back to back, in an order
that rotates from round to round, so a burst hits all of them alike and cancels in the per-round ratio
``a_i / b_i``. The median of those ratios has a distribution-free 95% interval (``stats.median_ci``), and one model
is *faster* than another only when that interval lies wholly beyond ``1 ± margin`` (5% by default); otherwise they
are tied, and the caller's tie rule decides (edgetl: smaller file, then higher agreement, then the simpler
runtime).

Numpy and the sibling ``stats`` module only; ``clock`` is injectable, so the rule is tested on a fake clock.

>>> times = interleaved_rounds({"int8": int8.predict_batch, "fp32": fp32.predict_batch}, rounds=20)
>>> ratio = paired_ratio(times["int8"], times["fp32"])      # int8 / fp32, e.g. 0.61 (0.58-0.66)
>>> ratio.verdict(margin=0.05)                              # "faster"
>>> pick(times, tie_key=lambda name: sizes[name]).winner
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

try:
    from .stats import CONFIDENCE, median_ci
except ImportError:  # loaded as a top-level module beside the device agent
    from stats import CONFIDENCE, median_ci  # type: ignore[no-redef]

MARGIN = 0.05  # "faster" needs the whole interval of the ratio at least 5% below 1
MIN_ROUNDS = 6  # the fewest paired rounds with a distribution-free 95% interval of the median
# A pause before each candidate's turn: onnxruntime's worker threads keep spinning for tens of ms after a call and,
# on 2 cores, starve the next model's call. Measured on MobileNetV2 (2 threads, batch 1): FP32 and static INT8
# took 8.7 and 4.0 ms alone but 13.7 and 8.4 ms back to back; a 50 ms pause brought them back (benchmarks/optimize.py).
SETTLE_SECONDS = 0.05

Verdict = Literal["faster", "slower", "tie"]


@dataclass(frozen=True)
class Ratio:
    """``a / b`` latency over paired rounds: the median per-round ratio and its 95% interval (``low``, ``high``);
    below 1 means ``a`` is faster."""

    ratio: float
    low: float
    high: float
    rounds: int

    def verdict(self, margin: float = MARGIN) -> Verdict:
        """``"faster"`` when the whole interval is below ``1 - margin``, ``"slower"`` when it is above ``1 + margin``,
        else ``"tie"`` (the difference is within the margin or not measured precisely enough to tell)."""
        if self.high < 1.0 - margin:
            return "faster"
        if self.low > 1.0 + margin:
            return "slower"
        return "tie"

    def describe(self) -> str:
        """``0.61× (95% CI 0.58-0.66, 20 paired rounds)``."""
        return f"{self.ratio:.2f}× (95% CI {self.low:.2f}-{self.high:.2f}, {self.rounds} paired rounds)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_ratio(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Ratio:
    """The latency ratio ``a / b`` from per-round times taken in the same rounds (``a[i]`` beside ``b[i]``)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired rounds must match one to one and not be empty, got {len(a)} and {len(b)}")
    if len(a) < MIN_ROUNDS:
        raise ValueError(f"{len(a)} paired rounds give no 95% interval; time at least {MIN_ROUNDS}")
    ratios = [x / y for x, y in zip(a, b)]
    low, high = median_ci(ratios, confidence)  # type: ignore[misc]  # not None: enough rounds
    return Ratio(statistics.median(ratios), low, high, len(ratios))


def interleaved_rounds(
    calls: Mapping[str, Callable[[], object]],
    *,
    rounds: int = 20,
    calls_per_round: int = 5,
    warmup: int = 2,
    settle_s: float = SETTLE_SECONDS,
    clock: Callable[[], int] = time.perf_counter_ns,
    sleep: Callable[[float], None] = time.sleep,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Per candidate, one time per round in milliseconds: the median of ``calls_per_round`` timed calls after
    ``settle_s`` seconds of pause (the previous model's threads go idle) and ``warmup`` untimed calls (caches warmed
    after the switch). Every round times every candidate back to back; the order rotates by one each round, so no
    candidate always follows the same one. ``on_round(n)`` is called after round n (1-based), outside the timed
    calls (a progress bar's step)."""
    if rounds < MIN_ROUNDS:
        raise ValueError(f"rounds must be at least {MIN_ROUNDS} for a 95% interval, got {rounds}")
    if calls_per_round < 1 or warmup < 0:
        raise ValueError(f"calls_per_round must be >= 1 and warmup >= 0, got {calls_per_round} and {warmup}")
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()  # a collector pause would be charged to whichever model it fell in
    try:
        for index in range(rounds):
            shift = index % len(names) if names else 0
            for name in names[shift:] + names[:shift]:
                call = calls[name]
                if settle_s:
                    sleep(settle_s)
                for _ in range(warmup):
                    call()
                samples = []
                for _ in range(calls_per_round):
                    start = clock()
                    call()
                    samples.append((clock() - start) / 1e6)
                times[name].append(statistics.median(samples))
            if on_round is not None:
                on_round(index + 1)
    finally:
        if was_enabled:
            gc.enable()
    return times


@dataclass
class Pick:
    """What ``pick`` chose and why: ``leader`` had the lowest median round time, ``tied`` are the candidates
    not clearly slower than it (the leader included), ``winner`` the tie rule's choice among them, and
    ``ratios`` each other candidate's latency over the winner's."""

    winner: str
    leader: str
    tied: list[str]
    ratios: dict[str, Ratio]
    margin: float

    def to_dict(self) -> dict[str, Any]:
        return {"winner": self.winner, "leader": self.leader, "tied": self.tied, "margin": self.margin,
                "ratios": {name: r.to_dict() for name, r in self.ratios.items()}}


def pick(times: Mapping[str, Sequence[float]], *, tie_key: Callable[[str], Hashable], margin: float = MARGIN) -> Pick:
    """The fastest candidate, where "faster" must survive the noise: the leader (lowest median round time) and
    every candidate whose ratio to it is not clearly slower (``Ratio.verdict``) are tied, and the one with the
    smallest ``tie_key`` wins. ``times``: per-round times from ``interleaved_rounds``."""
    if not times:
        raise ValueError("no candidates to pick from")
    names = list(times)
    leader = min(names, key=lambda n: (statistics.median(times[n]), names.index(n)))
    if len(names) == 1:
        return Pick(leader, leader, [leader], {}, margin)
    tied = [leader] + [n for n in names if n != leader
                       and paired_ratio(times[n], times[leader]).verdict(margin) != "slower"]
    winner = min(tied, key=lambda n: (tie_key(n), names.index(n)))
    ratios = {n: paired_ratio(times[n], times[winner]) for n in names if n != winner}
    return Pick(winner, leader, tied, ratios, margin)
