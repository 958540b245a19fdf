"""What ships and why: ``select`` picks the fastest passing artifact (and, from the same model, the fastest
passing artifact of each shipped format); every other artifact gets its reason. ``summary_rows`` makes the run's
table."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..validate import summary_fields
from .context import RunContext
from .plan import Planned, torch_artifact_name


def _latency(bench: dict[str, Any] | None) -> tuple[int, float] | None:
    """(batch, median ms) at the smallest batch size measured."""
    stats = [s for s in (bench or {}).get("stats", []) if s.get("median_ms")]
    if not stats:
        return None
    first = min(stats, key=lambda s: s["batch_size"])
    return first["batch_size"], first["median_ms"]


def select(ctx: RunContext, validation: dict[str, dict], benchmarks: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """Pick what ships, and say why every other artifact lost.

    The overall fastest passing artifact wins and becomes the bundle's default; the bundle ships
    one model (the winner's), so with it goes the fastest passing artifact of each other shipped
    format from that same model. Returns ``{artifact: {"status": "shipped" | "lost" | "skipped" |
    "reference", "reason": ..., "default": bool}}``.
    """
    decisions: dict[str, dict[str, Any]] = {}
    candidates = []
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
            candidates.append(artifact)
    if not candidates:
        return decisions
    by_speed = sorted(candidates, key=lambda a: _latency(benchmarks[a.name])[1])
    fastest = by_speed[0]
    winners: dict[str, Planned] = {}
    for artifact in by_speed:
        if artifact.model == fastest.model:
            winners.setdefault(artifact.format, artifact)
    for artifact in by_speed:
        batch, ms = _latency(benchmarks[artifact.name])
        best = winners.get(artifact.format, fastest)
        best_ms = _latency(benchmarks[best.name])[1]
        if best is artifact:
            decisions[artifact.name] = {
                "status": "shipped", "default": artifact is fastest,
                "reason": f"fastest passing{'' if artifact is fastest else ' ' + artifact.format} artifact "
                          f"({ms:.3g} ms at batch {batch})"}
        elif artifact.model != fastest.model:
            decisions[artifact.name] = {
                "status": "lost", "reason": f"{artifact.model} model: the bundle ships the {fastest.model}, whose "
                f"{fastest.name} is faster ({best_ms:.3g} vs {ms:.3g} ms at batch {batch})"}
        else:
            decisions[artifact.name] = {"status": "lost", "reason": f"slower: {ms:.3g} ms vs {best_ms:.3g} ms for "
                                        f"{best.name} at batch {batch} ({ms / best_ms:.2f}×)"}
    return decisions


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
