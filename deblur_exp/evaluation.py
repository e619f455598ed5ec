"""Score trained models on whole images: load a checkpoint, degrade each sharp image exactly as the run
did, restore it, and tabulate PSNR/SSIM of degraded and restored against sharp."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from deblur_exp.atomic import atomic_write
from deblur_exp.checkpoint import load_checkpoint
from deblur_exp.config import DegradationConfig
from deblur_exp.data.degrade import degrade, min_image_size, sharp_for
from deblur_exp.data.images import Image, read_folder
from deblur_exp.errors import DeblurError
from deblur_exp.metrics import SSIM_WINDOW, psnr, ssim
from deblur_exp.models import build_model
from deblur_exp.restore import restore_image

log = logging.getLogger(__name__)

IMAGE_FIELDS = ["image", "size", "psnr_degraded", "psnr_restored", "ssim_degraded", "ssim_restored"]


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
    config: dict = field(repr=False)


def run_checkpoint(run: Path) -> Path | None:
    """A run folder's best.pt, else its last.pt, else None."""
    return next((c for c in (run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt") if c.is_file()), None)


def find_checkpoints(target: str | Path) -> list[Path]:
    """A checkpoint file, a run folder (its best.pt, else last.pt), a sweep folder (every run in it) or
    ``pretrained:<name>`` (a model shipped with the package)."""
    from deblur_exp.pretrained import is_pretrained, pretrained_path  # lazy: pretrained writes with this module

    if is_pretrained(target):
        return [pretrained_path(target)]
    target = Path(target).expanduser()
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise DeblurError(f"{target}: no such checkpoint file or run folder")
    runs = [target] if (target / "checkpoints").is_dir() else sorted({p.parent.parent
                                                                       for p in target.rglob("checkpoints/*.pt")})
    found = [c for c in map(run_checkpoint, runs) if c is not None]
    if not found:
        raise DeblurError(f"{target}: holds no checkpoints/best.pt or last.pt (is it a run or sweep folder?)")
    return found


def load_restorer(checkpoint: Path, device: torch.device | str = "cpu", label: str | None = None) -> Restorer:
    """Rebuild the model a checkpoint holds; a run folder's config must agree with it on the architecture."""
    run_config = checkpoint.parent.parent / ".hydra" / "config.yaml"
    expected = None
    if checkpoint.parent.name == "checkpoints" and run_config.is_file():
        expected = OmegaConf.load(run_config).model.name
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
        run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
        label = f"{state['arch']}@{run.name}"
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
    """PSNR and SSIM of the degraded input and of the restored output, both against ``sharp`` (SSIM on
    ``device``, where the model runs)."""
    options = {"y_channel": y_channel, "crop_border": crop_border}
    return {"psnr_degraded": psnr(degraded, sharp, **options), "psnr_restored": psnr(restored, sharp, **options),
            "ssim_degraded": ssim(degraded, sharp, **options, device=device),
            "ssim_restored": ssim(restored, sharp, **options, device=device)}


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
    keys = ("psnr_degraded", "psnr_restored", "ssim_degraded", "ssim_restored")
    return {"images": len(rows), **{k: float(np.mean([r[k] for r in rows])) if rows else float("nan") for k in keys}}


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    """Write a table atomically: readers never see a half-written file."""
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: _fmt(v) for k, v in row.items()} for row in rows)


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temp file + rename)."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=float))


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table_cell(field: str, value) -> str:
    """A number as the markdown tables show it, by its column: PSNR to 0.01 dB, SSIM to 1e-4, times to 0.1 s,
    samples/s and parameter counts with separators."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if field == "parameters" else str(value)
    if not isinstance(value, float):
        return value
    if field.endswith("_ssim"):
        return f"{value:.4f}"
    if field.endswith("_psnr"):
        return f"{value:.2f}"
    return f"{value:,.0f}" if field == "samples_per_s" else f"{value:.1f}"


def _fmt(value):
    return f"{value:.4f}" if isinstance(value, float) else value


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
