"""The peers of ``peers.py``: what a user would do instead of edgetl, with each tool's documented defaults.

``PEERS`` lists them (onnxruntime, NNCF, Optimum, optimum-intel, Olive): each with the call it stands for, where its
defaults are documented, and the function that makes its variant of a ``Subject`` (one trained model's FP32 exports
and data) in a folder of its own. Importing this module loads none of those tools; each is imported where it runs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from compression import ORT, OV

from edgetl._io import read_json

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


def first_line(exc: BaseException | str) -> str:
    """An error's first line, after its type (an exception) or as it is (a message), at most 240 characters."""
    text = str(exc).strip()
    line = (text.splitlines() or [""])[0] or (type(exc).__name__ if isinstance(exc, BaseException) else "failed")
    return (f"{type(exc).__name__}: {line}" if isinstance(exc, BaseException) else line)[:240]


def error_line(output: str) -> str:
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
        notes.append(f"the CLI itself on <run>/{subject.hf_model.parent.name}/{subject.hf_model.name} would rebuild "
                     f"{type(rebuilt).__name__} ({architecture} "
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
            raise RuntimeError(f"exit {proc.returncode}: {error_line(proc.stderr + proc.stdout)}")
        return out / "model" / "model.onnx", []

    return make


@dataclasses.dataclass(frozen=True)
class Peer:
    """One peer: its tool's call with the tool's defaults, where they are documented, and how to make its file."""

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
    Peer("optimum-O2", "optimum", ORT, ("text",),
         "ORTOptimizer.from_pretrained(dir).optimize(AutoOptimizationConfig.O2())",
         OPTIMUM_DOCS.format("optimization"), optimum_optimize("O2")),
    Peer("optimum-O3", "optimum", ORT, ("text",),
         "ORTOptimizer.from_pretrained(dir).optimize(AutoOptimizationConfig.O3())",
         OPTIMUM_DOCS.format("optimization"), optimum_optimize("O3")),
    Peer("optimum-avx2-dynamic", "optimum", ORT, ("text",),
         "ORTQuantizer.from_pretrained(dir).quantize(AutoQuantizationConfig.avx2(is_static=False))  # QOperator, "
         "u8/u8, per-channel", OPTIMUM_DOCS.format("quantization"), optimum_avx2(None)),
    Peer("optimum-O2+avx2-dynamic", "optimum", ORT, ("text",),
         "the O2 model, then ORTQuantizer avx2(is_static=False)", OPTIMUM_DOCS.format("quantization"),
         optimum_avx2("O2")),
    Peer("optimum-intel-int8-weights", "optimum-intel", OV, ("text",),
         "optimum-cli export openvino --weight-format int8 "
         "(= OVWeightQuantizationConfig(bits=8, sym=False, ratio=1.0))",
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
