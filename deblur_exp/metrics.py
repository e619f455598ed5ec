"""Image-quality metrics. Images are float tensors in [0, 1], data range 1.0."""

from __future__ import annotations

import torch

# Identical patches (flat regions) have zero error; capping the MSE keeps per-patch averages finite.
MIN_MSE = 1e-10


def batch_psnr(restored: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    """PSNR of each image in an NCHW batch (restored clamped to [0, 1]), in float64, capped at 100 dB."""
    error = (restored.clamp(0, 1).double() - sharp.double()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / error.clamp_min(MIN_MSE))
