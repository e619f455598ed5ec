"""The training loop, readable top to bottom: config -> runtime -> patches -> model -> epochs -> run summary.

``train(cfg)`` is what ``scripts/train.py`` calls and what tests call in-process. The loop asks ``runtime`` for the
device, ranks, seeds and signals, ``batches`` for the patches, ``tracking`` to record each epoch, ``checkpoint`` to
save and resume, and ``run_dir.RunDir`` where everything goes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from deblur_exp.atomic import WriteFailed
from deblur_exp.batches import PatchTensors, prepare_data
from deblur_exp.checkpoint import load_init_weights, load_resume_state, save_checkpoint
from deblur_exp.config import check_config, parse_duration
from deblur_exp.data.sources import image_source
from deblur_exp.errors import DeblurError
from deblur_exp.evaluation import ScoresDuringTraining, bar_off, evaluate_run
from deblur_exp.graphed_step import Step, autotune_then_freeze, eager_step, graphed, portable_optimizer_state
from deblur_exp.losses import LOSSES
from deblur_exp.metrics import batch_psnr
from deblur_exp.models import build_model, count_parameters
from deblur_exp.models.layers import draw_dropout_from
from deblur_exp.run_dir import RunDir
from deblur_exp.resume import auto_resume
from deblur_exp.runtime import (SETUP_LOCK, Distributed, StopFlag, TimeBudget, TrainingInterrupted, autocast_for,
                                init_distributed, resolve_device, resolve_precision, restore_rng, rng_state,
                                seed_everything)
from deblur_exp.schedules import make_scheduler, schedule_hook, step_scheduler
from deblur_exp.tracking import (SAMPLES_TAG, image_grid, objective_value, open_tracking, report_epoch,
                                 write_run_summary)

log = logging.getLogger("deblur_exp")


# ------------------------------------------------------------------------------------------------ train
def train(cfg: DictConfig) -> float:
    """Train one run as ``cfg`` says; returns its ``objective`` (what a sweeper maximises)."""
    check_config(cfg)
    t = cfg.trainer
    if cfg.resume == "auto":  # the job's own folder decides: skip it, continue it, or start it
        decision = auto_resume(Path(cfg.paths.run_dir), t.epochs, parse_duration(t.max_time))
        log.info("resume=auto: %s: %s", cfg.paths.run_dir, decision.reason)
        if decision.action == "skip":
            return objective_value(json.loads(RunDir(cfg.paths.run_dir).summary.read_text()), cfg.objective)
        cfg.resume = str(cfg.paths.run_dir) if decision.action == "resume" else None
    run = RunDir(Path(cfg.resume or cfg.paths.run_dir).expanduser().resolve())
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: ranks other than 0 write nothing
        return _train(cfg, run)
    run.prepare()
    handler = run.attach_log()
    try:
        return _train(cfg, run)
    except WriteFailed as exc:  # e.g. a full disk: the last good checkpoint is intact, say how to go on
        next_step = (f"free some space, then resume with: python scripts/train.py resume={run.path}"
                     if run.last.is_file() else "free some space and start the run again")
        raise DeblurError(f"{exc}; {next_step}") from None
    finally:
        logging.getLogger("deblur_exp").removeHandler(handler)
        handler.close()


def _train(cfg: DictConfig, run: RunDir) -> float:
    t = cfg.trainer
    with SETUP_LOCK:
        device, numerics = set_up_runtime(t)
        dist = numerics.dist
        log.info("run folder: %s", run.path)

        # Data: cut, degrade and split once; then hold everything as tensors on the device.
        data_cfg = OmegaConf.to_object(cfg.data)
        train_set, val_set, val_shard, held_out = prepare_data(cfg, data_cfg, device, dist)

        parts = build_parts(cfg, device, numerics)
        generator = torch.Generator().manual_seed(t.seed)
        progress = resume_progress(run, cfg, parts, numerics, generator) if cfg.resume else Progress()
        if cfg.resume and dist.is_main:  # the checkpoint loaded: this resume's config becomes the run's record
            run.accept_staged_record()
        if cfg.resume and progress.epoch >= t.epochs:
            log.info("the run has trained all its %d epochs: nothing left to train (trainer.epochs=N trains it "
                     "longer); evaluating it again", progress.epoch)
    metrics, writer = open_tracking(cfg, run, dist, progress.epoch)
    e = cfg.eval
    held_out_images = (load_held_out(data_cfg, held_out) if dist.is_main and e.held_out and (e.enabled or e.every)
                       else [])
    during = (ScoresDuringTraining.open(cfg, run, parts.model, device, held_out_images, progress.epoch)
              if dist.is_main else None)
    stopped_by = run_epochs(cfg, run, parts, numerics, (train_set, val_set, val_shard), generator, progress,
                            metrics, writer, during)

    log.info("done: best val PSNR %.3f dB at epoch %d; checkpoints in %s", progress.best_psnr, progress.best_epoch,
             run.checkpoints)
    dist.finish()
    if not dist.is_main:
        return progress.best_psnr
    eval_summary = {}
    if cfg.eval.enabled:
        eval_summary = evaluate_run(cfg, run, device, writer, held_out_images, step=t.epochs)
    summary = write_run_summary(cfg, run, writer, count_parameters(parts.model), progress.best_psnr,
                                progress.best_epoch, eval_summary, stopped_by, device)
    writer.close()
    return objective_value(summary, cfg.objective)


def load_held_out(data_cfg, held_out: list[str]) -> list:
    """The whole images that data.split=image held out of training (none under the patch split)."""
    return [im for im in image_source(data_cfg).load(1) if im.name in held_out] if held_out else []


# ------------------------------------------------------------------------------------------------ setup
@dataclass
class Numerics:
    """How every step computes: autocast dtype, gradient scaling, memory format, and the ranks it shares work with."""

    autocast: Callable[[], Any]
    scaler: torch.amp.GradScaler
    channels_last: bool
    dist: Distributed = field(default_factory=Distributed)


@dataclass
class EpochPlan:
    """What an epoch's pass over the training patches needs from ``trainer``."""

    batch_size: int
    epochs: int
    limit_batches: int | None = None
    progress: bool = True
    augment: bool = False  # data.augment: a random dihedral transform (flip, 90-degree turns) per batch


@dataclass
class Parts:
    """The model and what trains it. ``forward_model`` is the model as called (compiled and/or DDP-wrapped)."""

    model: torch.nn.Module
    forward_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: Callable
    dropout_rng: torch.Generator | None = None  # the run's own dropout masks (models/layers.py); None when compiled


@dataclass
class Progress:
    """Where the run stands; saved in every checkpoint and restored on resume."""

    epoch: int = 0
    best_psnr: float = -math.inf
    best_epoch: int = 0
    partial: dict | None = None  # a mid-epoch interruption's place in its epoch
    spent: float = 0.0  # seconds of trainer.max_time used before this process


def set_up_runtime(t: DictConfig) -> tuple[torch.device, Numerics]:
    dist, device = init_distributed(resolve_device(t.device))
    if t.precision == "auto":  # from here on (log, checkpoints, summary) the run names what it used
        t.precision = resolve_precision(t.precision, device)
        log.info("trainer.precision=auto: %s on %s", t.precision, device.type)
    if not dist.is_main:
        log.setLevel(logging.WARNING)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    seed_everything(t.seed, t.deterministic)
    # null -> channels_last: faster for all five models on the 2-core CPU (up to 1.2x), and on the H200 the best
    # format for three of five, within 4% for the others (results/*.json). true/false force a format.
    channels_last = t.channels_last if t.channels_last is not None else True
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    return device, Numerics(autocast_for(t.precision, device), scaler, channels_last, dist)


def build_parts(cfg: DictConfig, device: torch.device, numerics: Numerics) -> Parts:
    """Model, optimizer, scheduler and loss as the config says; the model compiled and DDP-wrapped when asked."""
    t, dist = cfg.trainer, numerics.dist
    model = build_model(cfg.model.name, **cfg.model.params)
    if cfg.init_weights and not cfg.resume:  # a resumed run loads its own last.pt instead
        source = load_init_weights(model, cfg.init_weights, cfg.model.name)
        log.info("init_weights: the model starts from the weights in %s", source)
    model = model.to(device)
    if numerics.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    dropout_rng = None
    if not t.compile:  # compiled models keep torch's dropout: inductor draws the masks its own way
        dropout_rng = torch.Generator(device).manual_seed(t.seed + 1)  # a stream apart from the shuffle's
        draw_dropout_from(model, dropout_rng)
    forward_model = torch.compile(model, mode=t.compile_mode) if t.compile else model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward_model = DistributedDataParallel(forward_model, device_ids=[device] if device.type == "cuda" else None)
        log.info("distributed: %d processes (%s); effective batch %d = %d per process x %d", dist.world,
                 "NCCL" if device.type == "cuda" else "Gloo", t.batch_size * dist.world, t.batch_size, dist.world)
    log.info("model %s: %d parameters on %s (precision %s, channels_last=%s, %d CPU threads)", cfg.model.name,
             count_parameters(model), device, t.precision, numerics.channels_last, torch.get_num_threads())
    return Parts(model, forward_model, optimizer, make_scheduler(cfg, optimizer), LOSSES[t.loss], dropout_rng)


def resume_progress(run: RunDir, cfg: DictConfig, parts: Parts, numerics: Numerics,
                    generator: torch.Generator) -> Progress:
    """Load last.pt (or previous.pt) into the parts, the RNGs and the returned progress."""
    state = load_resume_state(run, cfg.model.name)
    for part, key in ((parts.model, "model"), (parts.optimizer, "optimizer"), (parts.scheduler, "scheduler"),
                      (numerics.scaler, "scaler")):
        if part is not None and state.get(key):
            part.load_state_dict(state[key])
    restore_rng(state["rng"], generator, parts.dropout_rng)
    progress = Progress(state["epoch"], state["best_psnr"], state["best_epoch"], state.get("partial_epoch"),
                        state.get("train_time_s", 0.0))
    log.info("resumed from %s after epoch %d%s (best val PSNR %.3f dB at epoch %d)", state["path"], progress.epoch,
             f", step {progress.partial['step']} of epoch {progress.epoch + 1}" if progress.partial else "",
             progress.best_psnr, progress.best_epoch)
    return progress


# ----------------------------------------------------------------------------------------------- epochs
def run_epochs(cfg: DictConfig, run: RunDir, parts: Parts, numerics: Numerics, data, generator: torch.Generator,
               progress: Progress, metrics, writer, during: ScoresDuringTraining | None = None) -> str:
    """Train, validate, record (``during``: eval.every's test-set scores) and checkpoint epoch after epoch; returns
    what stopped training: "epochs" or "max_time". A SIGINT/SIGTERM saves last.pt and raises TrainingInterrupted."""
    t, dist = cfg.trainer, numerics.dist
    train_set, val_set, val_shard = data
    plan = EpochPlan(t.batch_size, t.epochs, t.limit_train_batches, t.progress, cfg.data.augment)
    val_batch = t.val_batch_size or 4 * t.batch_size
    resolved_config = OmegaConf.to_yaml(cfg, resolve=True)
    budget = TimeBudget(parse_duration(t.max_time), spent_before=progress.spent)

    def checkpoint_state(epoch: int, row: dict | None = None) -> dict:
        return {"arch": cfg.model.name, "model": parts.model.state_dict(),
                "optimizer": portable_optimizer_state(parts.optimizer),
                "scheduler": parts.scheduler.state_dict() if parts.scheduler is not None else None,
                "scaler": numerics.scaler.state_dict(), "epoch": epoch, "rng": rng_state(generator, parts.dropout_rng),
                "config": resolved_config, "metrics": row, "best_psnr": progress.best_psnr,
                "best_epoch": progress.best_epoch, "train_time_s": budget.spent()}

    step = training_step(cfg, parts, numerics)
    baseline = None  # PSNR of the degraded val patches: measured in the first epoch, then reused
    stop = StopFlag()
    with stop.installed() if dist.world == 1 else contextlib.nullcontext():  # DDP: torchrun owns the signals
        for epoch in range(progress.epoch + 1, t.epochs + 1):
            if dist.any_rank(budget.expired()):
                log.info("trainer.max_time=%s reached after %.1f s and %d epochs: training stops here",
                         t.max_time, budget.spent(), epoch - 1)
                return "max_time"
            started, seen_before = time.perf_counter(), (progress.partial or {}).get("seen", 0)
            train_loss, seen, partial = train_epoch(parts.forward_model, step, train_set, numerics, plan, epoch,
                                                    generator, stop, progress.partial, budget,
                                                    schedule_hook(parts.scheduler, epoch, t.epochs, budget))
            progress.partial = None
            if partial is not None:  # SIGINT/SIGTERM mid-epoch: save where we are, then stop
                save_checkpoint(run.last, {**checkpoint_state(epoch - 1), "partial_epoch": partial},
                                keep_previous=True)
                raise TrainingInterrupted.by(stop, run.path, f"epoch {epoch}, step {partial['step']}")
            train_time = time.perf_counter() - started
            val = evaluate_patches(parts.forward_model, val_shard, parts.loss_fn, val_batch, t.limit_val_batches,
                                   numerics, baseline)
            baseline = val["val_psnr_degraded"]
            if not math.isfinite(val["val_loss"]):
                raise DeblurError(f"training diverged: the validation loss is {val['val_loss']} after epoch {epoch}; "
                                  f"lower optimizer.lr. The last good checkpoint is kept in checkpoints/")
            lr = float(parts.optimizer.param_groups[0]["lr"])  # a tensor under trainer.cuda_graph
            step_scheduler(parts.scheduler, val["val_loss"])
            row = {"epoch": epoch, "train_loss": train_loss, **val, "lr": lr,
                   "epoch_time_s": round(time.perf_counter() - started, 3),
                   "samples_per_s": round((seen - seen_before) / train_time, 1)}  # this process's samples
            metrics.append(row)
            report_epoch(row, writer, t.epochs)
            if dist.is_main and (epoch == 1 or epoch % t.image_every == 0 or epoch == t.epochs):
                writer.add_image(SAMPLES_TAG,
                                 image_grid(parts.model, val_set, t.num_image_samples, numerics.autocast,
                                            numerics.channels_last), epoch)
            # eval.every: before the checkpoints, like metrics.csv's row (a kill in between redoes the epoch and its
            # scores); every rank takes the decision and pauses its budget alike, while rank 0 scores
            every = cfg.eval.every
            if every and (epoch % every == 0 or epoch == t.epochs or dist.any_rank(budget.expired())):
                with budget.paused():
                    if during is not None:
                        during.score(epoch, writer)
                    dist.barrier()
            writer.flush()

            # best.pt before last.pt: a kill in between resumes from the previous epoch and redoes this one.
            if val["val_psnr"] > progress.best_psnr:
                progress.best_psnr, progress.best_epoch = val["val_psnr"], epoch
                if dist.is_main:
                    save_checkpoint(run.best, checkpoint_state(epoch, row))
            if dist.is_main:
                save_checkpoint(run.last, checkpoint_state(epoch, row), keep_previous=True)
            if stop.signum is not None:
                raise TrainingInterrupted.by(stop, run.path, f"epoch {epoch}")
    return "epochs"


def training_step(cfg: DictConfig, parts: Parts, numerics: Numerics) -> Step:
    """The step every batch goes through: eager; under trainer.cuda_graph replayed from a CUDA graph; under
    torch.compile's graph modes with cuDNN autotuned before the recording."""
    t = cfg.trainer
    step = eager_step(parts.forward_model, parts.optimizer, parts.loss_fn, numerics)
    if t.compile and t.compile_mode != "default" and torch.backends.cudnn.benchmark:  # compiled CUDA graphs
        return autotune_then_freeze(step)
    if not t.cuda_graph:
        return step
    if numerics.dist.world > 1:
        raise DeblurError("trainer.cuda_graph: not with torchrun (DDP synchronises gradients outside the graph); "
                          "set trainer.cuda_graph=false")
    device = next(parts.model.parameters()).device
    if device.type != "cuda":
        log.info("trainer.cuda_graph on %s: nothing to capture; the steps run uncaptured through the same path",
                 device.type)
    # after resume_progress: loading a checkpoint resets the optimizer's groups, which graphed() readies again
    return graphed(step, parts.optimizer, device, t.batch_size, parts.dropout_rng)


def train_epoch(model, step: Step, train_set: PatchTensors, step_with: Numerics, schedule: EpochPlan, epoch: int,
                generator: torch.Generator, stop: StopFlag | None = None, partial: dict | None = None,
                budget: TimeBudget | None = None, on_step=None):
    """One pass over the shuffled training patches through ``step``; ``on_step(index, total)`` runs before each
    step.

    Returns (mean loss per sample, samples seen, None), or, when ``stop`` is raised mid-epoch,
    (None, samples seen, progress) where progress lets a later call (``partial=progress``) finish this epoch
    exactly as if it had never stopped: same shuffle order, same loss sum. When ``budget`` runs out the epoch
    ends early after the step in flight (a shorter last epoch, validated and saved like any other).
    """
    plan, dist = schedule, step_with.dist
    model.train()
    device = train_set.device
    if partial is not None:
        generator.set_state(partial["shuffle_state"])
    shuffle_state = generator.get_state()
    order = dist.shard(torch.randperm(len(train_set), generator=generator)).to(train_set.sharp.device)
    loss_sum = torch.tensor(partial["loss_sum"] if partial else 0.0, device=device, dtype=torch.float64)
    seen, done = (partial["seen"], partial["step"]) if partial else (0, 0)
    total = min(math.ceil(len(order) / plan.batch_size), plan.limit_batches or math.inf)
    augment = generator if plan.augment else None  # after the shuffle, one draw per batch, skipped ones included
    batches = train_set.batches(plan.batch_size, order, plan.limit_batches, step_with.channels_last, augment)
    bar = tqdm(batches, total=total, desc=f"epoch {epoch}/{plan.epochs}", leave=False, disable=bar_off(plan.progress),
               unit="batch")
    for index, (degraded, sharp) in enumerate(bar, start=1):
        if index <= done:  # already trained before an interruption
            continue
        if on_step is not None:
            on_step(index, total)
        loss_sum += step(degraded, sharp).double() * len(sharp)  # weight by batch size: the last batch is smaller
        seen += len(sharp)
        if index % 50 == 0 or index == total:  # one host sync per interval, not per step
            mean = loss_sum.item() / seen
            if not math.isfinite(mean):
                raise DeblurError(f"training diverged: the loss became {mean} in epoch {epoch} by step {index} "
                                  f"(checked every 50 steps); lower optimizer.lr. The last good checkpoint is "
                                  f"kept in checkpoints/")
            bar.set_postfix(loss=f"{mean:.5f}")
        if stop is not None and stop.signum is not None and index < total:
            bar.close()
            return None, seen, {"step": index, "loss_sum": loss_sum.item(), "seen": seen,
                                "shuffle_state": shuffle_state}
        # DDP: every rank must stop at the same step, so ranks agree at the 50-step sync points only.
        if (budget is not None and index < total and (dist.world == 1 or index % 50 == 0)
                and dist.any_rank(budget.expired())):
            log.info("trainer.max_time reached at step %d of %d in epoch %d: validating and saving this epoch",
                     index, total, epoch)
            break
    bar.close()
    return loss_sum.item() / max(seen, 1), seen, None


@torch.no_grad()
def evaluate_patches(model, val_set: PatchTensors, loss_fn, batch_size: int, limit: int | None, step_with: Numerics,
                     baseline: float | None = None) -> dict[str, float]:
    """Mean per-patch loss and restored PSNR over val patches (under torchrun: over every rank's share,
    summed across ranks), plus the degraded input's PSNR, the do-nothing baseline: computed when
    ``baseline`` is None, else passed through (it never changes during a run)."""
    model.eval()
    device = val_set.device
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, psnr, degraded psnr, count
    zero = torch.zeros((), device=device, dtype=torch.float64)
    for degraded, sharp in val_set.batches(batch_size, None, limit, step_with.channels_last):
        with step_with.autocast():
            restored = model(degraded)
        restored = restored.float()
        per_patch_loss = loss_fn(restored, sharp, reduction="none").flatten(1).mean(dim=1)
        sums += torch.stack([per_patch_loss.double().sum(), batch_psnr(restored, sharp).sum(),
                             batch_psnr(degraded, sharp).sum() if baseline is None else zero,
                             torch.tensor(len(sharp), device=device)])
    step_with.dist.all_sum(sums)
    loss, psnr, psnr_degraded = (sums[:3] / sums[3].clamp_min(1)).tolist()
    return {"val_loss": loss, "val_psnr": psnr, "val_psnr_degraded": psnr_degraded if baseline is None else baseline}
