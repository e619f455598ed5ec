"""Reading and validating images: every array leaving this module is HxWx3 uint8 RGB, upright.

OpenCV is the reading edge: it decodes 8/16-bit, grey, RGBA and EXIF-rotated files alike, and the BGR->RGB
conversion happens here exactly once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from deblur_exp.errors import DeblurError

log = logging.getLogger(__name__)

# Decoding problems are reported per file by read_image; OpenCV's own stderr warnings would only add noise.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class Image:
    name: str          # file stem (or sample name): the key used in tables and val_images
    rgb: np.ndarray    # HxWx3 uint8, RGB
    path: Path | None = None  # the file it was read from, for messages


def to_rgb_uint8(pixels: np.ndarray, channel_order: str = "bgr") -> np.ndarray:
    """Grey, BGR(A)/RGB(A), 8- or 16-bit or float arrays -> HxWx3 uint8 RGB."""
    if pixels.dtype == np.uint16:
        pixels = np.round(pixels / 257.0).astype(np.uint8)
    elif pixels.dtype.kind == "f":
        pixels = np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {pixels.dtype}")
    if pixels.ndim == 2:
        return np.ascontiguousarray(np.repeat(pixels[:, :, None], 3, axis=2))
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise ValueError(f"unsupported image shape {pixels.shape}")
    if pixels.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))
    pixels = pixels[:, :, :3]  # drop alpha
    if channel_order == "bgr":
        pixels = pixels[:, :, ::-1]
    return np.ascontiguousarray(pixels)


def read_image(path: str | Path) -> np.ndarray:
    """Read one image file as HxWx3 uint8 RGB; raises DeblurError naming the file when it cannot."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode copes with non-ASCII paths
    except OSError as exc:
        raise DeblurError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if data.size == 0:
        raise DeblurError(f"{path}: file is empty")
    # ANYCOLOR|ANYDEPTH keeps 16-bit and grey data and, unlike IMREAD_UNCHANGED, applies EXIF orientation.
    pixels = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    if pixels is None:
        raise DeblurError(f"{path}: not a readable image (corrupt, truncated or unsupported format)")
    try:
        return to_rgb_uint8(pixels, "bgr")
    except ValueError as exc:
        raise DeblurError(f"{path}: {exc}") from None


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image atomically (temp file + rename), so no half-written file is ever left."""
    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise DeblurError(f"{path}: cannot encode image as {path.suffix}")
    tmp = path.with_name(f".{path.name}.tmp")
    encoded.tofile(tmp)
    tmp.replace(path)


def scan_folder(folder: Path) -> tuple[list[Path], list[str]]:
    """Image files directly in ``folder``, sorted by name, and one problem line for every other entry that
    cannot be used (non-image files, broken links, link loops). Hidden files and subfolders are passed over."""
    files, problems = [], []
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if not path.is_file():
            problems.append(f"{path}: not a regular file (broken link or link loop)")
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            problems.append(f"{path}: not an image file")
        else:
            files.append(path)
    return files, problems


def read_folder(folder: Path, names: list[str] | None = None, min_size: int = 1) -> tuple[list[Image], list[str]]:
    """Every usable image in ``folder`` (optionally only those whose stem is in ``names``), and one problem line
    for each file that could not be used: unreadable, not an image, or smaller than ``min_size`` pixels."""
    files, problems = scan_folder(folder)
    images = []
    for path in files:
        if names is not None and path.stem not in names:
            continue
        try:
            rgb = read_image(path)
        except DeblurError as exc:
            problems.append(str(exc))
            continue
        if min(rgb.shape[:2]) < min_size:
            problems.append(f"{path}: {rgb.shape[1]}x{rgb.shape[0]} is smaller than the {min_size}-pixel minimum")
            continue
        images.append(Image(path.stem, rgb, path))
    return images, problems
