"""Figures for people: the seed's Sharp | Degraded | Restored panels, before/after, model comparisons."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from deblur_exp.atomic import atomic_write  # noqa: E402
from deblur_exp.tables import printable  # noqa: E402


def _save(fig, path: Path) -> None:
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)


def _show(ax, image: np.ndarray, **kwargs) -> None:
    """imshow for uint8 or [0, 1] float images, RGB or single-channel (drawn grey)."""
    image = np.clip(image, 0, 255 if image.dtype == np.uint8 else 1)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    grey = {"cmap": "gray", "vmin": 0, "vmax": 255 if image.dtype == np.uint8 else 1} if image.ndim == 2 else {}
    ax.imshow(image, **grey, **kwargs)


def panels(path: Path, images: list[np.ndarray], titles: list[str], suptitle: str | None = None) -> None:
    """One row of images with a title each."""
    height, width = images[0].shape[:2]
    panel_w = 4.0
    fig, axes = plt.subplots(1, len(images), figsize=(panel_w * len(images), panel_w * height / width + 0.6))
    for ax, image, title in zip(np.atleast_1d(axes), images, titles):
        _show(ax, image)
        ax.set_title(printable(title), fontsize=11)
        ax.axis("off")
    if suptitle:
        fig.suptitle(printable(suptitle), fontsize=12)
    _save(fig, path)


def grid(path: Path, images: list[np.ndarray], titles: list[str], columns: int) -> None:
    """Images in rows of ``columns``, a title each (unused cells left blank)."""
    rows = -(-len(images) // columns)
    height, width = images[0].shape[:2]
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, rows * (3.2 * height / width + 0.5)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        _show(ax, image)
        ax.set_title(printable(title), fontsize=9)
    _save(fig, path)


def three_panel(path: Path, sharp, degraded, restored, scores: dict, name: str = "") -> None:
    """The seed notebook's figure: Sharp | Degraded (PSNR) | Restored (PSNR); ``scores`` holds psnr_degraded and
    psnr_restored."""
    panels(path, [sharp, degraded, restored], ["Sharp", f"Degraded ({scores['psnr_degraded']:.2f} dB)",
                                               f"Restored ({scores['psnr_restored']:.2f} dB)"], name or None)


def before_after(path: Path, before, after, name: str = "") -> None:
    panels(path, [before, after], ["Input", "Restored"], name or None)


def detail_box(sharp: np.ndarray, size: int | None = None) -> tuple[int, int, int]:
    """(top, left, size) of the square with the most edge energy in ``sharp``: where restorers differ most.

    A deterministic pick, so every figure of one image zooms into the same place.
    """
    import cv2

    grey = sharp.astype(np.float32).mean(axis=2) if sharp.ndim == 3 else sharp.astype(np.float32)
    height, width = grey.shape
    size = size or max(8, min(height, width) // 4)
    energy = np.abs(cv2.Laplacian(grey, cv2.CV_32F))
    window = cv2.boxFilter(energy, -1, (size, size), normalize=False, borderType=cv2.BORDER_CONSTANT)
    half = size // 2
    inner = window[half:height - size + half + 1, half:width - size + half + 1]  # squares fully inside
    top, left = np.unravel_index(np.argmax(inner), inner.shape)
    return int(top), int(left), size


def zoomed_comparison(path: Path, rows: list[list[tuple[str, np.ndarray]]], box: tuple[int, int, int],
                      suptitle: str | None = None) -> None:
    """Rows of titled full panels, each with its zoomed crop (``box`` = top, left, size) under it.

    At several panels per page the restorers' differences are invisible in the full images; the crop, drawn
    pixel for pixel (nearest neighbour), shows them. The crop's place is outlined on each full panel.
    """
    from matplotlib.patches import Rectangle

    top, left, size = box
    columns = max(len(r) for r in rows)
    height, width = rows[0][0][1].shape[:2]
    panel = 3.2
    fig, axes = plt.subplots(2 * len(rows), columns, squeeze=False,
                             figsize=(panel * columns, len(rows) * (panel * height / width + panel + 0.8)),
                             gridspec_kw={"height_ratios": [height / width, 1] * len(rows)})
    for r, row in enumerate(rows):
        for c in range(columns):
            full, crop = axes[2 * r, c], axes[2 * r + 1, c]
            full.axis("off")
            crop.axis("off")
            if c >= len(row):
                continue
            title, image = row[c]
            _show(full, image)
            full.add_patch(Rectangle((left, top), size, size, fill=False, edgecolor="yellow", linewidth=1.2))
            full.set_title(printable(title), fontsize=9)
            _show(crop, image[top:top + size, left:left + size], interpolation="nearest")
    if suptitle:
        fig.suptitle(printable(suptitle), fontsize=12)
    fig.tight_layout()
    _save(fig, path)


def learning_curves(path: Path, runs: dict[str, list[dict]], baselines: dict[str, float] | None = None,
                    title: str | None = None, during: dict[str, list[dict]] | None = None) -> None:
    """Validation PSNR per epoch for every run on one axes (with the degraded input's PSNR as dashed lines),
    and train (solid) / validation (dashed) loss per epoch in the same colours: the seed notebook's two plots,
    for one run or a whole sweep. ``runs`` maps a label to its metrics.csv rows; ``baselines`` a label to a
    degraded-input PSNR; ``during`` a label to its eval/during_training.csv rows (eval.every), drawn on a third
    axes when any run has them. One legend, beside the plots, so that it never hides a curve."""
    during = {label: rows for label, rows in (during or {}).items() if rows}
    fig, axes = plt.subplots(1, 3 if during else 2, figsize=(21 if during else 14, 4.8))
    ax_psnr, ax_loss = axes[:2]
    colours = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20").colors
    if during:
        whole_image_curves(axes[2], {label: (colours[i % len(colours)], during.get(label, []))
                                     for i, label in enumerate(runs)})
    for i, (label, rows) in enumerate(runs.items()):
        colour = colours[i % len(colours)]
        epochs = [int(r["epoch"]) for r in rows]
        ax_psnr.plot(epochs, [float(r["val_psnr"]) for r in rows], marker="o", markersize=3, color=colour,
                     label=label)
        ax_loss.plot(epochs, [float(r["train_loss"]) for r in rows], color=colour, marker="o", markersize=3)
        ax_loss.plot(epochs, [float(r["val_loss"]) for r in rows], color=colour, linestyle="--", marker="x",
                     markersize=3)
    for i, (label, value) in enumerate((baselines or {}).items()):
        ax_psnr.axhline(value, color="grey", linestyle=(0, (4, 2 + 2 * i)), linewidth=1, label=label)
    ax_psnr.set(xlabel="epoch", ylabel="validation PSNR (dB)", title="validation PSNR (mean over patches)")
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log", title="train (solid) and validation (dashed) loss")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.legend(*ax_psnr.get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


SET_STYLES = ("-", "--", ":", "-.")  # one line style per scored set, the run's colour for the run


def whole_image_curves(ax, runs: dict[str, tuple]) -> None:
    """Whole-image PSNR per set as each run trained (label -> (colour, during_training rows)), with each set's
    degraded input as a thin grey line in the set's style (one per distinct value: runs of other degradations
    or protocols have their own)."""
    sets = list(dict.fromkeys(r["set"] for _, rows in runs.values() for r in rows))
    styles = dict(zip(sets, itertools.cycle(SET_STYLES)))
    degraded = {}  # (set, value) in the order met: a dict as an ordered set
    for colour, rows in runs.values():
        for set_name, style in styles.items():
            scored = [r for r in rows if r["set"] == set_name]
            if scored:
                ax.plot([int(r["epoch"]) for r in scored], [float(r["psnr_restored"]) for r in scored], color=colour,
                        linestyle=style, marker="o", markersize=3)
                degraded[set_name, float(scored[0]["psnr_degraded"])] = None
    for set_name, value in degraded:
        ax.axhline(value, color="grey", linestyle=styles[set_name], linewidth=1)
    ax.set(xlabel="epoch", ylabel="PSNR (dB)", title="whole-image PSNR during training (grey: degraded input)")
    key = [plt.Line2D([], [], color="black", linestyle=style, label=name) for name, style in styles.items()]
    ax.legend(handles=key, fontsize=8, loc="best")  # the sets by line style; the runs share the figure's legend
