"""What a source model file says about itself, and copying it into a run folder.

>>> model = read_source("mobilenet_v2.onnx")
>>> model.inputs, model.num_outputs, model.labels
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .._io import atomic_path, sha256_file
from ..errors import RecipeError
from ..registry import Registry


@dataclass(frozen=True)
class ModelInput:
    name: str
    shape: tuple[int | None, ...]  # None: a dynamic axis
    dtype: str  # numpy dtype name


@dataclass
class SourceModel:
    """A model file as edgetl reads it: its inputs, its first output's width, and its own metadata."""

    path: Path
    format: str  # "onnx"
    inputs: list[ModelInput]
    output_shape: tuple[int | None, ...]
    metadata: dict[str, str] = field(default_factory=dict)  # ONNX metadata_props
    opset: int | None = None

    @property
    def num_outputs(self) -> int | None:
        return self.output_shape[-1] if len(self.output_shape) == 2 else None

    @property
    def labels(self) -> list[str] | None:
        """Class names the model carries (edgetl's own exports do), else None."""
        try:
            labels = json.loads(self.metadata.get("labels", "null"))
        except json.JSONDecodeError:
            return None
        return [str(label) for label in labels] if isinstance(labels, list) and labels else None

    @property
    def preprocess(self) -> dict[str, Any] | None:
        """The preprocessing the model carries (edgetl's ``preprocess.json`` form), else None."""
        try:
            data = json.loads(self.metadata.get("preprocess", "null"))
        except json.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    def sha256(self) -> str:
        return sha256_file(self.path)


@dataclass(frozen=True)
class SourceFormat:
    name: str
    suffixes: tuple[str, ...]
    read: Callable[[Path], SourceModel]
    copy: Callable[[Path, Path, dict[str, str]], None]  # (source, destination file, metadata to add)
    file: str  # the model file's name inside the run's source folder
    runtime: str  # where the original runs: the reference every variant is held to


SOURCE_FORMATS: Registry[SourceFormat] = Registry("model source format", key="model.source")


def source_format(path: str | Path) -> SourceFormat:
    """The reader for ``path``, by suffix; a one-line error naming what is accepted."""
    suffix = Path(path).suffix.lower()
    for fmt in SOURCE_FORMATS.values():
        if suffix in fmt.suffixes:
            return fmt
    accepted = ", ".join(s for fmt in SOURCE_FORMATS.values() for s in fmt.suffixes)
    raise RecipeError(f"model.source {str(path)!r}: edgetl reads {accepted} model files so far; export the model to "
                      "ONNX first (torch.onnx.export, optimum-cli export onnx)")


def read_source(path: str | Path) -> SourceModel:
    path = Path(path).expanduser()
    if not path.is_file():
        raise RecipeError(f"model.source {str(path)!r} is not a file; give the path of your model file")
    return source_format(path).read(path)


# -- ONNX -------------------------------------------------------------------------------------------

_ONNX_TYPES = {1: "float32", 10: "float16", 11: "float64", 6: "int32", 7: "int64", 2: "uint8", 3: "int8", 9: "bool"}


def _read_onnx(path: Path) -> SourceModel:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise RecipeError(f"model.source {path} is not a readable ONNX file ({str(exc).splitlines()[0][:120]}); "
                          "check the file, or re-export it") from None
    graph = proto.graph
    initializers = {init.name for init in graph.initializer}

    def dims(value) -> tuple[int | None, ...]:
        return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in value.type.tensor_type.shape.dim)

    inputs = [ModelInput(i.name, dims(i), _ONNX_TYPES.get(i.type.tensor_type.elem_type, "float32"))
              for i in graph.input if i.name not in initializers]
    if not inputs or not graph.output:
        raise RecipeError(f"model.source {path} has no inputs or no outputs; is it a complete model?")
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return SourceModel(path=path, format="onnx", inputs=inputs, output_shape=dims(graph.output[0]),
                       metadata={p.key: p.value for p in proto.metadata_props}, opset=opset)


def _copy_onnx(source: Path, destination: Path, metadata: dict[str, str]) -> None:
    """One self-contained ONNX file (external data folded in) with ``metadata`` added to its metadata_props; the
    graph itself is untouched."""
    import onnx

    proto = onnx.load(str(source))  # loads external data too
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **metadata})
    with atomic_path(destination) as tmp:
        onnx.save(proto, str(tmp))


SOURCE_FORMATS.register("onnx", SourceFormat("onnx", (".onnx",), _read_onnx, _copy_onnx, "model.onnx",
                                             "onnxruntime:CPUExecutionProvider"))
