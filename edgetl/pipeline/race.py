"""The race: the artifacts that could ship, timed side by side so that ``select`` compares them on paired rounds.

The bench stage times each artifact on its own, at every batch size, for the table; minutes apart on a busy machine
those medians can differ 2-4x for the same file. Before ``select`` decides, the candidates (passed the gate,
benchmarked, of a shipped format) are opened together and timed in ``bench.race_rounds`` interleaved rounds at the
smallest batch size on the task's own bench inputs (``edgetl.bench.paired``). The per-round times are kept in
``runs/<name>/race.json``, keyed by the candidates, their models' checkpoints and the sections that made them: a
rerun of the same run decides the same way without timing again.
"""

from __future__ import annotations

import contextlib
import functools
from datetime import datetime, timezone
from typing import Any

from .._io import is_fresh, read_json, write_json
from .context import RunContext
from .transfer import without_scratch

RACE_FILE = "race.json"


def race_stage(ctx: RunContext, candidates: list) -> dict[str, Any] | None:
    """Per-round times (ms) of every candidate artifact, timed together; None when there is nothing to compare
    (fewer than two candidates) or ``bench.race_rounds = 0``. Read back from ``race.json`` when it was run on the
    same candidates."""
    config = ctx.recipe.bench
    if len(candidates) < 2 or config.race_rounds == 0:
        return None
    record = ctx.run_dir / RACE_FILE
    key = {"candidates": sorted(a.name for a in candidates),
           "checkpoints": {m: ctx.checkpoint_hash(m) for m in sorted({a.model for a in candidates})},
           "recipe": without_scratch(ctx.recipe).section_hash("export", "quantize", "bench", *ctx.task.sections)}
    if is_fresh(record, key):
        return read_json(record)["result"]
    ctx.log(f"race: {len(candidates)} passing artifacts timed together, {config.race_rounds} rounds at batch "
            f"{min(config.batch_sizes)}")
    result = race(ctx, candidates)
    write_json(record, {"key": key, "result": result})
    return result


def race(ctx: RunContext, candidates: list) -> dict[str, Any]:
    """Time ``candidates`` together now (``bench.race_rounds`` interleaved rounds at the smallest batch size, on the
    task's bench inputs); the record ``select`` judges on."""
    from ..bench.paired import SETTLE_SECONDS, interleaved_rounds
    from ..bench.timing import make_batch

    config = ctx.recipe.bench
    batch_size = min(config.batch_sizes)
    with contextlib.ExitStack() as stack:
        calls = {}
        for artifact in candidates:
            runner, _ = ctx.open(artifact, config.threads)
            timed, inputs, _ = ctx.task.bench_setup(ctx, artifact.model, runner)
            stack.callback(timed.close)
            batch = make_batch(timed, batch_size, inputs.get("make_input"), inputs.get("input_shape"))
            calls[artifact.name] = functools.partial(timed.predict, batch)
        bar = stack.enter_context(ctx.steps(config.race_rounds, "race round"))
        times = interleaved_rounds(calls, rounds=config.race_rounds, calls_per_round=config.race_calls,
                                   warmup=max(1, min(config.warmup, 3)), on_round=lambda _: bar.advance())
    return {"batch_size": batch_size, "rounds": config.race_rounds, "calls_per_round": config.race_calls,
            "threads": config.threads, "margin": config.race_margin, "settle_s": SETTLE_SECONDS, "times_ms": times,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}

