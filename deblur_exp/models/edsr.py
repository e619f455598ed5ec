"""A small EDSR (Lim et al., 2017) for same-size restoration: no batch norm, residual blocks, global skip."""

from __future__ import annotations

import torch
from torch import nn

from deblur_exp.models import register_model


class ResidualBlock(nn.Module):
    def __init__(self, features: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(features, features, 3, padding=1)
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.body(x)


@register_model("edsr")
class EDSRDeblur(nn.Module):
    def __init__(self, channels: int = 3, features: int = 64, blocks: int = 4, res_scale: float = 1.0):
        super().__init__()
        self.head = nn.Conv2d(channels, features, 3, padding=1)
        self.body = nn.Sequential(*(ResidualBlock(features, res_scale) for _ in range(blocks)))
        self.tail = nn.Conv2d(features, channels, 3, padding=1)

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        features = self.head(degraded)
        return self.tail(features + self.body(features))
