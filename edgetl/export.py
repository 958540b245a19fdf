"""Export formats (``FORMATS``) and the torch.onnx / OpenVINO exporters of image models, with labels and
preprocessing embedded. Text models are exported with Optimum (``edgetl.tasks.text_export``).

>>> onnx_info = export_onnx(model, "out/model.onnx", input_shape=(3, 64, 64), opset=17)
>>> ov_info = export_openvino("out/model.onnx", "out/openvino/model.xml")
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._io import atomic_path
from .errors import BackendUnavailable, ExportError
from .registry import Registry


@dataclass(frozen=True)
class Format:
    """One FP32 export format: the artifact it makes, its main file and the runtime that runs it."""

    name: str  # as in export.formats / ship.formats
    variant: str  # the artifact name, e.g. "onnx-fp32"
    runtime: str
    file: str  # the main model file inside the artifact folder


# Export formats, keyed by the names used in recipe.export.formats; each task exports a model to each of them.
FORMATS: Registry[Format] = Registry("export format", key="export.formats")
FORMATS.register("onnx", Format("onnx", "onnx-fp32", "onnxruntime:CPUExecutionProvider", "model.onnx"))
FORMATS.register("openvino", Format("openvino", "openvino-fp32", "openvino:CPU", "model.xml"))


@dataclass
class ExportInfo:
    format: str  # "onnx" or "openvino"
    files: list[str]
    opset: int | None = None
    exporter: str = ""
    compress_to_fp16: bool = False
    seconds: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_onnx(
    model,
    path: str | Path,
    *,
    input_shape: tuple[int, int, int],
    opset: int = 17,
    dynamo: bool = False,
    metadata: dict[str, Any] | None = None,
) -> ExportInfo:
    """Export ``model`` to one self-contained ONNX file with a dynamic batch axis.

    ``metadata`` (labels, preprocessing) goes into the file's ``metadata_props``.
    The opset actually written is read back from the file: the dynamo exporter may raise it.
    """
    import onnx
    import torch

    path = Path(path)
    start = time.perf_counter()
    model = model.eval()
    example = torch.zeros(1, *input_shape)
    with atomic_path(path) as tmp:
        tmp_onnx = tmp.with_suffix(".onnx")
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
                kwargs: dict[str, Any] = dict(
                    input_names=["input"], output_names=["logits"], opset_version=opset, dynamo=dynamo
                )
                if dynamo:
                    kwargs.update(dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}},
                                  external_data=False)
                else:
                    kwargs["dynamic_axes"] = {"input": {0: "batch"}, "logits": {0: "batch"}}
                torch.onnx.export(model, (example,), str(tmp_onnx), **kwargs)
            proto = onnx.load(str(tmp_onnx))
            onnx.checker.check_model(proto)
        except Exception as exc:
            raise ExportError(
                f"ONNX export of {type(model).__name__} failed: {str(exc).splitlines()[0]}; "
                "try export.dynamo=true (or false), or another export.opset"
            ) from None
        finally:
            tmp_onnx.unlink(missing_ok=True)
        strings = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
        onnx.helper.set_model_props(proto, strings)
        onnx.save(proto, str(tmp))
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    return ExportInfo(
        format="onnx",
        files=[path.name],
        opset=int(written),
        exporter="torch.onnx (dynamo)" if dynamo else "torch.onnx (TorchScript)",
        seconds=round(time.perf_counter() - start, 2),
        metadata=strings,
    )


def export_openvino(
    onnx_path: str | Path,
    path: str | Path,
    *,
    compress_to_fp16: bool = False,
    metadata: dict[str, Any] | None = None,
) -> ExportInfo:
    """Convert an ONNX file to OpenVINO IR (``.xml`` + ``.bin``); metadata goes into ``rt_info``.

    ``compress_to_fp16``: OpenVINO's ``save_model`` default is True; edgetl ships FP32 weights unless asked.
    """
    try:
        import openvino as ov
    except ImportError:
        raise BackendUnavailable("openvino is not installed; run `pip install openvino`") from None
    path = Path(path)
    start = time.perf_counter()
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:
        raise ExportError(f"OpenVINO cannot convert {onnx_path}: {str(exc).splitlines()[0]}") from None
    strings = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    for key, value in strings.items():
        model.set_rt_info(value, ["model_info", key])
    path.parent.mkdir(parents=True, exist_ok=True)
    # .xml and .bin must land together: save under a temporary stem, move the .bin first, then the .xml.
    tmp_xml = path.with_name(f".{path.stem}.tmp.xml")
    try:
        ov.save_model(model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
        tmp_xml.with_suffix(".bin").replace(path.with_suffix(".bin"))
        tmp_xml.replace(path)
    finally:
        tmp_xml.unlink(missing_ok=True)
        tmp_xml.with_suffix(".bin").unlink(missing_ok=True)
    return ExportInfo(
        format="openvino",
        files=[path.name, path.with_suffix(".bin").name],
        exporter=f"openvino.convert_model {ov.get_version().split('-')[0]}",
        compress_to_fp16=compress_to_fp16,
        seconds=round(time.perf_counter() - start, 2),
        metadata=strings,
    )
