"""Figures for people: the seed's Sharp | Degraded | Restored panels, before/after, model comparisons."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def panels(path: Path, images: list[np.ndarray], titles: list[str], suptitle: str | None = None) -> None:
    """One row of images with a title each."""
    height, width = images[0].shape[:2]
    panel_w = 4.0
    fig, axes = plt.subplots(1, len(images), figsize=(panel_w * len(images), panel_w * height / width + 0.6))
    for ax, image, title in zip(np.atleast_1d(axes), images, titles):
        ax.imshow(np.clip(image, 0, 255 if image.dtype == np.uint8 else 1))
        ax.set_title(title, fontsize=11)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=12)
    _save(fig, path)


def three_panel(path: Path, sharp, degraded, restored, psnr_degraded: float, psnr_restored: float,
                name: str = "") -> None:
    """The seed notebook's figure: Sharp | Degraded (PSNR) | Restored (PSNR)."""
    panels(path, [sharp, degraded, restored],
           ["Sharp", f"Degraded ({psnr_degraded:.2f} dB)", f"Restored ({psnr_restored:.2f} dB)"], name or None)


def before_after(path: Path, before, after, name: str = "") -> None:
    panels(path, [before, after], ["Input", "Restored"], name or None)
