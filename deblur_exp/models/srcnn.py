"""SRCNN and the seed notebook's three modified variants of it.

All convolutions are padded so that the output has the input's height and width (odd sizes included).
"""

from __future__ import annotations

import torch
from torch import nn

from deblur_exp.models import register_model


def _conv_relu_drop(c_in: int, c_out: int, kernel: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2), nn.ReLU(inplace=True), nn.Dropout2d(dropout)
    )


@register_model("srcnn")
class SRCNN(nn.Module):
    """Dong et al. (2014), the 9-1-5 network with 64 and 32 filters."""

    def __init__(self, channels: int = 3, features: int = 64, hidden: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, features, 9, padding=4), nn.ReLU(inplace=True),
            nn.Conv2d(features, hidden, 1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 5, padding=2),
        )

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        return self.body(degraded)


@register_model("deblurcnn")
class DeblurCNN(nn.Module):
    """The seed's five-layer network: 9x9 and 5x5 feature layers, then three 3x3 layers."""

    residual = False

    def __init__(self, channels: int = 3, dropout: float = 0.2):
        super().__init__()
        self.body = nn.Sequential(
            _conv_relu_drop(channels, 128, 9, dropout),
            _conv_relu_drop(128, 64, 5, dropout),
            _conv_relu_drop(64, 64, 3, dropout),
            _conv_relu_drop(64, 32, 3, dropout),
            nn.Conv2d(32, channels, 3, padding=1),
        )

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        out = self.body(degraded)
        # The residual variant only has to learn the correction, not reproduce the whole image.
        return degraded + out if self.residual else out


@register_model("deblurcnn_res")
class DeblurCNNRes(DeblurCNN):
    """DeblurCNN with a global skip: output = input + predicted correction."""

    residual = True


@register_model("deblursuperrescnn")
class DeblurSuperResCNN(nn.Module):
    """The seed's dense variant: conv3 sees both the 9x9 and the 5x5 feature maps (concatenated)."""

    def __init__(self, channels: int = 3, dropout: float = 0.2):
        super().__init__()
        self.conv1 = _conv_relu_drop(channels, 128, 9, dropout)
        self.conv2 = _conv_relu_drop(128, 64, 5, dropout)
        self.conv3 = _conv_relu_drop(128 + 64, 32, 3, dropout)
        self.conv4 = _conv_relu_drop(32, 32, 3, dropout)
        self.conv5 = nn.Conv2d(32, channels, 3, padding=1)

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        out1 = self.conv1(degraded)
        out2 = self.conv2(out1)
        out = self.conv3(torch.cat([out1, out2], dim=1))
        return self.conv5(self.conv4(out))
