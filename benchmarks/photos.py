"""A user's folder of photos at 224 px, end to end: `edgetl run` on it with each backbone, augmentation on.

    .venv/bin/python benchmarks/photos.py                       # MobileNetV2 and EfficientNet-Lite0
    .venv/bin/python benchmarks/photos.py --backbones mobilenet_v2 --quick

The folder is what users bring rather than what a dataset loader expects: JPEGs of mixed sizes and aspect ratios,
some stored rotated with an EXIF orientation tag (as phones do), some grayscale, CMYK, palette or RGBA PNGs, and one
file that is not an image at all. The photos are crops of scikit-image's sample photos (the only photos that ship
offline here), so the classes are easy and crops of one photo land in train and test: the accuracies say that the
pipeline works at 224 px, not how good a backbone is (benchmarks/backbones.py measures that).

Each run is `edgetl run` in a child process (peak RSS from getrusage), made afresh; the table has its wall time,
peak memory, the probe / fine-tuned accuracy and the transfer verdict, what shipped, the skipped file, and whether
the bundle verifies. Writes benchmarks/results/photos.{md,json}.
"""

from __future__ import annotations

import argparse
import io
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compression import machine_lines  # noqa: E402  (benchmarks/compression.py)
from optimize import random_crop  # noqa: E402  (benchmarks/optimize.py)

CLASSES = {"cat": ["chelsea", "cat"], "coffee": ["coffee"], "rocket": ["rocket"], "astronaut": ["astronaut"],
           "texture": ["brick", "grass", "gravel"]}
# What each photo is saved as, in turn: most are plain JPEGs, the rest the odd files users have
KINDS = ["jpeg", "jpeg", "jpeg-exif-6", "jpeg", "gray-jpeg", "jpeg-exif-8", "png-palette", "jpeg", "cmyk-jpeg",
         "png-rgba"]
EXIF_TRANSPOSE = {6: 2, 8: 4}  # orientation tag -> PIL.Image.Transpose that stores the upright photo rotated


def _photos(names: list[str]) -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in names:
        image = np.asarray(getattr(skimage.data, name)())
        image = image.astype(np.uint8) * 255 if image.dtype == bool else image
        out.append(np.repeat(image[:, :, None], 3, 2) if image.ndim == 2 else image[:, :, :3])
    return out


def _save(image, kind: str, path: Path) -> Path:
    from PIL import Image

    if kind.startswith("jpeg-exif-"):
        orientation = int(kind.rsplit("-", 1)[1])
        exif = Image.Exif()
        exif[0x0112] = orientation  # the viewer (and edgetl) rotate it back upright
        image.transpose(Image.Transpose(EXIF_TRANSPOSE[orientation])).save(path.with_suffix(".jpg"), quality=90,
                                                                           exif=exif.tobytes())
        return path.with_suffix(".jpg")
    if kind == "gray-jpeg":
        image.convert("L").save(path.with_suffix(".jpg"), quality=90)
    elif kind == "cmyk-jpeg":
        image.convert("CMYK").save(path.with_suffix(".jpg"), quality=90)
    elif kind == "png-palette":
        image.convert("P", palette=Image.Palette.ADAPTIVE).save(path.with_suffix(".png"))
        return path.with_suffix(".png")
    elif kind == "png-rgba":
        image.convert("RGBA").save(path.with_suffix(".png"))
        return path.with_suffix(".png")
    else:
        image.save(path.with_suffix(".jpg"), quality=90)
    return path.with_suffix(".jpg")


def write_photo_folder(folder: Path, per_class: int, *, seed: int = 0) -> dict[str, int]:
    """``folder/<class>/<i>.jpg|png``: random crops (aspect 0.6-1.6, longer side 180-640 px) of each class's photos,
    saved as the KINDS in turn, plus one corrupt file; returns how many of each kind were written."""
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    staging = folder.with_name(folder.name + ".part")
    shutil.rmtree(staging, ignore_errors=True)
    for name, sources in CLASSES.items():
        photos = _photos(sources)
        (staging / name).mkdir(parents=True)
        for i in range(per_class):
            crop = random_crop(photos[i % len(photos)], rng, least=0.45, longer=(180, 640))
            kind = KINDS[i % len(KINDS)]
            _save(crop, kind, staging / name / f"{name}-{i:03d}")
            counts[kind] = counts.get(kind, 0) + 1
    (staging / "cat" / "IMG_0042.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not really a photo" * 20)
    counts["corrupt"] = 1
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return counts


def run_one(backbone: str, photos: Path, work: Path, quick: bool) -> dict[str, Any]:
    """``edgetl run`` on ``photos`` with ``backbone`` at 224 px and augmentation on, in a child process."""
    name = f"photos-{backbone}"
    for stale in (work / "runs" / name, work / "models" / name):
        shutil.rmtree(stale, ignore_errors=True)
    budget = ["finetune.stage_epochs=[1, 1]", "bench.max_seconds=0.5", "bench.min_runs=5"] if quick else \
        ["finetune.stage_epochs=[2, 3]"]
    sets = [f"run.name={name!r}", f"run.output_dir={str(work / 'runs')!r}", f"ship.output_dir={str(work / 'models')!r}",
            f"ship.name={name!r}", "data.source='folder'", f"data.path={str(photos)!r}", f"model.backbone={backbone!r}",
            "model.image_size=224", "distill.enabled=false", "finetune.augment.enabled=true",
            "finetune.augment.policy='trivialaugment'", "finetune.batch_size=16", "data.val_fraction=0.2",
            "data.test_fraction=0.3", *budget]
    command = [str(ROOT / ".venv/bin/edgetl"), "run", "-q", *[a for s in sets for a in ("--set", s)]]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    entry: dict[str, Any] = {"backbone": backbone, "command": " ".join(command[1:3]) + " " + " ".join(
        f"--set {s}" for s in sets), "exit": done.returncode, "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak_mb, 1) if peak_mb > before / 1024 else None}
    if done.returncode != 0:
        entry["error"] = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return entry
    summary = json.loads((work / "runs" / name / "summary.json").read_text())
    verify = subprocess.run([str(ROOT / ".venv/bin/edgetl"), "verify", summary["archive"]], capture_output=True,
                            text=True, check=False)
    entry.update({
        "probe_test_accuracy": summary.get("probe_test_accuracy"), "test_accuracy": summary.get("test_accuracy"),
        "transfer": (summary.get("transfer") or {}).get("verdict"), "skipped_files": summary.get("skipped_files"),
        "default_artifact": summary["default_artifact"], "verify_exit": verify.returncode,
        "log_names_the_bad_file": "IMG_0042.jpg" in done.stdout + done.stderr,
        "stage_seconds": summary.get("stage_seconds")})
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="mobilenet_v2,efficientnet_lite0")
    parser.add_argument("--per-class", type=int, default=0, help="photos per class (default 40, --quick 12)")
    parser.add_argument("--quick", action="store_true", help="few photos, one epoch per stage, short bench")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "photos-benchmark")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    per_class = args.per_class or (12 if args.quick else 40)
    photos = args.work / f"photos-{per_class}"
    kinds = write_photo_folder(photos, per_class)
    print(f"photo folder {photos}: {sum(kinds.values())} files ({kinds})", flush=True)
    rows = []
    for backbone in [b for b in args.backbones.split(",") if b]:
        print(f"edgetl run: {backbone} at 224 px ...", flush=True)
        rows.append(run_one(backbone, photos, args.work, args.quick))
        print(json.dumps(rows[-1], indent=1), flush=True)
    from edgetl.bench import environment

    machine = machine_lines(environment())
    result = {"machine": machine, "per_class": per_class, "kinds": kinds, "quick": args.quick,
              "load_average": [round(x, 2) for x in os.getloadavg()], "runs": rows}
    md = io.StringIO()
    md.write("# A user's photo folder at 224 px, end to end (`benchmarks/photos.py`)\n\n")
    md.write(f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}{' (--quick)' if args.quick else ''}. "
             f"{sum(kinds.values())} files in {len(CLASSES)} class folders: "
             + ", ".join(f"{n} {k}" for k, n in kinds.items())
             + ". Crops of scikit-image's sample photos (the only photos that ship offline here): the classes are "
             "easy and crops of one photo land in train and test, so the accuracies show the pipeline works at 224 px, "
             "not how good a backbone is. Each run: `edgetl run` with augmentation on (crop, flip, TrivialAugment), "
             "no distillation, made afresh in a child process.\n\n")
    md.write("\n".join(machine) + "\n\n")
    md.write("| backbone | exit | wall s | peak RSS MB | probe % | fine-tuned % | transfer verdict | skipped | bad "
             "file named in log | shipped default | bundle verifies |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        if r["exit"] != 0:
            md.write(f"| {r['backbone']} | {r['exit']} | {r['seconds']} | {r['peak_rss_mb']} | | | {r['error']} "
                     "| | | | |\n")
            continue
        md.write(f"| {r['backbone']} | 0 | {r['seconds']} | {r['peak_rss_mb']} | {r['probe_test_accuracy']:.2f} | "
                 f"{r['test_accuracy']:.2f} | {r['transfer']} | {len(r['skipped_files'] or [])} | "
                 f"{'yes' if r['log_names_the_bad_file'] else 'no'} | {r['default_artifact']} | "
                 f"{'yes' if r['verify_exit'] == 0 else 'NO'} |\n")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = "photos-quick" if args.quick else "photos"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(md.getvalue())
    print(md.getvalue())
    print(f"wrote {out / stem}.json and .md", flush=True)
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
