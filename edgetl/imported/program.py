"""A ``torch.export`` program (``.pt2``) as a source model: torch.export's own format (a graph and its weights, not
a pickle), held to the program run by torch and exported by torch.onnx's dynamo exporter. ``program_to_onnx`` is
shared with the factory format, which traces the user's module into a program first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._io import atomic_path
from ..errors import ExportError, RecipeError
from .model import SOURCE_FORMATS, ModelInput, SourceFormat, SourceModel

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
    if getattr(config, "output", ""):
        raise RecipeError(f"model.output: a torch.export program ({path.name}) is used through its first output; "
                          "remove model.output, or export the program returning only the output you want")
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
    return program_to_onnx(_load_program(source), destination, metadata, name=f"the torch.export program {source.name}")


def program_to_onnx(program, destination: Path, metadata: dict[str, str], *, name: str) -> dict[str, Any]:
    """torch.onnx's dynamo exporter on ``program`` (an ExportedProgram: one file, the batch axis kept dynamic) with
    ``metadata`` in the file's metadata_props; ``name`` says what the program is in messages."""
    import contextlib
    import io

    import onnx
    import torch

    example = tuple(node.meta["val"] for node in program.graph.nodes
                    if node.op == "placeholder" and node.name in set(program.graph_signature.user_inputs))
    args = tuple(torch.zeros([d if isinstance(d, int) else 2 for d in v.shape], dtype=v.dtype) for v in example)
    with atomic_path(destination) as tmp:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
                torch.onnx.export(program, args, str(tmp), dynamo=True, external_data=False, opset_version=18)
        except Exception as exc:  # noqa: BLE001 - torch.onnx raises many types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExportError(f"torch.onnx could not export {name}: {first[:200]}; export it to ONNX yourself and "
                              "give that file as model.source") from None
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, metadata)
        onnx.save(proto, str(tmp))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"format": "onnx", "files": [destination.name], "opset": opset,
            "exporter": f"torch.onnx (dynamo) from {name}", "metadata": metadata}


SOURCE_FORMATS.register("torch-export", SourceFormat(
    "torch-export", (".pt2",), _read_program, _copy_file, "model.pt2", "torch:cpu", ("onnx", "openvino"),
    reference=_program_module, to_onnx=_program_to_onnx))
