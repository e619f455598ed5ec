"""Learning-rate schedules: the configured one built, stepped once per epoch or after every step, and
``WarmupCosine``, which follows the share of the run done.

A run ends after ``trainer.epochs`` or when ``trainer.max_time`` runs out, whichever comes first, so its length in
steps is not known in advance; torch's schedulers count epochs or steps. ``WarmupCosine`` is told the fraction of
the run done (the larger of the epoch fraction and the time-budget fraction) and sets the learning rate from it,
so a 10-minute run anneals to ``eta_min`` at 10 minutes whatever the machine's speed.
"""

from __future__ import annotations

import math

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig


class WarmupCosine:
    """Linear warm-up from 0 over the first ``warmup`` share of the run, then half a cosine down to ``eta_min``."""

    def __init__(self, optimizer, warmup: float = 0.0, eta_min: float = 0.0):
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"scheduler.warmup must lie in [0, 1), a share of the run (got {warmup})")
        self.optimizer, self.warmup, self.eta_min = optimizer, warmup, eta_min
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.set_progress(0.0)

    def lr_at(self, base_lr: float, progress: float) -> float:
        if progress < self.warmup:
            return base_lr * progress / self.warmup
        annealed = (progress - self.warmup) / (1.0 - self.warmup)
        return self.eta_min + (base_lr - self.eta_min) * (1.0 + math.cos(math.pi * annealed)) / 2.0

    def set_progress(self, progress: float) -> None:
        """``progress``: the share of the run done once the coming step ends, clamped to [0, 1]."""
        self.progress = min(max(progress, 0.0), 1.0)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            lr = self.lr_at(base_lr, self.progress)
            if torch.is_tensor(group["lr"]):  # trainer.cuda_graph: the captured step reads this tensor
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def state_dict(self) -> dict:
        return {"progress": self.progress, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.base_lrs = list(state["base_lrs"])
        self.set_progress(state["progress"])


def make_scheduler(cfg: DictConfig, optimizer):
    """The scheduler ``cfg.scheduler`` names for ``optimizer``; None for scheduler=none."""
    if cfg.scheduler.get("_target_") is None:
        return None
    return instantiate(cfg.scheduler)(optimizer)


def step_scheduler(scheduler, val_loss: float) -> None:
    """Once per epoch, after validation. (WarmupCosine follows the run's progress after every step instead.)"""
    if scheduler is None or isinstance(scheduler, WarmupCosine):
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    else:
        scheduler.step()


def schedule_hook(scheduler, epoch: int, epochs: int, budget):
    """For WarmupCosine, the per-step callback that tells it the share of the run done: of the epochs or of
    trainer.max_time, whichever is further along (``budget``: the run's
    runtime.TimeBudget). None for the schedulers stepped once per epoch."""
    if not isinstance(scheduler, WarmupCosine):
        return None
    return lambda step, total: scheduler.set_progress(max((epoch - 1 + step / total) / epochs, budget.fraction()))
