"""A bare model file (``.onnx``, OpenVINO ``.xml``) staged as a minimal bundle, so targets time it exactly as
they time a shipped bundle.

The staging folder holds the model's files (with its external weights: ``.onnx.data``, the IR's ``.bin``),
random inputs of its own input shapes and dtypes as ``validation/bench.npz`` (``random_inputs``), and a
manifest naming one artifact and the runtime its suffix gets (``.onnx`` -> onnxruntime, ``.xml`` -> openvino).
There is no validation slice: the file is timed, not validated, and the report says so.

>>> staged = stage_model_file(Path("model.onnx"), Path(tmp), InputOptions(seq_len=64))
>>> bundle = load_bundle(staged.root)      # then plan_runs / agent_request as for any bundle
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .._io import write_json
from ..errors import BackendUnavailable, EdgetlError
from ..registry import Registry
from .random_inputs import InputOptions, ModelInput, make_inputs

# What a bare model file's runs are checked against: nothing (no reference outputs came with it).
NOT_VALIDATED = "a bare model file has no validation slice"


@dataclass(frozen=True)
class ModelFileInfo:
    """What staging needs from a model file: its inputs and every file it loads (model file first)."""

    inputs: list[ModelInput]
    files: list[Path]


@dataclass(frozen=True)
class ModelFormat:
    """A model file suffix: the bundle artifact format, the backend that opens it, and its reader."""

    format: str
    runtime: str  # backend:device, on the CPU
    read: Callable[[Path], ModelFileInfo]

    @property
    def backend(self) -> str:
        return self.runtime.partition(":")[0]


MODEL_FORMATS: Registry[ModelFormat] = Registry("model file suffix", hint="give a .onnx file or an OpenVINO .xml")


@dataclass(frozen=True)
class StagedModel:
    """A staged model file: the bundle folder to bench, and what was timed and why it is not validated."""

    root: Path
    remark: str


def is_model_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a model file to stage (``.onnx``, ``.xml``; not a folder), not a bundle."""
    return not Path(path).is_dir() and Path(path).suffix.lower() in MODEL_FORMATS


def stage_model_file(path: Path, folder: Path, options: InputOptions | None = None) -> StagedModel:
    """Write ``folder/model/<files>``, ``folder/validation/bench.npz`` and ``folder/manifest.json`` for the
    model file ``path``; an EdgetlError (before anything runs on a target) names an unreadable file or an
    input whose shape needs ``--shape``."""
    from .._io import sha256_file
    from ..bundle import BENCH_FILE, FORMAT_VERSION, MANIFEST, file_table, input_rows
    from ..bundle.slice import save_npz

    path = Path(path)
    fmt = MODEL_FORMATS.get(path.suffix.lower(), error=EdgetlError)
    info = fmt.read(path)
    batch, described = make_inputs(info.inputs, options or InputOptions(), source=path.name)
    root = folder / "staged"
    files = []
    for source in info.files:
        rel = Path("model") / source.relative_to(path.parent)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(source, root / rel)
        files.append(rel.as_posix())
    arrays = {f"inputs.{name}": a for name, a in batch.items()} if isinstance(batch, dict) else {"inputs": batch}
    save_npz(root / BENCH_FILE, arrays)
    name = path.name
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "name": path.stem, "kind": "model file",
        "bare_model_file": {"name": path.name, "path": str(path), "sha256": sha256_file(path),
                            "suffix": path.suffix.lower(), "backend": fmt.backend},
        "default_artifact": name,
        "artifacts": {name: {"format": fmt.format, "files": files, "model_file": files[0], "runtime": fmt.runtime}},
        "bench_inputs": {"file": BENCH_FILE, "rows": input_rows(batch), "description": described},
        "files": file_table(root),
    }
    write_json(root / MANIFEST, manifest)
    remark = (f"{name}: timed on {described}; not validated: {NOT_VALIDATED}, so the targets' outputs were not "
              "checked")
    return StagedModel(root, remark)


def _link_or_copy(source: Path, destination: Path) -> None:
    """A hard link where the file system allows (a large model is not copied), else a copy. Never a symlink:
    the SSH payload would carry the link, not the file."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


# -- readers ------------------------------------------------------------------------------------------------


def _read_onnx(path: Path) -> ModelFileInfo:
    """Graph inputs (initializers left out) and external data files, from the protobuf alone (no weights)."""
    try:
        import onnx
        from onnx import helper
    except ImportError:
        raise BackendUnavailable(f"reading {path.name}'s inputs needs the onnx package; run `pip install onnx`") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own types for a damaged file
        raise EdgetlError(f"cannot read {path} as ONNX ({_first_line(exc)}); give a valid .onnx file") from None
    graph = model.graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
            raise EdgetlError(f"{path.name}: input {value.name!r} has no tensor shape in the model; re-export it "
                              "with its input shapes")
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                     for d in tensor.shape.dim)
        inputs.append(ModelInput(value.name, dims, helper.tensor_dtype_to_np_dtype(tensor.elem_type).name))
    return ModelFileInfo(inputs, [path, *_external_files(path, graph)])


def _external_files(path: Path, graph: Any) -> list[Path]:
    """The files an ONNX graph keeps its weights in (``location`` of every external tensor, subgraphs too)."""
    locations: dict[str, None] = {}

    def walk(g: Any) -> None:
        tensors = list(g.initializer)
        for node in g.node:
            for attribute in node.attribute:
                tensors += ([attribute.t] if attribute.HasField("t") else []) + list(attribute.tensors)
                for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    walk(sub)
        for tensor in tensors:
            locations.update({e.value: None for e in tensor.external_data if e.key == "location"})

    walk(graph)
    files = []
    for location in locations:
        file = Path(os.path.normpath(path.parent / location))
        if not file.resolve().is_relative_to(path.parent.resolve()) or not file.is_file():
            raise EdgetlError(f"{path.name} keeps weights in {location!r}, which is not a file beside it; put the "
                              "external data file next to the .onnx")
        files.append(file)
    return files


def _read_openvino(path: Path) -> ModelFileInfo:
    """The IR's input ports (named as its runners name them) and its ``.bin``."""
    from ..runners.backends import _port_name, require

    ov = require("openvino", "openvino")
    try:
        model = ov.Core().read_model(str(path))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError for anything
        raise EdgetlError(f"cannot read {path} as OpenVINO IR ({_first_line(exc)}); give the .xml with its .bin "
                          "beside it") from None
    inputs = []
    for index, port in enumerate(model.inputs):
        shape = port.get_partial_shape()
        name = _port_name(port, index)
        if shape.rank.is_dynamic:
            raise EdgetlError(f"{path.name}: input {name!r} has a dynamic rank; reshape the model to a fixed rank "
                              "(ov.Model.reshape) and save it again")
        dims = tuple(d.get_length() if d.is_static else "?" for d in shape)
        inputs.append(ModelInput(name, dims, port.get_element_type().to_dtype().name))
    weights = path.with_suffix(".bin")
    return ModelFileInfo(inputs, [path, *([weights] if weights.is_file() else [])])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


MODEL_FORMATS.register(".onnx", ModelFormat("onnx", "onnxruntime:CPUExecutionProvider", _read_onnx))
MODEL_FORMATS.register(".xml", ModelFormat("openvino", "openvino:CPU", _read_openvino))
