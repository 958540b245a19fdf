"""Backbone benchmark: every registered image backbone with ImageNet weights, measured three ways.

1. Latency (default): each backbone built with its ImageNet weights at its native size, exported by the pipeline's own
   exporters (``edgetl.export``: ONNX, then OpenVINO IR), checked against torch on real photos, then timed on
   onnxruntime and OpenVINO at batch 1 and 8 in interleaved rounds (the backbones of one runtime take turns round
   after round, a few calls each, with a pause before each turn so the previous session's spinning worker threads
   are idle; ``compression.interleaved``). Per round, each backbone's latency over Lite0's on the same runtime and
   batch: median and IQR; absolute per-round medians with their IQR beside.
2. ``--finetune``: the built-in example (Fashion-MNIST, the recipe's default budget, 64 px) fine-tuned from each
   backbone by the pipeline's finetune stage (``model.backbone`` set): linear-probe and fine-tuned test accuracy and
   wall time. Minutes per backbone.
3. ``--memory``: peak memory of a fine-tune as the dataset grows: Fashion-MNIST training images (1k, 10k, 60k) written
   as PNG files into a class-per-folder tree, read by the ``folder`` data source with whatever loader is current, one
   child process per size, on a small fixed budget (``MEMORY_BUDGET``). Peak RSS of the child (the kernel's
   high-water mark, ``getrusage``), of its largest child process (DataLoader workers), and the sampled peak of the
   whole process tree's PSS (``/proc/<pid>/smaps_rollup``; shared pages split between processes).

    .venv/bin/python benchmarks/backbones.py                       # latency, 20 rounds
    .venv/bin/python benchmarks/backbones.py --finetune --memory   # all three parts
    .venv/bin/python benchmarks/backbones.py --no-latency --memory --finetune-image-size 224 --memory-sizes 1000,4000 \
        --set data.cache_mb=128                                    # at 224 px, 4.7x more images than the cache holds
    .venv/bin/python benchmarks/backbones.py --rounds 2 --backbones efficientnet_lite0 --out /tmp/b  # smoke test

Each part replaces its own entry in ``<out>/backbones.json`` (the others are kept) and ``backbones.md`` is rewritten
from it. Exports, runs and image folders land in ``runs/backbones-benchmark/`` (kept; made afresh except the folders).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compression import interleaved, machine_lines, ratio_stats, sample_photos

from edgetl._io import read_json, write_json, write_text

ORT = "onnxruntime:CPUExecutionProvider"
OV = "openvino:CPU"
BASE = "efficientnet_lite0"  # every latency ratio's denominator, on the same runtime and batch
SETTLE_SECONDS = 0.1  # before each turn: onnxruntime's worker threads spin for tens of ms after a call (optimize.py)
CHECK_PHOTOS = 8
# The memory part's fine-tune: one probe epoch and one epoch with the head convolution unfrozen. Enough to load
# the data, cache the probe's features and train, which is where memory peaks; accuracy is not the point.
MEMORY_BUDGET = ["finetune.probe_epochs=1", "finetune.unfreeze=[1]", "finetune.stage_epochs=[1]",
                 "finetune.patience=0", "distill.enabled=false"]


def weighted_backbones(names: list[str]) -> list[Any]:
    """The image specs with ImageNet weights (a weights package): all of them, or those named."""
    from edgetl.backbones import get_spec, list_backbones

    if names:
        return [get_spec(name, kind="image") for name in names]
    return [spec for spec in list_backbones("image") if spec.package]


def installed(spec) -> str | None:
    """Why ``spec``'s weights cannot be loaded here, or None."""
    from edgetl.backbones.weights import package_dir
    from edgetl.errors import WeightsError

    try:
        package_dir(spec)
    except WeightsError as exc:
        return str(exc)
    return None


# -- 1. latency -------------------------------------------------------------------------------------


def export_backbone(spec, work: Path, threads: int) -> dict[str, Any]:
    """ONNX and OpenVINO FP32 of the ImageNet model at its native size, and how far each is from torch on photos."""
    import torch

    from edgetl.backbones import create_model
    from edgetl.export import export_onnx, export_openvino
    from edgetl.runners import open_runner

    size, preprocess = spec.default_image_size, spec.preprocess()
    model = create_model(spec.name, num_classes=1000).eval()
    folder = work / spec.name
    shutil.rmtree(folder, ignore_errors=True)
    meta = {"preprocess": preprocess.to_dict()}
    onnx_info = export_onnx(model, folder / "model.onnx", input_shape=(3, size, size), metadata=meta)
    ov_info = export_openvino(folder / "model.onnx", folder / "openvino" / "model.xml", metadata=meta)
    photos = preprocess.normalize(sample_photos(CHECK_PHOTOS, size, seed=0))
    with torch.inference_mode():
        reference = model(torch.from_numpy(photos)).numpy()
    entry = {"image_size": size, "num_params": spec.num_params, "package": spec.requirement,
             "files": {ORT: str(folder / "model.onnx"), OV: str(folder / "openvino" / "model.xml")},
             "export_seconds": {"onnx": onnx_info.seconds, "openvino": ov_info.seconds}, "check": {}}
    for runtime, file in entry["files"].items():
        runner = open_runner(file, runtime, threads=threads)
        logits = runner.predict(photos)
        runner.close()
        entry["check"][runtime] = {"photos": CHECK_PHOTOS,
                                   "max_abs_logit_diff": float(f"{np.abs(logits - reference).max():.3g}"),
                                   "top1_agreement": float((logits.argmax(1) == reference.argmax(1)).mean())}
    return entry


def time_backbones(entries: dict[str, dict[str, Any]], *, threads: int, batch_sizes: list[int],
                   rounds: int) -> list[dict[str, Any]]:
    """Per runtime and batch size, the backbones timed in interleaved rounds (each on photos at its own size)."""
    from edgetl.backbones import get_spec
    from edgetl.runners import open_runner

    rows = []
    for runtime in (ORT, OV):
        runners = {name: open_runner(entry["files"][runtime], runtime, threads=threads)
                   for name, entry in entries.items()}
        try:
            for batch in batch_sizes:
                inputs = {name: get_spec(name).preprocess().normalize(
                    sample_photos(batch, entries[name]["image_size"], seed=batch)) for name in entries}
                print(f"timing {runtime} batch {batch}: {len(runners)} backbone(s) x {rounds} rounds", flush=True)
                samples = interleaved({name: (lambda r=runner, x=inputs[name]: r.predict(x))
                                       for name, runner in runners.items()},
                                      rounds=rounds, per_round=5 if batch == 1 else 2, settle=SETTLE_SECONDS)
                for name, times in samples.items():
                    rows.append({"backbone": name, "runtime": runtime, "batch": batch,
                                 "median_ms": round(float(np.median(times)), 3),
                                 "q25_ms": round(float(np.percentile(times, 25)), 3),
                                 "q75_ms": round(float(np.percentile(times, 75)), 3),
                                 # ratio_stats(a, b) is a/b per round: here this backbone's latency over Lite0's
                                 "latency_vs_lite0": ratio_stats(times, samples[BASE]) if BASE in samples else None})
        finally:
            for runner in runners.values():
                runner.close()
    return rows


def latency_part(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    backbones, skipped = {}, {}
    for spec in weighted_backbones(args.backbones):
        reason = installed(spec)
        if reason:
            skipped[spec.name] = reason
            print(f"{spec.name}: not measured: {reason}", flush=True)
            continue
        backbones[spec.name] = export_backbone(spec, work / "exports", args.threads)
        print(f"{spec.name}: exported at {spec.default_image_size} px; check {backbones[spec.name]['check']}",
              flush=True)
    timings = time_backbones(backbones, threads=args.threads, batch_sizes=args.batch_sizes, rounds=args.rounds)
    return {"settings": {"threads": args.threads, "rounds": args.rounds, "batch_sizes": args.batch_sizes,
                         "settle_seconds": SETTLE_SECONDS},
            "backbones": backbones, "skipped": skipped, "timings": timings}


# -- 2. fine-tuned accuracy on the built-in example ---------------------------------------------------


def finetune_part(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from edgetl.pipeline import RunContext, finetune_stage
    from edgetl.recipe import load_recipe

    results, skipped = {}, {}
    for spec in weighted_backbones(args.backbones):
        reason = installed(spec)
        if reason:
            skipped[spec.name] = reason
            continue
        overrides = [f"model.backbone={json.dumps(spec.name)}", f"model.image_size={args.finetune_image_size}",
                     f"run.output_dir={json.dumps(str(work / 'runs'))}", f"run.name={json.dumps('ft-' + spec.name)}",
                     *args.set]
        recipe = load_recipe(None, overrides)
        shutil.rmtree(recipe.run_dir, ignore_errors=True)  # fresh: nothing reused from an earlier run
        print(f"== fine-tune {spec.name} at {args.finetune_image_size} px", flush=True)
        start = time.perf_counter()
        result = finetune_stage(RunContext(recipe, progress=False, log=lambda m: print(f"  {m}", flush=True)))
        results[spec.name] = {"probe_test_accuracy": result.probe_test_accuracy,
                              "test_accuracy": result.test_accuracy, "val_accuracy": result.val_accuracy,
                              "best_stage": result.best_stage, "epochs": result.epochs,
                              "train_seconds": round(result.seconds, 1),
                              "wall_seconds": round(time.perf_counter() - start, 1)}
    return {"settings": {"image_size": args.finetune_image_size, "overrides": args.set,
                         "recipe": "the built-in example's defaults (Fashion-MNIST subset)"},
            "results": results, "skipped": skipped}


# -- 3. peak memory as the dataset grows ------------------------------------------------------------


def fashion_mnist_folder(count: int, root: Path) -> Path:
    """``count`` Fashion-MNIST training images (a stratified draw) as PNG files in ``root/<class>/``; made once."""
    from PIL import Image

    from edgetl.data.dataset import stratified_indices
    from edgetl.data.sources import FASHION_MNIST_CLASSES, find_fashion_mnist, read_fashion_mnist

    folder = root / f"fashion-mnist-{count}"
    if (folder / ".complete").is_file():
        return folder
    images, labels = read_fashion_mnist(find_fashion_mnist(os.environ.get("EDGETL_FASHION_MNIST")), "train")
    chosen = stratified_indices(labels, count // len(FASHION_MNIST_CLASSES), seed=0)[:count]
    shutil.rmtree(folder, ignore_errors=True)
    for index in chosen:
        target = folder / FASHION_MNIST_CLASSES[labels[index]].replace("/", "-") / f"{index:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(target)
    (folder / ".complete").write_text(f"{len(chosen)}\n")
    return folder


def _proc_kb(path: str, field: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:  # the process ended between listing and reading
        pass
    return 0


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from the parent ids in /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" ", 1)
            parents.setdefault(int(rest.rsplit(")", 1)[1].split()[1]), []).append(int(pid))
        except (OSError, IndexError, ValueError):
            continue
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += parents.get(pid, [])
    return tree


def measure_memory(count: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One fine-tune on ``count`` images in a child process, its process tree's memory sampled meanwhile."""
    folder = fashion_mnist_folder(count, work / "folders")
    command = [sys.executable, __file__, "--memory-child", str(folder), "--backbones", args.memory_backbone,
               "--work", str(work), "--finetune-image-size", str(args.finetune_image_size),
               *(arg for override in args.set for arg in ("--set", override))]
    start, peak_pss, peak_rss = time.perf_counter(), 0, 0
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    while child.poll() is None:
        tree = process_tree(child.pid)
        peak_pss = max(peak_pss, sum(_proc_kb(f"/proc/{pid}/smaps_rollup", "Pss") for pid in tree))
        peak_rss = max(peak_rss, sum(_proc_kb(f"/proc/{pid}/status", "VmRSS") for pid in tree))
        time.sleep(0.25)
    output = child.stdout.read()
    if child.returncode != 0:
        raise SystemExit(f"the {count}-image fine-tune failed (exit {child.returncode}); its output:\n{output}")
    report = json.loads(output.strip().splitlines()[-1])
    return {"images": count, **report, "tree_peak_pss_mb": round(peak_pss / 1024, 1),
            "tree_peak_rss_sum_mb": round(peak_rss / 1024, 1), "wall_seconds": round(time.perf_counter() - start, 1)}


def memory_child(args: argparse.Namespace) -> int:
    """The child of ``measure_memory``: fine-tune on the folder, then print its peak memory as the last line."""
    import torch  # noqa: F401  (the baseline below includes torch, which every fine-tune loads)

    from edgetl.backbones import create_model
    from edgetl.pipeline import RunContext, finetune_stage
    from edgetl.recipe import load_recipe

    create_model(args.backbones[0], num_classes=10, image_size=args.finetune_image_size, weights=None)
    before_data = _proc_kb("/proc/self/status", "VmRSS")  # torch and a model built: before any data is read
    folder = Path(args.memory_child)
    recipe = load_recipe(None, [f"model.backbone={json.dumps(args.backbones[0])}",
                                f"model.image_size={args.finetune_image_size}", "data.source=\"folder\"",
                                f"data.path={json.dumps(str(folder))}",
                                f"run.output_dir={json.dumps(str(args.work / 'runs'))}",
                                f"run.name={json.dumps('memory-' + folder.name)}", *MEMORY_BUDGET, *args.set])
    shutil.rmtree(recipe.run_dir, ignore_errors=True)
    ctx = RunContext(recipe, progress=False, log=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    result = finetune_stage(ctx)
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"splits": ctx.splits.sizes(), "rss_before_data_mb": round(before_data / 1024, 1),
                      "peak_rss_mb": round(own.ru_maxrss / 1024, 1),  # Linux: ru_maxrss in kB
                      "largest_child_peak_rss_mb": round(workers.ru_maxrss / 1024, 1),
                      "test_accuracy": result.test_accuracy, "train_seconds": round(result.seconds, 1)}))
    return 0


def memory_part(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rows = []
    for count in args.memory_sizes:
        print(f"== memory: fine-tune on {count} images", flush=True)
        rows.append(measure_memory(count, args, work))
        print(f"  {rows[-1]}", flush=True)
    return {"settings": {"backbone": args.memory_backbone, "image_size": args.finetune_image_size,
                         "budget": MEMORY_BUDGET, "overrides": args.set,
                         "data": "Fashion-MNIST training images as PNG, folder source"},
            "rows": rows}


# -- the report -------------------------------------------------------------------------------------


def _spread(row: dict[str, Any]) -> str:
    return f"{row['median_ms']:.2f} ({row['q25_ms']:.2f}–{row['q75_ms']:.2f})"


def _ratio(stats: dict[str, float] | None) -> str:
    return "—" if not stats else f"{stats['median']:.2f}× ({stats['q25']:.2f}–{stats['q75']:.2f})"


def latency_lines(part: dict[str, Any]) -> list[str]:
    batches = part["settings"]["batch_sizes"]
    head = ["backbone", "size px", "params M", "max abs Δlogit vs torch (ORT / OV)"]
    head += [f"{rt} b{b} {what}" for rt in ("ORT", "OV") for b in batches for what in ("ms", "vs Lite0")]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    index = {(t["backbone"], t["runtime"], t["batch"]): t for t in part["timings"]}
    for name, entry in part["backbones"].items():
        check = entry["check"]
        cells = [name, str(entry["image_size"]), f"{entry['num_params'] / 1e6:.2f}" if entry["num_params"] else "—",
                 f"{check[ORT]['max_abs_logit_diff']:.1e} / {check[OV]['max_abs_logit_diff']:.1e}"]
        for runtime in (ORT, OV):
            for batch in batches:
                row = index.get((name, runtime, batch))
                cells += ["—", "—"] if row is None else [_spread(row), _ratio(row["latency_vs_lite0"])]
        lines.append(f"| {' | '.join(cells)} |")
    lines += [f"| {name} | not measured: {why} |" + " |" * (len(head) - 2) for name, why in part["skipped"].items()]
    s = part["settings"]
    return ["## Latency (ImageNet weights, native size)", "",
            (f"{s['threads']} threads, {s['rounds']} interleaved rounds. ms: median of the per-round medians "
             "(IQR); vs Lite0: per-round latency over EfficientNet-Lite0's on the same runtime and batch, median "
             "(IQR); > 1 is slower. Inputs: crops of scikit-image's sample photos at each backbone's size."), "",
            *lines]


def finetune_lines(part: dict[str, Any]) -> list[str]:
    lines = ["| backbone | linear probe test % | fine-tuned test % | best stage | epochs | train s | wall s |",
             "|---|---|---|---|---|---|---|"]
    for name, r in part["results"].items():
        lines.append(f"| {name} | {r['probe_test_accuracy']:.2f} | {r['test_accuracy']:.2f} | {r['best_stage']} | "
                     f"{r['epochs']} | {r['train_seconds']} | {r['wall_seconds']} |")
    s = part["settings"]
    return ["## Fine-tuned accuracy on the built-in example", "",
            f"{s['recipe']}, {s['image_size']} px, overrides {s['overrides'] or 'none'}.", "", *lines]


def memory_lines(part: dict[str, Any]) -> list[str]:
    lines = [("| images | train/val/test | RSS before the data MB | peak RSS MB | largest child peak RSS MB | "
              "tree peak PSS MB (sampled) | test % | wall s |"), "|---|---|---|---|---|---|---|---|"]
    for r in part["rows"]:
        sizes = "/".join(str(r["splits"].get(k, "?")) for k in ("train", "val", "test"))
        lines.append(f"| {r['images']} | {sizes} | {r['rss_before_data_mb']} | {r['peak_rss_mb']} | "
                     f"{r['largest_child_peak_rss_mb']} | {r['tree_peak_pss_mb']} | {r['test_accuracy']:.2f} | "
                     f"{r['wall_seconds']} |")
    s = part["settings"]
    return [f"## Peak memory of a fine-tune as the dataset grows ({part['settings']['image_size']} px)", "",
            (f"{s['data']}; {s['backbone']} at {s['image_size']} px; budget "
             f"{', '.join(s['budget'] + s.get('overrides', []))}. One child "
             "process per size. RSS before the data: torch imported and a model built. Peak RSS: the child's "
             "high-water mark (getrusage); largest child: its biggest child process (data-loading workers; 0: "
             "none); tree PSS: the child and its descendants, sampled every 0.25 s."), "", *lines]


def write_report(out: Path, parts: dict[str, Any]) -> None:
    """Merge ``parts`` into ``out/backbones.json`` (other parts kept) and rewrite ``backbones.md`` from it."""
    from edgetl.bench import environment

    path = out / "backbones.json"
    result = read_json(path) if path.is_file() else {}
    result.update(parts)
    result["environment"] = environment()
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    md = ["# Backbone benchmark", "", "Written by `benchmarks/backbones.py`; each part with the time it was measured.",
          "", "## Machine", "", *machine_lines(result["environment"])]
    rendered = [("latency", latency_lines), ("finetune", finetune_lines)]
    rendered += [(key, memory_lines) for key in sorted(result) if key.startswith("memory")]  # one per image size
    for key, render in rendered:
        if key in result:
            md += ["", *render(result[key]), "", f"Measured {result[key]['measured']}."]
    write_text(out / "backbones.md", "\n".join(md) + "\n")
    print(f"wrote {path} and {out / 'backbones.md'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", type=lambda s: [n for n in s.split(",") if n], default=[],
                        help="comma-separated names (default: every image backbone with a weights package)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch-sizes", type=lambda s: [int(b) for b in s.split(",")], default=[1, 8])
    parser.add_argument("--no-latency", action="store_true", help="skip the latency part")
    parser.add_argument("--finetune", action="store_true", help="fine-tune each backbone on the built-in example")
    parser.add_argument("--finetune-image-size", type=int, default=64)
    parser.add_argument("--set", action="append", default=[], help="recipe override for --finetune and --memory (repeatable)")
    parser.add_argument("--memory", action="store_true", help="peak memory of a fine-tune as the dataset grows")
    parser.add_argument("--memory-sizes", type=lambda s: [int(n) for n in s.split(",")], default=[1000, 10000, 60000])
    parser.add_argument("--memory-backbone", default=BASE)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)  # internal: one measured fine-tune
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "backbones-benchmark")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    parts: dict[str, Any] = {}
    # the memory part of the built-in size (64 px) is "memory"; others are kept beside it as "memory-<size>px"
    memory_key = "memory" if args.finetune_image_size == 64 else f"memory-{args.finetune_image_size}px"
    for key, wanted, run in (("latency", not args.no_latency, latency_part), ("finetune", args.finetune, finetune_part),
                             (memory_key, args.memory, memory_part)):
        if wanted:
            start = time.perf_counter()
            parts[key] = run(args, args.work)
            parts[key]["measured"] = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} in "
                                      f"{time.perf_counter() - start:.0f} s; load average at the end "
                                      f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (1/5/15 min)")
            write_report(args.out, parts)  # after every part: an interrupted run keeps what it measured
    return 0


if __name__ == "__main__":
    sys.exit(main())
