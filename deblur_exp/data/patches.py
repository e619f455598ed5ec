"""Cut aligned (sharp, degraded) patches, split them into train/val, and cache the arrays.

Patches are cut and degraded once; the result is cached as uint8 arrays keyed by a hash of everything that
determines them (image fingerprint, patch geometry, degradation), so later runs skip straight to training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from deblur_exp.atomic import WriteFailed, atomic_write, remove_stale_temps
from deblur_exp.data.degrade import DegradationConfig, degrade, imresize_matlab, pipeline_of, sharp_for
from deblur_exp.data.images import Image
from deblur_exp.data.pipeline import pad_reflect
from deblur_exp.data.sources import DataConfig, image_source
from deblur_exp.errors import DeblurError
from deblur_exp.progress import tracked

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the patch layout or degradation code changes meaning


@dataclass
class PatchSet:
    sharp: np.ndarray        # N x P x P x C uint8 (C: 3 for RGB, 1 for data.color=y); with a pipeline of steps,
                             # N x (P+2m) x (P+2m) x C: each patch with the pipeline's margin m around it
    degraded: np.ndarray | None  # N x P x P x C uint8, aligned with sharp; None: degraded per sample on the fly
    image_index: np.ndarray  # N, which image each patch came from
    image_names: list[str]   # one per image

    def __len__(self) -> int:
        return len(self.sharp)


def cut_patches(image: np.ndarray, size: int, stride: int) -> np.ndarray:
    """All size x size patches with corners on range(0, side - size + 1, stride): N x size x size x C."""
    windows = sliding_window_view(image, (size, size), axis=(0, 1))[::stride, ::stride]
    # windows: rows x cols x C x size x size -> N x size x size x C
    return np.ascontiguousarray(windows.reshape(-1, image.shape[2], size, size).transpose(0, 2, 3, 1))


def degrade_and_cut(sharp: np.ndarray, data: DataConfig,
                    degradation: DegradationConfig) -> tuple[np.ndarray, np.ndarray | None]:
    pipeline = pipeline_of(degradation)
    if pipeline is not None:  # degraded per sample while training: cut each patch with the margin its steps need
        m = pipeline.margin
        padded = pad_reflect(torch.from_numpy(sharp).permute(2, 0, 1)[None], m)[0].permute(1, 2, 0).numpy()
        return cut_patches(padded, data.patch_size + 2 * m, data.stride), None
    sharp_patches = cut_patches(sharp, data.patch_size, data.stride)
    if degradation.apply_to == "image":
        return sharp_patches, cut_patches(degrade(sharp, degradation), data.patch_size, data.stride)
    degraded = np.empty_like(sharp_patches)
    for i, patch in enumerate(sharp_patches):
        degraded[i] = degrade(patch, degradation)
    return sharp_patches, degraded


def rescaled(rgb: np.ndarray, factor: float) -> np.ndarray:
    """``rgb`` shrunk by ``factor`` with MATLAB's bicubic (as FSRCNN built its scale-augmented T91)."""
    if factor == 1:
        return rgb
    height, width = rgb.shape[:2]
    return imresize_matlab(rgb, (max(1, round(width * factor)), max(1, round(height * factor))))


def build_patch_set(images: list[Image], data: DataConfig, degradation: DegradationConfig) -> PatchSet:
    """Every image's patches at every size in ``data.scales``; a shrunk copy's patches keep their image's index,
    so split=image holds out all sizes of an image together."""
    sharp, degraded, index = [], [], []
    for i, image in enumerate(tracked(images, "cutting and degrading patches", len(images), "image")):
        for factor in data.scales:
            rgb = rescaled(image.rgb, factor)
            if min(rgb.shape[:2]) < data.patch_size:  # a shrunk copy too small for one patch adds nothing
                continue
            s, d = degrade_and_cut(sharp_for(rgb, data.color, degradation, image.grey), data, degradation)
            sharp.append(s)
            degraded.append(d)
            index.append(np.full(len(s), i, dtype=np.int64))
    if not sharp:
        raise DeblurError(f"data.scales: {list(data.scales)} shrinks every image below data.patch_size="
                          f"{data.patch_size}; include 1.0 or use larger factors")
    return PatchSet(np.concatenate(sharp), None if degraded[0] is None else np.concatenate(degraded),
                    np.concatenate(index), [im.name for im in images])


def cache_key(fingerprint: list, data: DataConfig, degradation: DegradationConfig) -> str:
    determines = {
        "version": CACHE_VERSION,
        "images": fingerprint,
        "patch_size": data.patch_size,
        "stride": data.stride,
        "color": data.color,
        # only when set, so that the caches of runs without scale augmentation keep their keys
        **({"scales": list(data.scales)} if list(data.scales) != [1.0] else {}),
        "degradation": degradation_key(degradation),
    }
    return hashlib.sha256(json.dumps(determines, sort_keys=True).encode()).hexdigest()[:20]


def degradation_key(degradation: DegradationConfig) -> dict:
    """What of the degradation shapes the cached arrays: the fixed settings, or for a pipeline (degraded on the
    fly, only the sharp patches cached) the margin its patches are cut with."""
    pipeline = pipeline_of(degradation)
    if pipeline is not None:
        return {"margin": pipeline.margin}
    return {k: v for k, v in dataclasses.asdict(degradation).items() if k not in ("name", "steps")}


def _load_cache(path: Path) -> PatchSet | None:
    try:
        with np.load(path) as z:
            patches = PatchSet(z["sharp"], z["degraded"] if "degraded" in z else None, z["image_index"],
                               [str(n) for n in z["image_names"]])
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged cache is rebuilt, never trusted
        log.warning("ignoring unreadable patch cache %s (%s)", path, exc)
        return None
    problem = inconsistency(patches)
    if problem:
        log.warning("ignoring inconsistent patch cache %s (%s); rebuilding it", path, problem)
        return None
    return patches


def inconsistency(patches: PatchSet) -> str | None:
    """What makes a (readable) patch set unusable, or None: arrays that disagree in count or shape, or patches
    that point at images the set does not name."""
    count = len(patches.sharp)
    if (patches.degraded is not None and patches.degraded.shape != patches.sharp.shape) or patches.sharp.ndim != 4:
        return f"sharp {patches.sharp.shape} and degraded {getattr(patches.degraded, 'shape', None)} disagree"
    if patches.image_index.shape != (count,):
        return f"{count} patches but {len(patches.image_index)} image indices"
    if count and not 0 <= patches.image_index.min() <= patches.image_index.max() < len(patches.image_names):
        return "image indices outside the named images"
    return None


def _save_cache(path: Path, patches: PatchSet) -> None:
    try:
        with atomic_write(path) as f:
            degraded = {} if patches.degraded is None else {"degraded": patches.degraded}
            np.savez(f, sharp=patches.sharp, **degraded, image_index=patches.image_index,
                     image_names=np.array(patches.image_names))
    except WriteFailed as exc:  # a read-only or full cache folder only costs time; nothing half-written is left
        log.warning("patch cache not saved: %s", exc)


def load_patches(data: DataConfig, degradation: DegradationConfig, cache_dir: str | Path | None) -> PatchSet:
    """Patches for ``data`` degraded by ``degradation``, from the cache when possible."""
    source = image_source(data)
    cache_path = None
    if data.cache and cache_dir:
        if Path(cache_dir).is_dir():
            remove_stale_temps(Path(cache_dir))  # a cache write that a kill interrupted (tens of MB each)
        cache_path = Path(cache_dir) / f"patches-{data.name}-{cache_key(source.fingerprint, data, degradation)}.npz"
        cached = _load_cache(cache_path)
        if cached is not None:
            log.info("patches: %d from cache %s", len(cached), cache_path)
            return cached
    images = source.load(data.patch_size)
    if not images:
        raise DeblurError(f"data: no usable image of at least {data.patch_size}x{data.patch_size} pixels in "
                          f"{data.root or data.name} (see the warnings above)")
    patches = build_patch_set(images, data, degradation)
    log.info("patches: cut %d from %d images", len(patches), len(images))
    if cache_path is not None:
        _save_cache(cache_path, patches)
    return patches


def split_indices(patches: PatchSet, data: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) patch indices; seeded, so the same config always gives the same split."""
    generator = torch.Generator().manual_seed(seed)
    if data.split == "patch":
        order = torch.randperm(len(patches), generator=generator).numpy()
        n_val = math.ceil(data.val_fraction * len(patches))
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    names = patches.image_names
    if data.val_images:
        missing = sorted(set(data.val_images) - set(names))
        if missing:
            raise DeblurError(f"data.val_images: {', '.join(missing)} not among the usable images "
                              f"({', '.join(names)})")
        val_images = [i for i, n in enumerate(names) if n in data.val_images]
    else:
        if len(names) < 2:
            raise DeblurError("data.split=image needs at least 2 usable images; use data.split=patch")
        n_val = min(len(names) - 1, max(1, round(data.val_fraction * len(names))))
        val_images = torch.randperm(len(names), generator=generator)[:n_val].tolist()
    is_val = np.isin(patches.image_index, val_images)
    if is_val.all():
        raise DeblurError("data.val_images: every image is held out; leave at least one for training")
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
