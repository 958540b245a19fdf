"""Post-training quantization and FP16 conversion of exported models, one registered method per variant.

ONNX Runtime (``onnx-int8-dynamic``, ``onnx-int8-static``, ``onnx-fp16``) starts from the FP32 ONNX
export; NNCF/OpenVINO (``openvino-int8``, ``openvino-int8-acc``, ``openvino-fp16``) from the FP32 IR
(an ONNX file works too). Every variant is written to its own folder and then held to the FP32
reference by the shared validation check (``edgetl.validate``), like any other artifact.

>>> calibration = calibration_images(splits.train, preprocess, 300)
>>> info = quantize_file("artifacts/openvino-fp32/model.xml", "openvino-int8", "artifacts/openvino-int8",
...                      calibration=calibration, config=recipe.quantize)
>>> runner = open_runner("artifacts/openvino-int8/" + QUANTIZERS.get("openvino-int8").file, "openvino:CPU")
"""

from . import _openvino, _ort  # noqa: F401  (each registers its methods)
from .core import (
    QUANTIZERS, QuantizeInfo, Quantizer, ValidationSet, calibration_batches, calibration_images, check_calibration,
    get_quantizer, quantize_file, register_quantizer,
)
from .qat import qat_finetune

__all__ = [
    "QUANTIZERS",
    "QuantizeInfo",
    "Quantizer",
    "ValidationSet",
    "calibration_images",
    "calibration_batches",
    "check_calibration",
    "get_quantizer",
    "qat_finetune",
    "quantize_file",
    "register_quantizer",
]
