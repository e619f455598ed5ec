"""The training loop, readable top to bottom: start the run -> epochs (train, validate, record, checkpoint) ->
finish (score the test sets, write the run summary).

``train(cfg)`` is what ``scripts/train.py`` calls and what tests call in-process. Everything a run holds while it
trains is one ``RunState`` (state.py); the loop asks ``runtime`` for the device, ranks, seeds and signals,
``data.batches`` for the patches, ``tracking`` to record each epoch, ``runs.checkpoint`` to save and resume, and
``runs.run_dir.RunDir`` where everything goes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from deblur_exp.atomic import WriteFailed, remove_stale_temps, write_failed
from deblur_exp.config import parse_duration, settled
from deblur_exp.data.batches import prepare_data
from deblur_exp.data.sources import image_source
from deblur_exp.errors import DeblurError
from deblur_exp.evaluation.scoring import ScoresDuringTraining, evaluate_run
from deblur_exp.metrics import batch_psnr
from deblur_exp.models import build_model, count_parameters
from deblur_exp.progress import bar_off
from deblur_exp.runs.checkpoint import load_resume_state, save_checkpoint
from deblur_exp.runs.locate import load_init_weights
from deblur_exp.runs.resume import auto_resume
from deblur_exp.runs.run_dir import RunDir
from deblur_exp.runtime import (
    Distributed,
    TimeBudget,
    TrainingInterrupted,
    autocast_for,
    init_distributed,
    resolve_device,
    resolve_precision,
    restore_rng,
    rng_state,
    seed_everything,
)
from deblur_exp.training.config import check_config
from deblur_exp.training.cpu_threads import cpu_cores, fit_threads_to_load
from deblur_exp.training.losses import LOSSES
from deblur_exp.training.schedules import make_scheduler, schedule_hook, step_scheduler
from deblur_exp.training.state import Compute, PatchData, Progress, RunState
from deblur_exp.training.step import Step, autotune_then_freeze, eager_step, graphed, portable_optimizer_state
from deblur_exp.training.tracking import (
    SAMPLES_TAG,
    image_grid,
    objective_value,
    open_tracking,
    report_epoch,
    write_run_summary,
)

log = logging.getLogger("deblur_exp")

SYNC_EVERY = 50  # steps between host syncs of the running loss (a sync per step would stall a GPU)


# ------------------------------------------------------------------------------------------------ the run
def train(cfg: DictConfig) -> float:
    """Train one run as ``cfg`` says; returns its ``objective`` (what a sweeper maximises)."""
    check_config(cfg)
    if cfg.resume == "auto":  # the job's own folder decides: skip it, continue it, or start it
        decision = auto_resume(cfg)
        log.info("resume=auto: %s: %s", cfg.paths.run_dir, decision.reason)
        if decision.action == "skip":  # the run stays as it was, its record included
            RunDir(cfg.paths.run_dir).discard_staged_record()
            return objective_value(json.loads(RunDir(cfg.paths.run_dir).summary.read_text()), cfg.objective)
        if decision.action == "start":  # nothing here to protect: this attempt's record is the run's
            RunDir(cfg.paths.run_dir).accept_staged_record()
        cfg = settled(cfg, resume=str(cfg.paths.run_dir) if decision.action == "resume" else None)
    folder = RunDir(Path(cfg.resume or cfg.paths.run_dir).expanduser().resolve())
    if not cfg.resume and folder.holds_run():
        raise DeblurError(f"paths.run_dir: {folder.path} already holds a run; continue it with: python "
                          f"scripts/train.py resume={folder.path}, or choose another folder")
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: ranks other than 0 write nothing
        return _train(cfg, folder)
    folder.prepare()
    remove_stale_temps(folder.checkpoints)  # a fresh start too (resume=auto): a killed write's leftovers go
    handler = folder.attach_log()
    try:
        with folder.owned():
            return _train(cfg, folder)
    except (WriteFailed, OSError) as exc:  # e.g. a full disk: the last good checkpoint is intact, say how to go on
        if isinstance(exc, OSError) and exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        if isinstance(exc, OSError):  # written outside atomic_write: TensorBoard's event file
            exc = write_failed(folder.tensorboard / "events", exc)
        next_step = (f"free some space, then resume with: python scripts/train.py resume={folder.path}"
                     if folder.last.is_file() else "free some space and start the run again")
        raise DeblurError(f"{exc}; {next_step}") from None
    finally:
        logging.getLogger("deblur_exp").removeHandler(handler)
        handler.close()


def _train(cfg: DictConfig, folder: RunDir) -> float:
    state = start_run(cfg, folder)
    stopped_by = run_epochs(state)
    return finish_run(state, stopped_by)


def start_run(cfg: DictConfig, folder: RunDir) -> RunState:
    """Everything the epochs need, in order: runtime, patches, model and optimizer, the checkpoint a resume
    continues, then the run's records (metrics.csv, TensorBoard, eval.every's scorer)."""
    dist, device = init_distributed(resolve_device(cfg.trainer.device))
    precision = resolve_precision(cfg.trainer.precision, device)
    if precision != cfg.trainer.precision:  # from here on (log, checkpoints, summary) the run names what it used
        log.info("trainer.precision=%s: %s on %s", cfg.trainer.precision, precision, device.type)
    cfg = settled(cfg, **{"trainer.precision": precision})  # read-only from here on
    compute = set_up_runtime(cfg.trainer, device, dist)
    log.info("run folder: %s", folder.path)
    data = PatchData(*prepare_data(cfg, OmegaConf.to_object(cfg.data), device, dist))
    state = RunState(cfg, folder, device, compute, data, **build_parts(cfg, device, compute),
                     shuffle=torch.Generator().manual_seed(cfg.trainer.seed))
    if cfg.resume:
        state.progress = resume_progress(state)
        if dist.is_main:  # the checkpoint loaded: this resume's config becomes the run's record
            folder.accept_staged_record()
        if state.progress.epoch >= cfg.trainer.epochs:
            log.info("the run has trained all its %d epochs: nothing left to train (trainer.epochs=N trains it "
                     "longer); evaluating it again", state.progress.epoch)
    state.metrics, state.writer = open_tracking(cfg, folder, dist, state.progress.epoch)
    if dist.is_main:
        state.held_out_images = load_held_out(cfg, data.held_out)
        state.during = ScoresDuringTraining.open(cfg, folder, state.model, device, state.held_out_images,
                                                 state.progress.epoch)
    return state


def finish_run(state: RunState, stopped_by: str) -> float:
    """Score the test sets (eval.enabled) and write the run summary; returns the run's objective."""
    cfg, progress = state.cfg, state.progress
    log.info("done: best val PSNR %.3f dB at epoch %d; checkpoints in %s", progress.best_psnr, progress.best_epoch,
             state.folder.checkpoints)
    state.dist.finish()
    if not state.dist.is_main:
        return progress.best_psnr
    eval_summary = {}
    if cfg.eval.enabled:
        eval_summary = evaluate_run(cfg, state.folder, state.device, state.writer, state.held_out_images,
                                    step=cfg.trainer.epochs)
    summary = write_run_summary(state, eval_summary, stopped_by)
    state.writer.close()
    return objective_value(summary, cfg.objective)


def load_held_out(cfg: DictConfig, held_out: list[str]) -> list:
    """The whole images that data.split=image held out of training, when eval scores them (else none)."""
    if not (held_out and cfg.eval.held_out and (cfg.eval.enabled or cfg.eval.every)):
        return []
    data = replace(OmegaConf.to_object(cfg.data), images=held_out)  # read those images alone
    return image_source(data).load(1)


# ------------------------------------------------------------------------------------------------ set-up
def set_up_runtime(trainer: DictConfig, device: torch.device, dist: Distributed) -> Compute:
    if not dist.is_main:
        log.setLevel(logging.WARNING)
    if trainer.num_threads:
        torch.set_num_threads(trainer.num_threads)
    elif adapts_threads(trainer, device, dist):
        torch.set_num_threads(cpu_cores())  # from all cores; each epoch then takes the ones others leave free
    seed_everything(trainer.seed, trainer.deterministic)
    # null -> channels_last: faster for all five models on the 2-core CPU (up to 1.2x), and on an H200 the best
    # format for three of five, within 4% for the others (results/*.json). true/false force a format.
    channels_last = trainer.channels_last if trainer.channels_last is not None else True
    scaler = torch.amp.GradScaler(device.type, enabled=trainer.precision == "fp16")
    return Compute(autocast_for(trainer.precision, device), scaler, channels_last, dist)


def adapts_threads(trainer: DictConfig, device: torch.device, dist: Distributed) -> bool:
    """trainer.num_threads=null on a CPU follows the machine's load, epoch by epoch; not where a run must be
    bitwise repeatable (the thread count changes the order of float sums) or shares the cores with other ranks."""
    return not trainer.num_threads and device.type == "cpu" and not trainer.deterministic and dist.world == 1


def report_threads() -> None:
    change = fit_threads_to_load()
    if change:
        log.info(change)


def build_parts(cfg: DictConfig, device: torch.device, compute: Compute) -> dict:
    """Model, optimizer, scheduler and loss as the config says; the model compiled and DDP-wrapped when asked."""
    trainer, dist = cfg.trainer, compute.dist
    model = build_model(cfg.model.name, **cfg.model.params)
    if cfg.init_weights and not cfg.resume:  # a resumed run loads its own last.pt instead
        source = load_init_weights(model, cfg.init_weights, cfg.model.name)
        log.info("init_weights: the model starts from the weights in %s", source)
    model = model.to(device)
    if compute.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    forward_model = torch.compile(model, mode=trainer.compile_mode) if trainer.compile else model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel  # only under torchrun: torch.distributed is heavy

        forward_model = DistributedDataParallel(forward_model, device_ids=[device] if device.type == "cuda" else None)
        log.info("distributed: %d processes (%s); effective batch %d = %d per process x %d", dist.world,
                 "NCCL" if device.type == "cuda" else "Gloo", trainer.batch_size * dist.world, trainer.batch_size,
                 dist.world)
    log.info("model %s: %d parameters on %s (precision %s, channels_last=%s, %d CPU threads)", cfg.model.name,
             count_parameters(model), device, trainer.precision, compute.channels_last, torch.get_num_threads())
    return {"model": model, "forward_model": forward_model, "optimizer": optimizer,
            "scheduler": make_scheduler(cfg, optimizer), "loss_fn": LOSSES[trainer.loss]}


def resume_progress(state: RunState) -> Progress:
    """Load last.pt (or previous.pt) into the model, optimizer, scheduler, scaler and RNGs; returns the progress."""
    saved = load_resume_state(state.folder, state.cfg.model.name)
    for part, key in ((state.model, "model"), (state.optimizer, "optimizer"), (state.scheduler, "scheduler"),
                      (state.compute.scaler, "scaler")):
        if part is not None and saved.get(key):
            part.load_state_dict(saved[key])
    restore_rng(saved["rng"], state.shuffle)
    progress = Progress(saved["epoch"], saved["best_psnr"], saved["best_epoch"], saved.get("partial_epoch"),
                        saved.get("train_time_s", 0.0), saved.get("epochs_cut_short", 0.0))
    best = (f"best val PSNR {progress.best_psnr:.3f} dB at epoch {progress.best_epoch}" if progress.best_epoch
            else "no epoch validated yet")
    log.info("resumed from %s after epoch %d%s (%s)", saved["path"], progress.epoch,
             f", step {progress.partial['step']} of epoch {progress.epoch + 1}" if progress.partial else "", best)
    return progress


def training_step(state: RunState) -> Step:
    """The step every batch goes through: eager; under trainer.cuda_graph replayed from a CUDA graph; under
    torch.compile's graph modes with cuDNN autotuned before the recording."""
    trainer = state.cfg.trainer
    step = eager_step(state.forward_model, state.optimizer, state.loss_fn, state.compute)
    if trainer.compile and trainer.compile_mode != "default" and torch.backends.cudnn.benchmark:
        return autotune_then_freeze(step)  # torch.compile's own CUDA graphs
    if not trainer.cuda_graph:
        return step
    if state.dist.world > 1:
        raise DeblurError("trainer.cuda_graph: not with torchrun (DDP synchronises gradients outside the graph); "
                          "set trainer.cuda_graph=false")
    if state.device.type != "cuda":
        log.info("trainer.cuda_graph on %s: nothing to capture; the steps run uncaptured through the same path",
                 state.device.type)
    # after resume_progress: loading a checkpoint resets the optimizer's groups, which graphed() readies again
    return graphed(step, state.optimizer, state.device, trainer.batch_size)


# ------------------------------------------------------------------------------------------------ epochs
def run_epochs(state: RunState) -> str:
    """Train, validate, record and checkpoint epoch after epoch; returns what stopped training: "epochs" or
    "max_time". A SIGINT/SIGTERM saves last.pt and raises TrainingInterrupted."""
    trainer, dist = state.cfg.trainer, state.dist
    step = training_step(state)
    # the budget counts the epochs only: its clock starts here (data preparation and set-up are not counted)
    state.budget = TimeBudget(parse_duration(trainer.max_time), spent_before=state.progress.spent)
    baseline = None  # PSNR of the degraded val patches: measured in the first epoch, then reused
    with state.stop.installed() if dist.world == 1 else contextlib.nullcontext():  # DDP: torchrun owns signals
        for epoch in range(state.progress.epoch + 1, trainer.epochs + 1):
            if dist.any_rank(state.budget.expired()):
                log.info("trainer.max_time=%s reached after %.1f s and %g epoch(s): training stops here",
                         trainer.max_time, state.budget.spent(), state.progress.epochs_done(epoch - 1))
                return "max_time"
            if adapts_threads(trainer, state.device, dist):
                report_threads()
            row = run_epoch(state, step, epoch, baseline)
            baseline = row["val_psnr_degraded"]
            record_epoch(state, row)
            save_epoch(state, row)
            if state.stop.signum is not None:
                state.stop.hand_over()
                raise TrainingInterrupted.by(state.stop, state.folder.path, f"epoch {epoch}")
    return "epochs"


def run_epoch(state: RunState, step: Step, epoch: int, baseline: float | None) -> dict:
    """Train one epoch and validate it; returns its metrics.csv row. A stop mid-epoch saves where it is."""
    started, seen_before = time.perf_counter(), (state.progress.partial or {}).get("seen", 0)
    done = train_epoch(state, step, epoch)
    state.progress.partial = None
    if done.partial is not None:  # SIGINT/SIGTERM mid-epoch: save where we are, then stop
        save_checkpoint(state.folder.last, {**checkpoint_state(state, epoch - 1), "partial_epoch": done.partial},
                        keep_previous=True)
        state.stop.hand_over()
        raise TrainingInterrupted.by(state.stop, state.folder.path, f"epoch {epoch}, step {done.partial['step']}")
    train_time = time.perf_counter() - started
    val = evaluate_patches(state, baseline)
    if not math.isfinite(val["val_loss"]):
        raise diverged(state, f"the validation loss is {val['val_loss']} after epoch {epoch}")
    lr = float(state.optimizer.param_groups[0]["lr"])  # a tensor under trainer.cuda_graph
    step_scheduler(state.scheduler, val["val_loss"])
    return {"epoch": epoch, "train_loss": done.loss, **val, "lr": lr,
            "epoch_time_s": round(time.perf_counter() - started, 3),
            "samples_per_s": round((done.seen - seen_before) / train_time, 1)}  # this process's samples


def record_epoch(state: RunState, row: dict) -> None:
    """metrics.csv, TensorBoard and the log; sample images; eval.every's test-set scores when due."""
    cfg, dist, epoch = state.cfg, state.dist, row["epoch"]
    state.metrics.append(row)
    report_epoch(row, state.writer, cfg.trainer.epochs)
    if dist.is_main and (epoch == 1 or epoch % cfg.trainer.image_every == 0 or epoch == cfg.trainer.epochs):
        grid = image_grid(state.model, state.data.val, cfg.trainer.num_image_samples, state.compute)
        state.writer.add_image(SAMPLES_TAG, grid, epoch)
    # eval.every: before the checkpoints, like metrics.csv's row (a kill in between redoes the epoch and its
    # scores); every rank takes the decision and pauses its budget alike, while rank 0 scores
    every = cfg.eval.every
    if every and (epoch % every == 0 or epoch == cfg.trainer.epochs or dist.any_rank(state.budget.expired())):
        with state.budget.paused():
            if state.during is not None:
                state.during.score(epoch, state.writer)
            dist.barrier()
    state.writer.flush()


def save_epoch(state: RunState, row: dict) -> None:
    """best.pt when validation improved, then last.pt: a kill in between resumes from the previous epoch and
    redoes this one."""
    epoch, progress = row["epoch"], state.progress
    if row["val_psnr"] > progress.best_psnr:
        progress.best_psnr, progress.best_epoch = row["val_psnr"], epoch
        if state.dist.is_main:
            save_checkpoint(state.folder.best, checkpoint_state(state, epoch, row))
    if state.dist.is_main:
        save_checkpoint(state.folder.last, checkpoint_state(state, epoch, row), keep_previous=True)


def checkpoint_state(state: RunState, epoch: int, row: dict | None = None) -> dict:
    """What last.pt and best.pt hold: enough to resume bit-exactly, and the config and scores that explain it."""
    scheduler = state.scheduler
    return {"arch": state.cfg.model.name, "model": state.model.state_dict(),
            "optimizer": portable_optimizer_state(state.optimizer),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": state.compute.scaler.state_dict(), "epoch": epoch, "rng": rng_state(state.shuffle),
            "config": OmegaConf.to_yaml(state.cfg, resolve=True), "metrics": row,
            "best_psnr": state.progress.best_psnr, "best_epoch": state.progress.best_epoch,
            "train_time_s": state.budget.spent(), "epochs_cut_short": state.progress.cut_short}


@dataclass
class EpochResult:
    loss: float | None  # mean loss per sample; None when stopped mid-epoch
    seen: int  # samples trained in this epoch, before an interruption included
    partial: dict | None = None  # where a stop mid-epoch left the epoch (resume finishes it exactly)


def train_epoch(state: RunState, step: Step, epoch: int) -> EpochResult:
    """One pass over the shuffled training patches through ``step``.

    When SIGINT/SIGTERM arrives mid-epoch, the result's ``partial`` lets a resumed run finish this epoch exactly
    as if it had never stopped: same shuffle order, same loss sum. When trainer.max_time runs out the epoch ends
    early after the step in flight (a shorter last epoch, validated and saved like any other).
    """
    trainer, train_set, partial = state.cfg.trainer, state.data.train, state.progress.partial
    state.forward_model.train()
    if partial is not None:
        state.shuffle.set_state(partial["shuffle_state"])
    shuffle_state = state.shuffle.get_state()
    order = state.dist.shard(torch.randperm(len(train_set), generator=state.shuffle)).to(train_set.sharp.device)
    loss_sum = torch.tensor(partial["loss_sum"] if partial else 0.0, device=train_set.device, dtype=torch.float64)
    seen, done = (partial["seen"], partial["step"]) if partial else (0, 0)
    total = min(math.ceil(len(order) / trainer.batch_size), trainer.limit_train_batches or math.inf)
    augment = state.shuffle if state.cfg.data.augment else None  # one draw per batch, after the shuffle
    batches = train_set.batches(trainer.batch_size, order, trainer.limit_train_batches, state.compute.channels_last,
                                augment, draws=(trainer.seed, epoch, state.dist.rank))
    on_step = schedule_hook(state.scheduler, epoch, trainer.epochs, state.budget)
    bar = tqdm(batches, total=total, desc=f"epoch {epoch}/{trainer.epochs}", leave=False,
               disable=bar_off(trainer.progress), unit="batch")
    for index, (degraded, sharp) in enumerate(bar, start=1):
        if index <= done:  # already trained before an interruption
            continue
        if on_step is not None:
            on_step(index, total)
        loss_sum += step(degraded, sharp).double() * len(sharp)  # weight by batch size: the last batch is smaller
        seen += len(sharp)
        if index % SYNC_EVERY == 0 or index == total:
            bar.set_postfix(loss=f"{checked_mean(state, loss_sum, seen, epoch, index):.5f}")
        if state.stop.signum is not None and index < total:
            bar.close()
            return EpochResult(None, seen, {"step": index, "loss_sum": loss_sum.item(), "seen": seen,
                                            "shuffle_state": shuffle_state})
        if index < total and out_of_time(state, index):
            state.progress.cut_short += 1 - index / total
            log.info("trainer.max_time reached at step %d of %d in epoch %d: validating and saving this epoch",
                     index, total, epoch)
            break
    bar.close()
    return EpochResult(loss_sum.item() / max(seen, 1), seen)


def checked_mean(state: RunState, loss_sum: torch.Tensor, seen: int, epoch: int, index: int) -> float:
    """The epoch's running mean loss (one host sync); a diverged run stops here with what to do."""
    mean = loss_sum.item() / seen
    if not math.isfinite(mean):
        raise diverged(state, f"the loss became {mean} in epoch {epoch} by step {index} (checked every "
                              f"{SYNC_EVERY} steps)")
    return mean


def diverged(state: RunState, what: str) -> DeblurError:
    kept = ("the last good checkpoint is kept in checkpoints/" if state.folder.last.is_file()
            else "no checkpoint had been saved yet")
    return DeblurError(f"training diverged: {what}; lower optimizer.lr ({kept})")


def out_of_time(state: RunState, index: int) -> bool:
    """trainer.max_time spent? Under torchrun every rank must stop at the same step, so ranks agree at the
    sync points only."""
    return (state.dist.world == 1 or index % SYNC_EVERY == 0) and state.dist.any_rank(state.budget.expired())


@torch.no_grad()
def evaluate_patches(state: RunState, baseline: float | None = None) -> dict[str, float]:
    """Mean per-patch loss and restored PSNR over the val patches (under torchrun: over every rank's share,
    summed across ranks), plus the degraded input's PSNR, the do-nothing baseline: computed when ``baseline`` is
    None, else passed through (it never changes during a run)."""
    trainer, compute, val_set = state.cfg.trainer, state.compute, state.data.val_shard
    state.forward_model.eval()
    sums = torch.zeros(4, device=val_set.device, dtype=torch.float64)  # loss, psnr, degraded psnr, count
    zero = torch.zeros((), device=val_set.device, dtype=torch.float64)
    batch_size = trainer.val_batch_size or 4 * trainer.batch_size
    # epoch 0 of the draws: validation patches get the same degradations every epoch
    for degraded, sharp in val_set.batches(batch_size, None, trainer.limit_val_batches, compute.channels_last,
                                           draws=(trainer.seed, 0, compute.dist.rank)):
        with compute.autocast():
            restored = state.forward_model(degraded).float()
        per_patch_loss = state.loss_fn(restored, sharp, reduction="none").flatten(1).mean(dim=1)
        sums += torch.stack([per_patch_loss.double().sum(), batch_psnr(restored, sharp).sum(),
                             batch_psnr(degraded, sharp, clamp=False).sum() if baseline is None else zero,
                             torch.tensor(len(sharp), device=val_set.device)])
    compute.dist.all_sum(sums)
    loss, psnr, psnr_degraded = (sums[:3] / sums[3].clamp_min(1)).tolist()
    return {"val_loss": loss, "val_psnr": psnr, "val_psnr_degraded": psnr_degraded if baseline is None else baseline}
