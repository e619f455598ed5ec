"""Layers shared by the architectures."""

from __future__ import annotations

import torch
from torch import nn


class Dropout2d(nn.Dropout2d):
    """``nn.Dropout2d`` that draws its channel masks from ``generator`` once the training loop sets one.

    torch's dropout draws from the process-wide generator. Jobs that share a process (hydra/launcher=threads) would
    interleave their draws there, so a job's masks, and so its weights, would depend on its neighbours' timing, and a
    resumed job's on which job restored that generator last. With the run's own generator every job draws exactly
    the masks it draws alone. Without one (inference, torch.compile) this is ``nn.Dropout2d``.
    """

    generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.generator is None or not self.training or self.p == 0:
            return super().forward(x)
        keep = torch.empty(*x.shape[:2], 1, 1, dtype=x.dtype, device=x.device)
        keep.bernoulli_(1 - self.p, generator=self.generator)  # one draw per channel per sample, as F.dropout2d
        return x * keep.div_(1 - self.p)


def draw_dropout_from(model: nn.Module, generator: torch.Generator) -> int:
    """Make every ``Dropout2d`` of ``model`` draw from ``generator``; returns how many there are."""
    layers = [m for m in model.modules() if isinstance(m, Dropout2d)]
    for layer in layers:
        layer.generator = generator
    return len(layers)
