"""DnCNN (Zhang et al., 2017): a plain conv-BN-ReLU stack that predicts the residual to subtract."""

from __future__ import annotations

import torch
from torch import nn

from deblur_exp.models import register_model


@register_model("dncnn")
class DnCNN(nn.Module):
    def __init__(self, channels: int = 3, depth: int = 17, features: int = 64):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, features, 3, padding=1, bias=False), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(features, features, 3, padding=1, bias=False),
                nn.BatchNorm2d(features),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(features, channels, 3, padding=1, bias=False))
        self.body = nn.Sequential(*layers)

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        # Residual learning: the network estimates the degradation, which is removed from the input.
        return degraded - self.body(degraded)
