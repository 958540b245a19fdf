"""OpenVINO methods: NNCF post-training INT8, accuracy-aware INT8, INT8 weights only, FP16 IR.

Every IR is saved with ``compress_to_fp16=False`` except ``openvino-fp16``, whose whole point it is.
On CPU all of them run with ``INFERENCE_PRECISION_HINT=f32`` (edgetl's OpenVINO runner): INT8 layers
execute in INT8 whatever the hint, the layers left in floating point then compute exactly as NNCF's
accuracy control measured them, and FP16 weights are widened to FP32 at load time (CPUs without
AMX-FP16 have no FP16 arithmetic). The CPU plugin's own default on AVX-512 BF16 machines is bf16,
which changes the answers; edgetl never ships that silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, QuantizationError
from .core import (
    QuantizeInfo, Quantizer, calibration_count, is_token_batches, openvino_module as _ov, read_model, register_quantizer,
    failure_from,
)

RUNTIME = "openvino:CPU"
_PRESETS = ("performance", "mixed")


def _nncf():
    try:
        import nncf
    except ImportError:
        raise BackendUnavailable("nncf is not installed; run `pip install nncf`") from None
    return nncf


def _op_types(model) -> set[str]:
    return {op.get_type_name() for op in model.get_ops()}


def _model_info(model, source: Path) -> tuple[dict[str, str], list[str]]:
    """The ``model_info`` section of an IR's rt_info (labels, preprocessing) as strings, and a note when the
    quantized model will carry none (the source has none, or it cannot be read)."""
    if not model.has_rt_info(["model_info"]):
        return {}, [f"{source.name} has no model_info metadata (labels, preprocessing); the quantized model has none "
                    "either, so ship it inside a bundle, which carries them"]
    try:
        section = model.get_rt_info(["model_info"]).astype(dict)
        return {str(k): v.astype(str) if hasattr(v, "astype") else str(v) for k, v in section.items()}, []
    except Exception as exc:  # an rt_info layout this OpenVINO version does not read
        return {}, [f"cannot read the model_info metadata of {source.name} ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); the quantized model carries none"]


def _save(model, work: Path, metadata: dict[str, str], method: str, *, compress_to_fp16: bool) -> list[str]:
    ov = _ov()
    for key, value in {**metadata, "quantization": method}.items():
        model.set_rt_info(value, ["model_info", key])
    xml = work / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    return [xml.name, xml.with_suffix(".bin").name]


def _nncf_dataset(images):
    """NNCF's data protocol over a float32 NCHW array (one image per item) or text token batches (one per item)."""
    if is_token_batches(images):
        return _nncf().Dataset(list(images))
    return _nncf().Dataset([images[i : i + 1] for i in range(len(images))])


def _model_type(scheme: str):
    """NNCF's transformer scheme (a task's ``quantize_scheme``): it keeps LayerNorm, Softmax and the
    attention's scaled MatMul inputs in floating point, which INT8 BERTs need to stay accurate."""
    return _nncf().ModelType.TRANSFORMER if scheme == "transformer" else None


def _preset(config):
    nncf = _nncf()
    if config.openvino_preset not in _PRESETS:
        raise QuantizationError(f"quantize.openvino_preset must be one of {_PRESETS}, got {config.openvino_preset!r}")
    return nncf.QuantizationPreset.PERFORMANCE if config.openvino_preset == "performance" else nncf.QuantizationPreset.MIXED


def make_int8(source: Path, work: Path, *, calibration: np.ndarray, validation=None, config, scheme: str = "default") -> QuantizeInfo:
    """``nncf.quantize`` post-training quantization, calibrated on ``calibration``."""
    method = "openvino-int8"
    nncf = _nncf()
    model = read_model(source)
    metadata, notes = _model_info(model, source)
    try:
        quantized = nncf.quantize(model, _nncf_dataset(calibration), preset=_preset(config),
                                  subset_size=len(calibration), model_type=_model_type(scheme))
    except QuantizationError:
        raise
    except Exception as exc:
        raise failure_from(exc, method, _op_types(model), "NNCF") from None
    files = _save(quantized, work, metadata, method, compress_to_fp16=False)
    return QuantizeInfo(method=method, format="openvino", files=files, source=source.name, runtime=RUNTIME,
                        settings={"preset": config.openvino_preset, "subset_size": len(calibration),
                                  "model_type": scheme,
                                  "inference_precision": "f32 (non-quantized layers)"},
                        calibration_images=calibration_count(calibration), metadata=metadata, notes=notes)


class _CompiledRunner:
    """Just enough of a Runner around an ``ov.CompiledModel`` for edgetl.validate."""

    name = "openvino:CPU (nncf)"

    def __init__(self, compiled):
        self.compiled = compiled

    def predict(self, batch) -> np.ndarray:
        if isinstance(batch, dict):  # text: named token arrays, restricted to the model's inputs
            names = {port.get_any_name() for port in self.compiled.inputs}
            return np.asarray(self.compiled({k: v for k, v in batch.items() if k in names})[0], dtype=np.float32)
        return np.asarray(self.compiled(np.ascontiguousarray(batch, dtype=np.float32))[0], dtype=np.float32)


def validation_metric(data, preprocess, reference: np.ndarray | None = None) -> Any:
    """NNCF's ``validation_fn`` from edgetl's shared validation check: top-1 accuracy (a fraction), or with
    ``reference`` (the FP32 model's logits on ``data``) top-1 agreement with it, the gate's own measure.

    NNCF passes the compiled model and the items of the validation dataset (indices into ``data``);
    the per-item values go back too, so NNCF can rank layers by the metric itself.
    """
    from ..validate import predict_logits, validate

    def validation_fn(compiled, items) -> tuple[float, list[float]]:
        indices = np.asarray([int(np.asarray(i).reshape(-1)[0]) for i in items], dtype=np.int64)
        subset = data.subset(indices)
        runner = _CompiledRunner(compiled)
        logits = predict_logits(runner, subset, preprocess, batch_size=32)
        if reference is not None:
            hits = logits.argmax(1) == reference[indices].argmax(1)
            return float(hits.mean()), hits.astype(np.float64).tolist()
        report = validate(runner, subset, preprocess, logits=logits)
        per_item = (logits.argmax(1) == subset.labels).astype(np.float64).tolist()
        return report.accuracy / 100.0, per_item

    return validation_fn


def make_int8_accuracy_aware(source: Path, work: Path, *, calibration: np.ndarray, validation, config, scheme: str = "default") -> QuantizeInfo:
    """``nncf.quantize_with_accuracy_control``: INT8, with layers reverted to FP32 until the accuracy drop on
    the validation images is within ``config.max_accuracy_drop`` percentage points."""
    method = "openvino-int8-acc"
    nncf = _nncf()
    model = read_model(source)
    metadata, notes = _model_info(model, source)
    data, preprocess = validation.subset(config.validation_size, method), validation.preprocess
    # items are indices; the transform turns one into the model input NNCF uses when ranking layers
    validation_dataset = nncf.Dataset([np.asarray([i]) for i in range(len(data))],
                                      lambda item: preprocess.inputs(data, item[:1].astype(np.int64)))
    reference = None
    if config.min_agreement > 0 or not data.labelled:  # agreement with the FP32 model, as the gate holds it to
        from ..validate import predict_logits

        fp32 = _ov().Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        reference = predict_logits(_CompiledRunner(fp32), data, preprocess, batch_size=32)
    # the metric is a fraction; the recipe says points (accuracy) or a fraction (agreement)
    max_drop = 1.0 - config.min_agreement if reference is not None else config.max_accuracy_drop / 100.0
    try:
        quantized = nncf.quantize_with_accuracy_control(
            model, _nncf_dataset(calibration), validation_dataset, validation_metric(data, preprocess, reference),
            max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE, preset=_preset(config), subset_size=len(calibration),
            model_type=_model_type(scheme),
            # Measured on a 2-layer BERT (NNCF 3.4): with SmoothQuant on, the layers the restorer reverts to FP32 keep
            # their smoothed weights without the matching activation scaling, and the logits drift by whole units.
            advanced_quantization_parameters=nncf.AdvancedQuantizationParameters(
                smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1)) if scheme == "transformer" else None,
            advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(
                max_num_iterations=config.accuracy_control_max_iterations, num_ranking_workers=1),
        )
    except QuantizationError:
        raise
    except Exception as exc:
        raise failure_from(exc, method, _op_types(model), "NNCF") from None
    fake_quantize = sum(1 for op in quantized.get_ops() if op.get_type_name() == "FakeQuantize")
    files = _save(quantized, work, metadata, method, compress_to_fp16=False)
    return QuantizeInfo(method=method, format="openvino", files=files, source=source.name, runtime=RUNTIME,
                        settings={"preset": config.openvino_preset, "subset_size": len(calibration),
                                  "metric": "agreement with FP32" if reference is not None else "accuracy",
                                  "max_drop": round(max_drop, 6),
                                  "validation_images": len(data), "fake_quantize_ops": fake_quantize,
                                  "max_iterations": config.accuracy_control_max_iterations,
                                  "model_type": scheme,
                                  "inference_precision": "f32 (non-quantized layers)"},
                        calibration_images=calibration_count(calibration), metadata=metadata, notes=notes)


def make_int8_weights(source: Path, work: Path, *, calibration=None, validation=None, config,
                      scheme: str = "default") -> QuantizeInfo:
    """``nncf.compress_weights`` INT8 (asymmetric, per output channel, every weight): activations stay floating
    point, so no calibration. What ``optimum-cli export openvino --weight-format int8`` makes; on the banking77
    MiniLMs it matched full INT8's batch-1 latency at higher agreement (benchmarks/results/peers.md)."""
    method = "openvino-int8-weights"
    nncf = _nncf()
    model = read_model(source)
    metadata, notes = _model_info(model, source)
    try:
        compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    except Exception as exc:
        raise failure_from(exc, method, _op_types(model), "NNCF") from None
    files = _save(compressed, work, metadata, method, compress_to_fp16=False)
    return QuantizeInfo(method=method, format="openvino", files=files, source=source.name, runtime=RUNTIME,
                        settings={"weights": "int8_asym", "activations": "f32"}, metadata=metadata, notes=notes)


def make_fp16(source: Path, work: Path, *, calibration=None, validation=None, config, scheme: str = "default") -> QuantizeInfo:
    """The IR with FP16 weights: half the size; on CPU it computes in FP32 (see the module note)."""
    method = "openvino-fp16"
    model = read_model(source)
    metadata, notes = _model_info(model, source)
    files = _save(model, work, metadata, method, compress_to_fp16=True)
    return QuantizeInfo(method=method, format="openvino", files=files, source=source.name, runtime=RUNTIME,
                        settings={"weights": "float16", "inference_precision": "f32 on CPU"}, metadata=metadata,
                        notes=[*notes, "CPU widens FP16 weights to FP32 at load time: smaller file, same speed"])


for _quantizer in (
    Quantizer("openvino-int8", "openvino", RUNTIME, "model.xml", "openvino", True, make_int8,
              description="NNCF post-training INT8 (nncf.quantize)"),
    Quantizer("openvino-int8-acc", "openvino", RUNTIME, "model.xml", "openvino", True, make_int8_accuracy_aware,
              needs_validation=True, description="NNCF INT8 with accuracy control (max accuracy drop from the recipe)"),
    Quantizer("openvino-int8-weights", "openvino", RUNTIME, "model.xml", "openvino", False, make_int8_weights,
              description="NNCF INT8 weight compression (nncf.compress_weights; activations in floating point)"),
    Quantizer("openvino-fp16", "openvino", RUNTIME, "model.xml", "openvino", False, make_fp16,
              description="OpenVINO IR with FP16 weights"),
):
    register_quantizer(_quantizer)
