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
    format: str  # "onnx", "openvino" or "torch-export"
    inputs: list[ModelInput]
    output_shape: tuple[int | None, ...]
    metadata: dict[str, str] = field(default_factory=dict)  # ONNX metadata_props / the IR's rt_info model_info
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
        """sha256 of the model file; of an IR's .xml and .bin; of a folder's config, weights and tokenizer files."""
        import hashlib

        if self.path.is_dir():
            files = sorted(p for p in self.path.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors",
                                                                                           ".txt", ".model"))
        else:
            files = [self.path, *([self.path.with_suffix(".bin")] if self.path.suffix == ".xml" else [])]
        if len(files) == 1 and files[0] == self.path:
            return sha256_file(self.path)
        digest = hashlib.sha256()
        for path in files:
            digest.update(f"{path.relative_to(self.path.parent)}\0{sha256_file(path)}\n".encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class SourceFormat:
    name: str
    suffixes: tuple[str, ...]
    # what the model says about itself; the second argument is the recipe's ``model`` section (``ModelConfig``:
    # ``output``, ``tokenizer``, ``weights``, ...), or None when only the file is at hand (``edgetl bench FILE``)
    read: Callable[[Path, Any], SourceModel]
    copy: Callable[[Path, Path, dict[str, str]], None]  # (source, destination file, metadata to add)
    file: str  # the model file's name inside the run's source folder
    runtime: str  # where the original runs: the reference every variant is held to
    formats: tuple[str, ...]  # the export formats a run can make from it (and so the quantizers it can feed)
    # what open_runner takes to run the original (default: the file itself), and an ONNX exporter for a source that
    # is not ONNX already (path, destination, metadata)
    reference: Callable[[Path], Any] | None = None
    to_onnx: Callable[[Path, Path, dict[str, str]], dict[str, Any]] | None = None
    detect: Callable[[Path], bool] | None = None  # a format known by its content (a folder) rather than a suffix
    # a source named by something other than a local path (a hub id, ``package.module:factory``): the local path
    # to read it from, or None when ``spec`` is not of this kind
    locate: Callable[[str, Any], Path | None] | None = None
    # how the source comes into the run's folder (``destination``: ``runs/<name>/source/<file>``); default: ``copy``
    # of the file as it is. A format that cuts unused outputs or writes its settings beside the weights says so here.
    bring: Callable[[SourceModel, Path], None] | None = None

    def bring_into(self, model: SourceModel, destination: Path) -> None:
        if self.bring is not None:
            self.bring(model, destination)
        else:
            self.copy(model.path, destination, {})


SOURCE_FORMATS: Registry[SourceFormat] = Registry("model source format", key="model.source")


def source_format(path: str | Path) -> SourceFormat:
    """The reader for ``path``: a Hugging Face folder, else by suffix; a one-line error naming what is accepted."""
    for fmt in SOURCE_FORMATS.values():
        if fmt.detect is not None and fmt.detect(Path(path).expanduser()):
            return fmt
    suffix = Path(path).suffix.lower()
    for fmt in SOURCE_FORMATS.values():
        if suffix in fmt.suffixes:
            return fmt
    accepted = ", ".join(s for fmt in SOURCE_FORMATS.values() for s in fmt.suffixes)
    raise RecipeError(f"model.source {str(path)!r}: edgetl reads {accepted} model files and Hugging Face folders "
                      "(with config.json) so far; export the model to ONNX first (torch.onnx.export, optimum-cli "
                      "export onnx)")


def locate_source(spec: str | Path, config: Any = None) -> Path:
    """The local path of ``model.source``: the path itself, or what a format's ``locate`` makes of a name that is
    not a path (a Hugging Face hub id, a ``package.module:factory``)."""
    path = Path(spec).expanduser()
    if path.is_file() or path.is_dir():
        return path
    for fmt in SOURCE_FORMATS.values():
        if fmt.locate is not None and (located := fmt.locate(str(spec), config)) is not None:
            return located
    raise RecipeError(f"model.source {str(spec)!r} does not exist; give the path of your model file or folder")


def read_source(spec: str | Path, config: Any = None) -> SourceModel:
    """What the model ``spec`` (``model.source``) says about itself, read with the recipe's ``model`` settings."""
    path = locate_source(spec, config)
    return source_format(path).read(path, config)


# -- ONNX -------------------------------------------------------------------------------------------

_ONNX_TYPES = {1: "float32", 10: "float16", 11: "float64", 6: "int32", 7: "int64", 2: "uint8", 3: "int8", 9: "bool"}


def _read_onnx(path: Path, config: Any = None) -> SourceModel:
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
                                             "onnxruntime:CPUExecutionProvider", ("onnx", "openvino")))


# -- OpenVINO IR --------------------------------------------------------------------------------------

_OV_TYPES = {"f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32", "u8": "uint8", "boolean": "bool"}


def _read_openvino(path: Path, config: Any = None) -> SourceModel:
    from ..quantize.core import openvino_module

    ov = openvino_module()
    if not path.with_suffix(".bin").is_file():
        raise RecipeError(f"model.source {path.name} has no {path.with_suffix('.bin').name} beside it; an OpenVINO IR "
                          "is the .xml and its .bin together")
    try:
        model = ov.Core().read_model(str(path))
    except Exception as exc:
        raise RecipeError(f"model.source {path} is not a readable OpenVINO IR ({str(exc).splitlines()[0][:120]}); "
                          "check the .xml/.bin pair, or re-export it") from None

    def dims(port) -> tuple[int | None, ...]:
        return tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())

    inputs = [ModelInput(port.get_any_name(), dims(port), _OV_TYPES.get(port.get_element_type().get_type_name(),
                                                                          "float32")) for port in model.inputs]
    metadata = {}
    if model.has_rt_info(["model_info"]):
        section = model.get_rt_info(["model_info"]).astype(dict)
        metadata = {str(k): v.astype(str) if hasattr(v, "astype") else str(v) for k, v in section.items()}
    return SourceModel(path=path, format="openvino", inputs=inputs, output_shape=dims(model.outputs[0]),
                       metadata=metadata)


def _copy_openvino(source: Path, destination: Path, metadata: dict[str, str]) -> None:
    """The IR (.xml and .bin) with ``metadata`` added to its rt_info; weights kept in their precision."""
    from ..quantize.core import openvino_module

    ov = openvino_module()
    model = ov.Core().read_model(str(source))
    for key, value in metadata.items():
        model.set_rt_info(value, ["model_info", key])
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.with_name(f".{destination.stem}.partial.xml")
    ov.save_model(model, str(staging), compress_to_fp16=False)
    staging.with_suffix(".bin").replace(destination.with_suffix(".bin"))  # the weights before the file naming them
    staging.replace(destination)


SOURCE_FORMATS.register("openvino", SourceFormat("openvino", (".xml",), _read_openvino, _copy_openvino, "model.xml",
                                                 "openvino:CPU", ("openvino",)))


# -- a torch.export program (.pt2) ---------------------------------------------------------------------


def _load_program(path: Path):
    """The ExportedProgram in ``path``. torch.export's own format (a graph and its weights), not a pickle: loading
    it runs no code from the file."""
    import torch

    try:
        return torch.export.load(str(path))
    except Exception as exc:
        raise RecipeError(f"model.source {path} is not a torch.export program ({str(exc).splitlines()[0][:120]}); "
                          "save one with torch.export.save(torch.export.export(model, example_inputs), PATH)") from None


def _read_program(path: Path, config: Any = None) -> SourceModel:
    program = _load_program(path)
    user_inputs = set(program.graph_signature.user_inputs)

    def dims(value) -> tuple[int | None, ...]:
        return tuple(int(d) if isinstance(d, int) else None for d in value.shape)

    inputs = [ModelInput(node.name, dims(node.meta["val"]), str(node.meta["val"].dtype).removeprefix("torch."))
              for node in program.graph.nodes if node.op == "placeholder" and node.name in user_inputs]
    output = next(node for node in program.graph.nodes if node.op == "output").args[0][0]
    model = SourceModel(path=path, format="torch-export", inputs=inputs, output_shape=dims(output.meta["val"]))
    if inputs and inputs[0].shape and inputs[0].shape[0] is not None:
        raise RecipeError(f"model.source {path.name}: its batch axis is fixed at {inputs[0].shape[0]}; export it with "
                          "a dynamic batch: torch.export.export(model, (x,), dynamic_shapes=({0: "
                          "torch.export.Dim('batch')},))")
    return model


def _copy_file(source: Path, destination: Path, metadata: dict[str, str]) -> None:
    import shutil

    with atomic_path(destination) as tmp:
        shutil.copyfile(source, tmp)


def _program_module(path: Path):
    """The program as a module the torch runner can call (its ``eval()`` is refused by torch.export's own module,
    which is held here unregistered: it has no training mode to switch)."""
    import torch

    class Program(torch.nn.Module):
        def __init__(self, module) -> None:
            super().__init__()
            self.__dict__["program"] = module

        def forward(self, *args):
            return self.program(*args)

    return Program(_load_program(path).module())


def _program_to_onnx(source: Path, destination: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """torch.onnx's dynamo exporter on the program itself (one file, the batch axis kept dynamic)."""
    import contextlib
    import io

    import onnx
    import torch

    program = _load_program(source)
    example = tuple(node.meta["val"] for node in program.graph.nodes
                    if node.op == "placeholder" and node.name in set(program.graph_signature.user_inputs))
    args = tuple(torch.zeros([d if isinstance(d, int) else 2 for d in v.shape], dtype=v.dtype) for v in example)
    with atomic_path(destination) as tmp:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
                torch.onnx.export(program, args, str(tmp), dynamo=True, external_data=False, opset_version=18)
        except Exception as exc:
            from ..errors import ExportError

            raise ExportError(f"torch.onnx could not export {source.name}: {str(exc).splitlines()[0][:200]}; export "
                              "it to ONNX yourself and give that file as model.source") from None
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, metadata)
        onnx.save(proto, str(tmp))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"format": "onnx", "files": [destination.name], "opset": opset, "exporter": "torch.onnx (dynamo) from "
            f"the torch.export program {source.name}", "metadata": metadata}


SOURCE_FORMATS.register("torch-export", SourceFormat(
    "torch-export", (".pt2",), _read_program, _copy_file, "model.pt2", "torch:cpu", ("onnx", "openvino"),
    reference=_program_module, to_onnx=_program_to_onnx))
