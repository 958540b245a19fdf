"""Peers benchmark: edgetl's artifacts beside what each runtime's own tool makes with its documented defaults, on
the same trained models, in one run.

Workloads: ``image`` (the Fashion-MNIST run: EfficientNet-Lite0 teacher and distilled student) and ``text`` (the
banking77 run: all-MiniLM-L6-v2 teacher and 3-layer student). Test split, calibration samples (as many as the run's
``quantize.calibration_size``) and preprocessing come from edgetl's own API, as in ``compression.py`` and ``text.py``.
Peers (``PEERS`` below, each with its call and where its defaults are documented): onnxruntime ``quantize_static``
(after ``quant_pre_process``) and ``quantize_dynamic``; NNCF ``nncf.quantize``; Optimum ``ORTOptimizer`` O2/O3 and
``ORTQuantizer`` with ``AutoQuantizationConfig.avx2(is_static=False)``; optimum-intel's ``--weight-format int8``;
Olive's ``OnnxStaticQuantization`` pass, ``olive auto-opt`` and ``olive optimize``. Every edgetl artifact of the
same model is in the same table.

For every variant: top-1 agreement with its model's FP32 ONNX on onnxruntime over the test split, test accuracy,
size on disk, and batch-1 / batch-8 speed-up over the FP32 model on the same runtime (``onnx-fp32`` on onnxruntime,
``openvino-fp32`` on OpenVINO) as the median per-round ratio of paired, interleaved rounds with its 95% interval
(``edgetl.bench.paired``). Every file runs through edgetl's runners with the same settings, so rows differ only in the
model file. Also: OpenVINO ``benchmark_app`` on the FP32 IRs beside edgetl's own harness (``edgetl.bench.measure``).

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
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compression import ORT, OV, default_workload, machine_lines

from edgetl._io import read_json, write_json, write_text
from edgetl.bench.paired import MIN_ROUNDS, Ratio, interleaved_rounds, paired_ratio

OLIVE_ENV = {"OLIVE_DISABLE_TELEMETRY": "1"}


@dataclasses.dataclass
class Subject:
    """One trained model of a workload: its FP32 exports and the data every variant of it is judged and timed on."""

    workload: str
    key: str  # teacher / student
    onnx: Path
    xml: Path
    hf_model: Path | None  # the trained model's Hugging Face folder (text), for the optimum-cli check
    data: Any  # test split (LabeledImages / LabeledTexts)
    preprocess: Any
    calibration: Any  # float32 NCHW images, or token batches ({input name: int64 array})
    feed: Callable[[int], Any]  # a batch of real test samples, as the runners take it
    harness: Callable[[Any], tuple[Any, Callable[[int], np.ndarray]]]  # runner -> (runner, make_input) for measure()

    @property
    def prefix(self) -> str:
        return "" if self.key == "teacher" else f"{self.key}-"


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


# -- the peers: what a user would do instead, with each tool's defaults -------------------------------------------


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    line = (text.splitlines() or [""])[0] or (type(exc).__name__ if isinstance(exc, BaseException) else "failed")
    return (f"{type(exc).__name__}: {line}" if isinstance(exc, BaseException) else line)[:240]


def _error_line(output: str) -> str:
    """The last ``SomeError: ...`` line of a subprocess's output (its traceback's verdict), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b", line)]
    return (errors or lines or ["no output"])[-1][:240]


def _items(subject: Subject, named: bool) -> list[Any]:
    """Calibration items, one image (batch 1) or one token batch each; ``named``: as {input name: array}."""
    if isinstance(subject.calibration, np.ndarray):
        images = [subject.calibration[i : i + 1] for i in range(len(subject.calibration))]
        return [{_onnx_input(subject.onnx): x} for x in images] if named else images
    return [dict(batch) for batch in subject.calibration]


def _onnx_input(path: Path) -> str:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)


def ort_static(subject: Subject, out: Path) -> tuple[Path, list[str]]:
    from onnxruntime.quantization import CalibrationDataReader, quant_pre_process, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, items):
            self.items = iter(items)

        def get_next(self):
            return next(self.items, None)

    prepared = out / "preprocessed.onnx"
    quant_pre_process(str(subject.onnx), str(prepared))
    quantize_static(str(prepared), str(out / "model.onnx"), Reader(_items(subject, named=True)))
    return out / "model.onnx", []


def ort_dynamic(subject: Subject, out: Path) -> tuple[Path, list[str]]:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(subject.onnx), str(out / "model.onnx"))
    return out / "model.onnx", []


def nncf_int8(subject: Subject, out: Path) -> tuple[Path, list[str]]:
    import nncf
    import openvino as ov

    quantized = nncf.quantize(ov.Core().read_model(str(subject.xml)), nncf.Dataset(_items(subject, named=False)))
    ov.save_model(quantized, str(out / "model.xml"))  # its default compress_to_fp16=True, as the guides call it
    return out / "model.xml", []


def _optimum_folder(subject: Subject) -> Path:
    folder = subject.onnx.parent
    if not (folder / "config.json").is_file():
        raise RuntimeError(f"{folder} has no config.json: Optimum loads a Hugging Face folder (config + model.onnx)")
    return folder


def optimum_optimize(level: str) -> Callable[[Subject, Path], tuple[Path, list[str]]]:
    def make(subject: Subject, out: Path) -> tuple[Path, list[str]]:
        from optimum.onnxruntime import ORTOptimizer
        from optimum.onnxruntime.configuration import AutoOptimizationConfig

        optimizer = ORTOptimizer.from_pretrained(_optimum_folder(subject), file_names=[subject.onnx.name])
        optimizer.optimize(getattr(AutoOptimizationConfig, level)(), save_dir=out)
        return out / f"{subject.onnx.stem}_optimized.onnx", []

    return make


def optimum_avx2(after: str | None) -> Callable[[Subject, Path], tuple[Path, list[str]]]:
    def make(subject: Subject, out: Path) -> tuple[Path, list[str]]:
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        source, name = _optimum_folder(subject), subject.onnx.name
        if after:
            file, _ = optimum_optimize(after)(subject, out / after)
            source, name = file.parent, file.name
        ORTQuantizer.from_pretrained(source, file_name=name).quantize(
            AutoQuantizationConfig.avx2(is_static=False), save_dir=out)
        return out / f"{Path(name).stem}_quantized.onnx", []

    return make


def optimum_intel_int8(subject: Subject, out: Path) -> tuple[Path, list[str]]:
    """``optimum-cli export openvino --weight-format int8``: export, then NNCF INT8 weight compression of the IR."""
    import transformers
    from optimum.intel import OVModelForSequenceClassification, OVWeightQuantizationConfig

    notes = []
    architecture = (read_json(subject.hf_model / "config.json").get("architectures") or ["?"])[0]
    if not hasattr(transformers, architecture):
        rebuilt, info = transformers.AutoModelForSequenceClassification.from_pretrained(
            subject.hf_model, output_loading_info=True)
        notes.append(f"the CLI itself on <run>/{subject.hf_model.parent.name}/{subject.hf_model.name} would rebuild {type(rebuilt).__name__} ({architecture} "
                     f"is edgetl's mean-pooling head, no transformers class; newly initialised: "
                     f"{', '.join(info['missing_keys']) or 'none'}): a different model, so the CLI's weight step "
                     "ran on the IR optimum-intel exported for edgetl instead")
    stage = out / "exported"  # the run's FP32 IR under the file names optimum-intel looks for (links, not copies)
    stage.mkdir(parents=True)
    for source, name in ((subject.xml, "openvino_model.xml"), (subject.xml.with_suffix(".bin"), "openvino_model.bin"),
                         (subject.xml.parent / "config.json", "config.json")):
        (stage / name).symlink_to(source.resolve())
    config = OVWeightQuantizationConfig(bits=8, sym=False, ratio=1.0, group_size=-1)  # the CLI's int8 defaults
    model = OVModelForSequenceClassification.from_pretrained(stage, compile=False, quantization_config=config)
    model.save_pretrained(out / "model")
    return out / "model" / "openvino_model.xml", notes


def olive_static(subject: Subject, out: Path) -> tuple[Path, list[str]]:
    """Olive's OnnxStaticQuantization pass with its defaults; calibration through Olive's RawDataContainer."""
    from olive.workflows import run as olive_run

    os.environ.update(OLIVE_ENV)
    name = _onnx_input(subject.onnx)
    raw = out / "calibration" / name
    raw.mkdir(parents=True)
    items = _items(subject, named=False)
    for i, image in enumerate(items):
        np.ascontiguousarray(image, dtype=np.float32).tofile(raw / f"{i:05d}.raw")
    config = {
        "input_model": {"type": "ONNXModel", "model_path": str(subject.onnx.resolve())},
        "systems": {"local": {"type": "LocalSystem",
                              "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "data_configs": [{"name": "calibration", "type": "RawDataContainer", "load_dataset_config": {
            "data_dir": str(raw.parent), "input_names": [name], "input_shapes": [list(items[0].shape)]}}],
        "passes": {"quantization": {"type": "OnnxStaticQuantization", "data_config": "calibration"}},
        "host": "local", "target": "local", "cache_dir": str(out / "cache"), "output_dir": str(out / "model"),
        "log_severity_level": 3,
    }
    olive_run(config, tempdir=str(out))
    return out / "model" / "model.onnx", []


def olive_cli(command: str) -> Callable[[Subject, Path], tuple[Path, list[str]]]:
    def make(subject: Subject, out: Path) -> tuple[Path, list[str]]:
        args = [sys.executable, "-m", "olive", command, "-m", str(subject.onnx.resolve()), "--device", "cpu",
                "--provider", "CPUExecutionProvider", "--precision", "int8", "-o", str(out / "model"),
                "--log_level", "3", "--disable_telemetry"]
        proc = subprocess.run(args, cwd=out, capture_output=True, text=True, timeout=1800, check=False,
                              env={**os.environ, **OLIVE_ENV})  # cwd: its .olive-cache lands in the work folder
        if proc.returncode:
            raise RuntimeError(f"exit {proc.returncode}: {_error_line(proc.stderr + proc.stdout)}")
        return out / "model" / "model.onnx", []

    return make


@dataclasses.dataclass(frozen=True)
class Peer:
    name: str
    tool: str
    runtime: str
    workloads: tuple[str, ...]
    call: str
    reference: str
    make: Callable[[Subject, Path], tuple[Path, list[str]]]
    models: tuple[str, ...] = ("teacher", "student")


ORT_DOCS = ("https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html; defaults: "
            "onnxruntime/quantization/quantize.py signatures (onnxruntime 1.32)")
OPTIMUM_DOCS = "https://huggingface.co/docs/optimum/onnxruntime/usage_guides/{}; optimum/onnxruntime/configuration.py"
OLIVE_DOCS = "https://microsoft.github.io/Olive/ (olive-ai 0.13.0: {})"
PEERS = [
    Peer("ort-static-defaults", "onnxruntime", ORT, ("image",),
         "quant_pre_process(fp32, prep); quantize_static(prep, out, reader)  # QDQ, s8 activations and weights, "
         "per-tensor, MinMax", ORT_DOCS, ort_static),
    Peer("ort-dynamic-defaults", "onnxruntime", ORT, ("image", "text"),
         "quantize_dynamic(fp32, out)  # s8 weights, per-tensor", ORT_DOCS, ort_dynamic),
    Peer("nncf-defaults", "nncf", OV, ("image", "text"),
         "ov.save_model(nncf.quantize(ov.Core().read_model(xml), nncf.Dataset(items)), out)  # preset and "
         "model_type None, subset_size 300, fast bias correction",
         "https://docs.openvino.ai/2025/openvino-workflow/model-optimization-guide/quantizing-models-post-training/"
         "basic-quantization-flow.html; nncf 3.4.0 nncf.quantize signature", nncf_int8),
    Peer("optimum-O2", "optimum", ORT, ("text",), "ORTOptimizer.from_pretrained(dir).optimize(AutoOptimizationConfig.O2())",
         OPTIMUM_DOCS.format("optimization"), optimum_optimize("O2")),
    Peer("optimum-O3", "optimum", ORT, ("text",), "ORTOptimizer.from_pretrained(dir).optimize(AutoOptimizationConfig.O3())",
         OPTIMUM_DOCS.format("optimization"), optimum_optimize("O3")),
    Peer("optimum-avx2-dynamic", "optimum", ORT, ("text",),
         "ORTQuantizer.from_pretrained(dir).quantize(AutoQuantizationConfig.avx2(is_static=False))  # QOperator, "
         "u8/u8, per-channel", OPTIMUM_DOCS.format("quantization"), optimum_avx2(None)),
    Peer("optimum-O2+avx2-dynamic", "optimum", ORT, ("text",),
         "the O2 model, then ORTQuantizer avx2(is_static=False)", OPTIMUM_DOCS.format("quantization"), optimum_avx2("O2")),
    Peer("optimum-intel-int8-weights", "optimum-intel", OV, ("text",),
         "optimum-cli export openvino --weight-format int8 (= OVWeightQuantizationConfig(bits=8, sym=False, ratio=1.0))",
         "https://huggingface.co/docs/optimum-intel/openvino/export; optimum/commands/export/openvino.py "
         "prepare_wc_config", optimum_intel_int8),
    Peer("olive-static-defaults", "olive", ORT, ("image",),
         "olive.workflows.run: one OnnxStaticQuantization pass, defaults (QDQ, int8, per-tensor, MinMax, "
         "quant_preprocess), calibration via RawDataContainer", OLIVE_DOCS.format("olive/passes/onnx/quantization.py"),
         olive_static, ("student",)),
    Peer("olive-auto-opt-int8", "olive", ORT, ("image",),
         "olive auto-opt -m model.onnx --device cpu --provider CPUExecutionProvider --precision int8",
         OLIVE_DOCS.format("olive/cli/auto_opt.py TEMPLATE"), olive_cli("auto-opt"), ("student",)),
    Peer("olive-optimize-int8", "olive", ORT, ("image",),
         "olive optimize -m model.onnx --device cpu --provider CPUExecutionProvider --precision int8 (auto-opt's "
         "successor)", OLIVE_DOCS.format("olive/cli/optimize.py"), olive_cli("optimize"), ("student",)),
]


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
            harness=lambda runner, pre=pre, pad=pad, ids_of=ids_of: (TokenRunner(runner, pre.input_names, pad), ids_of)))
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
        shipped = "" if decision.get("status") != "shipped" else "shipped (default)" if decision.get("default") else "shipped"
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
            variant.error = _first_line(exc)
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
            v.error = f"does not run on {v.runtime}: {_first_line(exc)}"
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


# -- benchmark_app beside edgetl's harness ------------------------------------------------------------------------

BAPP_KEYS = ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "INFERENCE_PRECISION_HINT",
             "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING", "SCHEDULING_CORE_TYPE")


def parse_benchmark_app(output: str) -> dict[str, Any]:
    """Latency (ms) and the compiled model's properties from benchmark_app's report."""
    latency = {key.lower(): float(value) / (1000 if unit == "us" else 1)
               for key, value, unit in re.findall(r"\b(Median|Average|Min|Max):\s+([\d.]+)\s*(ms|us)", output)}
    properties = {key: re.sub(r"<Type: '(\w+)'>", r"\1", value.strip())
                  for key, value in re.findall(r"\[ INFO \]\s+([A-Z_]+): (.+)", output) if key in BAPP_KEYS}
    ports = dict(re.findall(r"\[ INFO \]\s+(\S+) \(node: [^)]*\) : (\w+) /", output))  # the last listing wins
    return {"latency_ms": latency, "properties": properties, "port_precision": ports}


def harness(subject: Subject, *, threads: int, seconds: float) -> dict[str, Any]:
    """edgetl's own latency harness (``edgetl.bench.measure``, as the pipeline's bench stage) on the FP32 IR, batch 1."""
    from edgetl.bench import measure as harness_measure
    from edgetl.bench import runtime_settings
    from edgetl.runners import open_runner

    runner, make_input = subject.harness(open_runner(subject.xml, OV, threads=threads))
    stats = harness_measure(runner, batch_size=1, max_seconds=seconds, make_input=make_input)
    settings = runtime_settings(getattr(runner, "runner", runner))
    runner.close()
    return {"median_ms": round(stats.median_ms, 4), "mean_ms": round(stats.mean_ms, 4), "runs": stats.runs,
            "settings": settings}


def benchmark_app_rows(subjects: list[Subject], *, threads: int, seconds: float, work: Path, log=print) -> list[dict]:
    """benchmark_app at batch 1 on each FP32 IR (latency hint, ``threads`` threads; as given, and with f32 precision
    like edgetl's runner), between two runs of edgetl's own harness on the same IR."""
    import openvino as ov

    tool = Path(sys.executable).parent / "benchmark_app"
    config = work / "benchmark_app.json"  # -nthreads is refused beside -hint (a benchmark_app UI rule): pass it here
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'{{"CPU": {{"INFERENCE_NUM_THREADS": "{threads}"}}}}\n')
    rows = []
    for subject in subjects:
        names = {port.get_any_name() for port in ov.Core().read_model(str(subject.xml)).inputs}
        feed = subject.feed(1)
        shape = (",".join(f"{k}[{','.join(map(str, v.shape))}]" for k, v in feed.items() if k in names)
                 if isinstance(feed, dict) else f"[{','.join(map(str, feed.shape))}]")
        row: dict[str, Any] = {"model": f"{subject.workload}/{subject.key}", "ir": str(subject.xml), "shape": shape}

        row["edgetl_before"] = harness(subject, threads=threads, seconds=seconds)
        base = [str(tool), "-m", str(subject.xml), "-d", "CPU", "-hint", "latency", "-load_config", str(config),
                "-shape", shape, "-t", str(max(1, round(seconds)))]
        extra = ["-infer_precision", "f32"] + ([] if isinstance(feed, dict) else ["-ip", "f32"])
        for label, args in (("as_given", base), ("f32_like_edgetl", base + extra)):
            try:
                proc = subprocess.run(args, capture_output=True, text=True, timeout=120 + 2 * seconds,
                                      check=False)
                row[label] = {"command": " ".join(args[1:]), **parse_benchmark_app(proc.stdout + proc.stderr)}
                if proc.returncode or not row[label]["latency_ms"]:
                    row[label]["error"] = _error_line(proc.stdout + proc.stderr)
            except (OSError, subprocess.TimeoutExpired) as exc:
                row[label] = {"command": " ".join(args[1:]), "error": _first_line(exc)}
        row["edgetl_after"] = harness(subject, threads=threads, seconds=seconds)
        log(f"benchmark_app {row['model']}: edgetl {row['edgetl_before']['median_ms']:.3f} / "
            f"{row['edgetl_after']['median_ms']:.3f} ms, benchmark_app "
            f"{row['as_given'].get('latency_ms', {}).get('median', float('nan')):.3f} ms (as given), "
            f"{row['f32_like_edgetl'].get('latency_ms', {}).get('median', float('nan')):.3f} ms (f32)")
        rows.append(row)
    return rows


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
            lines.append(f"| {v.model} | {name} | {v.tool} | {runtime} | FAILED: {v.error} ||||||{'; '.join(v.notes)} |")
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


def bapp_table(rows: list[dict[str, Any]]) -> list[str]:
    head = ["IR (batch 1)", "edgetl harness ms (before / after)", "benchmark_app median / avg ms (as given)",
            "its precision, input, pinning", "benchmark_app median ms (-infer_precision f32)", "edgetl settings"]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for row in rows:
        given, f32 = row["as_given"], row["f32_like_edgetl"]

        def lat(run: dict) -> str:
            if run.get("error"):
                return f"FAILED: {run['error']}"
            return f"{run['latency_ms']['median']:.3f} / {run['latency_ms'].get('average', float('nan')):.3f}"

        props = given.get("properties", {})
        edgetl = row["edgetl_before"]["settings"]
        lines.append(f"| {row['model']} | {row['edgetl_before']['median_ms']:.3f} / {row['edgetl_after']['median_ms']:.3f}"
                     f" | {lat(given)} | {props.get('INFERENCE_PRECISION_HINT', '?')}, "
                     f"{', '.join(f'{k}:{p}' for k, p in given.get('port_precision', {}).items())}, pinning "
                     f"{props.get('ENABLE_CPU_PINNING', '?')}, streams {props.get('NUM_STREAMS', '?')} | {lat(f32)} | "
                     f"{edgetl.get('inference_precision_hint', '?')}, threads {edgetl.get('inference_num_threads', '?')}, "
                     f"pinning {edgetl.get('enable_cpu_pinning', '?')} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-run", type=Path, default=Path("runs/fashion-mnist-lite0"))
    parser.add_argument("--text-run", type=Path, default=Path("runs/banking77-minilm"))
    parser.add_argument("--workloads", default="image,text", help="comma-separated: image, text")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=0, help=f"paired timing rounds (default 20, --quick {MIN_ROUNDS})")
    parser.add_argument("--bapp-seconds", type=float, default=0, help="benchmark_app -t and harness budget (10; quick 2)")
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
        subjects, info = (image_subjects if name == "image" else text_subjects)(run, runs[name] / "artifacts", args.quick)
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
        md += ["", "### OpenVINO benchmark_app beside edgetl's harness (same FP32 IR, batch 1)", "",
               (f"benchmark_app `-hint latency -load_config` ({{\"CPU\": {{\"INFERENCE_NUM_THREADS\": {args.threads}}}}}: "
               "it refuses `-nthreads` beside `-hint`), `-shape` batch 1, `-t` "
               f"{max(1, round(seconds))} s; edgetl: `edgetl.bench.measure` on the same IR just before and after."),
               ""] + bapp_table(bapp)
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
