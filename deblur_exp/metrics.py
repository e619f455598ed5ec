"""Image-quality metrics, following the super-resolution literature's protocol (as BasicSR does).

Images are HxWxC arrays (RGB, or one luma channel), uint8 (scaled by 1/255) or float in [0, 1] units, taken as
they are (a noisy test input is unclipped, as the denoising literature scores it); everything is computed in
float64 with data range 1.0. Options: ``y_channel`` (ITU-R BT.601 luma)
and ``crop_border`` (pixels shaved from every side). SSIM follows scikit-image's ``structural_similarity`` with
the Wang et al. (2004) settings (Gaussian window, sigma 1.5, 11x11 taps, population covariances) and equals it
to 1e-4 (tests check); it is computed with torch on ``device``, so scoring runs where the model runs.

``IMAGE_METRICS`` names the whole-image metrics that evaluation computes; tables, summaries, log lines and
TensorBoard charts iterate over it, so a new metric is one function and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

SSIM_WINDOW = 11  # Gaussian window: sigma 1.5 truncated at 3.5 sigma -> 11 taps

# Identical patches (flat regions) have zero error; capping the MSE keeps per-patch averages finite.
MIN_MSE = 1e-10


def batch_psnr(restored: torch.Tensor, sharp: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """PSNR of each image in an NCHW batch (restored clamped to [0, 1] unless ``clamp`` is off: a noisy input is
    scored unclipped), in float64, capped at 100 dB."""
    error = ((restored.clamp(0, 1) if clamp else restored).double() - sharp.double()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / error.clamp_min(MIN_MSE))


def to_float64(image: np.ndarray) -> np.ndarray:
    """uint8 to [0, 1]; a float image as it is: a noisy test input stays unclipped, as the denoising protocol
    scores it (a model's output is clamped where it is made)."""
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    return image.astype(np.float64)


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of RGB in [0, 1], in [16/255, 235/255] (MATLAB's rgb2ycbcr, as SR papers use)."""
    return (16.0 + rgb @ np.array([65.481, 128.553, 24.966])) / 255.0


def _prepare(image: np.ndarray, y_channel: bool, crop_border: int) -> np.ndarray:
    image = to_float64(image)
    if image.ndim == 2:
        image = image[..., None]
    if crop_border:
        image = image[crop_border:-crop_border, crop_border:-crop_border]
    # A single-channel image already is the luma (data.color=y): nothing to convert.
    return rgb_to_y(image)[..., None] if y_channel and image.shape[2] == 3 else image


def _check(restored: np.ndarray, sharp: np.ndarray, crop_border: int) -> None:
    if restored.shape != sharp.shape:
        raise ValueError(f"shapes differ: restored {restored.shape} vs sharp {sharp.shape}")
    if crop_border < 0 or 2 * crop_border >= min(sharp.shape[:2]):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {sharp.shape[1]}x{sharp.shape[0]} image")


def psnr(restored: np.ndarray, sharp: np.ndarray, y_channel: bool = False, crop_border: int = 0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    _check(restored, sharp, crop_border)
    error = np.mean((_prepare(restored, y_channel, crop_border) - _prepare(sharp, y_channel, crop_border)) ** 2)
    return float("inf") if error == 0 else float(10.0 * np.log10(1.0 / error))


def _gaussian_taps(device) -> torch.Tensor:
    """scikit-image's window: sigma 1.5, truncated at 3.5 sigma -> radius 5, normalised."""
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - SSIM_WINDOW // 2
    taps = torch.exp(-0.5 * (x / 1.5) ** 2)
    return taps / taps.sum()


def _valid_filter(x: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
    """1-D filter along ``dim`` keeping only positions where all taps lie inside: a weighted sum of shifted
    slices, which on a CPU is several times faster than a grouped float64 convolution."""
    length = x.shape[dim] - len(taps) + 1
    out = taps[0] * x.narrow(dim, 0, length)
    for k in range(1, len(taps)):
        out.add_(x.narrow(dim, k, length), alpha=float(taps[k]))
    return out


def ssim(restored: np.ndarray, sharp: np.ndarray, y_channel: bool = False, crop_border: int = 0,
         device: torch.device | str = "cpu") -> float:
    """Structural similarity, per channel and averaged (Gaussian window, sigma 1.5, data range 1.0).

    As scikit-image computes it: local means and (population) variances under the Gaussian window, the SSIM map
    kept where the window lies inside the image (a "valid" separable convolution), averaged.
    """
    _check(restored, sharp, crop_border)
    if min(sharp.shape[:2]) - 2 * crop_border < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after cropping")
    a, b = (torch.from_numpy(np.ascontiguousarray(_prepare(image, y_channel, crop_border).transpose(2, 0, 1)))
            .to(device)[None] for image in (restored, sharp))
    # The five local means in one separable pass: every channel of a, b, a*a, b*b, a*b filtered on its own.
    stack = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    taps = _gaussian_taps(a.device)
    filtered = _valid_filter(_valid_filter(stack, taps, dim=2), taps, dim=3)
    mean_a, mean_b, mean_aa, mean_bb, mean_ab = filtered.chunk(5, dim=1)
    var_a, var_b, cov = mean_aa - mean_a**2, mean_bb - mean_b**2, mean_ab - mean_a * mean_b
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)) / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean(dim=(2, 3)).mean())


@dataclass(frozen=True)
class ImageMetric:
    """A whole-image score against the sharp image, computed for the degraded input and for the restored output."""

    score: Callable[..., float]  # (image, sharp, y_channel=..., crop_border=..., device=...) -> float
    label: str  # as log lines and figures name it
    digits: int  # decimals in tables and log lines
    unit: str = ""


IMAGE_METRICS: dict[str, ImageMetric] = {
    "psnr": ImageMetric(lambda image, sharp, device="cpu", **protocol: psnr(image, sharp, **protocol), "PSNR", 2,
                        " dB"),
    "ssim": ImageMetric(ssim, "SSIM", 4),
}


def score_fields() -> list[str]:
    """The per-image score columns: <metric>_degraded and <metric>_restored for every metric, in order."""
    return [f"{name}_{which}" for name in IMAGE_METRICS for which in ("degraded", "restored")]


def describe_scores(scores: dict, arrows: bool = False) -> str:
    """'PSNR 30.12 dB (degraded 28.01), SSIM 0.8612 (degraded 0.7914)' from a row or a summary of scores; with
    ``arrows``: 'PSNR 28.01 -> 30.12 dB, SSIM 0.7914 -> 0.8612'."""
    parts = []
    for name, m in IMAGE_METRICS.items():
        degraded, restored = (f"{scores[f'{name}_{which}']:.{m.digits}f}" for which in ("degraded", "restored"))
        parts.append(f"{m.label} {degraded} -> {restored}{m.unit}" if arrows
                     else f"{m.label} {restored}{m.unit} (degraded {degraded})")
    return ", ".join(parts)
