"""A PyTorch model given as code and weights: ``model.source = "mypkg.nets:make_net"`` (a function, or class, that
takes no arguments and returns a ``torch.nn.Module``) and ``model.weights = "net.safetensors"`` (its state dict,
saved with ``safetensors.torch.save_file(model.state_dict(), "net.safetensors")``).

edgetl never unpickles: weights come from safetensors only (a .pt/.pth/.bin file is refused), and the only code that
runs is the user's own module, imported as ``python -m`` and uvicorn import ``module:attribute`` (the current
directory first on ``sys.path``). The run keeps the weights (``source/model.safetensors``) and the factory's name
beside them (``source/factory.json``), so its reference and exports work from the run folder alone; the module must
still be importable when the run goes on.

A factory has no example input: the model is taken to be an image classifier fed (N, 3, S, S) float32 batches,
S = ``model.image_size`` (``--size``).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._io import atomic_path, read_json, sha256_file, write_json
from ..errors import ExportError, RecipeError, WeightsError
from ..settings import WEIGHT_SOURCES
from .model import SOURCE_FORMATS, ModelInput, SourceFormat, SourceModel
from .program import program_to_onnx

FACTORY_FILE = "factory.json"  # beside the run's copy of the weights: which code builds the model, at what size
PICKLES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
SAVE_HINT = 'safetensors.torch.save_file(model.state_dict(), "net.safetensors")'
_SHOWN = 3  # key names quoted in a state-dict mismatch


@dataclass
class FactoryModel(SourceModel):
    """A factory's model: ``path`` is its weights; ``factory`` the ``module:attribute`` that builds it."""

    factory: str = ""
    image_size: int = 0
    code_sha256: str = ""  # of the factory's module file, when it has one: editing the code re-imports the model

    def sha256(self) -> str:
        """sha256 over the factory's name, its module file and the weights file: changing any one re-imports."""
        digest = hashlib.sha256()
        for part in (f"factory\0{self.factory}", f"code\0{self.code_sha256}", f"weights\0{sha256_file(self.path)}"):
            digest.update(f"{part}\n".encode())
        return digest.hexdigest()


def parse_spec(spec: str) -> tuple[str, str] | None:
    """(module, attribute) of a ``package.module:attribute`` spec, else None. A one-letter module is a Windows
    drive (``C:model``), not a factory."""
    module, sep, attribute = spec.partition(":")
    if not sep or len(module) == 1 or not attribute.isidentifier():
        return None
    if not all(part.isidentifier() for part in module.split(".")):
        return None
    return module, attribute


def import_factory(spec: str, where: str = "model.source") -> Any:
    """The object ``spec`` names, its module imported with the current directory on ``sys.path`` (as ``python -m``
    does); a one-line RecipeError when the module cannot be imported or lacks the attribute."""
    module_name, attribute = parse_spec(spec) or (None, None)
    if module_name is None:
        raise RecipeError(f"{where} {spec!r} is not package.module:factory; name a function that returns the model, "
                          "e.g. mypkg.nets:make_net")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            raise RecipeError(f"{where} {spec!r}: cannot import module {module_name!r} (no module named {exc.name!r} "
                              f"from {os.getcwd()}); run edgetl in the folder that holds it, or install its package "
                              "(pip install -e .)") from None
        raise RecipeError(f"{where} {spec!r}: importing {module_name} failed: {exc}; install what it needs "
                          "(pip install ...)") from None
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything while importing
        raise RecipeError(f"{where} {spec!r}: importing {module_name} raised {type(exc).__name__}: "
                          f"{_first_line(exc)}; fix the module") from None
    if not hasattr(module, attribute):
        raise RecipeError(f"{where} {spec!r}: module {module_name} ({getattr(module, '__file__', None) or 'no file'})"
                          f" has no attribute {attribute!r}; name the function that returns the model")
    factory = getattr(module, attribute)
    if not callable(factory):
        raise RecipeError(f"{where} {spec!r} is a {type(factory).__name__}, not a function; name a function (or "
                          "class) that returns the torch.nn.Module")
    return factory


def build_model(spec: str, where: str = "model.source"):
    """The module the factory returns (a ``torch.nn.Module`` object named by ``spec`` is taken as it is)."""
    import torch

    factory = import_factory(spec, where)
    if isinstance(factory, torch.nn.Module):
        return factory
    try:
        model = factory()
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
        raise RecipeError(f"{where} {spec!r}: calling {spec.partition(':')[2]}() raised {type(exc).__name__}: "
                          f"{_first_line(exc)}; name a function that takes no arguments and returns the model"
                          ) from None
    if not isinstance(model, torch.nn.Module):
        raise RecipeError(f"{where} {spec!r} returned a {type(model).__name__}, not a torch.nn.Module; make it "
                          "return the model itself")
    return model


def load_weights(model, weights: Path) -> None:
    """Load the safetensors state dict ``weights`` into ``model``, strictly: every key present with its shape (a
    tied weight saved once, as ``safetensors.torch.save_model`` does, counts as present)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"model.weights {weights} is not a readable safetensors file ({_first_line(exc)}); save "
                           f"the weights with {SAVE_HINT}") from None
    expected = model.state_dict()
    twins: dict[int, list[str]] = {}  # tied tensors share one storage: a name is present when one of its twins is
    for key, tensor in expected.items():
        if tensor.numel():
            twins.setdefault(tensor.data_ptr(), []).append(key)
    missing = [key for key, tensor in expected.items() if key not in state
               and not (tensor.numel() and any(twin in state for twin in twins[tensor.data_ptr()]))]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        parts = [f"{len(keys)} {what} ({', '.join(keys[:_SHOWN])}{', ...' if len(keys) > _SHOWN else ''})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise WeightsError(f"model.weights {weights.name} does not fit the model: {' and '.join(parts)} keys; save "
                           f"the state dict of the model this factory builds: {SAVE_HINT}")
    wrong = [f"{key} {list(state[key].shape)} (the model's: {list(expected[key].shape)})" for key in expected
             if key in state and state[key].shape != expected[key].shape]
    if wrong:
        raise WeightsError(f"model.weights {weights.name}: {len(wrong)} tensors have the wrong shape: "
                           f"{', '.join(wrong[:_SHOWN])}{', ...' if len(wrong) > _SHOWN else ''}; does the factory "
                           "build the model these weights were saved from?")
    model.load_state_dict(state, strict=False)  # every key checked above; strict would refuse a tied twin


def _locate(spec: str, config: Any) -> Path | None:
    """The weights of a ``package.module:factory`` source (``model.weights``: a .safetensors file), the factory
    checked to be importable; None when ``spec`` is not a factory spec."""
    if parse_spec(spec) is None or Path(spec).expanduser().exists():
        return None
    import_factory(spec)
    weights = getattr(config, "weights", "") or ""
    path = Path(weights).expanduser()
    if not weights or weights in WEIGHT_SOURCES:
        raise RecipeError(f"model.source {spec!r} builds the model from code and needs its weights: give model.weights "
                          f"(--weights) a safetensors file, saved with {SAVE_HINT}")
    if path.suffix.lower() in PICKLES:
        raise RecipeError(f"model.weights {weights!r} is a pickle, which edgetl never loads; save the state dict as "
                          f"safetensors instead: {SAVE_HINT}")
    if path.suffix.lower() != ".safetensors":
        raise RecipeError(f"model.weights {weights!r}: give the state dict as a .safetensors file, saved with "
                          f"{SAVE_HINT}")
    if not path.is_file():
        raise RecipeError(f"model.weights {weights!r} does not exist; give the path of the model's .safetensors "
                          "weights")
    return path


def _is_weights(path: Path) -> bool:
    return path.suffix.lower() == ".safetensors" and path.is_file()


def _settings(path: Path, config: Any) -> tuple[str, int]:
    """(factory spec, image size) of the weights ``path``: from the recipe's ``model`` section, else from the
    factory.json a run keeps beside its copy of them."""
    spec = str(getattr(config, "source", "") or "")
    if parse_spec(spec) is not None and not Path(spec).expanduser().exists():
        return spec, int(config.image_size)
    if (path.parent / FACTORY_FILE).is_file():
        saved = read_json(path.parent / FACTORY_FILE)
        return saved["factory"], int(saved["image_size"])
    raise RecipeError(f"{path.name} holds weights only; name the code that builds the model as well: model.source = "
                      f'"package.module:factory" and model.weights = "{path.name}" (edgetl optimize '
                      f"package.module:factory --weights {path.name})")


def load_model(path: Path, config: Any = None):
    """(the factory's model with the weights ``path`` loaded, in eval mode; its spec; the image size)."""
    spec, size = _settings(path, config)
    model = build_model(spec, "model.source" if config is not None else str(path.parent / FACTORY_FILE))
    load_weights(model, path)
    return model.eval(), spec, size


def _read(path: Path, config: Any = None) -> FactoryModel:
    """The factory's model with its weights: one (N, 3, S, S) float32 input, S = ``model.image_size``; the output
    shape from one forward pass on a zero batch of 2."""
    import torch

    model, spec, size = load_model(path, config)
    try:
        with torch.inference_mode():
            output = model(torch.zeros(2, 3, size, size))
    except Exception as exc:  # noqa: BLE001 - the user's forward
        raise RecipeError(f"model.source {spec!r} fails on a (2, 3, {size}, {size}) float32 image batch: "
                          f"{_first_line(exc)}; set model.image_size (--size) to the size it takes") from None
    if not isinstance(output, torch.Tensor):
        raise RecipeError(f"model.source {spec!r}: its forward returns a {type(output).__name__}; edgetl needs one "
                          "(N, classes) tensor: wrap the model so that forward returns its logits")
    code = getattr(sys.modules.get(spec.partition(":")[0]), "__file__", None)
    return FactoryModel(path=path, format="torch-factory", inputs=[ModelInput("pixel_values", (None, 3, size, size),
                                                                              "float32")],
                        output_shape=(None, *output.shape[1:]), factory=spec, image_size=size,
                        code_sha256=sha256_file(code) if code and Path(code).is_file() else "")


def _bring(model: SourceModel, destination: Path) -> None:
    """The weights as ``destination`` (model.safetensors) and factory.json beside them (written first: the weights
    file is what says the import is complete)."""
    if not isinstance(model, FactoryModel):
        raise TypeError(f"torch-factory brings a FactoryModel, got {type(model).__name__}")
    write_json(destination.parent / FACTORY_FILE, {"factory": model.factory, "image_size": model.image_size,
                                                   "weights": model.path.name,
                                                   "weights_sha256": sha256_file(model.path)})
    with atomic_path(destination) as tmp:
        shutil.copyfile(model.path, tmp)


def _copy(source: Path, destination: Path, metadata: dict[str, str]) -> None:
    """The weights and the factory.json beside them (the state dict has no place for edgetl's metadata)."""
    if (source.parent / FACTORY_FILE).is_file():
        with atomic_path(destination.parent / FACTORY_FILE) as tmp:
            shutil.copyfile(source.parent / FACTORY_FILE, tmp)
    with atomic_path(destination) as tmp:
        shutil.copyfile(source, tmp)


def reference_model(path: Path):
    """The torch module a run's ``source/model.safetensors`` and its factory.json make: what every variant is
    held to."""
    return load_model(path)[0]


def _to_onnx(source: Path, destination: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """The module traced by torch.export with a dynamic batch, then torch.onnx's dynamo exporter (as a .pt2)."""
    import torch

    model, spec, size = load_model(source)
    try:
        program = torch.export.export(model, (torch.zeros(2, 3, size, size),),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types
        raise ExportError(f"torch.export cannot trace {spec} with a dynamic batch: {_first_line(exc)[:200]}; make "
                          "forward independent of the batch size (x.flatten(1), not x.view(2, -1))") from None
    return program_to_onnx(program, destination, metadata, name=f"{spec} with {source.name}")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


TORCH_FACTORY = SOURCE_FORMATS.register("torch-factory", SourceFormat(
    "torch-factory", (), _read, _copy, "model.safetensors", "torch:cpu", ("onnx", "openvino"),
    reference=reference_model, to_onnx=_to_onnx, detect=_is_weights, locate=_locate, bring=_bring))
