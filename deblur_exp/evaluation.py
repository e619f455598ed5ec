"""Score trained models on whole images: load a checkpoint, degrade each sharp image exactly as the run
did, restore it, and tabulate PSNR/SSIM of degraded and restored against sharp."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from deblur_exp.checkpoint import load_checkpoint
from deblur_exp.config import DegradationConfig, EvalConfig
from deblur_exp.data.degrade import degrade, min_image_size, sharp_for
from deblur_exp.data.images import Image, read_folder
from deblur_exp.errors import DeblurError
from deblur_exp.figures import three_panel
from deblur_exp.metrics import IMAGE_METRICS, SSIM_WINDOW, describe_scores, score_fields
from deblur_exp.models import build_model
from deblur_exp.restore import restore_image, to_uint8
from deblur_exp.run_dir import RunDir
from deblur_exp.tables import write_csv, write_json

log = logging.getLogger(__name__)

IMAGE_FIELDS = ["image", "size", *score_fields()]


PROTOCOL = ("y_channel", "crop_border")  # the eval keys that decide what a PSNR/SSIM figure means


@dataclass
class Restorer:
    """A trained model with everything needed to use it: its degradation and where it came from."""

    label: str
    arch: str
    model: torch.nn.Module
    degradation: DegradationConfig
    color: str  # data.color it was trained on: "rgb" or "y" (single-channel luma)
    checkpoint: Path
    epoch: int
    config: dict  # the resolved config it was trained with (e.g. trainer.precision=auto -> bf16)

    @property
    def protocol(self) -> dict:
        """How its run scored whole images: the PROTOCOL keys of its eval config (schema defaults if absent)."""
        own, defaults = self.config.get("eval", {}), EvalConfig()
        return {key: own.get(key, getattr(defaults, key)) for key in PROTOCOL}


def load_restorer(checkpoint: Path, device: torch.device | str = "cpu", label: str | None = None) -> Restorer:
    """Rebuild the model a checkpoint holds; a run folder's config must agree with it on the architecture."""
    run = RunDir.of_checkpoint(checkpoint)
    expected = OmegaConf.load(run.config).model.name if run is not None and run.config.is_file() else None
    state = load_checkpoint(checkpoint, expected_arch=expected)
    config = OmegaConf.to_container(OmegaConf.create(state["config"]))
    model = build_model(state["arch"], **config["model"].get("params", {}))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise DeblurError(f"{checkpoint}: weights do not fit a '{state['arch']}' model "
                          f"({str(exc).splitlines()[0][:160]})") from None
    model.to(device).eval()
    degradation = DegradationConfig(**config["degradation"])
    if label is None:
        label = f"{state['arch']}@{(run.path if run is not None else checkpoint.parent).name}"
    color = config.get("data", {}).get("color", "rgb")
    return Restorer(label, state["arch"], model, degradation, color, checkpoint, state["epoch"], config)


def score_image(restorer: Restorer, sharp: np.ndarray, device, tile=None, tile_overlap=32, self_ensemble=False,
                y_channel=False, crop_border=0, grey=False) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Degrade ``sharp`` (RGB as read) with the run's own degradation, restore it, and score both against it.

    Returns (scores, sharp, degraded, restored), the sharp image as the model sees it: in the run's colour
    (RGB or Y) and cropped to the scale when the degradation asks for it.
    """
    sharp = sharp_for(sharp, restorer.color, restorer.degradation, grey)
    height, width = sharp.shape[:2]
    need = max(min_image_size(restorer.degradation), 2 * crop_border + SSIM_WINDOW)
    if min(height, width) < need:
        raise DeblurError(f"image of {width}x{height} is smaller than the {need}x{need} minimum that scoring needs "
                          f"(degradation.scale={restorer.degradation.scale}, SSIM window {SSIM_WINDOW}, "
                          f"crop_border={crop_border})")
    degraded = degrade(sharp, restorer.degradation)
    restored = restore_image(restorer.model, degraded, device, tile, tile_overlap, self_ensemble)
    row = {"size": f"{width}x{height}", **score_pair(sharp, degraded, restored, y_channel, crop_border, device)}
    return row, sharp, degraded, restored


def score_pair(sharp: np.ndarray, degraded: np.ndarray, restored: np.ndarray, y_channel=False,
               crop_border=0, device="cpu") -> dict[str, float]:
    """Every metric of IMAGE_METRICS for the degraded input and for the restored output, both against ``sharp``
    (computed on ``device``, where the model runs)."""
    options = {"y_channel": y_channel, "crop_border": crop_border, "device": device}
    return {f"{name}_{which}": metric.score(image, sharp, **options) for name, metric in IMAGE_METRICS.items()
            for which, image in (("degraded", degraded), ("restored", restored))}


def evaluate_set(restorer: Restorer, images: Iterable[Image], device, progress=True, on_image=None,
                 **options) -> tuple[list[dict], list[str]]:
    """Per-image rows for a set; images that fail are reported as problems and the rest carry on."""
    rows, problems = [], []
    images = list(images)
    for image in tqdm(images, desc=f"eval {restorer.label}", leave=False, disable=bar_off(progress), unit="img"):
        try:
            row, sharp, degraded, restored = score_image(restorer, image.rgb, device, grey=image.grey, **options)
        except DeblurError as exc:
            problems.append(f"{image.path or image.name}: {exc}")
            continue
        rows.append({"image": image.name, **row})
        if on_image is not None:
            on_image(image, sharp, degraded, restored, row)
    return rows, problems


def bar_off(wanted: bool) -> bool | None:
    """tqdm's ``disable``: no bar when not wanted; otherwise None, which shows a bar on a terminal only, so logs
    and pipes get the one line per epoch or image instead of a flood of carriage-return updates."""
    return None if wanted else True


def summarize(rows: list[dict]) -> dict:
    keys = score_fields()
    return {"images": len(rows), **{k: float(np.mean([r[k] for r in rows])) if rows else float("nan") for k in keys}}


def eval_image_sets(eval_cfg, data_dir: str | Path, held_out: list[Image] | None = None
                    ) -> tuple[dict[str, list[Image]], list[str]]:
    """The image sets to score: named folders under ``data_dir`` (downloaded when allowed), an extra folder,
    and the training run's held-out images. Returns the sets and the problems met reading them."""
    from deblur_exp.data.download import fetch_dataset

    sets: dict[str, list[Image]] = {}
    problems: list[str] = []
    for name in eval_cfg.sets:
        folder = Path(data_dir) / name
        url = (eval_cfg.urls or {}).get(name)
        if not folder.is_dir() and eval_cfg.download and url:
            fetch_dataset(url, folder, sha256=(eval_cfg.sha256 or {}).get(name))
        if not folder.is_dir():
            log.info("eval: skipping %s (no folder %s; set DEBLUR_DATA_DIR or eval.download=true)", name, folder)
            continue
        sets[name], bad = read_folder(folder)
        problems += bad
    if eval_cfg.images:
        sets["images"], bad = read_folder(Path(eval_cfg.images))
        problems += bad
    if eval_cfg.held_out and held_out:
        sets["held_out"] = held_out
    return sets, problems


def evaluate_run(cfg: DictConfig, run: RunDir, device, writer, held_out, step: int) -> dict:
    """Score the run's checkpoint (eval.checkpoint) on the eval sets: eval/<set>.csv, eval/summary.json, figures
    and TensorBoard."""
    e = cfg.eval
    sets, problems = eval_image_sets(e, cfg.paths.data_dir, held_out)
    for problem in problems:
        log.warning("eval: skipping %s", problem)
    if not sets:
        log.info("eval: no image sets found; nothing scored")
        return {}
    checkpoint = run.checkpoint(e.checkpoint)
    restorer = load_restorer(checkpoint, device, label=cfg.model.name)
    log.info("eval: scoring %s (epoch %d)", checkpoint.relative_to(run.path).as_posix(), restorer.epoch)
    options = dict(tile=e.tile, tile_overlap=e.tile_overlap, self_ensemble=e.self_ensemble, y_channel=e.y_channel,
                   crop_border=e.crop_border)
    summary = {}
    for set_name, images in sets.items():
        shown = []

        def keep(image, sharp, degraded, restored, row):
            if e.figures:
                three_panel(run.eval_figure(set_name, image.name), sharp, degraded,
                            restored, row["psnr_degraded"], row["psnr_restored"], image.name)
            if len(shown) < e.tensorboard_images:
                shown.append((image.name, np.concatenate([degraded, to_uint8(restored), sharp], axis=1)))

        rows, bad = evaluate_set(restorer, images, device, progress=cfg.trainer.progress, on_image=keep, **options)
        for problem in bad:
            log.warning("eval %s: skipping %s", set_name, problem)
        write_csv(run.eval_table(set_name), rows, IMAGE_FIELDS)
        summary[set_name] = summarize(rows)
        for key in IMAGE_METRICS:
            writer.add_scalar(f"whole_images/{set_name}/{key}", summary[set_name][f"{key}_restored"], step)
            writer.add_scalar(f"whole_images/{set_name}/{key}_degraded", summary[set_name][f"{key}_degraded"], step)
        for name, strip in shown:
            writer.add_image(f"whole_images/{set_name}/{name} degraded|restored|sharp", strip, step,
                             dataformats="HWC")
        log.info("eval %s: %d images, %s", set_name, len(rows), describe_scores(summary[set_name]))
    write_json(run.eval / "summary.json", summary)
    writer.flush()
    return summary
