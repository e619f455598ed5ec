"""The degradation, all of it: its settings (the schema of ``conf/degradation/``), their checks, and the steps
(Gaussian blur, then down- and up-scaling) applied to uint8 arrays (HxWx3 RGB or HxWx1 luma).

The same function degrades training patches, whole training images and whole test images, so what the
model learns and what it is scored on are produced by one piece of code. Resizing is OpenCV's, or MATLAB's
``imresize`` bicubic (``matlab_bicubic``), which the super-resolution literature's published numbers use.

Blur kernels, motion, defocus, noise and JPEG, fixed or drawn per sample, are steps of a pipeline
(``degradation.steps``, ``data/pipeline.py``); this module hands a degradation with steps to it. A new kind of step
is an entry in ``pipeline.KINDS``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Iterator, List

import cv2
import numpy as np
from omegaconf import MISSING, OmegaConf

from deblur_exp.config import CONF_DIR, did_you_mean
from deblur_exp.data.images import to_color
from deblur_exp.data.pipeline import Pipeline
from deblur_exp.errors import DeblurError


@dataclass
class DegradationConfig:
    """Hydra's schema for the ``degradation`` group; each YAML there documents what the values mean."""
    name: str = MISSING          # label in logs and in the patch-cache key
    blur_kernel: int = 7         # blur step: odd kernel side, 0 = no blur
    blur_sigma: float = 0.0      # 0 = OpenCV derives it from the kernel
    scale: int = 3               # resample step: 1 = none
    down_interp: str = "area"    # a RESIZERS name
    up_interp: str = "linear"    # a RESIZERS name
    apply_to: str = "image"      # image: degrade whole images, then cut patches; patch: each patch on its own
    crop_to_scale: bool = False  # crop images to a multiple of the scale first (the SR protocol's modcrop)
    # A pipeline of steps (data/pipeline.py), drawn per sample on the fly; when given, the fields above other than
    # name are not used. Empty: the fixed blur + resample above, degraded once and cached.
    steps: List[Any] = field(default_factory=list)


def degradation_option(name: str) -> DegradationConfig:
    """``conf/degradation/<name>.yaml`` on its own (what ``degradation=<name>`` picks), checked."""
    path = CONF_DIR / "degradation" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise DeblurError(f"degradation {name!r}: no such option{did_you_mean(name, known)}; choose from "
                          f"{', '.join(known)}")
    settings = OmegaConf.load(path)
    settings.pop("defaults", None)
    degradation = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DegradationConfig), settings))
    for key, why in degradation_problems(degradation):
        raise DeblurError(f"{path}: {key}: {why}")
    return degradation


def pipeline_of(degradation: DegradationConfig) -> Pipeline | None:
    """The degradation's pipeline of steps, or None for the fixed blur + resample."""
    return Pipeline(list(degradation.steps)) if degradation.steps else None


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, the one MATLAB's imresize uses."""
    x = np.abs(x)
    return np.where(x <= 1, 1.5 * x**3 - 2.5 * x**2 + 1,
                    np.where(x <= 2, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2, 0.0))


def _matlab_weights(in_length: int, out_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(taps x out) weights and 0-based source indices of MATLAB's imresize along one axis.

    When shrinking, the kernel is stretched by 1/scale (MATLAB's antialiasing); borders are mirrored the way
    MATLAB does it (symmetric, edge pixel repeated).
    """
    scale = out_length / in_length
    width = 4.0 / scale if scale < 1 else 4.0
    centre = np.arange(1, out_length + 1) / scale + 0.5 * (1 - 1 / scale)  # in 1-based input coordinates
    left = np.floor(centre - width / 2)
    taps = int(np.ceil(width)) + 2
    indices = left[None, :] + np.arange(taps)[:, None]  # 1-based
    distance = centre[None, :] - indices
    weights = scale * _cubic(distance * scale) if scale < 1 else _cubic(distance)
    weights /= weights.sum(axis=0, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])
    return weights, mirror[(indices.astype(np.int64) - 1) % (2 * in_length)]


def imresize_matlab(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """MATLAB's ``imresize(image, [h w], 'bicubic')`` for uint8 HxWxC arrays (``size`` is (width, height)).

    Computed in float64, rows then columns, rounded to uint8 once at the end.
    """
    out = image.astype(np.float64)
    for axis, length in ((0, size[1]), (1, size[0])):
        weights, indices = _matlab_weights(out.shape[axis], length)
        moved = np.moveaxis(out, axis, 0)
        resized = np.zeros((length, *moved.shape[1:]))
        for tap in range(len(weights)):  # one tap at a time: memory stays at one output image
            resized += weights[tap].reshape(-1, *([1] * (moved.ndim - 1))) * moved[indices[tap]]
        out = np.moveaxis(resized, 0, axis)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _opencv(flag: int, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return cv2.resize(image, size, interpolation=flag)


RESIZERS = {
    "nearest": partial(_opencv, cv2.INTER_NEAREST),
    "linear": partial(_opencv, cv2.INTER_LINEAR),
    "cubic": partial(_opencv, cv2.INTER_CUBIC),
    "area": partial(_opencv, cv2.INTER_AREA),
    "lanczos": partial(_opencv, cv2.INTER_LANCZOS4),
    "matlab_bicubic": imresize_matlab,
}


APPLY_TO = ("patch", "image")


def degradation_problems(degradation: DegradationConfig) -> Iterator[tuple[str, str]]:
    """(field, what is wrong) for every setting out of range; config.check_config reports the first."""
    if degradation.steps:
        try:
            pipeline_of(degradation)
        except DeblurError as exc:  # "degradation.steps[i].key: why" -> ("steps[i].key", "why")
            where, why = str(exc).split(": ", 1)
            yield where.removeprefix("degradation."), why
        return
    for key in ("down_interp", "up_interp"):
        if getattr(degradation, key) not in RESIZERS:
            yield key, f"must be one of {', '.join(RESIZERS)}"
    if degradation.apply_to not in APPLY_TO:
        yield "apply_to", f"must be one of {', '.join(APPLY_TO)}"
    if degradation.scale < 1:
        yield "scale", "must be at least 1 (1 = no down/up-scaling)"
    if not (degradation.blur_kernel == 0 or (degradation.blur_kernel > 0 and degradation.blur_kernel % 2 == 1)):
        yield "blur_kernel", "must be 0 (no blur) or a positive odd number"
    if not (math.isfinite(degradation.blur_sigma) and degradation.blur_sigma >= 0):
        yield "blur_sigma", "must be a finite number >= 0 (0 = derive from the kernel size)"


def describe_degradation(degradation: DegradationConfig, sharp: np.ndarray | None = None) -> str:
    """What the degradation does, in words (what a model trained on it undoes); given the sharp image, a pipeline
    says what it drew for that image."""
    if degradation.steps:
        pipeline = pipeline_of(degradation)
        return pipeline.describe(None if sharp is None else pipeline.drawn_for(sharp))
    kernel, scale = degradation.blur_kernel, degradation.scale
    blur = f"a {kernel}x{kernel} Gaussian blur" if kernel else "no blur"
    resize = f", a x1/{scale} downscale ({degradation.down_interp}) and upscale ({degradation.up_interp})"
    return blur + (resize if scale > 1 else "")


def min_image_size(degradation: DegradationConfig) -> int:
    """Smallest side that survives the downscale (floor(size / scale) >= 1)."""
    return 1 if degradation.steps else max(1, degradation.scale)


def crop_to_scale(sharp: np.ndarray, degradation: DegradationConfig) -> np.ndarray:
    """With ``degradation.crop_to_scale``: shave the bottom/right so each side is a multiple of the scale (the SR
    protocol's ``modcrop``), so down- and up-scaling map pixel grids exactly."""
    if not degradation.crop_to_scale or degradation.scale <= 1:
        return sharp
    height, width = sharp.shape[:2]
    return sharp[:height - height % degradation.scale, :width - width % degradation.scale]


def sharp_for(rgb: np.ndarray, color: str, degradation: DegradationConfig, grey: bool = False) -> np.ndarray:
    """A read RGB image as the sharp truth that training and scoring use: in ``data.color``, cropped to the
    scale when the degradation asks for it. Training patches and test images both come through here."""
    return crop_to_scale(to_color(rgb, color, grey), degradation)


def blur(image: np.ndarray, degradation: DegradationConfig) -> np.ndarray:
    if degradation.blur_kernel == 0:
        return image
    kernel = (degradation.blur_kernel, degradation.blur_kernel)
    return cv2.GaussianBlur(image, kernel, degradation.blur_sigma)


def resample(image: np.ndarray, degradation: DegradationConfig) -> np.ndarray:
    """Down to floor(size / scale), then back up to the original size."""
    if degradation.scale == 1:
        return image
    height, width = image.shape[:2]
    small = RESIZERS[degradation.down_interp](image, (width // degradation.scale, height // degradation.scale))
    return RESIZERS[degradation.up_interp](small, (width, height))


STEPS = (blur, resample)  # the degradation, in order; each step returns its input when its settings turn it off


def degrade(sharp: np.ndarray, degradation: DegradationConfig) -> np.ndarray:
    """The degraded image, of the same shape: uint8 from the fixed ``STEPS``; from a pipeline of steps, float32 in
    [0, 1] units, noise unclipped, drawn from the image's own seed (the same image always comes out the same)."""
    if degradation.steps:
        degraded, _ = pipeline_of(degradation).degrade_image(sharp)
        return degraded.reshape(sharp.shape)
    height, width = sharp.shape[:2]
    if min(height, width) < min_image_size(degradation):
        raise DeblurError(f"image of {width}x{height} is too small for degradation.scale={degradation.scale}: "
                          f"each side needs at least {min_image_size(degradation)} pixels")
    degraded = sharp
    for step in STEPS:
        degraded = step(degraded, degradation)
    return degraded.reshape(sharp.shape)  # OpenCV drops a single channel's axis; put it back
