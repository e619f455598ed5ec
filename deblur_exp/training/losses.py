"""The training losses by name (``trainer.loss``); this table is also the list of allowed choices."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def charbonnier_loss(restored: torch.Tensor, sharp: torch.Tensor, reduction: str = "mean",
                     eps: float = 1e-3) -> torch.Tensor:
    """sqrt(error^2 + eps^2): L1's robustness with a smooth minimum (LapSRN, EDVR; BasicSR's CharbonnierLoss)."""
    error = torch.sqrt((restored - sharp).square() + eps * eps)
    if reduction == "none":
        return error
    return error.sum() if reduction == "sum" else error.mean()


# Each takes (restored, sharp, reduction=...) like torch.nn.functional's losses; the validation loss asks for
# reduction="none" to average per patch.
LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss, "charbonnier": charbonnier_loss}
