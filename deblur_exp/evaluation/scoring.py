"""Score trained models on whole images: load a checkpoint, degrade each sharp image exactly as the run
did, restore it, and tabulate PSNR/SSIM of degraded and restored against sharp."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from deblur_exp.data.degrade import DegradationConfig, degrade, describe_degradation, min_image_size, sharp_for
from deblur_exp.data.images import Image, read_folder
from deblur_exp.errors import DeblurError
from deblur_exp.evaluation.figures import three_panel
from deblur_exp.evaluation.restore import RestoreOptions, restore_batch, restore_image, to_uint8
from deblur_exp.metrics import IMAGE_METRICS, SSIM_WINDOW, describe_scores, score_fields
from deblur_exp.models import build_model
from deblur_exp.progress import bar_off
from deblur_exp.runs.checkpoint import load_checkpoint
from deblur_exp.runs.run_dir import RunDir
from deblur_exp.tables import write_csv, write_json

log = logging.getLogger(__name__)

IMAGE_FIELDS = ["image", "size", *score_fields()]


PROTOCOL = ("y_channel", "crop_border")  # the eval keys that decide what a PSNR/SSIM figure means


@dataclass
class EvalConfig:
    enabled: bool = True
    every: Optional[int] = None
    checkpoint: str = "best"
    sets: List[str] = field(default_factory=lambda: ["Set5", "Set14"])
    held_out: bool = True
    images: Optional[str] = None
    y_channel: bool = False
    crop_border: int = 0
    tile: Optional[int] = None
    tile_overlap: int = 32
    self_ensemble: bool = False
    figures: bool = True
    tensorboard_images: int = 3
    download: bool = False
    urls: Dict[str, Optional[str]] = field(default_factory=dict)
    sha256: Dict[str, Optional[str]] = field(default_factory=dict)


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

    @property
    def self_ensemble(self) -> bool:
        """Whether it restores as the mean of its 8 dihedral views unless told otherwise: its eval.self_ensemble
        (a shipped model may declare it: export_pretrained.py --self-ensemble)."""
        return bool(self.config.get("eval", {}).get("self_ensemble", False))


def under(restorer: Restorer, degradation: DegradationConfig) -> Restorer:
    """The restorer scored under another degradation than its own (evaluate.py and report.py --degradation)."""
    return replace(restorer, degradation=degradation,
                   config={**restorer.config, "degradation": asdict(degradation)})


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


@dataclass(frozen=True)
class ScoringOptions(RestoreOptions):
    """How whole images are restored (RestoreOptions) and scored: on RGB or the BT.601 Y channel, with
    ``crop_border`` pixels shaved per side; ``batch_pixels``: how many pixels of same-sized images to restore
    together (default GPU_BATCH_PIXELS on CUDA, one image at a time elsewhere)."""

    y_channel: bool = False
    crop_border: int = 0
    batch_pixels: int | None = None

    @classmethod
    def of(cls, eval_cfg) -> "ScoringOptions":
        """The options an ``eval`` config (or anything with its keys) asks for."""
        keys = ("tile", "tile_overlap", "self_ensemble", "y_channel", "crop_border")
        return cls(**{key: getattr(eval_cfg, key) for key in keys})


def own_options(options: RestoreOptions, restorer: Restorer) -> RestoreOptions:
    """``options`` with a self_ensemble left open (None) set to the restorer's own."""
    return options if options.self_ensemble is not None else replace(options, self_ensemble=restorer.self_ensemble)


def score_image(restorer: Restorer, sharp: np.ndarray, device, options: ScoringOptions = ScoringOptions(),
                grey: bool = False) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Degrade ``sharp`` (RGB as read) with the run's own degradation, restore it, and score both against it.

    Returns (scores, sharp, degraded, restored), the sharp image as the model sees it: in the run's colour
    (RGB or Y) and cropped to the scale when the degradation asks for it.
    """
    options = own_options(options, restorer)
    sharp, degraded = degraded_pair(restorer, sharp, grey, options.crop_border)
    restored = restore_image(restorer.model, degraded, device, options)
    return image_row(sharp, degraded, restored, options, device), sharp, degraded, restored


def degraded_pair(restorer: Restorer, sharp: np.ndarray, grey=False, crop_border=0) -> tuple[np.ndarray, np.ndarray]:
    """(sharp as the model sees it, degraded by the run's own degradation); DeblurError for a too small image."""
    sharp = sharp_for(sharp, restorer.color, restorer.degradation, grey)
    height, width = sharp.shape[:2]
    need = max(min_image_size(restorer.degradation), 2 * crop_border + SSIM_WINDOW)
    if min(height, width) < need:
        raise DeblurError(f"image of {width}x{height} is smaller than the {need}x{need} minimum that scoring needs "
                          f"(degradation.scale={restorer.degradation.scale}, SSIM window {SSIM_WINDOW}, "
                          f"crop_border={crop_border})")
    return sharp, degrade(sharp, restorer.degradation)


def image_row(sharp, degraded, restored, options: ScoringOptions, device="cpu") -> dict:
    height, width = sharp.shape[:2]
    scores = score_pair(sharp, degraded, restored, options.y_channel, options.crop_border, device)
    return {"size": f"{width}x{height}", **scores}


def score_pair(sharp: np.ndarray, degraded: np.ndarray, restored: np.ndarray, y_channel=False,
               crop_border=0, device="cpu") -> dict[str, float]:
    """Every metric of IMAGE_METRICS for the degraded input and for the restored output, both against ``sharp``
    (computed on ``device``, where the model runs)."""
    options = {"y_channel": y_channel, "crop_border": crop_border, "device": device}
    return {f"{name}_{which}": metric.score(image, sharp, **options) for name, metric in IMAGE_METRICS.items()
            for which, image in (("degraded", degraded), ("restored", restored))}


# On a GPU, images of one size go through the model together, up to this many pixels a batch (Set14's four 512x512
# images make one batch of 1 Mpixel): fewer, fuller launches. On a CPU a batch buys no speed and costs memory, so
# each image goes alone there.
GPU_BATCH_PIXELS = 1 << 21


def same_size_batches(images: list[Image], max_pixels: int) -> list[list[int]]:
    """Indices into ``images``: images of one size together, at most ``max_pixels`` a batch (at least one image),
    batches in the order of their first image (so one image a batch keeps the set's order)."""
    groups: dict[tuple, list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault((image.rgb.shape, image.grey), []).append(index)
    batches = []
    for (shape, _), indices in groups.items():
        per_batch = max(1, max_pixels // (shape[0] * shape[1]))
        batches += [indices[i:i + per_batch] for i in range(0, len(indices), per_batch)]
    return sorted(batches)


def evaluate_set(restorer: Restorer, images: Iterable[Image], device, options: ScoringOptions = ScoringOptions(),
                 progress: bool = True, on_image=None) -> tuple[list[dict], list[str]]:
    """Per-image rows for a set, in the set's order; images that fail are reported as problems and the rest carry
    on. ``on_image(image, sharp, degraded, restored, row)`` sees each image as it is scored."""
    images, options = list(images), own_options(options, restorer)
    batch_pixels = options.batch_pixels
    if batch_pixels is None:
        batch_pixels = GPU_BATCH_PIXELS if torch.device(device).type == "cuda" else 0
    rows, problems = {}, []
    with tqdm(total=len(images), desc=f"eval {restorer.label}", leave=False, disable=bar_off(progress),
              unit="img") as bar:
        for batch in same_size_batches(images, batch_pixels):
            pairs = {}
            for index in batch:
                try:
                    pairs[index] = degraded_pair(restorer, images[index].rgb, images[index].grey, options.crop_border)
                except DeblurError as exc:
                    problems.append(f"{images[index].path or images[index].name}: {exc}")
            restored = restore_batch(restorer.model, [degraded for _, degraded in pairs.values()], device,
                                     options) if pairs else []
            for (index, (sharp, degraded)), restored_image in zip(pairs.items(), restored):
                rows[index] = {"image": images[index].name,
                               **image_row(sharp, degraded, restored_image, options, device)}
                if on_image is not None:
                    on_image(images[index], sharp, degraded, restored_image, rows[index])
            bar.update(len(batch))
    return [rows[index] for index in sorted(rows)], problems


def viewable(degraded: np.ndarray) -> np.ndarray:
    """A degraded image as 8-bit pixels (a pipeline's float output, noise unclipped, clipped and rounded)."""
    return degraded if degraded.dtype == np.uint8 else to_uint8(degraded)


def drawn_values(degradation: DegradationConfig, sharp: np.ndarray) -> str:
    """For a pipeline of steps, the values drawn for this image in words; "" for the fixed degradation."""
    return describe_degradation(degradation, sharp) if degradation.steps else ""


def figure_title(name: str, degradation: DegradationConfig, sharp: np.ndarray) -> str:
    """An image's figure title: its name, and for a pipeline of steps the values drawn for it."""
    drawn = drawn_values(degradation, sharp)
    return f"{name}: {drawn}" if drawn else name


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
    eval_cfg = cfg.eval
    sets, problems = eval_image_sets(eval_cfg, cfg.paths.data_dir, held_out)
    for problem in problems:
        log.warning("eval: skipping %s", problem)
    if not sets:
        log.info("eval: no image sets found; nothing scored")
        return {}
    checkpoint = run.checkpoint(eval_cfg.checkpoint)
    restorer = load_restorer(checkpoint, device, label=cfg.model.name)
    log.info("eval: scoring %s (epoch %d)", checkpoint.relative_to(run.path).as_posix(), restorer.epoch)
    options = ScoringOptions.of(eval_cfg)
    summary = {}
    for set_name, images in sets.items():
        shown = []

        def keep(image, sharp, degraded, restored, row):
            if eval_cfg.figures:
                three_panel(run.eval_figure(set_name, image.name), sharp, degraded, restored, row,
                            figure_title(image.name, restorer.degradation, sharp))
            if len(shown) < eval_cfg.tensorboard_images:
                shown.append((image.name, np.concatenate([viewable(degraded), to_uint8(restored), sharp], axis=1)))

        rows, bad = evaluate_set(restorer, images, device, options, progress=cfg.trainer.progress, on_image=keep)
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


class ScoresDuringTraining:
    """``eval.every=N``: the eval sets scored with the weights as they train, every N epochs and after the last,
    under the end-of-run protocol (eval.y_channel, crop_border, tile, self_ensemble) but without figures.

    Each scoring appends one row per set to eval/during_training.csv and TensorBoard's <metric>/<set> (psnr/Set5
    beside psnr/val, with psnr/Set5_degraded as the line to beat), so a user sees when a test set stops improving,
    or falls while the validation patches still rise, without copying checkpoints out of a running job. The row
    of the epoch a checkpoint holds equals that checkpoint's end-of-run score."""

    FIELDS = ["epoch", "set", "images", *score_fields()]

    def __init__(self, cfg: DictConfig, run: RunDir, model: torch.nn.Module, device, sets: dict[str, list[Image]],
                 start_epoch: int):
        from deblur_exp.tables import MetricsTable

        eval_cfg = cfg.eval
        self.sets, self.device = sets, device
        self.options = ScoringOptions.of(eval_cfg)
        degradation = DegradationConfig(**OmegaConf.to_container(cfg.degradation, resolve=True))
        self.restorer = Restorer(cfg.model.name, cfg.model.name, model, degradation, cfg.data.color, run.last,
                                 start_epoch, OmegaConf.to_container(cfg, resolve=True))
        self.table = MetricsTable(run.during_training, keep_through_epoch=start_epoch, fields=self.FIELDS)
        self.warned = False

    @classmethod
    def open(cls, cfg: DictConfig, run: RunDir, model: torch.nn.Module, device, held_out: list[Image],
             start_epoch: int) -> "ScoresDuringTraining | None":
        """The scorer ``cfg.eval.every`` asks for; None when it is null or no set is found (said in the log)."""
        if cfg.eval.every is None:
            return None
        sets, problems = eval_image_sets(cfg.eval, cfg.paths.data_dir, held_out)
        for problem in problems:
            log.warning("eval.every: skipping %s", problem)
        if not sets:
            log.info("eval.every=%d: no image sets found; nothing is scored during training", cfg.eval.every)
            return None
        log.info("eval.every=%d: scoring %s every %d epochs and after the last (eval/during_training.csv)",
                 cfg.eval.every, ", ".join(sets), cfg.eval.every)
        return cls(cfg, run, model, device, sets, start_epoch)

    def score(self, epoch: int, writer) -> None:
        """Score every set with the model as it is now (it is left in eval mode; training sets its own mode)."""
        for set_name, images in self.sets.items():
            rows, problems = evaluate_set(self.restorer, images, self.device, self.options, progress=False)
            if not self.warned:  # the same images fail every time: say so once
                for problem in problems:
                    log.warning("eval.every %s: skipping %s", set_name, problem)
            scores = summarize(rows)
            self.table.append({"epoch": epoch, "set": set_name, **scores})
            for key in IMAGE_METRICS:
                writer.add_scalar(f"{key}/{set_name}", scores[f"{key}_restored"], epoch)
                writer.add_scalar(f"{key}/{set_name}_degraded", scores[f"{key}_degraded"], epoch)
            log.info("epoch %d: %s %s", epoch, set_name, describe_scores(scores))
        self.warned = True
