"""What a source model file says about itself, and bringing it into a run folder.

>>> model = read_source("mobilenet_v2.onnx")
>>> model.inputs, model.num_outputs, model.labels

A file with several outputs (an export that also returns its token embeddings, its input ids...) is used through
one: ``model.output`` by name, else the first float (N, D) output (class logits or an embedding), else the first.
Bringing it into the run cuts the graph down to that output, so every later step sees a one-output model. A text
model given as a file brings its tokenizer (``model.tokenizer``) along (see ``edgetl.imported.tokenizer``).
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


@dataclass(frozen=True)
class ModelOutput:
    name: str
    shape: tuple[int | None, ...]  # None: a dynamic axis; () when the file does not say
    dtype: str  # numpy dtype name

    def describe(self) -> str:
        return f"{self.name} ({self.dtype} [{', '.join('?' if d is None else str(d) for d in self.shape)}])"


@dataclass
class SourceModel:
    """A model file as edgetl reads it: its inputs, the output it is used through, and its own metadata."""

    path: Path
    format: str  # "onnx", "openvino", "torch-export" or "hf"
    inputs: list[ModelInput]
    output_shape: tuple[int | None, ...]  # the chosen output's
    metadata: dict[str, str] = field(default_factory=dict)  # ONNX metadata_props / the IR's rt_info model_info
    opset: int | None = None
    outputs: list[ModelOutput] = field(default_factory=list)  # every output of the file, in order
    output: str = ""  # the one used (model.output, or by pick_output's rule); the others are cut when brought in
    tokenizer: Path | None = None  # model.tokenizer: a text model file's tokenizer folder or file

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


def pick_output(path: Path, outputs: list[ModelOutput], wanted: str = "") -> ModelOutput:
    """``wanted`` by name; else the first float output of rank 2 (class logits (N, C), an embedding (N, D)), else
    the first: an export's extra outputs (input ids echoed, token embeddings) are passed over."""
    if wanted:
        found = next((output for output in outputs if output.name == wanted), None)
        if found is None:
            raise RecipeError(f"model.output {wanted!r} is not an output of {path.name}; its outputs: "
                              f"{', '.join(o.describe() for o in outputs)}; give one of these names (--output NAME)")
        return found
    return next((o for o in outputs if o.dtype.startswith("float") and len(o.shape) == 2), outputs[0])


def _described(path: Path, fmt: str, inputs: list[ModelInput], outputs: list[ModelOutput], config: Any,
               **fields: Any) -> SourceModel:
    """The SourceModel of a file with these inputs and outputs, used through the output ``config.output`` names
    (or by pick_output's rule)."""
    if not inputs or not outputs:
        raise RecipeError(f"model.source {path} has no inputs or no outputs; is it a complete model?")
    chosen = pick_output(path, outputs, getattr(config, "output", "") or "")
    tokenizer = getattr(config, "tokenizer", "") or ""
    return SourceModel(path=path, format=fmt, inputs=inputs, output_shape=chosen.shape, outputs=outputs,
                       output=chosen.name, tokenizer=Path(tokenizer).expanduser() if tokenizer else None, **fields)


def _bring_tokenizer(model: SourceModel, destination: Path) -> None:
    if model.tokenizer is not None:
        from .tokenizer import bring_tokenizer

        bring_tokenizer(model.tokenizer, destination.parent)


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

    def dtype(value) -> str:
        return _ONNX_TYPES.get(value.type.tensor_type.elem_type, "float32")

    inputs = [ModelInput(i.name, dims(i), dtype(i)) for i in graph.input if i.name not in initializers]
    outputs = [ModelOutput(o.name, dims(o), dtype(o)) for o in graph.output]
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return _described(path, "onnx", inputs, outputs, config, opset=opset,
                      metadata={p.key: p.value for p in proto.metadata_props})


def _copy_onnx(source: Path, destination: Path, metadata: dict[str, str], output: str = "") -> None:
    """One self-contained ONNX file (external data folded in) with ``metadata`` added to its metadata_props; the
    graph itself is untouched, unless ``output`` names the one output to keep (see ``_keep_output``)."""
    import onnx

    proto = onnx.load(str(source))  # loads external data too
    if output:
        _keep_output(proto.graph, output)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **metadata})
    with atomic_path(destination) as tmp:
        try:
            onnx.save(proto, str(tmp))
        except ValueError as exc:  # protobuf's 2 GB limit on one message
            if "2GB" not in str(exc).replace(" ", ""):
                raise
            raise RecipeError(f"model.source {source.name} holds over 2 GB of weights (ONNX external data); edgetl "
                              "takes a model below 2 GB as one file: export a smaller model, or convert it to "
                              "OpenVINO IR (ovc) and give the .xml") from None


def _keep_output(graph, name: str) -> None:
    """Cut ``graph`` down to its output ``name``: the other outputs, the nodes only they needed, and initializers
    and value_info no kept node uses go; the inputs stay (the model's interface); names are kept as they are."""
    needed, kept = {name}, set()
    for index in reversed(range(len(graph.node))):
        node = graph.node[index]
        if needed.intersection(node.output):
            kept.add(index)
            needed.update(_used_names(node))
    for field_, keep in ((graph.node, lambda i, item: i in kept), (graph.output, lambda i, item: item.name == name),
                         (graph.initializer, lambda i, item: item.name in needed),
                         (graph.value_info, lambda i, item: item.name in needed)):
        for index in reversed(range(len(field_))):
            if not keep(index, field_[index]):
                del field_[index]


def _used_names(node) -> set[str]:
    """The values ``node`` reads, those its subgraphs (If, Loop, Scan) read from outside included."""
    names = {name for name in node.input if name}
    for attribute in node.attribute:
        for graph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in graph.node:
                names |= _used_names(inner)
    return names


def _bring_onnx(model: SourceModel, destination: Path) -> None:
    """The file with only the chosen output (the whole graph when it has one), and the model's tokenizer beside
    it when it is a text model given as a file."""
    _copy_onnx(model.path, destination, {}, output=model.output if len(model.outputs) > 1 else "")
    _bring_tokenizer(model, destination)


SOURCE_FORMATS.register("onnx", SourceFormat("onnx", (".onnx",), _read_onnx, _copy_onnx, "model.onnx",
                                             "onnxruntime:CPUExecutionProvider", ("onnx", "openvino"),
                                             bring=_bring_onnx))


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
        shape = port.get_partial_shape()
        return () if shape.rank.is_dynamic else tuple(d.get_length() if d.is_static else None for d in shape)

    def dtype(port) -> str:
        return _OV_TYPES.get(port.get_element_type().get_type_name(), "float32")

    inputs = [ModelInput(port.get_any_name(), dims(port), dtype(port)) for port in model.inputs]
    outputs = [ModelOutput(_ov_name(port, i), dims(port), dtype(port)) for i, port in enumerate(model.outputs)]
    metadata = {}
    if model.has_rt_info(["model_info"]):
        section = model.get_rt_info(["model_info"]).astype(dict)
        metadata = {str(k): v.astype(str) if hasattr(v, "astype") else str(v) for k, v in section.items()}
    return _described(path, "openvino", inputs, outputs, config, metadata=metadata)


def _ov_name(port, index: int) -> str:
    return port.get_any_name() if port.get_names() else f"output{index}"  # a hand-built IR may not name one


def _copy_openvino(source: Path, destination: Path, metadata: dict[str, str], output: str = "") -> None:
    """The IR (.xml and .bin) with ``metadata`` added to its rt_info; weights kept in their precision. ``output``:
    the one output to keep (the others' results go, and the nodes only they needed are not saved)."""
    from ..quantize.core import openvino_module

    ov = openvino_module()
    model = ov.Core().read_model(str(source))
    if output:
        for index, result in reversed(list(enumerate(model.get_results()))):
            if _ov_name(model.outputs[index], index) != output:
                model.remove_result(result)
        model.validate_nodes_and_infer_types()
    for key, value in metadata.items():
        model.set_rt_info(value, ["model_info", key])
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.with_name(f".{destination.stem}.partial.xml")
    ov.save_model(model, str(staging), compress_to_fp16=False)
    staging.with_suffix(".bin").replace(destination.with_suffix(".bin"))  # the weights before the file naming them
    staging.replace(destination)


def _bring_openvino(model: SourceModel, destination: Path) -> None:
    _copy_openvino(model.path, destination, {}, output=model.output if len(model.outputs) > 1 else "")
    _bring_tokenizer(model, destination)


SOURCE_FORMATS.register("openvino", SourceFormat("openvino", (".xml",), _read_openvino, _copy_openvino, "model.xml",
                                                 "openvino:CPU", ("openvino",), bring=_bring_openvino))
