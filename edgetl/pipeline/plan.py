"""The artifact plan: every artifact a recipe's run produces, named ``[student-]<variant>``.

Per trained model, in table order: the torch model (the reference, never shipped), one FP32 export per
``export.formats`` entry (``onnx-fp32``, ``openvino-fp32``), then one per ``quantize.methods`` entry for the models
in ``quantize.models``, and ``openvino-int8-qat`` with ``quantize.qat``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import Recipe
from ..tasks import STUDENT, TEACHER

TORCH_VARIANT = "torch-fp32"
QAT, QAT_NAME = "qat", "openvino-int8-qat"  # made by the QAT stage, only when post-training INT8 misses the gate


@dataclass(frozen=True)
class Planned:
    """One artifact the run produces: which model it comes from and how it is made and run."""

    name: str  # folder under artifacts/, e.g. "student-onnx-int8-static"
    model: str  # TEACHER or STUDENT
    kind: str  # "torch", an export format ("onnx", "openvino"), a quantization method, or QAT
    format: str  # "torch", "onnx" or "openvino"
    runtime: str
    file: str | None  # main model file inside the artifact folder; None for torch

    @property
    def shippable(self) -> bool:
        return self.format != "torch"

    @property
    def exported(self) -> bool:
        """An FP32 export (not torch, not quantized)."""
        from ..export import FORMATS

        return self.kind in FORMATS

    @property
    def quantized(self) -> bool:
        return self.format != "torch" and not self.exported


def prefix(model_key: str) -> str:
    return "" if model_key == TEACHER else f"{model_key}-"


def fp32_artifact(model_key: str, fmt: str) -> Planned:
    from ..export import FORMATS

    f = FORMATS.get(fmt)
    return Planned(prefix(model_key) + f.variant, model_key, fmt, f.name, f.runtime, f.file)


def torch_artifact_name(name: str) -> str:
    """The torch reference of an artifact's model: ``torch-fp32`` or ``student-torch-fp32``."""
    return (f"{STUDENT}-" if name.startswith(f"{STUDENT}-") else "") + TORCH_VARIANT


def plan(recipe: Recipe) -> list[Planned]:
    """Every artifact of this recipe's run, in table order (names were checked when the recipe was loaded)."""
    from ..quantize import QUANTIZERS

    from .origin import origin_of

    origin, planned = origin_of(recipe), []
    for key in origin.model_keys(recipe):
        if origin.has_torch:  # a source model has no torch model: its own file is the reference
            planned.append(Planned(prefix(key) + TORCH_VARIANT, key, "torch", "torch", "torch:cpu", None))
        planned += [fp32_artifact(key, fmt) for fmt in recipe.export.formats]
        if key in recipe.quantize.models:
            for method in recipe.quantize.methods:
                q = QUANTIZERS.get(method)
                planned.append(Planned(prefix(key) + q.name, key, method, q.format, q.runtime, q.file))
            if recipe.quantize.qat and origin.has_torch:
                planned.append(Planned(prefix(key) + QAT_NAME, key, QAT, "openvino", "openvino:CPU", "model.xml"))
    return planned
