"""Whole-image restoration: one pass, or tiled with context so memory stays bounded; optional x8 ensemble.

Tiling is exact, not blended: each output tile is computed from an input window that extends
``tile_overlap`` pixels past it on every side (clamped at the image border) and only the tile's own pixels
are kept. When the overlap covers the model's receptive field the result equals the one-pass output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from deblur_exp.data.dihedral import DIHEDRAL_VIEWS, dihedral, dihedral_inverse
from deblur_exp.data.images import rgb_to_ycbcr, ycbcr_to_rgb


def _forward(model: nn.Module, degraded: torch.Tensor, tile: int | None, overlap: int) -> torch.Tensor:
    """Restore an NxCxHxW float batch (on the model's device); returns it on the CPU."""
    _, _, height, width = degraded.shape
    if tile is None or (height <= tile and width <= tile):
        return model(degraded).float().cpu()
    restored = torch.empty(degraded.shape, dtype=torch.float32)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            y0, x0 = max(top - overlap, 0), max(left - overlap, 0)
            y1, x1 = min(bottom + overlap, height), min(right + overlap, width)
            window = model(degraded[:, :, y0:y1, x0:x1]).float().cpu()
            restored[:, :, top:bottom, left:right] = window[:, :, top - y0:bottom - y0, left - x0:right - x0]
    return restored


@dataclass(frozen=True)
class RestoreOptions:
    """How a whole image goes through a model: in one pass, or in ``tile``-pixel tiles that each see
    ``tile_overlap`` pixels of context; with ``self_ensemble``, as the mean of its 8 dihedral views (x8).
    ``self_ensemble=None`` leaves the choice to the model (scoring.own_options); a bare restore takes it as off."""

    tile: int | None = None
    tile_overlap: int = 32
    self_ensemble: bool | None = False


def restore_image(model: nn.Module, degraded: np.ndarray, device: torch.device | str = "cpu",
                  options: RestoreOptions = RestoreOptions()) -> np.ndarray:
    """Restore an HxWxC image, uint8 or float in [0, 1] units (C as the model was trained: 3 RGB or 1 luma); returns
    HxWxC float32 in [0, 1]."""
    return restore_batch(model, [degraded], device, options)[0]


@torch.no_grad()
def restore_batch(model: nn.Module, degraded: list[np.ndarray], device: torch.device | str = "cpu",
                  options: RestoreOptions = RestoreOptions()) -> list[np.ndarray]:
    """``restore_image`` for images of one size, through the model together (one forward pass per tile and view)."""
    model.eval()
    # NHWC in memory, as the images are: the models run channels_last on it
    stacked = np.stack(degraded)
    x = torch.from_numpy(stacked).permute(0, 3, 1, 2).float()
    if stacked.dtype == np.uint8:  # a float image (a pipeline's, noise unclipped) is in [0, 1] units already
        x = x.div_(255)
    x = x.to(device)
    tile, overlap = options.tile, options.tile_overlap
    if options.self_ensemble:
        total = torch.zeros(x.shape, dtype=torch.float32)
        for k, flip in DIHEDRAL_VIEWS:
            total += dihedral_inverse(_forward(model, dihedral(x, k, flip), tile, overlap), k, flip)
        restored = total / len(DIHEDRAL_VIEWS)
    else:
        restored = _forward(model, x, tile, overlap)
    return list(restored.clamp_(0, 1).permute(0, 2, 3, 1).numpy())


def to_uint8(restored: np.ndarray) -> np.ndarray:
    return np.round(np.clip(restored, 0, 1) * 255).astype(np.uint8)


def restore_photo(model: nn.Module, color: str, rgb: np.ndarray, device: torch.device | str = "cpu",
                  options: RestoreOptions = RestoreOptions()) -> np.ndarray:
    """Restore an RGB photo with a model trained on ``color``: "rgb" directly; "y" (a luma model, as in the SR
    literature) restores the BT.601 Y channel and keeps the photo's own Cb and Cr. Returns HxWx3 float in [0, 1]."""
    if color == "rgb":
        return restore_image(model, rgb, device, options)
    ycbcr = rgb_to_ycbcr(rgb)
    luma = np.round(ycbcr[:, :, :1]).astype(np.uint8)
    ycbcr[:, :, :1] = restore_image(model, luma, device, options) * 255.0
    return ycbcr_to_rgb(ycbcr).astype(np.float32) / 255.0
