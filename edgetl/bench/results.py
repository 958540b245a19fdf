"""What benchmarking a bundle on targets gives: per runtime and target the load status, latencies, the
device-side validation verdict and budget problems; the merged report, its table rows, picks and notes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .targets import TargetProfile


@dataclass
class RuntimeResult:
    """One runtime on one target: loaded or "not available: <why>", cold start, stats per batch size,
    the validation verdict on the device's outputs, and budget problems."""

    runtime: str
    status: str
    artifact: str | None = None
    cold_start_s: float | None = None
    stats: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    validation: dict[str, Any] | None = None
    budget: list[str] = field(default_factory=list)
    model_size_bytes: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class TargetResult:
    """One target: where it is, its machine facts and emulation, each runtime's result, what was timed, and the
    one-line error that ended it (``error_kind`` "runtime": nothing loads there, the target is skipped)."""

    target: str
    address: str
    emulated: bool = False
    description: str = ""
    environment: dict[str, Any] = field(default_factory=dict)
    emulation: dict[str, Any] = field(default_factory=dict)
    runtimes: list[RuntimeResult] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)  # what was timed: source file, rows, one row's shape
    error: str | None = None
    error_kind: str | None = None
    seconds: float = 0.0
    # The runtimes that ran, timed back to back on the device (batch_size, rounds, margin, times_ms per runtime)
    race: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def runtime(self, name: str) -> RuntimeResult:
        return next(r for r in self.runtimes if r.runtime == name)


@dataclass
class TargetsReport:
    """All targets' results; ``rows()`` is the merged table. ``bundle`` is what was benched (a bundle, or a bare
    model file, whose ``remarks`` say what was timed and ``unvalidated`` why nothing was validated)."""

    bundle: str
    results: dict[str, TargetResult] = field(default_factory=dict)
    created: str = ""
    remarks: list[str] = field(default_factory=list)
    unvalidated: str = "the bundle has no validation slice"

    @property
    def ok(self) -> bool:
        """No target failed and every validated runtime passed. A target where nothing is available (no
        CUDA device on a CPU machine) is skipped, not failed."""
        return all(r.error is None or r.error_kind == "runtime" for r in self.results.values()) and all(
            rt.validation is None or rt.validation["passed"] for r in self.results.values() for rt in r.runtimes)

    @property
    def measured(self) -> bool:
        """Some runtime of some target was timed. ``edgetl bench --target`` fails without one: a report of
        skipped targets only (``cuda-gpu`` on a machine without a GPU) measured nothing."""
        return any(rt.stats for r in self.results.values() for rt in r.runtimes)

    def failure(self) -> str | None:
        """Why ``edgetl bench --target`` fails, in one line (None when it does not): the failed targets, the
        runtimes that failed the device-side validation, or that nothing was measured anywhere."""
        failed = [f"{r.target} ({r.error})" for r in self.results.values() if r.error and r.error_kind != "runtime"]
        failed += [f"{r.target} {rt.runtime} (failed the validation check on the device)" for r in self.results.values()
                   for rt in r.runtimes if rt.validation is not None and not rt.validation["passed"]]
        if failed:
            return (f"{len(failed)} target run(s) failed: {'; '.join(failed)}; fix the target (edgetl targets check "
                    "NAME) or the bundle and rerun")
        if not self.measured:
            why = "; ".join(f"{r.target}: {rt.status}" for r in self.results.values() for rt in r.runtimes
                            if not rt.ok) or "no runtime ran"
            return f"nothing was measured on any target ({why}); pick a target whose runtimes exist here"
        return None

    def rows(self, *, wide: bool = False) -> list[dict[str, Any]]:
        """The merged table: one row per target, runtime and batch size. ``wide`` adds min, mean and std."""
        return [row for result in self.results.values() for row in target_rows(result, wide=wide)]

    def choices(self) -> dict[str, dict[str, Any]]:
        """Per target, the fastest (artifact, runtime) that ran, passed the device-side validation check and kept
        within the profile's budgets, at the smallest batch size measured; or why there is none. "Fastest" is
        judged on the device's race when it ran one (``edgetl.bench.paired``: a lead within the margin, or not
        measured precisely enough, is a tie, won by the smaller file, then the higher agreement, then the runtime
        listed first in the profile), else on the medians; ``ratio`` is the runner-up's latency over the pick's."""
        picks: dict[str, dict[str, Any]] = {}
        for name, result in self.results.items():
            fit = {rt.runtime: (min(rt.stats, key=lambda s: s["batch_size"]), rt) for rt in result.runtimes
                   if rt.ok and rt.stats and not rt.budget and (rt.validation is None or rt.validation["passed"])}
            if not fit:
                why = result.error or "no runtime ran, passed validation and kept within the budgets"
                picks[name] = {"artifact": None, "reason": why}
                continue
            chosen, ratio = _pick(result, fit)
            stats, best = fit[chosen]
            picks[name] = {"artifact": best.artifact, "runtime": best.runtime, "batch_size": stats["batch_size"],
                           "median_ms": stats["median_ms"], "validated": best.validation is not None}
            if ratio is not None:
                picks[name]["ratio"] = ratio
        return picks

    def notes(self) -> list[str]:
        """The remarks, per target the pick, then one line per runtime that did not run and per target that
        failed, saying why."""
        results = self.results.values()
        lines = list(self.remarks)
        lines += [f"{name}: use {c['artifact']} on {c['runtime']} ({c['median_ms']:.3g} ms at batch {c['batch_size']}"
                  f"{_versus(c.get('ratio'))}{'' if c['validated'] else f', not validated: {self.unvalidated}'})"
                  if c["artifact"] else f"{name}: nothing to use: {c['reason']}" for name, c in self.choices().items()]
        lines += [f"{r.target} {rt.runtime}: {rt.status}" for r in results for rt in r.runtimes if not rt.ok]
        lines += [f"{r.target}: error: {r.error}" for r in results if r.error and r.error_kind != "runtime"]
        lines += [f"{r.target}: EMULATED on this machine ({r.emulation}), a stand-in, not the device itself"
                  for r in self.results.values() if r.emulated]
        if not self.measured:
            lines.append("nothing was measured: no runtime of any target ran (the reasons are above)")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "created": self.created, "rows": self.rows(wide=True), "notes": self.notes(),
                "choices": self.choices(),
                "targets": {name: result.to_dict() for name, result in self.results.items()}}


def _pick(result: TargetResult, fit: dict[str, tuple[dict[str, Any], RuntimeResult]]
          ) -> tuple[str, dict[str, Any] | None]:
    """(the runtime to use among ``fit``, the runner-up's latency ratio to it or None)."""
    from .paired import pick

    times = (result.race or {}).get("times_ms", {})
    raced = [rt for rt in fit if rt in times]
    if len(raced) < 2 or len(raced) < len(fit) or any(s["batch_size"] != result.race["batch_size"]
                                                      for s, _ in fit.values()):
        return min(fit, key=lambda rt: fit[rt][0]["median_ms"]), None
    order = [rt.runtime for rt in result.runtimes]

    def tie_key(runtime: str) -> tuple:
        rt = fit[runtime][1]
        agreement = (rt.validation or {}).get("agreement") or 0.0
        return (rt.model_size_bytes or 0, -agreement, order.index(runtime))

    chosen = pick({rt: times[rt] for rt in raced}, tie_key=tie_key, margin=result.race.get("margin", 0.05))
    rival = min(chosen.ratios, key=lambda rt: chosen.ratios[rt].ratio)
    return chosen.winner, {"vs": rival, "tied": rival in chosen.tied, **chosen.ratios[rival].to_dict()}


def _versus(ratio: dict[str, Any] | None) -> str:
    """``; openvino:CPU 1.31× its latency (95% CI 1.25-1.40, 20 paired rounds)``: the runner-up's latency over the
    pick's, from the race."""
    if not ratio:
        return ""
    tied = ", tied: the smaller file or listed first" if ratio["tied"] else ""
    return (f"; {ratio['vs']} {ratio['ratio']:.2f}× its latency (95% CI {ratio['low']:.2f}-{ratio['high']:.2f}, "
            f"{ratio['rounds']} paired rounds{tied})")


def target_rows(result: TargetResult, *, wide: bool = False) -> list[dict[str, Any]]:
    """Rows of one target: one per runtime and batch size, one per runtime that did not run, one for an error
    (short statuses; ``TargetsReport.notes`` gives the reasons)."""
    name = result.target + (" (emulated)" if result.emulated else "")
    rows: list[dict[str, Any]] = []
    for rt in result.runtimes:
        if not rt.ok:
            rows.append({"target": name, "runtime": rt.runtime, "status": "not available"})
            continue
        verdict = "no slice"
        if rt.validation is not None:
            verdict = "pass" if rt.validation["passed"] else "FAIL"
        for s in rt.stats:
            row = {"target": name, "runtime": rt.runtime, "batch": s["batch_size"]}
            row |= {"min_ms": s["min_ms"]} if wide else {}
            row |= {"median_ms": s["median_ms"]} | ({"mean_ms": s["mean_ms"]} if wide else {})
            row |= {"p90_ms": s["p90_ms"], "p99_ms": s["p99_ms"]} | ({"std_ms": s["std_ms"]} if wide else {})
            row |= {"throughput": s["throughput"], "median_rel_ci": s["median_rel_ci"], "cold_start_s": rt.cold_start_s,
                    "peak_mb": s.get("peak_rss_mb"), "validation": verdict, "budget": "; ".join(rt.budget) or "ok"}
            rows.append(row)
    if result.error and result.error_kind != "runtime":  # "runtime": every runtime has its own row already
        rows.append({"target": name, "status": "error"})
    return rows


def over_budget(profile: TargetProfile, rt: RuntimeResult) -> list[str]:
    budgets, problems = profile.budgets, []
    if not rt.ok:
        return problems
    smallest = min(rt.stats, key=lambda s: s["batch_size"], default=None)
    if budgets.latency_ms and smallest and smallest["batch_size"] == 1 and smallest["median_ms"] > budgets.latency_ms:
        problems.append(f"latency {smallest['median_ms']:.3g} ms > {budgets.latency_ms:g} ms")
    if budgets.model_mb and rt.model_size_bytes and rt.model_size_bytes / 1e6 > budgets.model_mb:
        problems.append(f"model {rt.model_size_bytes / 1e6:.3g} MB > {budgets.model_mb:g} MB")
    peak = max((s.get("peak_rss_mb") or 0.0 for s in rt.stats), default=0.0)
    if budgets.memory_mb and peak > budgets.memory_mb:
        problems.append(f"memory {peak:.0f} MB > {budgets.memory_mb:g} MB")
    return problems
