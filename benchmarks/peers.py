"""Peers benchmark: edgetl's artifacts beside what each runtime's own tool makes with its documented defaults, on
the same trained models, in one run.

Workloads: ``image`` (the Fashion-MNIST run: EfficientNet-Lite0 teacher and distilled student) and ``text`` (the
banking77 run: all-MiniLM-L6-v2 teacher and 3-layer student). Test split, calibration samples (as many as the run's
``quantize.calibration_size``) and preprocessing come from edgetl's own API, as in ``compression.py`` and ``text.py``.
Peers (``PEERS`` in ``peer_tools.py``, each with its call and where its defaults are documented): onnxruntime
``quantize_static`` (after ``quant_pre_process``) and ``quantize_dynamic``; NNCF ``nncf.quantize``; Optimum
``ORTOptimizer`` O2/O3 and ``ORTQuantizer`` with ``AutoQuantizationConfig.avx2(is_static=False)``; optimum-intel's
``--weight-format int8``; Olive's ``OnnxStaticQuantization`` pass, ``olive auto-opt`` and ``olive optimize``. Every
edgetl artifact of the same model is in the same table.

For every variant: top-1 agreement with its model's FP32 ONNX on onnxruntime over the test split, test accuracy,
size on disk, and batch-1 / batch-8 speed-up over the FP32 model on the same runtime (``onnx-fp32`` on onnxruntime,
``openvino-fp32`` on OpenVINO) as the median per-round ratio of paired, interleaved rounds with its 95% interval
(``edgetl.bench.paired``). Every file runs through edgetl's runners with the same settings, so rows differ only in the
model file. Also (``bapp.py``): OpenVINO ``benchmark_app`` on the FP32 IRs beside edgetl's own harness
(``edgetl.bench.measure``).

    .venv/bin/python benchmarks/peers.py                                                   # full
    .venv/bin/python benchmarks/peers.py --quick --out /tmp/peers-smoke --work /tmp/peers-work   # smoke test

Writes <out>/peers.json and peers.md (default benchmarks/results/); what the peers make goes under --work
(default runs/peers-benchmark/), never into the run folders. A peer that fails gets a row with its reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bapp import bapp_section, benchmark_app_rows
from compression import ORT, OV, default_workload, machine_lines
from peer_tools import PEERS, Subject, first_line

from edgetl._io import read_json, write_json, write_text
from edgetl.bench.paired import MIN_ROUNDS, Ratio, interleaved_rounds, paired_ratio


@dataclasses.dataclass
class Variant:
    model: str
    name: str
    tool: str
    runtime: str
    file: Path | None = None
    call: str = ""
    shipped: str = ""
    error: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    agreement: float | None = None  # top-1 agreement with the model's FP32 ONNX on onnxruntime
    accuracy: float | None = None  # %
    size_mb: float | None = None
    median_ms: dict[int, float] = dataclasses.field(default_factory=dict)
    speedup: dict[int, dict] = dataclasses.field(default_factory=dict)  # FP32 same runtime / this (Ratio.to_dict)
    vs_shipped: dict[int, dict] = dataclasses.field(default_factory=dict)  # shipped / this: > 1 = this is faster


# -- workloads --------------------------------------------------------------------------------------------------


def readable_run(run: Path, work: Path) -> tuple[Path, list[str]]:
    """The run as today's recipe loader reads it. Runs made before ``[finetune.augment]`` became a table say
    ``augment = false`` in ``[finetune]``, which ``load_recipe`` refuses; such a run is read through a view under
    ``work``: links to its folders and a copy of its recipe saying ``[finetune.augment] enabled = false`` (the same
    setting). The run itself is never written."""
    import tomllib

    text = (run / "recipe.toml").read_text(encoding="utf-8")
    if (tomllib.loads(text).get("finetune") or {}).get("augment") is not False:
        return run, []
    view = work / "run-views" / run.name
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    for child in run.iterdir():
        if child.name != "recipe.toml":
            (view / child.name).symlink_to(child.resolve())
    kept = [line for line in text.splitlines() if not re.fullmatch(r"\s*augment\s*=\s*false\s*", line)]
    (view / "recipe.toml").write_text("\n".join(kept) + "\n\n[finetune.augment]\nenabled = false\n", encoding="utf-8")
    return view, [(f"{run}/recipe.toml has the old boolean finetune.augment = false; read through {view} with "
                  "[finetune.augment] enabled = false (the same setting)")]


def image_subjects(run: Path, artifacts: Path, quick: bool) -> tuple[list[Subject], dict[str, Any]]:
    from edgetl.quantize import calibration_images

    workload = default_workload(run, quick)
    calibration = calibration_images(workload.train, workload.preprocess, workload.quantize.calibration_size)
    x = np.ascontiguousarray(workload.preprocess.normalize(workload.test.images[:8]))
    subjects = []
    for key in workload.models:
        prefix = "" if key == "teacher" else f"{key}-"
        subjects.append(Subject(
            "image", key, artifacts / f"{prefix}onnx-fp32/model.onnx", artifacts / f"{prefix}openvino-fp32/model.xml",
            None, workload.test, workload.preprocess, calibration, feed=lambda b: x[:b],
            harness=lambda runner: (runner, lambda b: x[:b])))
    return subjects, {"description": workload.description, "test_samples": len(workload.test),
                      "calibration_samples": len(calibration)}


def text_subjects(run: Path, artifacts: Path, quick: bool) -> tuple[list[Subject], dict[str, Any]]:
    from text import load_run

    from edgetl.quantize import calibration_batches
    from edgetl.tasks.text_export import TokenRunner, bench_inputs

    ctx = load_run(run)
    test = ctx.splits.test.subset(np.arange(min(300, len(ctx.splits.test)))) if quick else ctx.splits.test
    size = 64 if quick else ctx.recipe.quantize.calibration_size
    subjects, lengths = [], {}
    for key in ctx.model_keys():
        pre = ctx.preprocess_of(key)
        lengths[key] = ctx.task.median_length(ctx, key)
        ids_of = bench_inputs(ctx.splits.test, pre, lengths[key])
        pad = pre.tokenizer().token_to_id(pre.pad_token) or 0
        feeds: dict[int, dict[str, np.ndarray]] = {}

        def feed(b: int, ids_of=ids_of, pad=pad, feeds=feeds) -> dict[str, np.ndarray]:
            if b not in feeds:
                ids = ids_of(b)
                feeds[b] = {"input_ids": ids, "attention_mask": (ids != pad).astype(np.int64),
                            "token_type_ids": np.zeros_like(ids)}
            return feeds[b]

        prefix = "" if key == "teacher" else f"{key}-"
        subjects.append(Subject(
            "text", key, artifacts / f"{prefix}onnx-fp32/model.onnx", artifacts / f"{prefix}openvino-fp32/model.xml",
            ctx.model_dir(key) / "model", test, pre,
            calibration_batches(ctx.splits.train, pre, size, seed=ctx.recipe.run.seed), feed=feed,
            harness=lambda runner, pre=pre, pad=pad, ids_of=ids_of: (TokenRunner(runner, pre.input_names, pad),
                                                                     ids_of)))
    return subjects, {"description": f"{ctx.recipe.model.backbone} fine-tuned on {ctx.recipe.data.source}, run {run}; "
                      f"timed on real test texts of the median token length ({lengths})",
                      "test_samples": len(test), "calibration_samples": size}


# -- making and measuring the variants ---------------------------------------------------------------------------


def edgetl_variants(run: Path, subject: Subject, decisions: dict[str, Any]) -> list[Variant]:
    """Every exported artifact of the subject's model in the run, marked as the run decided."""
    rows = []
    for folder in sorted((run / "artifacts").iterdir()):
        if (subject.key == "teacher") == folder.name.startswith("student-"):
            continue
        file = next((f for f in (folder / "model.onnx", folder / "model.xml") if f.is_file()), None)
        if file is None:  # torch: the checkpoint, not a file a runtime loads
            continue
        decision = decisions.get(folder.name, {})
        shipped = ("" if decision.get("status") != "shipped"
                   else "shipped (default)" if decision.get("default") else "shipped")
        rows.append(Variant(subject.key, folder.name, "edgetl", ORT if file.suffix == ".onnx" else OV, file,
                            shipped=shipped, notes=[decision["reason"]] if shipped else []))
    return rows


def staged(subject: Subject, work: Path) -> Subject:
    """The subject with copies of its FP32 folders under ``work``: the peers read these, because some write beside
    their input (onnxruntime's quantizers save ``model-inferred.onnx`` next to the model for shape inference)."""
    copies = {}
    for kind, source in (("onnx", subject.onnx), ("xml", subject.xml)):
        target = work / subject.workload / subject.key / "fp32" / source.parent.name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source.parent, target)
        copies[kind] = target / source.name
    return dataclasses.replace(subject, **copies)


def peer_variants(subject: Subject, work: Path, log=print) -> list[Variant]:
    rows = []
    subject = staged(subject, work)
    for peer in PEERS:
        if subject.workload not in peer.workloads or subject.key not in peer.models:
            continue
        variant = Variant(subject.key, peer.name, peer.tool, peer.runtime, call=peer.call)
        out = work / subject.workload / subject.key / peer.name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        start = time.perf_counter()
        try:
            variant.file, variant.notes = peer.make(subject, out)
            if not variant.file.is_file():
                raise RuntimeError(f"made no {variant.file.name} in {out}")
            log(f"{subject.workload}/{subject.key}/{peer.name}: made in {time.perf_counter() - start:.1f} s")
        except Exception as exc:  # noqa: BLE001 - a peer that fails is a result: its row says why
            variant.error = first_line(exc)
            log(f"{subject.workload}/{subject.key}/{peer.name}: FAILED: {variant.error}")
        rows.append(variant)
    return rows


def measure(subject: Subject, variants: list[Variant], *, threads: int, rounds: int, log=print) -> None:
    """Agreement, accuracy and size of every variant, then batch-1 and batch-8 speed-ups over the FP32 model on the
    same runtime from paired, interleaved rounds (all variants of the model in the same rounds)."""
    from edgetl.bench import model_size_bytes
    from edgetl.runners import open_runner
    from edgetl.validate import predict_logits

    baseline = {ORT: f"{subject.prefix}onnx-fp32", OV: f"{subject.prefix}openvino-fp32"}
    runners, predictions = {}, {}
    for v in variants:
        if v.error:
            continue
        runner = None
        try:
            runner = open_runner(v.file, v.runtime, threads=threads)
            predictions[v.name] = predict_logits(runner, subject.data, subject.preprocess).argmax(1)
            runners[v.name] = runner
        except Exception as exc:  # noqa: BLE001
            if runner is not None:
                runner.close()
            v.error = f"does not run on {v.runtime}: {first_line(exc)}"
            log(f"{subject.workload}/{subject.key}/{v.name}: {v.error}")
            continue
        v.size_mb = round(model_size_bytes(v.file) / 1e6, 2)
    if baseline[ORT] not in predictions:
        raise SystemExit(f"{subject.onnx} does not run on onnxruntime: nothing to compare with; re-export the run")
    reference, labels = predictions[baseline[ORT]], np.asarray(subject.data.labels)
    for v in variants:
        if v.name in predictions:
            v.agreement = round(float((predictions[v.name] == reference).mean()), 4)
            v.accuracy = round(float((predictions[v.name] == labels).mean()) * 100, 2)
    shipped = next((v.name for v in variants if v.shipped == "shipped (default)" and v.name in runners), None)
    try:
        for batch in (1, 8):
            feed = subject.feed(batch)
            calls = {name: (lambda r=runner, f=feed: r.predict(f)) for name, runner in runners.items()}
            log(f"{subject.workload}/{subject.key} batch {batch}: {len(calls)} variants x {rounds} paired rounds")
            times = interleaved_rounds(calls, rounds=rounds, calls_per_round=5 if batch == 1 else 2)
            for v in variants:
                if v.name not in times:
                    continue
                v.median_ms[batch] = round(float(np.median(times[v.name])), 4)
                if baseline[v.runtime] in times:
                    v.speedup[batch] = paired_ratio(times[baseline[v.runtime]], times[v.name]).to_dict()
                if shipped:
                    v.vs_shipped[batch] = paired_ratio(times[shipped], times[v.name]).to_dict()
    finally:
        for runner in runners.values():
            runner.close()



# -- the report -------------------------------------------------------------------------------------------------


def _ratio(stats: dict | None) -> str:
    return "—" if not stats else f"{stats['ratio']:.2f}× ({stats['low']:.2f}–{stats['high']:.2f})"


def variant_table(variants: list[Variant]) -> list[str]:
    head = ["model", "variant", "tool", "runtime", "agree w/ FP32", "test acc %", "size MB",
            "b1 speed-up vs FP32 (95% CI)", "b8 speed-up vs FP32 (95% CI)", "b1 speed-up vs shipped", "notes"]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for v in variants:
        name, runtime = f"**{v.name}** ({v.shipped})" if v.shipped else v.name, v.runtime.partition(":")[0]
        if v.error:
            lines.append(f"| {v.model} | {name} | {v.tool} | {runtime} | FAILED: {v.error} "
                         f"||||||{'; '.join(v.notes)} |")
            continue
        cells = [v.model, name, v.tool, runtime, f"{v.agreement:.2%}", f"{v.accuracy:.2f}", f"{v.size_mb:.2f}",
                 _ratio(v.speedup.get(1)), _ratio(v.speedup.get(8)), _ratio(v.vs_shipped.get(1)),
                 "; ".join(v.notes).replace("|", "/")]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def goal_lines(variants: list[Variant]) -> list[str]:
    """The issue's goal, checked on this run: the shipped artifact against every peer default of its model."""
    shipped = next((v for v in variants if v.shipped == "shipped (default)" and v.agreement is not None), None)
    if shipped is None:
        return ["- no default shipped artifact was measured here"]
    peers = [v for v in variants if v.tool != "edgetl" and v.model == shipped.model and v.agreement is not None]
    above = [v.name for v in peers if v.agreement >= shipped.agreement]
    lines = [f"- shipped `{shipped.name}` ({shipped.model}): agreement {shipped.agreement:.2%}; peer defaults of the "
             f"same model: " + (", ".join(f"{v.name} {v.agreement:.2%}" for v in peers) or "none ran"),
             f"- more accurate than every peer default: {'yes' if not above else 'no — ' + ', '.join(above)}"]
    timed = [v for v in peers if v.vs_shipped.get(1)]
    if not above and timed:
        fastest = max(timed, key=lambda v: v.vs_shipped[1]["ratio"])
        lines.append(f"- no peer default reaches its agreement; the fastest at batch 1, `{fastest.name}` "
                     f"({fastest.agreement:.2%}), runs {_ratio(fastest.vs_shipped[1])} the shipped artifact's speed")
    for v in timed:
        if v.name in above:
            verdict = Ratio(**v.vs_shipped[1]).verdict()  # shipped / peer latency: "faster" = shipped is faster
            verdict = {"faster": "faster", "slower": "slower", "tie": "tied (within 5% or not resolved)"}[verdict]
            lines.append(f"- vs `{v.name}` (same or higher agreement), batch 1: shipped {verdict} "
                         f"(peer speed-up over shipped {_ratio(v.vs_shipped[1])})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-run", type=Path, default=Path("runs/fashion-mnist-lite0"))
    parser.add_argument("--text-run", type=Path, default=Path("runs/banking77-minilm"))
    parser.add_argument("--workloads", default="image,text", help="comma-separated: image, text")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=0,
                        help=f"paired timing rounds (default 20, --quick {MIN_ROUNDS})")
    parser.add_argument("--bapp-seconds", type=float, default=0,
                        help="benchmark_app -t and harness budget (10; quick 2)")
    parser.add_argument("--quick", action="store_true", help="few test samples, 64 calibration samples, few rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=Path("runs/peers-benchmark"), help="where the peers' files go")
    args = parser.parse_args(argv)
    rounds = args.rounds or (MIN_ROUNDS if args.quick else 20)
    if rounds < MIN_ROUNDS:
        parser.error(f"--rounds must be at least {MIN_ROUNDS} (a 95% interval needs them)")
    seconds = args.bapp_seconds or (2.0 if args.quick else 10.0)
    runs = {"image": args.image_run, "text": args.text_run}
    wanted = [w for w in args.workloads.split(",") if w]
    for name in wanted:
        if name not in runs:
            parser.error(f"unknown workload {name!r}; choose image or text")
        if not (runs[name] / "summary.json").is_file():
            parser.error(f"{runs[name]} has no summary.json; finish `edgetl run` there first or pass --{name}-run")
        if args.work.resolve().is_relative_to(runs[name].resolve()):
            parser.error(f"--work {args.work} is inside the run {runs[name]}; the run folders stay untouched")

    from edgetl.bench import environment

    started, load = time.time(), os.getloadavg()
    result: dict[str, Any] = {"environment": environment(), "settings": {
        "threads": args.threads, "rounds": rounds, "quick": args.quick, "benchmark_app_seconds": seconds,
        "runs": {k: str(runs[k]) for k in wanted}, "work": str(args.work), "load_average_at_start": load,
        "runtimes": "every .onnx on onnxruntime CPU (edgetl OrtRunner: intra-op threads = --threads, inter-op 1); "
                    "every IR on OpenVINO CPU (edgetl OpenVinoRunner: LATENCY hint, --threads threads, f32)"},
        "peers": [{"name": p.name, "tool": p.tool, "call": p.call, "reference": p.reference} for p in PEERS],
        "workloads": {}}
    md = ["# Peers: edgetl's artifacts beside each runtime's own tool, with its defaults", "",
          (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `benchmarks/peers.py"
          f"{' --quick' if args.quick else ''}`, {args.threads} threads, {rounds} paired interleaved rounds per batch "
          "size. Agreement: top-1 agreement with the same model's FP32 ONNX on onnxruntime over the test split. "
          "Speed-up: the FP32 model's latency on the same runtime divided by the variant's, per round; the median and "
          "its 95% interval (> 1 = faster). `vs shipped`: the same against the run's default shipped artifact. "
          f"Load average at the start: {', '.join(f'{x:.1f}' for x in load)} (1/5/15 min)."), "",
          "Every file runs through edgetl's runners with the same settings: " + result["settings"]["runtimes"] + "."]
    for name in wanted:
        run, migrated = readable_run(runs[name], args.work)
        make_subjects = image_subjects if name == "image" else text_subjects
        subjects, info = make_subjects(run, runs[name] / "artifacts", args.quick)
        info["description"], info["notes"] = info["description"].replace(str(run), str(runs[name])), migrated
        decisions = read_json(runs[name] / "summary.json").get("decisions", {})
        print(f"== {name}: {info['description']}", flush=True)
        variants: list[Variant] = []
        for subject in subjects:
            mine = edgetl_variants(runs[name], subject, decisions) + peer_variants(subject, args.work)
            measure(subject, mine, threads=args.threads, rounds=rounds)
            variants += mine
        bapp = benchmark_app_rows(subjects, threads=args.threads, seconds=seconds, work=args.work)
        result["workloads"][name] = {**info, "variants": [dataclasses.asdict(v) for v in variants],
                                     "benchmark_app": bapp}
        md += ["", f"## {name}", "", (f"{info['description']}; {info['test_samples']} test samples, "
               f"{info['calibration_samples']} calibration samples. " + " ".join(info["notes"])), ""]
        md += variant_table(variants)
        md += ["", "### The issue's goal on this run", ""] + goal_lines(variants)
        md += bapp_section(bapp, threads=args.threads, seconds=seconds)
        print("\n".join(variant_table(variants)), flush=True)
        result["seconds"] = round(time.time() - started, 1)
        args.out.mkdir(parents=True, exist_ok=True)  # written after each workload: an interrupted run keeps it
        write_json(args.out / "peers.json", result)
        write_text(args.out / "peers.md", "\n".join(md + peer_lines() + ["", "## Machine", ""]
                                                    + machine_lines(result["environment"])) + "\n")
        print(f"wrote {args.out / 'peers.json'} and {args.out / 'peers.md'} ({result['seconds']} s so far)", flush=True)
    return 0


def peer_lines() -> list[str]:
    return ["", "## Peer calls and where their defaults are documented", ""] + [
        f"- `{p.name}` ({p.tool}): `{p.call}` — {p.reference}" for p in PEERS]


if __name__ == "__main__":
    raise SystemExit(main())
