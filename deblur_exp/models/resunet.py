"""A residual U-Net for restoration in the style of DRUNet (Zhang et al., 2021), without its noise-level input:
bias-free residual blocks at full, half and quarter resolution, strided-conv down and transposed-conv up, skips
added, and the input added to the output. Most of its convolutions run on fewer pixels than a plain stack's, so it
sees a wide context (about 50 pixels each way) for a third of DnCNN's arithmetic per pixel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deblur_exp.models import register_model


class ResidualBlock(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(features, features, 3, padding=1, bias=False), nn.ReLU(inplace=True),
                                  nn.Conv2d(features, features, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def blocks(features: int, count: int) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlock(features) for _ in range(count)))


@register_model("resunet")
class ResUNet(nn.Module):
    def __init__(self, channels: int = 3, features: int = 32, blocks_per_level: int = 2):
        super().__init__()
        widths = (features, 2 * features, 4 * features)
        self.head = nn.Conv2d(channels, widths[0], 3, padding=1, bias=False)
        self.down = nn.ModuleList(nn.Sequential(blocks(widths[i], blocks_per_level),
                                                nn.Conv2d(widths[i], widths[i + 1], 2, stride=2, bias=False))
                                  for i in range(2))
        self.bottom = blocks(widths[2], blocks_per_level)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2, bias=False) for i in range(2))
        self.decode = nn.ModuleList(blocks(widths[i], blocks_per_level) for i in range(2))
        self.tail = nn.Conv2d(widths[0], channels, 3, padding=1, bias=False)

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        height, width = degraded.shape[-2:]
        # Two halvings need sides divisible by 4: extend the border by repetition, crop it off at the end.
        x = F.pad(degraded, (0, -width % 4, 0, -height % 4), mode="replicate")
        skips, x = [], self.head(x)
        for down in self.down:
            skips.append(x)
            x = down(x)
        x = self.bottom(x)
        for level in (1, 0):
            x = self.decode[level](self.up[level](x) + skips[level])
        return degraded + self.tail(x)[..., :height, :width]
