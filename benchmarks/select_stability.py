"""Does the same artifact ship every time? The race (paired rounds, ratio intervals, a tie rule) against the old
rule (each candidate timed on its own, lowest median wins), repeated on one finished run.

Each repetition does what a fresh `edgetl run` would do at its select step, twice: (1) the old rule: every passing
candidate benchmarked on its own with the recipe's bench policy, one after the other, and the lowest batch-1 median
ships; (2) the race: all candidates timed together in `bench.race_rounds` interleaved rounds, and `select` decides
(a lead smaller than `bench.race_margin`, or not measured precisely enough, is a tie: smaller file, then higher
agreement, then the simpler runtime). The table counts how often each rule's default artifact changed.

    .venv/bin/python benchmarks/select_stability.py                       # the built-in run (runs/fashion-mnist-lite0)
    .venv/bin/python benchmarks/select_stability.py --repeats 10 --set run.name=other
    .venv/bin/python benchmarks/select_stability.py banking77             # a recipe file or built-in name

The run must have finished (`edgetl run` with the same recipe and overrides): this times its artifacts and trains
nothing. Writes benchmarks/results/select_stability.json and .md (with the machine description and load average).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compression import machine_lines

from edgetl._io import write_json, write_text


def separate_medians(ctx, chosen) -> dict[str, float]:
    """The old rule's numbers: each candidate benchmarked on its own at the smallest batch size, in plan order."""
    from edgetl.bench import benchmark

    config, medians = ctx.recipe.bench, {}
    for artifact in chosen:
        runner, _ = ctx.open(artifact, config.threads)
        timed, inputs, _ = ctx.task.bench_setup(ctx, artifact.model, runner)
        with contextlib.closing(timed):
            result = benchmark(timed, batch_sizes=[min(config.batch_sizes)], config=config, **inputs)
        medians[artifact.name] = result.stats[0].median_ms
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", default=None, help="recipe file or built-in name (default: the example)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    from edgetl.bench import environment
    from edgetl.pipeline import RunContext, bench_stage, validate_stage
    from edgetl.pipeline.race import race
    from edgetl.pipeline.select import candidates, select
    from edgetl.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    ctx = RunContext(recipe, progress=False, log=lambda m: print(f"  {m}", flush=True))
    validation, benchmarks = validate_stage(ctx), bench_stage(ctx)
    chosen, _ = candidates(ctx, validation, benchmarks)
    if len(chosen) < 2:
        print(f"{len(chosen)} passing candidate(s) in {recipe.run_dir}: nothing to choose between", file=sys.stderr)
        return 1
    names = [a.name for a in chosen]
    print(f"{len(chosen)} candidates: {', '.join(names)}", flush=True)
    repeats = []
    for index in range(args.repeats):
        start = time.perf_counter()
        medians = separate_medians(ctx, chosen)
        old = min(names, key=lambda n: medians[n])
        raced = race(ctx, chosen)
        decisions = select(ctx, validation, benchmarks, raced)
        new = next(n for n, d in decisions.items() if d.get("default"))
        repeats.append({"old_winner": old, "medians_ms": medians, "race_winner": new,
                        "race_reason": decisions[new]["reason"], "race_ratio": decisions[new].get("ratio"),
                        "times_ms": raced["times_ms"], "seconds": round(time.perf_counter() - start, 1),
                        "load_average": [round(x, 2) for x in os.getloadavg()]})
        print(f"repeat {index + 1}: old rule -> {old}; race -> {new} ({decisions[new]['reason']})", flush=True)
    result = {"run": str(recipe.run_dir), "candidates": names, "repeats": repeats,
              "sizes_mb": {n: round(benchmarks[n]["model_size_bytes"] / 1e6, 3) for n in names},
              "agreement": {n: validation[n]["agreement"] for n in names},
              "settings": {"rounds": recipe.bench.race_rounds, "calls_per_round": recipe.bench.race_calls,
                           "margin": recipe.bench.race_margin, "threads": recipe.bench.threads,
                           "bench": {"warmup": recipe.bench.warmup, "min_runs": recipe.bench.min_runs,
                                     "max_seconds": recipe.bench.max_seconds}},
              "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "environment": environment()}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "select_stability.json", result)
    write_text(args.out / "select_stability.md", "\n".join(report_lines(result)) + "\n")
    print(f"wrote {args.out / 'select_stability.md'}")
    return 0


def report_lines(result: dict[str, Any]) -> list[str]:
    repeats, settings = result["repeats"], result["settings"]
    old, new = (collections.Counter(r[k] for r in repeats) for k in ("old_winner", "race_winner"))
    lines = ["# Does the same artifact ship every time?", "",
             (f"Measured {result['measured']} by `benchmarks/select_stability.py` on `{result['run']}`: "
             f"{len(repeats)} repetitions of the select step, each with both rules. Old rule: each candidate "
             f"benchmarked on its own (warm-up {settings['bench']['warmup']}, at least {settings['bench']['min_runs']} "
             f"runs, up to {settings['bench']['max_seconds']} s), lowest median wins. Race: "
             f"{settings['rounds']} interleaved rounds of {settings['calls_per_round']} calls, faster only when the "
             f"95% interval of the ratio is more than {settings['margin']:.0%} from 1, else the tie rule "
             f"(smaller file, higher agreement, simpler runtime). {settings['threads']} threads."), "",
             f"- old rule: {len(old)} different default artifact(s): "
             + ", ".join(f"{n} ×{c}" for n, c in old.most_common()),
             f"- race: {len(new)} different default artifact(s): " + ", ".join(f"{n} ×{c}" for n, c in new.most_common()),
             "", ("| repeat | old rule ships | its median, ms | runner-up's, ms | race ships | ratio behind it "
                  "(rival / winner, 95% CI) | load avg (1 min) |"), "|---|---|---|---|---|---|---|"]
    for index, r in enumerate(repeats, 1):
        ordered = sorted(r["medians_ms"], key=r["medians_ms"].get)
        ratio = r["race_ratio"] or {}
        behind = (f"{ratio.get('vs')}: {ratio['ratio']:.2f} ({ratio['low']:.2f}-{ratio['high']:.2f})"
                  if ratio.get("low") is not None else "")
        lines.append(f"| {index} | {ordered[0]} | {r['medians_ms'][ordered[0]]:.3f} | {ordered[1]} "
                     f"{r['medians_ms'][ordered[1]]:.3f} | {r['race_winner']} | {behind} | {r['load_average'][0]} |")
    lines += ["", "Candidates (passed the gate): " + ", ".join(
        f"{n} ({result['sizes_mb'][n]} MB, {result['agreement'][n]:.2%} agreement)" for n in result["candidates"]),
        "", "Each repetition's race reason:", ""]
    lines += [f"{i}. {r['race_reason']}" for i, r in enumerate(repeats, 1)]
    lines += ["", "## Machine", "", *machine_lines(result["environment"])]
    return lines


if __name__ == "__main__":
    sys.exit(main())
