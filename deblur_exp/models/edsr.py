"""A small EDSR (Lim et al., 2017) for same-size restoration: no batch norm, residual blocks, a long skip over the
body, and optionally the input added to the output (``global_skip``)."""

from __future__ import annotations

import torch
from torch import nn

from deblur_exp.models import register_model


class ResidualBlock(nn.Module):
    def __init__(self, features: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(features, features, 3, padding=1),
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.body(x)


@register_model("edsr")
class EDSRDeblur(nn.Module):
    def __init__(self, channels: int = 3, features: int = 64, blocks: int = 4, res_scale: float = 1.0,
                 global_skip: bool = False):
        super().__init__()
        # global_skip adds the input to the output (residual learning, as in VDSR): the network then learns only
        # what the degradation took away, which converges far faster when the input is already close to the target
        # (the bicubic-upscaled images of experiment=srcnn_x3). Off by default: the seed's EDSR_Deblur has none.
        self.global_skip = global_skip
        self.head = nn.Conv2d(channels, features, 3, padding=1)
        self.body = nn.Sequential(*(ResidualBlock(features, res_scale) for _ in range(blocks)))
        self.tail = nn.Conv2d(features, channels, 3, padding=1)

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        features = self.head(degraded)
        restored = self.tail(features + self.body(features))
        return degraded + restored if self.global_skip else restored
