"""Run bookkeeping: metrics.csv rows, TensorBoard scalars, images and layout, summary.json and the closing lines.

What a run records about itself lives here; where it goes is ``run_dir.RunDir``'s business.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from deblur_exp.config import parse_duration
from deblur_exp.data.batches import PatchTensors
from deblur_exp.evaluation.figures import learning_curves
from deblur_exp.metrics import IMAGE_METRICS
from deblur_exp.models import count_parameters
from deblur_exp.runs.run_dir import RunDir
from deblur_exp.runtime import Distributed, describe_device
from deblur_exp.tables import MetricsTable, read_csv, write_json
from deblur_exp.training.state import Compute, RunState

log = logging.getLogger("deblur_exp")


METRIC_FIELDS = ["epoch", "train_loss", "val_loss", "val_psnr", "val_psnr_degraded", "lr", "epoch_time_s",
                 "samples_per_s"]


class _NoWriter:
    """Stands in for the TensorBoard writer on ranks other than 0: only rank 0 writes."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def image_grid(model, val_set: PatchTensors, count: int, compute: Compute) -> torch.Tensor:
    """degraded | restored | sharp rows for ``count`` fixed validation patches, as a CHW image."""
    from torchvision.utils import make_grid

    picks = torch.linspace(0, len(val_set) - 1, min(count, len(val_set))).long().to(val_set.sharp.device)
    subset = val_set.subset(picks)
    degraded, sharp = next(subset.batches(len(subset), channels_last=compute.channels_last))
    model.eval()
    with torch.no_grad(), compute.autocast():
        restored = model(degraded).float().clamp(0, 1)
    rows = torch.stack([degraded, restored, sharp], dim=1).flatten(0, 1)
    return make_grid(rows.float().cpu(), nrow=3, padding=2)


# TensorBoard tags. Its TIME SERIES tab (the one it opens on) sorts tag groups by name, so the per-epoch curves
# come first (loss, psnr), then the image samples, schedule and speed, and the single-point end-of-run scores last
# (summary/: the HPARAMS metrics, whole_images/: the eval sets, written by evaluation.evaluate_run).
SCALARS = {"loss/train": "train_loss", "loss/val": "val_loss", "psnr/val": "val_psnr",
           "psnr/val_degraded": "val_psnr_degraded", "schedule/lr": "lr", "speed/samples_per_s": "samples_per_s",
           "speed/epoch_time_s": "epoch_time_s"}
SAMPLES_TAG = "samples/val degraded|restored|sharp"
SUMMARY_PREFIX = "summary"
HPARAMS_RUN = "hparams"  # the sub-run of tensorboard/ holding the HPARAMS record


# TensorBoard's CUSTOM SCALARS tab: restored and degraded PSNR on one chart, so the moment the model beats its
# input shows; train and validation loss on another.
CUSTOM_SCALARS = {"restoration": {
    "validation PSNR: restored vs degraded input (dB)": ["Multiline", ["psnr/val", "psnr/val_degraded"]],
    "loss: train vs validation": ["Multiline", ["loss/train", "loss/val"]],
    "learning rate": ["Multiline", ["schedule/lr"]],
}}


def report_epoch(row: dict, writer, epochs: int) -> None:
    """One epoch's row to TensorBoard scalars and one log line."""
    for tag, key in SCALARS.items():
        writer.add_scalar(tag, row[key], row["epoch"])
    log.info("epoch %d/%d  train_loss %.6f  val_loss %.6f  val_psnr %.3f dB (degraded %.3f)  lr %.2e  %.1fs  "
             "%.0f samples/s", row["epoch"], epochs, row["train_loss"], row["val_loss"], row["val_psnr"],
             row["val_psnr_degraded"], row["lr"], row["epoch_time_s"], row["samples_per_s"])


def objective_value(summary: dict, objective: str) -> float:
    """What a run returns to a sweeper, read from its summary (summary.json): best val PSNR or an eval set's PSNR."""
    return summary["best_val_psnr"] if objective == "val_psnr" else summary["eval"][objective]["psnr_restored"]


def write_run_summary(state: RunState, eval_summary: dict, stopped_by: str = "epochs") -> dict:
    """summary.json (read by the sweep summary), curves.png and the TensorBoard HPARAMS entry for this run; returns
    the summary."""
    cfg, run = state.cfg, state.folder
    rows = read_csv(run.metrics)
    summary = {
        "model": cfg.model.name, "parameters": count_parameters(state.model), "best_val_psnr": state.progress.best_psnr,
        "best_epoch": state.progress.best_epoch,
        "epochs": len(rows),
        "epochs_done": state.progress.epochs_done(len(rows)),
        "train_time_s": round(sum(float(r["epoch_time_s"]) for r in rows), 2),
        "samples_per_s": round(float(np.mean([float(r["samples_per_s"]) for r in rows])), 1) if rows else 0.0,
        "val_psnr_degraded": float(rows[-1]["val_psnr_degraded"]) if rows else None,
        # "epochs": all trainer.epochs ran; "max_time": the wall-clock budget ended training
        "stopped_by": stopped_by, "max_time_s": parse_duration(cfg.trainer.max_time),
        "device": describe_device(state.device),
        "checkpoint": cfg.eval.checkpoint,  # the one that stands for the run (RunDir.checkpoint)
        "eval": eval_summary,
    }
    write_json(run.summary, summary)
    baseline = {"degraded input": summary["val_psnr_degraded"]} if rows else {}
    during = read_csv(run.during_training) if run.during_training.is_file() else []
    learning_curves(run.curves, {cfg.model.name: rows}, baseline, title=run.path.name,
                    during={cfg.model.name: during})
    log_run_end(run, summary, figures=cfg.eval.figures)
    log_hparams(state, summary)
    return summary


# The run's settings shown in TensorBoard's HPARAMS table, by their config keys; the run's own overrides join them.
HPARAM_KEYS = ["model", "optimizer", "optimizer.lr", "scheduler", "trainer.loss", "trainer.batch_size",
               "trainer.epochs", "trainer.max_time", "trainer.seed", "trainer.precision", "data", "data.patch_size",
               "data.stride", "data.split", "degradation", "degradation.scale", "degradation.blur_kernel",
               "degradation.apply_to"]


def run_hparams(cfg: DictConfig, overrides: list[str]) -> dict:
    """{config key: value} for HPARAMS: the usual keys plus every key the run's command overrode (so a swept one is
    always a column), groups by their option name, unset values as "none"."""
    keys = list(HPARAM_KEYS)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if "=" in override and key not in keys and not key.startswith(("hydra", "paths", "resume")):
            keys.append(key)
    values = {}
    for key in keys:
        value = OmegaConf.select(cfg, key.replace("/", "."), default=None)
        if isinstance(value, DictConfig):  # a config group: its option's name (or class)
            value = value.get("name") or str(value.get("_target_", "")).rsplit(".", 1)[-1] or None
        values[key] = value if isinstance(value, (int, float, str, bool)) else str(value).lower()
    return values


def log_hparams(state: RunState, summary: dict) -> None:
    """The run's row in TensorBoard's HPARAMS table: its settings beside its scores. The table shows five setting
    columns, those whose values differ across the runs on view first, but it works that out only when no run
    carries an experiment summary (torch's add_hparams writes one that marks nothing as differing, so the first five
    by name would show). So this writes the session records alone, into tensorboard/hparams/, where the only scalars
    are the scores: the table's metric columns."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    if not state.dist.is_main:
        return
    run = state.folder
    overrides = OmegaConf.load(run.overrides) if run.overrides.is_file() else []
    metrics = {f"{SUMMARY_PREFIX}/best_val_psnr": summary["best_val_psnr"]}
    for set_name, scores in summary["eval"].items():
        for name in IMAGE_METRICS:
            metrics[f"{SUMMARY_PREFIX}/{set_name}_{name}"] = scores[f"{name}_restored"]
    _, session_start, session_end = hparams(run_hparams(state.cfg, [str(o) for o in overrides]), metrics)
    folder = run.tensorboard / HPARAMS_RUN
    shutil.rmtree(folder, ignore_errors=True)  # a resumed run's record replaces the one it wrote before
    with SummaryWriter(str(folder)) as writer:
        writer.file_writer.add_summary(session_start)
        writer.file_writer.add_summary(session_end)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value)


def versus_input(gain: float) -> str:
    """A PSNR difference to the degraded input in words: above or below it."""
    return f"{abs(gain):.2f} dB {'above' if gain >= 0 else 'below'} the degraded input"


def log_run_end(run: RunDir, summary: dict, figures: bool) -> None:
    """The last lines of a run: what it reached against the degraded input, and where to look."""
    lines = ["run summary:"]
    degraded = summary["val_psnr_degraded"]
    if degraded is not None:
        lines.append(f"  validation: best PSNR {summary['best_val_psnr']:.2f} dB at epoch {summary['best_epoch']}, "
                     f"{versus_input(summary['best_val_psnr'] - degraded)} ({degraded:.2f} dB)")
    for set_name, scores in summary["eval"].items():
        gain = scores["psnr_restored"] - scores["psnr_degraded"]
        lines.append(f"  {set_name}: PSNR {scores['psnr_restored']:.2f} dB, {versus_input(gain)} "
                     f"({scores['psnr_degraded']:.2f} dB) on {scores['images']} image(s)")
    if summary["stopped_by"] == "max_time":
        lines.append(f"  stopped by trainer.max_time ({summary['max_time_s']:.0f} s of training and validation) after "
                     f"{summary['epochs_done']:g} epochs; {summary['train_time_s']:.0f} s in all, as the epoch it cut "
                     f"is still validated")
    shown = [run.curves, *([run.eval_figures] if figures and summary["eval"] else []), run.metrics,
             *([run.during_training] if run.during_training.is_file() else []), run.checkpoint()]
    names = [f"{p.relative_to(run.path).as_posix()}{'/' if p.suffix == '' else ''}" for p in shown]
    lines.append(f"  run folder: {run.path} ({', '.join(names)})")
    lines.append(f"  look at it: tensorboard --logdir {run.tensorboard}")
    log.info("\n".join(lines))


def open_tracking(cfg: DictConfig, run: RunDir, dist: Distributed, start_epoch: int):
    """(metrics.csv table, TensorBoard writer) for this run; on a resume both drop what came after the checkpoint's
    epoch. Ranks other than 0 get stand-ins that write nothing."""
    if not dist.is_main:
        return _NoWriter(), _NoWriter()
    from torch.utils.tensorboard import SummaryWriter

    metrics = MetricsTable(run.metrics, keep_through_epoch=start_epoch, fields=METRIC_FIELDS)
    writer = SummaryWriter(str(run.tensorboard), purge_step=start_epoch + 1 if start_epoch else None)
    if start_epoch == 0:
        writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg, resolve=True) + "\n```", 0)
        writer.add_custom_scalars(CUSTOM_SCALARS)
    return metrics, writer
