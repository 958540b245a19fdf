"""What ships and why: ``select`` picks the fastest passing artifact (and, from the same model, the fastest
passing artifact of each shipped format), judged on the race's paired rounds so that noise cannot decide; every
other artifact gets its reason with the latency ratio behind it. ``summary_rows`` makes the run's table."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ..validate import summary_fields
from .context import RunContext
from .plan import Planned, torch_artifact_name
from .race import race_stage

if TYPE_CHECKING:
    from ..bench.paired import Pick


def _latency(bench: dict[str, Any] | None) -> tuple[int, float] | None:
    """(batch, median ms) at the smallest batch size measured."""
    stats = [s for s in (bench or {}).get("stats", []) if s.get("median_ms")]
    if not stats:
        return None
    first = min(stats, key=lambda s: s["batch_size"])
    return first["batch_size"], first["median_ms"]


# The tie rule's last resort: the runtime with less to install and more places to run comes first.
_SIMPLER_FORMAT = ("onnx", "openvino")


def candidates(ctx: RunContext, validation: dict[str, dict], benchmarks: dict[str, dict]
               ) -> tuple[list[Planned], dict[str, dict[str, Any]]]:
    """(the artifacts that may ship: made, of a shipped format, passed the gate and benchmarked; the decision for
    every other artifact)."""
    decisions: dict[str, dict[str, Any]] = {}
    chosen = []
    for artifact in ctx.plan():
        report = validation.get(artifact.name)
        if report is None:
            decisions[artifact.name] = {"status": "skipped", "reason": ctx.skip_reason(artifact) or "not made"}
        elif not artifact.shippable:
            decisions[artifact.name] = {"status": "reference", "reason": "torch model: the reference, not shipped"}
        elif artifact.format not in ctx.recipe.ship.formats:
            decisions[artifact.name] = {"status": "lost", "reason": f"format {artifact.format} not in ship.formats"}
        elif not report["passed"]:
            decisions[artifact.name] = {"status": "lost", "reason": "failed the gate: " + "; ".join(report["reasons"])}
        elif _latency(benchmarks.get(artifact.name)) is None:
            decisions[artifact.name] = {"status": "lost", "reason": "not benchmarked"}
        else:
            chosen.append(artifact)
    return chosen, decisions


def select(ctx: RunContext, validation: dict[str, dict], benchmarks: dict[str, dict],
           race: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Pick what ships, and say why every other artifact lost.

    The fastest passing artifact wins and becomes the bundle's default; the bundle ships one model (the winner's),
    so with it goes the fastest passing artifact of each other shipped format from that same model. "Fastest" is
    decided on the ``race`` (``edgetl.pipeline.race``: paired rounds, the 95% interval of the latency ratio,
    ``bench.race_margin``): candidates not clearly slower than the leader are tied, and the smaller file, then the
    higher agreement, then the simpler runtime wins. Without a race (one candidate, ``bench.race_rounds = 0``) the
    bench stage's medians decide. Returns ``{artifact: {"status": "shipped" | "lost" | "skipped" | "reference",
    "reason": ..., "default": bool, "ratio": {...}}}``; ``ratio`` is the latency over the artifact it lost to (or,
    for a winner, the closest rival's over it) with its interval.
    """
    chosen, decisions = candidates(ctx, validation, benchmarks)
    if not chosen:
        return decisions
    by_name = {a.name: a for a in chosen}
    judge = _Judge(validation, benchmarks, by_name, race, ctx.recipe.bench.race_margin)
    overall = judge.pick(list(by_name))
    fastest = by_name[overall.winner]
    groups: dict[str, list[str]] = {}
    for artifact in chosen:
        if artifact.model == fastest.model:
            groups.setdefault(artifact.format, []).append(artifact.name)
    picks = {fmt: (overall if fmt == fastest.format else judge.pick(names)) for fmt, names in groups.items()}
    for artifact in chosen:
        name = artifact.name
        own = picks.get(artifact.format) if artifact.model == fastest.model else None
        if own is not None and own.winner == name:
            decisions[name] = {"status": "shipped", "default": name == fastest.name,
                               "reason": judge.why_won(own, "" if name == fastest.name else artifact.format)}
            # alone in its format: its latency over the default's, so that every decision has a ratio
            decisions[name] |= judge.ratio_record(own, name) or judge.ratio_record(overall, name)
        elif own is None:
            decisions[name] = {"status": "lost", "reason": f"{artifact.model} model: the bundle ships the "
                               f"{fastest.model}, whose {fastest.name} won ({judge.versus(overall.ratios[name])})"}
            decisions[name] |= judge.ratio_record(overall, name)
        else:
            decisions[name] = {"status": "lost", "reason": judge.why_lost(own, name)}
            decisions[name] |= judge.ratio_record(own, name)
    return decisions


def decide(ctx: RunContext, validation: dict[str, dict], benchmarks: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """``select`` on the race among the candidates (run now, or read back from an earlier run of the same ones)."""
    chosen, _ = candidates(ctx, validation, benchmarks)
    return select(ctx, validation, benchmarks, race_stage(ctx, chosen))


class _Judge:
    """Picks among candidates on the race's paired rounds (or, without one, the bench medians) and words why."""

    def __init__(self, validation, benchmarks, by_name: dict[str, Planned], race: dict[str, Any] | None,
                 margin: float):
        self.validation, self.benchmarks, self.by_name, self.margin = validation, benchmarks, by_name, margin
        times = (race or {}).get("times_ms", {})
        self.times = times if set(by_name) <= set(times) else None  # a race of other candidates: not this one
        self.batch = race["batch_size"] if self.times else None

    def tie_key(self, name: str) -> tuple:
        """Smaller file, then higher agreement, then the simpler runtime."""
        size = self.benchmarks[name].get("model_size_bytes") or 0
        return (size, -self.validation[name]["agreement"], _SIMPLER_FORMAT.index(self.by_name[name].format)
                if self.by_name[name].format in _SIMPLER_FORMAT else len(_SIMPLER_FORMAT))

    def pick(self, names: list[str]) -> Pick:
        from ..bench.paired import Pick, Ratio, pick

        if self.times is not None:
            return pick({n: self.times[n] for n in names}, tie_key=self.tie_key, margin=self.margin)
        # No race: the bench stage's medians, one model at a time; the lowest wins, no ties.
        ms = {n: _latency(self.benchmarks[n])[1] for n in names}
        winner = min(names, key=lambda n: (ms[n], names.index(n)))
        return Pick(winner, winner, [winner], {n: Ratio(ms[n] / ms[winner], math.nan, math.nan, 0)
                                               for n in names if n != winner}, self.margin)

    def ms(self, name: str) -> str:
        """Its median latency: in the race when there was one (what the decision rests on), else the bench stage's."""
        if self.times is not None:
            return f"{statistics.median(self.times[name]):.3g} ms at batch {self.batch} in the race"
        batch, median = _latency(self.benchmarks[name])
        return f"{median:.3g} ms at batch {batch}"

    def versus(self, ratio) -> str:
        """``1.45× (95% CI 1.40-1.52, 20 paired rounds) its latency at batch 1``, or the medians' ratio."""
        if ratio.rounds == 0:
            return f"{ratio.ratio:.2f}× its median latency, each timed on its own"
        return f"{ratio.describe()} its latency at batch {self.batch}"

    def ratio_record(self, chosen: Pick, name: str) -> dict[str, Any]:
        if name != chosen.winner:
            ratio = chosen.ratios[name]
            return {"ratio": {"vs": chosen.winner, **_finite(ratio.to_dict())}}
        if not chosen.ratios:
            return {}
        rival = min(chosen.ratios, key=lambda n: chosen.ratios[n].ratio)
        return {"ratio": {"vs": rival, **_finite(chosen.ratios[rival].to_dict()), "of": "rival / winner"}}

    def why_won(self, chosen: Pick, fmt: str) -> str:
        what = f"fastest passing{' ' + fmt if fmt else ''} artifact ({self.ms(chosen.winner)})"
        others = [n for n in chosen.tied if n != chosen.winner]
        if others:
            rival = others[0]
            return (f"{what}: tied on speed with {rival} (that one at {self.versus(chosen.ratios[rival])}, within "
                    f"{self.margin:.0%}), and this one {self._tie_reason(chosen.winner, rival)}")
        if not chosen.ratios:
            return what
        rival = min(chosen.ratios, key=lambda n: chosen.ratios[n].ratio)
        return f"{what}; the next, {rival}, at {self.versus(chosen.ratios[rival])}"

    def why_lost(self, chosen: Pick, name: str) -> str:
        ratio, winner = chosen.ratios[name], chosen.winner
        if name in chosen.tied:
            return (f"tied on speed with {winner} ({self.versus(ratio)}, within {self.margin:.0%}), which "
                    f"{self._tie_reason(winner, name)}")
        return f"slower than {winner}: {self.versus(ratio)}"

    def _tie_reason(self, winner: str, loser: str) -> str:
        """What decided a tie for ``winner`` over ``loser``, worded for either side."""
        won, lost = self.tie_key(winner), self.tie_key(loser)
        if won[0] != lost[0]:
            return f"has the smaller file ({won[0] / 1e6:.3g} vs {lost[0] / 1e6:.3g} MB)"
        if won[1] != lost[1]:
            return f"has the higher agreement ({-won[1]:.2%} vs {-lost[1]:.2%})"
        if won[2] != lost[2]:
            return f"has the simpler runtime ({self.by_name[winner].runtime} vs {self.by_name[loser].runtime})"
        return "comes first in the plan"


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """NaN (no interval: medians timed separately) as None, which JSON can hold."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}


def summary_rows(validation: dict[str, dict], benchmarks: dict[str, dict],
                 decisions: dict[str, dict] | None = None) -> list[dict[str, Any]]:
    """One row per artifact and batch size: accuracy, agreement, latency, verdict, and the selection."""
    rows = []
    for name, report in validation.items():
        bench = benchmarks.get(name) or {}
        torch_ms = {s["batch_size"]: s["median_ms"] for s in (benchmarks.get(torch_artifact_name(name)) or {}).get("stats", [])}
        for stats in bench.get("stats", []) or [{}]:
            batch = stats.get("batch_size")
            row = {
                "variant": name, "runtime": report["runtime"], "batch": batch,
                "accuracy": report["accuracy"], "agreement": report["agreement"],
                "teacher_agreement": report.get("teacher_agreement"),
                **summary_fields(report),  # e.g. mean cosine, mean relative error: what this kind is held to
                "median_ms": stats.get("median_ms"), "p90_ms": stats.get("p90_ms"), "p99_ms": stats.get("p99_ms"),
                "throughput": stats.get("throughput"),
                "size_mb": bench["model_size_bytes"] / 1e6 if bench.get("model_size_bytes") else None,
                "median_rel_ci": stats.get("median_rel_ci"),
                "speedup": torch_ms[batch] / stats["median_ms"] if batch in torch_ms and stats.get("median_ms") else None,
                "verdict": "pass" if report["passed"] else "FAIL",
            }
            if decisions:
                row["selected"] = decisions.get(name, {}).get("status")
            rows.append(row)
    return rows


def distill_summary(result) -> dict[str, Any] | None:
    if result is None:
        return None
    return {k: v for k, v in asdict(result).items() if not k.endswith("history")}
