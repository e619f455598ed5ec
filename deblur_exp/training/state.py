"""What one training run holds while it trains: ``RunState``, built once when the run starts and handed to every
part of the loop; ``Progress``, the part of it a checkpoint saves; ``Compute``, how every step computes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from omegaconf import DictConfig

from deblur_exp.data.batches import PatchTensors
from deblur_exp.runs.run_dir import RunDir
from deblur_exp.runtime import Distributed, StopFlag, TimeBudget


@dataclass
class Progress:
    """Where the run stands; saved in every checkpoint and restored on resume."""

    epoch: int = 0  # epochs finished before this process started (a resumed checkpoint's)
    best_psnr: float = -math.inf
    best_epoch: int = 0
    partial: dict | None = None  # a mid-epoch interruption's place in its epoch
    spent: float = 0.0  # seconds of trainer.max_time used before this process
    cut_short: float = 0.0  # the epochs' worth of steps trainer.max_time cut from epochs it stopped (resumes add)

    def epochs_done(self, epochs: int) -> float:
        """The epochs' worth of steps in ``epochs`` epochs run: an epoch cut by trainer.max_time counts as the share
        it ran."""
        return round(epochs - self.cut_short, 3) if self.cut_short else epochs


@dataclass
class Compute:
    """How every step computes: autocast dtype, gradient scaling, memory format, and the ranks it shares work with."""

    autocast: Callable[[], Any]
    scaler: torch.amp.GradScaler
    channels_last: bool
    dist: Distributed = field(default_factory=Distributed)


@dataclass
class PatchData:
    """The patches a run trains and validates on, as tensors on (or staged for) the device."""

    train: PatchTensors
    val: PatchTensors
    val_shard: PatchTensors  # this rank's share of ``val`` (all of it without torchrun)
    held_out: list[str]  # names of the whole images data.split=image kept out of training


@dataclass
class RunState:
    """One run while it trains. ``cfg`` is read-only: everything resolved at start-up (the device's precision,
    resume=auto's decision, a sweep job's threads) is already in it."""

    cfg: DictConfig
    folder: RunDir
    device: torch.device
    compute: Compute
    data: PatchData
    model: torch.nn.Module  # the weights, as checkpoints hold them
    forward_model: torch.nn.Module  # the model as called: compiled and/or DDP-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: Callable
    shuffle: torch.Generator  # each epoch's order and data.augment's draws
    progress: Progress = field(default_factory=Progress)
    budget: TimeBudget | None = None
    stop: StopFlag = field(default_factory=StopFlag)
    metrics: Any = None  # metrics.csv (tables.MetricsTable)
    writer: Any = None  # TensorBoard's SummaryWriter
    during: Any = None  # eval.every's scorer (evaluation.scoring.ScoresDuringTraining), or None
    held_out_images: list = field(default_factory=list)  # data.split=image's held-out images, when eval scores them

    @property
    def dist(self) -> Distributed:
        return self.compute.dist
