"""ONNX Runtime methods: dynamic INT8, static INT8 (QDQ or QOperator, calibrated), FP16."""

from __future__ import annotations

import contextlib
import functools
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..bench.paired import MARGIN
from ..errors import BackendUnavailable, QuantizationError, QuantizationSkipped
from .core import (QuantizeInfo, Quantizer, calibration_count, failure_from, is_token_batches, register_quantizer,
                   stratified_first)

RUNTIME = "onnxruntime:CPUExecutionProvider"
_STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
_CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
_TYPES = {"u8s8": ("QUInt8", "QInt8"), "u8u8": ("QUInt8", "QUInt8"), "s8s8": ("QInt8", "QInt8")}
_FORMATS = ("qdq", "qoperator")


def _quantization():
    try:
        import onnxruntime.quantization as quantization
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed; run `pip install onnxruntime`") from None
    return quantization


def _load_checked(source: Path, method: str):
    """The source ONNX model; operators outside the standard domains are named and the variant skipped."""
    import onnx

    model = onnx.load(str(source))
    custom = sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in _STANDARD_DOMAINS})
    if custom:
        raise QuantizationSkipped(
            f"{method}: onnxruntime cannot quantize operator {', '.join(custom)} (not a standard ONNX operator); "
            "variant skipped"
        )
    return model


def _op_types(model) -> set[str]:
    return {node.op_type for node in model.graph.node}


def _finish(model_file: Path, source_model, method: str, settings: dict, calibration) -> QuantizeInfo:
    """Carry the source's metadata (labels, preprocessing) into the new file and describe it."""
    import onnx

    model = onnx.load(str(model_file))
    metadata = {p.key: p.value for p in source_model.metadata_props}
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **metadata,
                                        "quantization": method})
    onnx.save(model, str(model_file))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    source = settings.pop("source")
    notes = [] if metadata else [f"{source} has no metadata (labels, preprocessing); the quantized model has none "
                                 "either, so ship it inside a bundle, which carries them"]
    return QuantizeInfo(
        method=method, format="onnx", files=[model_file.name], source=source, runtime=RUNTIME,
        settings={**settings, "opset": opset}, calibration_images=calibration_count(calibration),
        metadata=metadata, notes=notes,
    )


def _preprocessed(source: Path, work: Path, config) -> tuple[Path, list[str]]:
    """ORT's quantization pre-processing (symbolic shape inference + graph optimisation), or the source as is."""
    if not config.onnx_preprocess:
        return source, []
    quantization = _quantization()
    target = work / ".preprocessed.onnx"
    try:
        quantization.quant_pre_process(str(source), str(target))
        return target, []
    except Exception as exc:  # the step is an optimisation: retry without its symbolic part, else the raw graph
        first = _first_line(exc)
    try:
        # Measured on the banking77 MiniLM (whose symbolic shape inference fails): dynamic INT8 of this graph and
        # of the raw one agree identically with FP32 (96.5% on 600 test texts); it spares ORT's pre-process warning.
        quantization.quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
        return target, [f"quant_pre_process: symbolic shape inference failed ({first}); pre-processed with ONNX "
                        "shape inference only"]
    except Exception as exc:
        return source, [f"quant_pre_process failed ({first}; without symbolic shapes: {_first_line(exc)}); "
                        "quantized the raw graph"]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]


class _Reader:
    """onnxruntime's CalibrationDataReader over a float32 NCHW array, in equal batches of at most 8, or over
    text token batches (a list of {input name: int64 (n, L)} dicts, fed as they are)."""

    def __init__(self, input_name: str, images, batch_size: int = 8):
        self.input_name = input_name
        if is_token_batches(images):
            self.batches = list(images)
        else:
            # equal batches: the histogram calibrators (entropy, percentile) stack per-batch arrays and fail on
            # a shorter last batch, so take the largest size <= batch_size that divides the set
            batch_size = next(b for b in range(batch_size, 0, -1) if len(images) % b == 0)
            self.batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        self.position = 0

    def get_next(self):
        if self.position >= len(self.batches):
            return None
        self.position += 1
        batch = self.batches[self.position - 1]
        return dict(batch) if isinstance(batch, dict) else {self.input_name: batch}

    def rewind(self):
        self.position = 0


def _input_name(model) -> str:
    initializers = {init.name for init in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initializers)


def make_dynamic(source: Path, work: Path, *, calibration=None, validation=None, config, scheme: str = "default") -> QuantizeInfo:
    quantization = _quantization()
    method = "onnx-int8-dynamic"
    model = _load_checked(source, method)
    prepared, notes = _preprocessed(source, work, config)
    out = work / "model.onnx"
    try:
        quantization.quantize_dynamic(str(prepared), str(out), weight_type=quantization.QuantType.QInt8,
                                      per_channel=config.per_channel, reduce_range=config.reduce_range)
    except Exception as exc:
        raise failure_from(exc, method, _op_types(model), "onnxruntime") from None
    info = _finish(out, model, method, {"source": source.name, "weight_type": "int8", "activations": "uint8 (dynamic)",
                                        "per_channel": config.per_channel, "reduce_range": config.reduce_range,
                                        "preprocessed": prepared != source}, None)
    info.notes += notes
    if "Conv" in _op_types(model):
        # Measured: ConvInteger gets one weight scale and zero point per tensor even with per_channel=True, which
        # wrecks depthwise convolutions with folded BatchNorm (the default example's student: 21% agreement).
        info.settings["conv_weights"] = "per-tensor (onnxruntime's ConvInteger ignores per_channel)"
        info.notes.append("dynamic INT8 quantizes Conv weights per tensor; for CNNs prefer onnx-int8-static")
    return info


def _static_options(config, quantization) -> dict:
    """quantize_static's keyword arguments from the recipe's quantize section, or a one-line error."""
    if config.calibration_method not in _CALIBRATION_METHODS:
        raise QuantizationError(f"quantize.calibration_method must be one of {_CALIBRATION_METHODS}, "
                                f"got {config.calibration_method!r}")
    if config.onnx_format not in _FORMATS:
        raise QuantizationError(f"quantize.onnx_format must be one of {_FORMATS}, got {config.onnx_format!r}")
    if config.onnx_types not in _TYPES:
        raise QuantizationError(f"quantize.onnx_types must be one of {tuple(_TYPES)}, got {config.onnx_types!r}")
    activation, weight = (getattr(quantization.QuantType, t) for t in _TYPES[config.onnx_types])
    calibrate = {"minmax": quantization.CalibrationMethod.MinMax, "entropy": quantization.CalibrationMethod.Entropy,
                 "percentile": quantization.CalibrationMethod.Percentile}[config.calibration_method]
    quant_format = quantization.QuantFormat.QDQ if config.onnx_format == "qdq" else quantization.QuantFormat.QOperator
    return {"quant_format": quant_format, "activation_type": activation, "weight_type": weight,
            "per_channel": config.per_channel, "reduce_range": config.reduce_range, "calibrate_method": calibrate,
            "calibration_providers": ["CPUExecutionProvider"]}


def _scheme_ops(scheme: str) -> list[str] | None:
    # A text model (token calibration): quantize the MatMul/Gemm layers only, as NNCF's transformer scheme does.
    # Quantizing every op puts the attention mask's large negative Add, LayerNorm and Softmax in INT8 too.
    return ["MatMul", "Gemm"] if scheme == "transformer" else None


def _static_settings(source: Path, prepared: Path, config, scheme: str) -> dict:
    return {"source": source.name, "format": config.onnx_format, "types": config.onnx_types,
            "calibration_method": config.calibration_method, "per_channel": config.per_channel,
            "reduce_range": config.reduce_range, "preprocessed": prepared != source,
            "op_types": _scheme_ops(scheme) or "all"}


def make_static(source: Path, work: Path, *, calibration: np.ndarray, validation=None, config, scheme: str = "default") -> QuantizeInfo:
    quantization = _quantization()
    method = "onnx-int8-static"
    options = _static_options(config, quantization)
    model = _load_checked(source, method)
    prepared, notes = _preprocessed(source, work, config)
    out = work / "model.onnx"
    try:
        quantization.quantize_static(str(prepared), str(out), _Reader(_input_name(model), calibration),
                                     op_types_to_quantize=_scheme_ops(scheme), **options)
    except Exception as exc:
        raise failure_from(exc, method, _op_types(model), "onnxruntime") from None
    info = _finish(out, model, method, _static_settings(source, prepared, config, scheme), calibration)
    info.notes += notes + _saturation_notes(config)
    return info


# What the accuracy-aware search may keep in FP32: layers with weights and the element-wise joins (residual Adds).
# Activations (Clip, Relu) follow their producer: ORT folds them into its output's quantization range.
_SEARCHED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Concat"}


def make_static_accuracy_aware(source: Path, work: Path, *, calibration, validation, config, scheme: str = "default") -> QuantizeInfo:
    """Static INT8, then the layers that cost most reverted to FP32 until the model passes the accuracy gate.

    Every candidate is judged by the shared validation check on the validation samples, run by this machine's
    onnxruntime kernels: ``quantize.min_agreement`` top-1 agreement with the FP32 model and at most
    ``quantize.max_accuracy_drop`` points of accuracy lost. Layers are ranked by what quantizing each one alone
    costs (agreement, then KL divergence); the fewest of the most costly are reverted (a bisection over how many).
    """
    import onnx

    from ..progress import substeps
    from ..settings import GateConfig
    from ..runners import open_runner
    from ..validate import predict_logits, validate

    quantization = _quantization()
    method = "onnx-int8-static-acc"
    options = _static_options(config, quantization)
    model = _load_checked(source, method)
    prepared, notes = _preprocessed(source, work, config)
    data, preprocess = validation.subset(config.validation_size, method), validation.preprocess
    gate = GateConfig(max_accuracy_drop=config.max_accuracy_drop, min_agreement=config.min_agreement)
    reader, text_ops = _Reader(_input_name(model), calibration), _scheme_ops(scheme)
    cache, candidate, out = work / ".calibration.json", work / ".candidate.onnx", work / "model.onnx"
    with contextlib.closing(open_runner(prepared, RUNTIME)) as runner:
        reference = predict_logits(runner, data, preprocess)
    # Each layer's cost is scored on a stratified part of the samples (the ranking); the gate on all of them.
    scored = stratified_first(data.labels, config.ranking_size)
    scoring = (data.subset(scored), reference[scored]) if len(scored) < len(data) else (data, reference)

    def judged(exclude: list[str] | None = None, only: list[str] | None = None, on=(data, reference)):
        """Quantize (ranges calibrated once, then read from the cache) and validate on ``on`` (samples, their
        reference outputs); a passing model becomes the output: the search only tries fewer FP32 layers after a
        pass, so the last pass is the answer."""
        try:
            quantization.quantize_static(str(prepared), str(candidate), reader, nodes_to_exclude=exclude,
                                         nodes_to_quantize=only, op_types_to_quantize=text_ops,
                                         calibration_cache_path=str(cache), **options)
        except Exception as exc:
            raise failure_from(exc, method, _op_types(model), "onnxruntime") from None
        with contextlib.closing(open_runner(candidate, RUNTIME)) as runner:
            report = validate(runner, on[0], preprocess, reference=on[1], gate=gate)
        if report.passed and only is None:
            candidate.replace(out)
        return report

    start = time.perf_counter()
    first = report = judged()
    reverted: list[str] = []
    ranked: list[str] = []
    costs: dict[str, Any] = {}
    if not report.passed:
        ops = set(text_ops or _SEARCHED_OPS)
        layers = [n.name for n in onnx.load(str(prepared), load_external_data=False).graph.node
                  if n.name and n.op_type in ops]
        with substeps(len(layers), f"{method}: layer") as progress:  # each layer quantized alone, and its cost
            for name in layers:
                costs[name] = judged(only=[name], on=scoring)
                progress.advance(f"{name} agreement {costs[name].agreement:.2%}")
        ranked = sorted(layers, key=lambda name: (costs[name].agreement, -costs[name].mean_kl))
        low, high = 0, min(len(ranked), max(config.accuracy_control_max_iterations, 1))  # high must pass, low fails
        # at most 1 + ceil(log2(high)) trials: the one with every candidate in FP32, then the bisection
        with substeps(1 + math.ceil(math.log2(max(high, 1))), f"{method}: FP32 layers") as progress:
            report = judged(exclude=ranked[:high])
            progress.advance(f"{high} kept: {_verdict(report)}")
            if not report.passed:
                raise QuantizationSkipped(
                    f"{method}: with the {high} most sensitive of {len(layers)} layers in FP32 the model still "
                    f"fails the gate on {len(data)} validation samples ({'; '.join(report.reasons)}); variant skipped")
            while high - low > 1:
                middle = (low + high) // 2
                trial = judged(exclude=ranked[:middle])
                progress.advance(f"{middle} kept: {_verdict(trial)}")
                if trial.passed:
                    high, report = middle, trial
                else:
                    low = middle
        reverted = ranked[:high]
    candidate.unlink(missing_ok=True)
    cache.unlink(missing_ok=True)
    settings = _static_settings(source, prepared, config, scheme) | {
        "validation_samples": len(data), "min_agreement": config.min_agreement,
        "max_accuracy_drop_points": config.max_accuracy_drop,
        "all_int8_agreement": round(first.agreement, 4), "all_int8_accuracy_drop": first.accuracy_drop,
        "agreement": round(report.agreement, 4), "accuracy_drop": report.accuracy_drop,
        "fp32_layers": reverted, "ranked_layers": len(ranked), "ranking_samples": len(scoring[0]),
        "layer_costs": [{"layer": name, "agreement": round(costs[name].agreement, 4),
                         "mean_kl": None if costs[name].mean_kl is None else round(float(costs[name].mean_kl), 6)}
                        for name in ranked],
        "search_seconds": round(time.perf_counter() - start, 1)}
    worth = _versus_fp32(out, source, calibration)
    settings["latency_vs_fp32_batch1"] = worth.to_dict()
    info = _finish(out, model, method, settings, calibration)
    info.notes += notes + _saturation_notes(config)
    if reverted:
        named = ", ".join(reverted[:3]) + (f" and {len(reverted) - 3} more" if len(reverted) > 3 else "")
        info.notes.append(f"all-INT8 reached {first.agreement:.2%} agreement on {len(data)} validation samples; "
                          f"{len(reverted)} of {len(ranked)} layers kept in FP32 to pass ({named})")
    verdict = worth.verdict()
    info.notes.append(f"at batch 1 on this host it runs at {worth.describe()} the FP32 model's latency"
                      + ("" if verdict == "faster" else f": not clearly faster ({verdict} within "
                         f"{MARGIN:.0%}); the run's race decides what ships, and a VNNI or ARM target may differ"))
    return info


def _verdict(report) -> str:
    return f"{'pass' if report.passed else 'fail'}, agreement {report.agreement:.2%}"


def _versus_fp32(model: Path, fp32: Path, calibration):
    """The quantized model's batch-1 latency over its FP32 source's on this host, timed in paired rounds on one
    calibration sample: whether the INT8 layers the search kept pay here (``edgetl.bench.paired``)."""
    from ..bench.paired import interleaved_rounds, paired_ratio
    from ..runners import open_runner

    one = ({k: v[:1] for k, v in calibration[0].items()} if is_token_batches(calibration)
           else np.ascontiguousarray(calibration[:1]))
    with contextlib.closing(open_runner(model, RUNTIME)) as int8, contextlib.closing(open_runner(fp32, RUNTIME)) as ref:
        times = interleaved_rounds({"int8": functools.partial(int8.predict, one),
                                    "fp32": functools.partial(ref.predict, one)}, rounds=20)
    return paired_ratio(times["int8"], times["fp32"])


def _saturation_notes(config) -> list[str]:
    """Measured on an AVX2 EPYC without VNNI: onnxruntime's u8s8 kernels (VPMADDUBSW) saturate int16 pair sums;
    the default example's teacher agreed 92.25% with FP32 there vs 98.65% for the same QDQ model run unfused."""
    from ..bench.environment import cpu_flags

    if config.onnx_types != "u8s8" or config.reduce_range or platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    flags = set(cpu_flags())
    if not flags or flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return []
    return ["this CPU has no VNNI: onnxruntime's u8s8 INT8 kernels can saturate here and lose accuracy that a VNNI "
            "or ARM target keeps; onnx-int8-static-acc keeps the layers it hurts in FP32, quantize.reduce_range = "
            "true avoids it with 7-bit weights (on the default example: 94.35% agreement, no better)"]


def make_fp16(source: Path, work: Path, *, calibration=None, validation=None, config, scheme: str = "default") -> QuantizeInfo:
    method = "onnx-fp16"
    model = _load_checked(source, method)
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        raise BackendUnavailable("onnxruntime's float16 converter is missing; run `pip install onnxruntime`") from None
    import onnx

    try:
        # keep float32 inputs/outputs: every runner and the bundle's predict feed float32; casts are free
        converted = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    except Exception as exc:
        raise failure_from(exc, method, _op_types(model), "onnxruntime") from None
    out = work / "model.onnx"
    onnx.save(converted, str(out))
    info = _finish(out, model, method, {"source": source.name, "weights": "float16", "io": "float32"}, None)
    info.notes.append("FP16 is meant for GPU execution providers; on CPU onnxruntime inserts casts around "
                      "operators without FP16 kernels, so expect no speed-up there")
    return info


for _quantizer in (
    Quantizer("onnx-int8-dynamic", "onnx", RUNTIME, "model.onnx", "onnx", False, make_dynamic,
              description="INT8 weights, activations quantized at run time (no calibration)"),
    Quantizer("onnx-int8-static", "onnx", RUNTIME, "model.onnx", "onnx", True, make_static,
              description="INT8 weights and activations, calibrated on training images"),
    Quantizer("onnx-int8-static-acc", "onnx", RUNTIME, "model.onnx", "onnx", True, make_static_accuracy_aware,
              needs_validation=True,
              description="static INT8 with the most sensitive layers kept in FP32 until the accuracy gate passes"),
    Quantizer("onnx-fp16", "onnx", RUNTIME, "model.onnx", "onnx", False, make_fp16,
              description="FP16 weights and compute, FP32 inputs/outputs (for GPU targets)"),
):
    register_quantizer(_quantizer)
