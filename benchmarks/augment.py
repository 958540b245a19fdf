"""Does training-time augmentation help the built-in example? Measured, not asserted.

The built-in recipe (EfficientNet-Lite0 fine-tuned on the Fashion-MNIST subset, its default budget) is fine-tuned
with ``[finetune.augment]`` off and with a few settings, over several ``run.seed`` values (head initialisation,
batch order and augmentation draws change; the data split stays), and every run's test accuracy is compared:
mean, standard deviation and range per setting, and the per-seed difference to the run without augmentation (the
same seed: same initialisation and batch order). The linear probe never sees augmentation, so its accuracy must be
the same in every row of a seed: a check printed with the table.

    .venv/bin/python benchmarks/augment.py                        # 3 settings x 3 seeds at the default budget
    .venv/bin/python benchmarks/augment.py --settings off,crop+flip+trivialaugment,mixup --seeds 0,1
    .venv/bin/python benchmarks/augment.py --set finetune.stage_epochs=[4,10]    # a longer budget, every setting
    .venv/bin/python benchmarks/augment.py --quick --out /tmp/augment-smoke      # smoke test: tiny data and budget

Each run trains in ``--work/<setting>-seed<k>`` and is reused (or resumed) when the script runs again with the same
recipe. Writes benchmarks/results/augment.json and augment.md (with the machine description).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compression import machine_lines

from edgetl._io import write_json, write_text

ON = "finetune.augment.enabled=true"
# Name -> recipe overrides. "off" is the built-in recipe as it is; the others turn the section on.
SETTINGS: dict[str, list[str]] = {
    "off": [],
    "crop+flip": [ON, "finetune.augment.color_jitter=0.0"],
    "crop+flip+jitter": [ON],  # the section's defaults once enabled
    "crop+flip+trivialaugment": [ON, "finetune.augment.policy='trivialaugment'"],
    "crop+flip+randaugment": [ON, "finetune.augment.policy='randaugment'"],
    "flip+shift": [ON, "finetune.augment.random_resized_crop=[1.0, 1.0]", "finetune.augment.color_jitter=0.0",
                   "finetune.augment.shift=0.125"],  # the former finetune.augment = true
    "mixup": [ON, "finetune.augment.color_jitter=0.0", "finetune.augment.mixup=0.2"],
    "cutmix": [ON, "finetune.augment.color_jitter=0.0", "finetune.augment.cutmix=1.0"],
}
DEFAULT_SETTINGS = "off,crop+flip,crop+flip+trivialaugment"
# --quick: a few images per class and one epoch per stage, to prove the script runs
QUICK = ["data.train_per_class=16", "data.val_per_class=8", "data.test_per_class=16", "finetune.probe_epochs=2",
         "finetune.stage_epochs=[1, 1]", "finetune.batch_size=16"]


def finetune_once(name: str, seed: int, overrides: list[str], splits, work: Path) -> dict[str, Any]:
    """One fine-tune of the built-in recipe with ``overrides`` at ``run.seed = seed``; its numbers."""
    from edgetl import tasks
    from edgetl.recipe import load_recipe

    recipe = load_recipe(None, [*overrides, f"run.seed={seed}"])
    started = time.perf_counter()
    result = tasks.finetune(recipe, splits, work / f"{name}-seed{seed}", progress=False)
    stages = [h for h in result.history if h["stage"] != "probe"]
    return {"setting": name, "seed": seed, "test_accuracy": result.test_accuracy, "val_accuracy": result.val_accuracy,
            "probe_test_accuracy": result.probe_test_accuracy, "best_stage": result.best_stage,
            "best_epoch": result.best_epoch, "epochs": result.epochs,
            "final_train_accuracy": stages[-1]["train_accuracy"] if stages else None,
            "training_seconds": result.seconds, "wall_seconds": round(time.perf_counter() - started, 1),
            "augment": recipe.to_dict()["finetune"]["augment"]}


def summarise(runs: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Per setting: test accuracy mean, standard deviation, range, and the paired difference to "off" per seed."""
    baseline = {r["seed"]: r["test_accuracy"] for r in runs if r["setting"] == "off"}
    rows = []
    for name in names:
        mine = [r for r in runs if r["setting"] == name]
        if not mine:
            continue
        accuracies = [r["test_accuracy"] for r in mine]
        deltas = [r["test_accuracy"] - baseline[r["seed"]] for r in mine if r["seed"] in baseline]
        rows.append({
            "setting": name, "seeds": [r["seed"] for r in mine], "test_accuracies": accuracies,
            "mean": statistics.mean(accuracies), "std": statistics.stdev(accuracies) if len(mine) > 1 else 0.0,
            "min": min(accuracies), "max": max(accuracies),
            "val_mean": statistics.mean(r["val_accuracy"] for r in mine),
            "train_mean": statistics.mean(trained) if (trained := [r["final_train_accuracy"] for r in mine
                                                                   if r["final_train_accuracy"] is not None]) else None,
            "delta_mean": statistics.mean(deltas) if deltas and name != "off" else None,
            "delta_std": statistics.stdev(deltas) if len(deltas) > 1 and name != "off" else None,
            "seconds_mean": statistics.mean(r["training_seconds"] for r in mine),
        })
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    def pct(value: float | None, sign: bool = False) -> str:
        return "" if value is None else f"{value:+.2f}" if sign else f"{value:.2f}"

    lines = [("| setting | seeds | test acc. mean ± std (%) | min..max | Δ vs off, paired (pp) | val mean | "
              "last-epoch train acc. | training s |"),
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        delta = "" if row["delta_mean"] is None else (
            pct(row["delta_mean"], sign=True) + (f" ± {row['delta_std']:.2f}" if row["delta_std"] is not None else ""))
        lines.append(f"| {row['setting']} | {len(row['seeds'])} | {row['mean']:.2f} ± {row['std']:.2f} | "
                     f"{row['min']:.2f}..{row['max']:.2f} | {delta} | {pct(row['val_mean'])} | "
                     f"{pct(row['train_mean'])} | {row['seconds_mean']:.0f} |")
    return lines


def probe_check(runs: list[dict[str, Any]]) -> str:
    """The probe trains on cached, never augmented features: one probe accuracy per seed whatever the setting."""
    by_seed: dict[int, set[float]] = {}
    for r in runs:
        by_seed.setdefault(r["seed"], set()).add(r["probe_test_accuracy"])
    if all(len(values) == 1 for values in by_seed.values()):
        return ("Probe check: the linear probe (frozen features, never augmented) has one test accuracy per seed "
                "in every setting (" + ", ".join(f"seed {s}: {next(iter(v)):.2f}%" for s, v in sorted(by_seed.items()))
                + ").")
    return f"PROBE CHECK FAILED: probe test accuracy differs between settings of one seed: {by_seed}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default=DEFAULT_SETTINGS,
                        help=f"comma-separated, from: {', '.join(SETTINGS)} (default: {DEFAULT_SETTINGS})")
    parser.add_argument("--seeds", default="", help="comma-separated run.seed values (default 0,1,2; --quick 0,1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for every run, e.g. finetune.stage_epochs=[4,10] (repeatable)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny data and budget, 2 seeds")
    parser.add_argument("--work", type=Path, default=None, help="training folders (default runs/bench-augment)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    names = [n for n in args.settings.split(",") if n]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting {unknown[0]}; choose from {', '.join(SETTINGS)}")
    if "off" not in names:
        names.insert(0, "off")  # every comparison is paired with it
    seeds = [int(s) for s in args.seeds.split(",") if s] or ([0, 1] if args.quick else [0, 1, 2])
    common = [*(QUICK if args.quick else []), *args.set]
    work = args.work or ROOT / "runs" / ("bench-augment-quick" if args.quick else "bench-augment")

    from edgetl import tasks
    from edgetl.bench import environment
    from edgetl.recipe import load_recipe

    base = load_recipe(None, common)
    print(f"loading {base.data.source} ({base.model.backbone} at {base.model.image_size} px) ...")
    splits = tasks.get_task(base).load_splits(base)
    started, runs = time.time(), []
    result: dict[str, Any] = {"environment": environment(), "settings": {
        "names": names, "overrides": {n: SETTINGS[n] for n in names}, "seeds": seeds, "common_overrides": common,
        "quick": args.quick, "splits": splits.sizes(), "backbone": base.model.backbone,
        "budget": {"probe_epochs": base.finetune.probe_epochs, "unfreeze": base.finetune.unfreeze,
                   "stage_epochs": base.finetune.stage_epochs, "patience": base.finetune.patience}}}
    for seed in seeds:  # seed-major: a run stopped early still has complete pairs
        for name in names:
            print(f"== {name}, seed {seed}", flush=True)
            run = finetune_once(name, seed, [*common, *SETTINGS[name]], splits, work)
            runs.append(run)
            print(f"   test {run['test_accuracy']:.2f}% (probe {run['probe_test_accuracy']:.2f}%, best "
                  f"{run['best_stage']} epoch {run['best_epoch']}), {run['training_seconds']:.0f} s", flush=True)
    rows = summarise(runs, names)
    lines = table(rows)
    check = probe_check(runs)
    print("\n".join(lines) + "\n\n" + check)

    budget = result["settings"]["budget"]
    sizes = splits.sizes()
    intro = (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `benchmarks/augment.py"
             f"{' --quick' if args.quick else ''}{''.join(f' --set {s}' for s in args.set)}`: {base.model.backbone} "
             f"at {base.model.image_size} px fine-tuned on {base.data.source} ({sizes['train']} training, "
             f"{sizes['val']} validation, {sizes['test']} test images), probe {budget['probe_epochs']} epochs then "
             f"stages {budget['unfreeze']} groups for {budget['stage_epochs']} epochs (patience {budget['patience']}); "
             f"run.seed {', '.join(map(str, seeds))}. Test accuracy of the checkpoint chosen on validation accuracy. "
             "Δ: each seed's difference to the same seed without augmentation (same initialisation and batch order), "
             "mean ± std over seeds.")
    md = ["# Augmentation on the built-in example", "", intro, "", "## Results", "", *lines, "", check, "",
          "## Settings", ""]
    md += [f"- **{n}**: {', '.join(f'`{o}`' for o in SETTINGS[n]) or 'the built-in recipe as it is'}" for n in names]
    md += ["", "## Machine", "", *machine_lines(result["environment"]),
           f"- load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} (1/5/15 min)"]
    result.update(runs=runs, summary=rows, probe_check=check, seconds=round(time.time() - started, 1))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "augment.json", result)
    write_text(args.out / "augment.md", "\n".join(md) + "\n")
    print(f"wrote {args.out / 'augment.json'} and {args.out / 'augment.md'} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
