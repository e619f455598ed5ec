"""The training loop, readable top to bottom: config -> patches -> model -> epochs -> run folder.

``train(cfg)`` is what ``scripts/train.py`` calls and what tests call in-process. Everything it writes goes
into ``cfg.paths.run_dir``: train.log, metrics.csv, checkpoints/{last,best}.pt and tensorboard/.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from deblur_exp.atomic import WriteFailed, atomic_write, write_failed
from deblur_exp.checkpoint import CheckpointMismatch, load_checkpoint, save_checkpoint
from deblur_exp.config import check_config, parse_duration
from deblur_exp.data.patches import PatchSet, load_patches, split_indices
from deblur_exp.data.sources import image_source
from deblur_exp.errors import DeblurError
from deblur_exp.evaluation import (IMAGE_FIELDS, bar_off, eval_image_sets, evaluate_set, load_restorer, summarize,
                                   write_csv, write_json)
from deblur_exp.figures import learning_curves, three_panel
from deblur_exp.losses import LOSSES
from deblur_exp.metrics import batch_psnr
from deblur_exp.models import build_model, count_parameters
from deblur_exp.restore import to_uint8
from deblur_exp.runs import auto_resume
from deblur_exp.schedules import WarmupCosine

log = logging.getLogger("deblur_exp")

METRIC_FIELDS = ["epoch", "train_loss", "val_loss", "val_psnr", "val_psnr_degraded", "lr", "epoch_time_s",
                 "samples_per_s"]


# ----------------------------------------------------------------------------------------------- setup
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeblurError(f"trainer.device: '{name}' requested but no CUDA device is available; "
                          f"use trainer.device=cpu or auto")
    return torch.device(name)


@dataclass
class Distributed:
    """Where this process sits in a torchrun job; a plain run is rank 0 of 1."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes (in place); a no-op for a single process."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def any_rank(self, flag: bool) -> bool:
        """True when ``flag`` is true on any process, so that every rank takes the same decision."""
        if self.world == 1:
            return flag
        import torch.distributed as torch_distributed

        # NCCL sums CUDA tensors (on this rank's GPU), Gloo CPU ones.
        device = "cuda" if torch_distributed.get_backend() == "nccl" else "cpu"
        return bool(self.all_sum(torch.tensor([float(flag)], device=device))[0] > 0)

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's disjoint share of an epoch's order; equal sizes, so every rank takes as many steps."""
        usable = len(order) - len(order) % self.world
        return order[self.rank:usable:self.world]


def init_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun set up (NCCL on CUDA, Gloo on CPU); each rank gets its own GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed(), device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), world), device


class _NoWriter:
    """Stands in for the TensorBoard writer on ranks other than 0: only rank 0 writes."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def autocast_for(precision: str, device: torch.device):
    """The autocast context for ``trainer.precision``; fp16 needs CUDA (CPU has no fast fp16 kernels)."""
    if precision == "32":
        return contextlib.nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise DeblurError("trainer.precision: fp16 needs a CUDA device; use bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run folder and prove it is writable now, not after an hour of training."""
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise DeblurError(f"paths.run_dir: cannot write to {run_dir} ({exc.strerror or exc}); "
                          f"choose a writable paths.output_root or set DEBLUR_OUTPUT_DIR") from None


def attach_log_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log", mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
    logging.getLogger("deblur_exp").addHandler(handler)
    logging.getLogger("deblur_exp").setLevel(logging.INFO)
    return handler


# ------------------------------------------------------------------------------------------------ data
class PatchTensors:
    """Aligned uint8 patches, N x P x P x 3 (as cut), served as float batches on the training device.

    Batches come from chunks: a chunk of (shuffled) patches is gathered and converted to float in a few large
    tensor ops into buffers that are reused from chunk to chunk, and batches are slices (views) of them. Per
    step that is a couple of pointer bumps instead of several small gathers, conversions and fresh allocations,
    which matters on a CPU (Python overhead, page faults) and on a GPU (kernel launches). A batch stays valid
    until the next one is requested, which is how the training and validation loops use them.

    The patches live on the device when they fit (``resident``); otherwise they stay in host memory and each
    chunk is gathered on the host into a pinned staging buffer, copied asynchronously and converted on the device.
    """

    # Float buffer size per role. Small enough that the copy_ + div_ pair runs in cache instead of streaming
    # through RAM twice: 4 MiB gave 2.5x the samples/s of 30 MiB chunks on the 2-core EPYC VM (0.5 to 8 MiB tried,
    # 35 and 64 px patches); big enough that a chunk is still many batches, so per-chunk overhead is negligible.
    CHUNK_BYTES = 4 * 2**20
    # Patches go to the GPU when they take at most this share of its free memory; the rest is left for the
    # model, activations, optimizer state and (in a parallel sweep) the other jobs.
    GPU_SHARE = 0.25

    def __init__(self, sharp: torch.Tensor, degraded: torch.Tensor, device: torch.device | None = None):
        self.sharp, self.degraded = sharp, degraded
        self.device = device or sharp.device
        self.resident = sharp.device.type == self.device.type  # False: in host memory, staged chunk by chunk
        self._buffers: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._staging: dict[tuple[str, int], tuple[torch.Tensor, Any]] = {}  # host buffer, its last copy's event

    @classmethod
    def from_patches(cls, patches: PatchSet, indices: np.ndarray, device: torch.device,
                     on_device: bool | None = None) -> "PatchTensors":
        """``on_device``: True/False force where the patches live; None puts them on a GPU when they fit."""
        sharp, degraded = (torch.from_numpy(np.ascontiguousarray(images[indices]))
                           for images in (patches.sharp, patches.degraded))
        if device.type != "cuda":
            return cls(sharp, degraded, device)
        if on_device is None:
            on_device = 2 * sharp.nbytes <= cls.GPU_SHARE * torch.cuda.mem_get_info(device)[0]
        if not on_device:
            return cls(sharp, degraded, device)
        return cls(*(t.pin_memory().to(device, non_blocking=True) for t in (sharp, degraded)), device)

    def __len__(self) -> int:
        return len(self.sharp)

    def _gather(self, images: torch.Tensor, index, out: torch.Tensor) -> None:
        if isinstance(index, slice):
            out.copy_(images[index])
        else:  # index_select, not images[index]: advanced indexing is ~20x slower for this gather on CPU
            torch.index_select(images, 0, index, out=out)

    def _stage(self, key: tuple[str, int], images: torch.Tensor, index, raw: torch.Tensor) -> None:
        """Host-resident patches: gather on the host into a (pinned) buffer, then one async copy to the device."""
        cuda = self.device.type == "cuda"
        if key not in self._staging:
            buffer = torch.empty((key[1], *images.shape[1:]), dtype=torch.uint8, pin_memory=cuda)
            self._staging[key] = (buffer, None)
        buffer, copied = self._staging[key]
        if copied is not None:
            copied.synchronize()  # the previous chunk's copy must have read the buffer before we overwrite it
        staged = buffer[:len(raw)]
        self._gather(images, index, staged)
        raw.copy_(staged, non_blocking=cuda)
        if cuda:
            copied = torch.cuda.Event()
            copied.record()
        self._staging[key] = (buffer, copied)

    def _chunk(self, role: str, index, size: int, capacity: int, channels_last: bool) -> torch.Tensor:
        images = getattr(self, role)
        key = (role, capacity)
        if key not in self._buffers:
            shape = (capacity, *images.shape[1:])
            self._buffers[key] = (torch.empty(shape, dtype=torch.uint8, device=self.device),
                                  torch.empty(shape, dtype=torch.float32, device=self.device))
        raw, scaled = (b[:size] for b in self._buffers[key])
        if self.resident:
            self._gather(images, index, raw)
        else:
            self._stage(key, images, index, raw)
        # div_(255) gives exactly torchvision's ToTensor values; mul_(1 / 255) differs in the last bit for some.
        chunk = scaled.copy_(raw).div_(255).permute(0, 3, 1, 2)  # NHWC memory = a channels_last NCHW view
        return chunk if channels_last else chunk.contiguous()

    def batches(self, batch_size: int, order: torch.Tensor | None = None, limit: int | None = None,
                channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(degraded, sharp) float NCHW batches in [0, 1], in ``order`` (a permutation) or sequentially."""
        available = len(self) if order is None else len(order)
        n_samples = min(available, math.ceil(available / batch_size) * batch_size if limit is None
                        else limit * batch_size)
        chunk_samples = self.CHUNK_BYTES // (self.sharp[0].numel() * 4)
        capacity = min(max(1, chunk_samples // batch_size) * batch_size, n_samples)
        for start in range(0, n_samples, capacity):
            stop = min(start + capacity, n_samples)
            index = slice(start, stop) if order is None else order[start:stop]
            degraded = self._chunk("degraded", index, stop - start, capacity, channels_last)
            sharp = self._chunk("sharp", index, stop - start, capacity, channels_last)
            for b in range(0, stop - start, batch_size):
                yield degraded[b:b + batch_size], sharp[b:b + batch_size]


# ---------------------------------------------------------------------------------------------- epochs
class StopFlag:
    """Set by SIGINT/SIGTERM: the loop finishes the step in flight, saves last.pt and exits."""

    def __init__(self):
        self.signum: int | None = None

    def __call__(self, signum, frame) -> None:
        self.signum = signum

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
            yield self
            return
        previous = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class TimeBudget:
    """``trainer.max_time``: wall-clock seconds for the epochs (training and validation), counted across resumes.

    The budget is checked after every step, so a run overshoots it by at most one step (plus the validation and
    checkpoint of the epoch it cuts short); data preparation and the final evaluation are not counted.
    """

    def __init__(self, seconds: float | None, spent_before: float = 0.0):
        self.seconds, self.spent_before, self.started = seconds, spent_before, time.perf_counter()

    def spent(self) -> float:
        return self.spent_before + time.perf_counter() - self.started

    def expired(self) -> bool:
        return self.seconds is not None and self.spent() >= self.seconds

    def fraction(self) -> float:
        """Share of the budget spent (0 without a budget)."""
        return self.spent() / self.seconds if self.seconds else 0.0


class TrainingInterrupted(DeblurError):
    """Raised after a clean stop on SIGINT/SIGTERM; ``exit_code`` is 130 or 143 as a shell expects."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def train_epoch(model, train_set, optimizer, loss_fn, cfg, epoch, generator, autocast, scaler, channels_last,
                stop: StopFlag | None = None, partial: dict | None = None, dist: Distributed = Distributed(),
                budget: TimeBudget | None = None, on_step=None):
    """One pass over the shuffled training patches; ``on_step(step, total)`` runs before each optimizer step.

    Returns (mean loss per sample, samples seen, None), or, when ``stop`` is raised mid-epoch,
    (None, samples seen, progress) where progress lets a later call (``partial=progress``) finish this epoch
    exactly as if it had never stopped: same shuffle order, same loss sum. When ``budget`` runs out the epoch
    ends early after the step in flight (a shorter last epoch, validated and saved like any other).
    """
    t = cfg.trainer
    model.train()
    device = train_set.device
    if partial is not None:
        generator.set_state(partial["shuffle_state"])
    shuffle_state = generator.get_state()
    order = dist.shard(torch.randperm(len(train_set), generator=generator)).to(train_set.sharp.device)
    loss_sum = torch.tensor(partial["loss_sum"] if partial else 0.0, device=device, dtype=torch.float64)
    seen, done = (partial["seen"], partial["step"]) if partial else (0, 0)
    total = min(math.ceil(len(order) / t.batch_size), t.limit_train_batches or math.inf)
    bar = tqdm(train_set.batches(t.batch_size, order, t.limit_train_batches, channels_last), total=total,
               desc=f"epoch {epoch}/{t.epochs}", leave=False, disable=bar_off(t.progress), unit="batch")
    for step, (degraded, sharp) in enumerate(bar, start=1):
        if step <= done:  # already trained before an interruption
            continue
        if on_step is not None:
            on_step(step, total)
        with autocast():
            loss = loss_fn(model(degraded), sharp)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach().double() * len(sharp)  # weight by batch size: the last batch is smaller
        seen += len(sharp)
        if step % 50 == 0 or step == total:  # one host sync per interval, not per step
            mean = loss_sum.item() / seen
            if not math.isfinite(mean):
                raise DeblurError(f"training diverged: the loss became {mean} in epoch {epoch} by step {step} "
                                  f"(checked every 50 steps); lower optimizer.lr. The last good checkpoint is "
                                  f"kept in checkpoints/")
            bar.set_postfix(loss=f"{mean:.5f}")
        if stop is not None and stop.signum is not None and step < total:
            bar.close()
            return None, seen, {"step": step, "loss_sum": loss_sum.item(), "seen": seen,
                                "shuffle_state": shuffle_state}
        # DDP: every rank must stop at the same step, so ranks agree at the 50-step sync points only.
        if (budget is not None and step < total and (dist.world == 1 or step % 50 == 0)
                and dist.any_rank(budget.expired())):
            log.info("trainer.max_time reached at step %d of %d in epoch %d: validating and saving this epoch",
                     step, total, epoch)
            break
    bar.close()
    return loss_sum.item() / max(seen, 1), seen, None


@torch.no_grad()
def evaluate_patches(model, val_set, loss_fn, batch_size, limit, autocast, channels_last,
                     dist: Distributed = Distributed(), baseline: float | None = None) -> dict[str, float]:
    """Mean per-patch loss and restored PSNR over val patches (under torchrun: over every rank's share,
    summed across ranks), plus the degraded input's PSNR, the do-nothing baseline: computed when
    ``baseline`` is None, else passed through (it never changes during a run)."""
    model.eval()
    device = val_set.device
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, psnr, degraded psnr, count
    zero = torch.zeros((), device=device, dtype=torch.float64)
    for degraded, sharp in val_set.batches(batch_size, None, limit, channels_last):
        with autocast():
            restored = model(degraded)
        restored = restored.float()
        per_patch_loss = loss_fn(restored, sharp, reduction="none").flatten(1).mean(dim=1)
        sums += torch.stack([per_patch_loss.double().sum(), batch_psnr(restored, sharp).sum(),
                             batch_psnr(degraded, sharp).sum() if baseline is None else zero,
                             torch.tensor(len(sharp), device=device)])
    dist.all_sum(sums)
    loss, psnr, psnr_degraded = (sums[:3] / sums[3].clamp_min(1)).tolist()
    return {"val_loss": loss, "val_psnr": psnr, "val_psnr_degraded": psnr_degraded if baseline is None else baseline}


# ------------------------------------------------------------------------------------------ bookkeeping
class MetricsTable:
    """metrics.csv, one row per epoch; on resume, rows past the checkpoint's epoch are dropped."""

    def __init__(self, path: Path, keep_through_epoch: int):
        self.path = path
        rows = []
        if path.exists() and keep_through_epoch > 0:
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= keep_through_epoch]
        with atomic_write(path, "w", newline="") as f:
            writer = csv.DictWriter(f, METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict[str, Any]) -> None:
        try:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, METRIC_FIELDS).writerow(row)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise write_failed(self.path, exc) from None


def image_grid(model, val_set, count, autocast, channels_last) -> torch.Tensor:
    """degraded | restored | sharp rows for ``count`` fixed validation patches, as a CHW image."""
    from torchvision.utils import make_grid

    picks = torch.linspace(0, len(val_set) - 1, min(count, len(val_set))).long().to(val_set.sharp.device)
    subset = PatchTensors(val_set.sharp[picks], val_set.degraded[picks], val_set.device)
    degraded, sharp = next(subset.batches(len(subset), channels_last=channels_last))
    model.eval()
    with torch.no_grad(), autocast():
        restored = model(degraded).float().clamp(0, 1)
    rows = torch.stack([degraded, restored, sharp], dim=1).flatten(0, 1)
    return make_grid(rows.float().cpu(), nrow=3, padding=2)


SCALARS = {"train/loss": "train_loss", "val/loss": "val_loss", "val/psnr": "val_psnr",
           "val/psnr_degraded": "val_psnr_degraded", "lr": "lr", "perf/samples_per_s": "samples_per_s",
           "perf/epoch_time_s": "epoch_time_s"}


# TensorBoard's CUSTOM SCALARS tab: restored and degraded PSNR on one chart, so the moment the model beats its
# input shows; train and validation loss on another.
CUSTOM_SCALARS = {"restoration": {
    "validation PSNR: restored vs degraded input (dB)": ["Multiline", ["val/psnr", "val/psnr_degraded"]],
    "loss: train vs validation": ["Multiline", ["train/loss", "val/loss"]],
    "learning rate": ["Multiline", ["lr"]],
}}


def report_epoch(row: dict, writer, epochs: int) -> None:
    """One epoch's row to TensorBoard scalars and one log line."""
    for tag, key in SCALARS.items():
        writer.add_scalar(tag, row[key], row["epoch"])
    log.info("epoch %d/%d  train_loss %.6f  val_loss %.6f  val_psnr %.3f dB (degraded %.3f)  lr %.2e  %.1fs  "
             "%.0f samples/s", row["epoch"], epochs, row["train_loss"], row["val_loss"], row["val_psnr"],
             row["val_psnr_degraded"], row["lr"], row["epoch_time_s"], row["samples_per_s"])


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "shuffle": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_resume_state(checkpoints: Path, arch: str) -> dict:
    """last.pt, or previous.pt when last.pt is missing or damaged (a warning names it)."""
    for stale in checkpoints.glob(".*.tmp"):  # a write that a kill interrupted; never renamed into place
        stale.unlink(missing_ok=True)
    problems = []
    for name in ("last.pt", "previous.pt"):
        try:
            state = load_checkpoint(checkpoints / name, expected_arch=arch)
        except CheckpointMismatch:
            raise
        except DeblurError as exc:
            problems.append(str(exc))
            log.warning("resume: %s; trying the previous checkpoint", exc)
            continue
        return {**state, "path": checkpoints / name}
    raise DeblurError(f"resume: no usable checkpoint in {checkpoints} ({'; '.join(problems)})")


def interrupted(stop: StopFlag, run_dir: Path, where: str) -> TrainingInterrupted:
    name = signal.Signals(stop.signum).name
    message = (f"stopped by {name} at {where}; checkpoint saved. Resume with: "
               f"python scripts/train.py resume={run_dir}")
    log.warning(message)
    return TrainingInterrupted(message, 128 + stop.signum)


def make_scheduler(cfg: DictConfig, optimizer):
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


def schedule_hook(scheduler, epoch: int, epochs: int, budget: TimeBudget):
    """For WarmupCosine, the per-step callback that tells it the share of the run done: of the epochs or of
    trainer.max_time, whichever is further along. None for the schedulers stepped once per epoch."""
    if not isinstance(scheduler, WarmupCosine):
        return None
    return lambda step, total: scheduler.set_progress(max((epoch - 1 + step / total) / epochs, budget.fraction()))


def prepare_data(cfg: DictConfig, data_cfg, device: torch.device, dist: Distributed):
    """(train, val, this rank's val share, names of held-out images) as device tensors, cut and split once."""
    degradation = OmegaConf.to_object(cfg.degradation)
    patches = load_patches(data_cfg, degradation, cfg.paths.cache_dir)
    train_idx, val_idx = split_indices(patches, data_cfg, cfg.trainer.seed)
    held_out = sorted({patches.image_names[i] for i in patches.image_index[val_idx]})
    on_device = cfg.trainer.patches_on_device
    train_set = PatchTensors.from_patches(patches, train_idx, device, on_device)
    val_set = PatchTensors.from_patches(patches, val_idx, device, on_device)
    val_shard = val_set if dist.world == 1 else PatchTensors.from_patches(patches, val_idx[dist.rank::dist.world],
                                                                           device, on_device)
    log.info("data %s: %d train / %d val patches of %dx%d (split=%s, degradation=%s applied per %s)",
             data_cfg.name, len(train_set), len(val_set), data_cfg.patch_size, data_cfg.patch_size,
             data_cfg.split, degradation.name, degradation.apply_to)
    if device.type == "cuda":
        log.info("patches (%.0f MiB as uint8) %s", (patches.sharp.nbytes + patches.degraded.nbytes) / 2**20,
                 "live on the GPU" if train_set.resident else
                 "stay in host memory; chunks are copied to the GPU as they are needed (trainer.patches_on_device)")
    return train_set, val_set, val_shard, held_out if data_cfg.split == "image" else []


# ------------------------------------------------------------------------------------------------ train
def train(cfg: DictConfig) -> float:
    """Train one run as ``cfg`` says; returns the best validation PSNR (the sweepers' objective)."""
    check_config(cfg)
    t = cfg.trainer
    if cfg.resume == "auto":  # the job's own folder decides: skip it, continue it, or start it
        decision = auto_resume(Path(cfg.paths.run_dir), t.epochs, parse_duration(t.max_time))
        log.info("resume=auto: %s: %s", cfg.paths.run_dir, decision.reason)
        if decision.action == "skip":
            return objective_value(json.loads((Path(cfg.paths.run_dir) / "summary.json").read_text()), cfg.objective)
        cfg.resume = str(cfg.paths.run_dir) if decision.action == "resume" else None
    run_dir = Path(cfg.resume or cfg.paths.run_dir).expanduser().resolve()
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: ranks other than 0 write nothing
        return _train(cfg, t, run_dir)
    prepare_run_dir(run_dir)
    handler = attach_log_file(run_dir)
    try:
        return _train(cfg, t, run_dir)
    except WriteFailed as exc:  # e.g. a full disk: the last good checkpoint is intact, say how to go on
        last = run_dir / "checkpoints" / "last.pt"
        next_step = (f"free some space, then resume with: python scripts/train.py resume={run_dir}"
                     if last.is_file() else "free some space and start the run again")
        raise DeblurError(f"{exc}; {next_step}") from None
    finally:
        logging.getLogger("deblur_exp").removeHandler(handler)
        handler.close()


def objective_value(summary: dict, objective: str) -> float:
    """What a run returns to a sweeper, read from its summary (summary.json): best val PSNR or an eval set's PSNR."""
    return summary["best_val_psnr"] if objective == "val_psnr" else summary["eval"][objective]["psnr_restored"]


def _train(cfg: DictConfig, t: DictConfig, run_dir: Path) -> float:
    dist, device = init_distributed(resolve_device(t.device))
    if not dist.is_main:
        log.setLevel(logging.WARNING)
    autocast = autocast_for(t.precision, device)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    seed_everything(t.seed, t.deterministic)
    if t.compile and t.compile_mode != "default":
        # cuDNN's autotuner cannot run inside CUDA-graph capture ("FIND was unable to find an engine").
        torch.backends.cudnn.benchmark = False
    # null -> channels_last: faster for all five models on the 2-core CPU (up to 1.2x), and on the H200 the best
    # format for three of five, within 4% for the others (results/*.json). true/false force a format.
    channels_last = t.channels_last if t.channels_last is not None else True
    log.info("run folder: %s", run_dir)

    # Data: cut, degrade and split once; then hold everything as tensors on the device.
    data_cfg = OmegaConf.to_object(cfg.data)
    train_set, val_set, val_shard, held_out = prepare_data(cfg, data_cfg, device, dist)

    # Model, optimizer, scheduler, loss.
    model = build_model(cfg.model.name, **cfg.model.params).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    scheduler = make_scheduler(cfg, optimizer)
    loss_fn = LOSSES[t.loss]
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    forward_model = torch.compile(model, mode=t.compile_mode) if t.compile else model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward_model = DistributedDataParallel(forward_model, device_ids=[device] if device.type == "cuda" else None)
        log.info("distributed: %d processes (%s); effective batch %d = %d per process x %d", dist.world,
                 "NCCL" if device.type == "cuda" else "Gloo", t.batch_size * dist.world, t.batch_size, dist.world)
    log.info("model %s: %d parameters on %s (precision %s, channels_last=%s, %d CPU threads)", cfg.model.name,
             count_parameters(model), device, t.precision, channels_last, torch.get_num_threads())

    generator = torch.Generator().manual_seed(t.seed)
    start_epoch, best_psnr, best_epoch, spent = 0, -math.inf, 0, 0.0
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    partial = None
    if cfg.resume:
        state = load_resume_state(run_dir / "checkpoints", cfg.model.name)
        for part, key in ((model, "model"), (optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
            if part is not None and state.get(key):
                part.load_state_dict(state[key])
        restore_rng(state["rng"], generator)
        start_epoch, best_psnr, best_epoch = state["epoch"], state["best_psnr"], state["best_epoch"]
        partial = state.get("partial_epoch")
        spent = state.get("train_time_s", 0.0)
        log.info("resumed from %s after epoch %d%s (best val PSNR %.3f dB at epoch %d)", state["path"], start_epoch,
                 f", step {partial['step']} of epoch {start_epoch + 1}" if partial else "", best_psnr, best_epoch)
    if dist.is_main:
        from torch.utils.tensorboard import SummaryWriter

        metrics = MetricsTable(run_dir / "metrics.csv", keep_through_epoch=start_epoch)
        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch + 1 if start_epoch else None)
    else:
        metrics, writer = _NoWriter(), _NoWriter()
    if start_epoch == 0:
        writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg, resolve=True) + "\n```", 0)
        writer.add_custom_scalars(CUSTOM_SCALARS)
    val_batch = t.val_batch_size or 4 * t.batch_size
    resolved_config = OmegaConf.to_yaml(cfg, resolve=True)

    def checkpoint_state(epoch: int, row: dict | None = None) -> dict:
        return {"arch": cfg.model.name, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict(), "epoch": epoch, "rng": rng_state(generator),
                "config": resolved_config, "metrics": row, "best_psnr": best_psnr, "best_epoch": best_epoch,
                "train_time_s": budget.spent()}

    baseline = None  # PSNR of the degraded val patches: measured in the first epoch, then reused
    stop = StopFlag()
    budget = TimeBudget(parse_duration(t.max_time), spent_before=spent)
    stopped_by = "epochs"
    with stop.installed() if dist.world == 1 else contextlib.nullcontext():  # DDP: torchrun owns the signals
        for epoch in range(start_epoch + 1, t.epochs + 1):
            if dist.any_rank(budget.expired()):
                stopped_by = "max_time"
                log.info("trainer.max_time=%s reached after %.1f s and %d epochs: training stops here",
                         t.max_time, budget.spent(), epoch - 1)
                break
            started = time.perf_counter()
            train_loss, seen, progress = train_epoch(forward_model, train_set, optimizer, loss_fn, cfg, epoch,
                                                     generator, autocast, scaler, channels_last, stop, partial, dist,
                                                     budget, schedule_hook(scheduler, epoch, t.epochs, budget))
            partial = None
            if progress is not None:  # SIGINT/SIGTERM mid-epoch: save where we are, then stop
                save_checkpoint(last_path, {**checkpoint_state(epoch - 1), "partial_epoch": progress},
                                keep_previous=True)
                raise interrupted(stop, run_dir, f"epoch {epoch}, step {progress['step']}")
            train_time = time.perf_counter() - started
            val = evaluate_patches(forward_model, val_shard, loss_fn, val_batch, t.limit_val_batches, autocast,
                                   channels_last, dist, baseline)
            baseline = val["val_psnr_degraded"]
            if not math.isfinite(val["val_loss"]):
                raise DeblurError(f"training diverged: the validation loss is {val['val_loss']} after epoch {epoch}; "
                                  f"lower optimizer.lr. The last good checkpoint is kept in checkpoints/")
            lr = optimizer.param_groups[0]["lr"]
            step_scheduler(scheduler, val["val_loss"])
            epoch_time = time.perf_counter() - started
            row = {"epoch": epoch, "train_loss": train_loss, **val, "lr": lr, "epoch_time_s": round(epoch_time, 3),
                   "samples_per_s": round(seen / train_time, 1)}
            metrics.append(row)
            report_epoch(row, writer, t.epochs)
            if dist.is_main and (epoch == 1 or epoch % t.image_every == 0 or epoch == t.epochs):
                writer.add_image("val/degraded|restored|sharp",
                                 image_grid(model, val_set, t.num_image_samples, autocast, channels_last), epoch)
            writer.flush()

            # best.pt before last.pt: a kill in between resumes from the previous epoch and redoes this one.
            if val["val_psnr"] > best_psnr:
                best_psnr, best_epoch = val["val_psnr"], epoch
                if dist.is_main:
                    save_checkpoint(best_path, checkpoint_state(epoch, row))
            if dist.is_main:
                save_checkpoint(last_path, checkpoint_state(epoch, row), keep_previous=True)
            if stop.signum is not None:
                raise interrupted(stop, run_dir, f"epoch {epoch}")

    log.info("done: best val PSNR %.3f dB at epoch %d; checkpoints in %s", best_psnr, best_epoch,
             run_dir / "checkpoints")
    if dist.world > 1:  # training is over on every rank: leave the group together, before rank 0 evaluates alone
        import torch.distributed as torch_distributed

        torch_distributed.barrier()
        torch_distributed.destroy_process_group()  # a rank exiting with Gloo threads alive can abort at shutdown
    if not dist.is_main:
        return best_psnr
    eval_summary = {}
    if cfg.eval.enabled:
        held_out_images = [im for im in image_source(data_cfg).load(1) if im.name in held_out]
        eval_summary = evaluate_run(cfg, run_dir, device, writer, held_out_images, step=t.epochs)
    summary = write_run_summary(cfg, run_dir, writer, count_parameters(model), best_psnr, best_epoch, eval_summary,
                                stopped_by, device)
    writer.close()
    return objective_value(summary, cfg.objective)


def write_run_summary(cfg, run_dir: Path, writer, parameters: int, best_psnr: float, best_epoch: int,
                      eval_summary: dict, stopped_by: str = "epochs", device: torch.device | None = None) -> dict:
    """summary.json (read by the sweep summary) and the TensorBoard HPARAMS entry for this run; returns the summary."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    summary = {
        "model": cfg.model.name, "parameters": parameters, "best_val_psnr": best_psnr, "best_epoch": best_epoch,
        "epochs": len(rows), "train_time_s": round(sum(float(r["epoch_time_s"]) for r in rows), 2),
        "samples_per_s": round(float(np.mean([float(r["samples_per_s"]) for r in rows])), 1) if rows else 0.0,
        "val_psnr_degraded": float(rows[-1]["val_psnr_degraded"]) if rows else None,
        # "epochs": all trainer.epochs ran; "max_time": the wall-clock budget ended training
        "stopped_by": stopped_by, "max_time_s": parse_duration(cfg.trainer.max_time),
        "device": describe_device(device),
        "eval": eval_summary,
    }
    from deblur_exp.evaluation import write_json

    write_json(run_dir / "summary.json", summary)
    baseline = {"degraded input": summary["val_psnr_degraded"]} if rows else {}
    learning_curves(run_dir / "curves.png", {cfg.model.name: rows}, baseline, title=run_dir.name)
    log_run_end(run_dir, summary, figures=cfg.eval.figures)
    hparams = {
        "model": cfg.model.name, "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1], "lr": cfg.optimizer.lr,
        "scheduler": str(cfg.scheduler.get("_target_") or "none").rsplit(".", 1)[-1], "loss": cfg.trainer.loss,
        "batch_size": cfg.trainer.batch_size, "epochs": cfg.trainer.epochs, "seed": cfg.trainer.seed,
        "data": cfg.data.name, "patch_size": cfg.data.patch_size, "stride": cfg.data.stride, "split": cfg.data.split,
        "degradation": cfg.degradation.name, "scale": cfg.degradation.scale, "blur_kernel": cfg.degradation.blur_kernel,
        "apply_to": cfg.degradation.apply_to, "precision": cfg.trainer.precision,
    }
    metrics = {"hparam/best_val_psnr": best_psnr}
    for set_name, scores in eval_summary.items():
        metrics[f"hparam/{set_name}_psnr"] = scores["psnr_restored"]
        metrics[f"hparam/{set_name}_ssim"] = scores["ssim_restored"]
    writer.add_hparams(hparams, metrics, run_name=".")  # "." keeps it in this run's folder, beside its curves
    return summary


def log_run_end(run_dir: Path, summary: dict, figures: bool) -> None:
    """The last lines of a run: what it reached against the degraded input, and where to look."""
    lines = ["run summary:"]
    degraded = summary["val_psnr_degraded"]
    if degraded is not None:
        lines.append(f"  validation: best PSNR {summary['best_val_psnr']:.2f} dB at epoch {summary['best_epoch']}, "
                     f"{summary['best_val_psnr'] - degraded:+.2f} dB over the degraded input ({degraded:.2f} dB)")
    for set_name, scores in summary["eval"].items():
        gain = scores["psnr_restored"] - scores["psnr_degraded"]
        lines.append(f"  {set_name}: PSNR {scores['psnr_restored']:.2f} dB, {gain:+.2f} dB over the degraded "
                     f"input ({scores['psnr_degraded']:.2f} dB) on {scores['images']} image(s)")
    if summary["stopped_by"] == "max_time":
        lines.append(f"  stopped by trainer.max_time after {summary['epochs']} epochs")
    shown = "curves.png" + (", eval/figures/" if figures and summary["eval"] else "")
    lines.append(f"  run folder: {run_dir} ({shown}, metrics.csv, checkpoints/best.pt)")
    lines.append(f"  look at it: tensorboard --logdir {run_dir / 'tensorboard'}")
    log.info("\n".join(lines))


def describe_device(device: torch.device | None) -> str:
    """What trained the run, for tables: the GPU's name, else the CPU with its thread count."""
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def evaluate_run(cfg: DictConfig, run_dir: Path, device, writer, held_out, step: int) -> dict:
    """Score best.pt on the eval sets: eval/<set>.csv, eval/summary.json, figures and TensorBoard."""
    e = cfg.eval
    sets, problems = eval_image_sets(e, cfg.paths.data_dir, held_out)
    for problem in problems:
        log.warning("eval: skipping %s", problem)
    if not sets:
        log.info("eval: no image sets found; nothing scored")
        return {}
    restorer = load_restorer(run_dir / "checkpoints" / "best.pt", device, label=cfg.model.name)
    options = dict(tile=e.tile, tile_overlap=e.tile_overlap, self_ensemble=e.self_ensemble, y_channel=e.y_channel,
                   crop_border=e.crop_border)
    summary = {}
    for set_name, images in sets.items():
        shown = []

        def keep(image, sharp, degraded, restored, row):
            if e.figures:
                three_panel(run_dir / "eval" / "figures" / set_name / f"{image.name}.png", sharp, degraded,
                            restored, row["psnr_degraded"], row["psnr_restored"], image.name)
            if len(shown) < e.tensorboard_images:
                shown.append((image.name, np.concatenate([degraded, to_uint8(restored), sharp], axis=1)))

        rows, bad = evaluate_set(restorer, images, device, progress=cfg.trainer.progress, on_image=keep, **options)
        for problem in bad:
            log.warning("eval %s: skipping %s", set_name, problem)
        write_csv(run_dir / "eval" / f"{set_name}.csv", rows, IMAGE_FIELDS)
        summary[set_name] = summarize(rows)
        for key in ("psnr", "ssim"):
            writer.add_scalar(f"eval/{set_name}/{key}", summary[set_name][f"{key}_restored"], step)
            writer.add_scalar(f"eval/{set_name}/{key}_degraded", summary[set_name][f"{key}_degraded"], step)
        for name, strip in shown:
            writer.add_image(f"eval/{set_name}/{name} degraded|restored|sharp", strip, step, dataformats="HWC")
        log.info("eval %s: %d images, PSNR %.3f dB (degraded %.3f), SSIM %.4f (degraded %.4f)", set_name,
                 len(rows), summary[set_name]["psnr_restored"], summary[set_name]["psnr_degraded"],
                 summary[set_name]["ssim_restored"], summary[set_name]["ssim_degraded"])
    write_json(run_dir / "eval" / "summary.json", summary)
    writer.flush()
    return summary
