"""``run(recipe)``: finetune (-> scratch baseline) -> distill -> export -> quantize -> validate -> bench -> select ->
ship, for any task."""

from __future__ import annotations

import time
from typing import Any, Callable

from .._io import write_json
from ..settings import Recipe
from ..train.launch import is_main_process
from .context import RunContext
from .lock import run_lock
from .select import decide, distill_summary, summary_rows
from .ship import report_files, ship_stage
from .stages import (
    bench_stage,
    distill_stage,
    export_stage,
    finetune_stage,
    quantize_stage,
    scratch_stage,
    validate_stage,
)
from .transfer import check_scratch


def run(recipe: Recipe, *, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole pipeline on one recipe; returns the run summary (also written to ``summary.json``).

    Holds the run folder's lock throughout: a second process on the same run is refused (RunLocked)."""
    with run_lock(recipe.run_dir):
        return _run(RunContext(recipe, progress=progress, log=log))


def _run(ctx: RunContext) -> dict[str, Any]:
    start, recipe = time.perf_counter(), ctx.recipe
    stage_seconds: dict[str, float] = {}

    def timed(name: str, fn, *args):
        began = time.perf_counter()
        result = fn(*args)
        stage_seconds[name] = round(time.perf_counter() - began, 1)
        return result

    check_scratch(recipe)  # before the teacher trains
    finetuned = timed("finetune", finetune_stage, ctx)
    if recipe.finetune.scratch_baseline:
        timed("scratch", scratch_stage, ctx)
    distilled = timed("distill", distill_stage, ctx)
    if not is_main_process():  # launched on several processes: the others only help train
        return {}
    timed("export", export_stage, ctx)
    timed("quantize", quantize_stage, ctx)
    validation = timed("validate", validate_stage, ctx)
    benchmarks = timed("bench", bench_stage, ctx)
    decisions = timed("select", decide, ctx, validation, benchmarks)  # the race among the passing artifacts
    summary = {
        "run": recipe.run.name,
        "task": ctx.task.name,
        **ctx.origin.summary(ctx, finetuned),
        **ctx.task.summary(ctx),
        "distill": distill_summary(distilled),
        "skipped_files": [f.path for f in getattr(ctx.splits, "skipped", [])],  # unreadable, named in the log
        "variants": summary_rows(validation, benchmarks, decisions),
        "decisions": decisions,
        "default_artifact": next((name for name, d in decisions.items() if d.get("default")), None),
        "stage_seconds": stage_seconds,
    }
    report = timed("report", report_files, ctx, summary)  # runs/<name>/report.html and .json, shipped too
    shipped = timed("ship", ship_stage, ctx, validation, benchmarks, decisions, report)
    summary.update(default_artifact=shipped.default_artifact, bundle=str(shipped.path), archive=str(shipped.archive),
                   seconds=round(time.perf_counter() - start, 1))
    write_json(ctx.run_dir / "summary.json", summary)
    return summary
