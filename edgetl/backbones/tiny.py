"""A tiny network for tests and smoke runs, registered beside the real backbones as ``tiny_convnet``
(spec in ``catalog``)."""

from __future__ import annotations

import torch
from torch import nn


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


def build_tiny_convnet(num_classes: int, image_size: int) -> TinyConvNet:
    """The ``tiny_convnet`` backbone (its spec is in ``catalog``)."""
    return TinyConvNet(num_classes, image_size)
