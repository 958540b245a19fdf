"""Text benchmark: the banking77 run's teacher, student and every quantized variant, measured in one run.

For each artifact of a finished ``edgetl run banking77`` (torch FP32, ONNX and OpenVINO FP32 exports, every
quantized variant, for the fine-tuned all-MiniLM-L6-v2 teacher and the distilled 3-layer student): test accuracy,
top-1 agreement with its own FP32 torch model and with the teacher (both from the shared validation check the run
recorded), the shape contract's verdict, size on disk, and CPU latency at batch 1 and 8 at the median and the
95th-percentile token length of the test texts (real texts of that length), with ratios to torch eager FP32
(the teacher's, and the artifact's own model's). Every runner is timed interleaved (round-robin, a few calls each
per round) so that load from other processes hits them alike; ratios are per-round, reported as median and IQR.

    .venv/bin/python benchmarks/text.py --run runs/banking77-minilm            # full
    .venv/bin/python benchmarks/text.py --run runs/banking77-minilm --quick    # smoke test

Writes benchmarks/results/text.json and text.md (with the machine description).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compression import _ratio, interleaved, machine_lines, ratio_stats  # noqa: E402

from edgetl._io import read_json, write_json, write_text  # noqa: E402

TORCH = "torch:cpu"


def load_run(run: Path):
    from edgetl.recipe import load_recipe
    from edgetl.pipeline import RunContext

    recipe = load_recipe(run / "recipe.toml")
    if recipe.model.task != "text-classification":
        raise SystemExit(f"{run} is not a text run (model.task = {recipe.model.task!r})")
    recipe.run.output_dir, recipe.run.name = str(run.parent), run.name
    return RunContext(recipe, progress=False, log=lambda m: None)


def artifact_rows(ctx) -> list[dict[str, Any]]:
    """Every made artifact with its recorded validation (the shared check; run now when missing) and size."""
    from edgetl.pipeline import made, validate_artifact

    rows = []
    for artifact in made(ctx):
        record = ctx.artifact_dir(artifact) / "validation.json"
        report = read_json(record)["report"] if record.is_file() else validate_artifact(ctx, artifact)
        if artifact.format == "torch":
            size = (ctx.model_dir(artifact.model) / "model" / "model.safetensors").stat().st_size
        else:
            size = sum(p.stat().st_size for p in ctx.shipped_files(artifact))
        rows.append({"artifact": artifact, "name": artifact.name, "model": artifact.model, "runtime": artifact.runtime,
                     "report": report, "size_bytes": size})
    return rows


def time_all(ctx, rows: list[dict[str, Any]], *, threads: int, batch_sizes: list[int], lengths: dict[str, int],
             rounds: int, log=print) -> list[dict[str, Any]]:
    from edgetl.tasks.text_export import bench_inputs

    runners = {row["name"]: ctx.open(row["artifact"], threads)[0] for row in rows}
    preprocess = {key: ctx.preprocess_of(key) for key in {row["model"] for row in rows}}
    timings = []
    try:
        for length_name, length in lengths.items():
            for batch in batch_sizes:
                feeds = {}
                for key, pre in preprocess.items():
                    ids = bench_inputs(ctx.splits.test, pre, length)(batch)
                    pad = pre.tokenizer().token_to_id(pre.pad_token) or 0
                    feeds[key] = {"input_ids": ids, "attention_mask": (ids != pad).astype(np.int64),
                                  "token_type_ids": np.zeros_like(ids)}
                calls = {row["name"]: (lambda r=runners[row["name"]], f=feeds[row["model"]]: r.predict(f)) for row in rows}
                per_round = 5 if batch == 1 else 2
                log(f"timing batch {batch} at {length} tokens ({length_name}): {len(calls)} runners x {rounds} rounds")
                samples = interleaved(calls, rounds=rounds, per_round=per_round)
                teacher_torch = samples["torch-fp32"]
                for row in rows:
                    times = samples[row["name"]]
                    own_torch = samples["student-torch-fp32" if row["model"] == "student" else "torch-fp32"]
                    timings.append({
                        "variant": row["name"], "model": row["model"], "runtime": row["runtime"], "batch": batch,
                        "length_name": length_name, "length": length,
                        "median_ms": round(float(np.median(times)), 3),
                        "q25_ms": round(float(np.percentile(times, 25)), 3),
                        "q75_ms": round(float(np.percentile(times, 75)), 3),
                        "speedup_vs_teacher_torch": ratio_stats(teacher_torch, times),
                        "speedup_vs_own_torch": ratio_stats(own_torch, times),
                    })
                if "student-onnx-fp32" in samples and "onnx-fp32" in samples:
                    timings.append({"note": "student vs teacher, ONNX Runtime FP32", "batch": batch,
                                    "length_name": length_name, "length": length,
                                    "speedup": ratio_stats(samples["onnx-fp32"], samples["student-onnx-fp32"])})
    finally:
        for runner in runners.values():
            runner.close()
    return timings


def table(rows: list[dict[str, Any]], timings: list[dict[str, Any]], batch_sizes: list[int],
          lengths: dict[str, int]) -> list[str]:
    index = {(t["variant"], t["batch"], t["length_name"]): t for t in timings if "variant" in t}
    head = ["variant", "runtime", "test acc %", "agree w/ own FP32", "agree w/ teacher", "gate", "contract", "size MB"]
    for length_name, length in lengths.items():
        for batch in batch_sizes:
            head += [f"b{batch} {length_name} ({length} tok) ms", "vs torch teacher", "vs own torch"]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for row in rows:
        report = row["report"]
        contract = report.get("shape_contract")
        cells = [row["name"], row["runtime"], f"{report['accuracy']:.2f}",
                 f"{report['agreement']:.2%}" if report.get("agreement") is not None else "—",
                 f"{report['teacher_agreement']:.2%}" if report.get("teacher_agreement") is not None else "—",
                 "pass" if report["passed"] else "FAIL: " + "; ".join(report["reasons"]),
                 "—" if contract is None else f"{'pass' if contract['passed'] else 'FAIL'} ({contract['precision']})",
                 f"{row['size_bytes'] / 1e6:.1f}"]
        for length_name in lengths:
            for batch in batch_sizes:
                t = index.get((row["name"], batch, length_name))
                cells += ["—"] * 3 if t is None else [f"{t['median_ms']:.2f}", _ratio(t["speedup_vs_teacher_torch"]),
                                                     _ratio(t["speedup_vs_own_torch"])]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/banking77-minilm"), help="text pipeline run folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=0, help="timing rounds (default 15, --quick 3)")
    parser.add_argument("--quick", action="store_true", help="few rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if not (args.run / "summary.json").is_file():
        parser.error(f"{args.run} has no summary.json; run `edgetl run banking77` first (or pass --run)")

    from edgetl.bench import environment
    from edgetl.data.text_batches import clipped_lengths

    started = time.time()
    rounds = args.rounds or (3 if args.quick else 15)
    batch_sizes = [1, 8]
    ctx = load_run(args.run)
    summary = read_json(args.run / "summary.json")
    token_lengths = clipped_lengths(ctx.preprocess_of("teacher"), ctx.splits.test.texts)
    lengths = {"median": int(np.median(token_lengths)), "p95": int(np.percentile(token_lengths, 95))}
    load = os.getloadavg()
    rows = artifact_rows(ctx)
    timings = time_all(ctx, rows, threads=args.threads, batch_sizes=batch_sizes, lengths=lengths, rounds=rounds)
    finetuned = read_json(ctx.model_dir("teacher") / "result.json")
    distilled = read_json(ctx.model_dir("student") / "result.json") if (ctx.model_dir("student") / "result.json").is_file() else {}
    result = {
        "environment": environment(),
        "settings": {"threads": args.threads, "rounds": rounds, "batch_sizes": batch_sizes, "lengths": lengths,
                     "run": str(args.run), "load_average_at_start": load, "quick": args.quick},
        "accuracy": {"probe_test": finetuned.get("probe_test_accuracy"), "finetuned_test": finetuned.get("test_accuracy"),
                     "student_test": distilled.get("student_test_accuracy"),
                     "student_without_teacher_test": distilled.get("baseline_test_accuracy"),
                     "student_relative": distilled.get("relative_accuracy")},
        "run_seconds": summary.get("seconds"), "run_stage_seconds": summary.get("stage_seconds"),
        "variants": [{k: v for k, v in row.items() if k != "artifact"} for row in rows],
        "timings": timings,
    }
    result["seconds"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "text.json", result)

    acc = result["accuracy"]
    md = ["# Text benchmark: all-MiniLM-L6-v2 on banking77", "",
          f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `benchmarks/text.py"
          f"{' --quick' if args.quick else ''}` on the run `{args.run}`, {args.threads} threads, {rounds} interleaved "
          "rounds; latency ratios are per-round medians with the interquartile range. Load average at the start: "
          f"{', '.join(f'{x:.1f}' for x in load)} (1/5/15 min).", "", "## Machine", ""]
    md += machine_lines(result["environment"])
    md += ["", "## Accuracy (banking77 test, 3,080 texts)", "",
           f"- linear probe on frozen mean-pooled embeddings: {acc['probe_test']:.2f}%",
           f"- fine-tuned teacher (probe, then top layers): {acc['finetuned_test']:.2f}%"]
    if acc["student_test"] is not None:
        md += [f"- 3-layer student, distilled: {acc['student_test']:.2f}% ({acc['student_relative']:.1%} of the teacher)"]
    if acc["student_without_teacher_test"] is not None:
        md += [f"- the same student without the teacher (same init, same budget): {acc['student_without_teacher_test']:.2f}%"]
    if summary.get("seconds"):
        md += [f"- the whole `edgetl run` took {summary['seconds']:.0f} s "
               f"({', '.join(f'{k} {v:.0f} s' for k, v in (summary.get('stage_seconds') or {}).items())})"]
    md += ["", "## Every artifact", "", f"Token lengths of the test texts: median {lengths['median']}, "
           f"p95 {lengths['p95']} (inputs are real test texts of that length).", ""]
    md += table(rows, timings, batch_sizes, lengths)
    notes = [t for t in timings if "note" in t]
    if notes:
        md += ["", "Student vs teacher (ONNX Runtime FP32, same inputs): " + "; ".join(
            f"batch {t['batch']} at {t['length']} tokens {_ratio(t['speedup'])}" for t in notes)]
    md += ["", "Accuracy, agreements, gate and shape contract come from the run's shared validation records. "
           "Ratios > 1 mean faster than torch eager FP32."]
    write_text(args.out / "text.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
