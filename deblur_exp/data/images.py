"""Reading and validating images: every array leaving this module is HxWx3 uint8 RGB, upright.

OpenCV is the reading edge: it decodes 8/16-bit, grey, RGBA and EXIF-rotated files alike, and the BGR->RGB
conversion happens here exactly once.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image as PILImage

from deblur_exp.atomic import atomic_write
from deblur_exp.errors import DeblurError
from deblur_exp.progress import tracked
from deblur_exp.tables import printable

log = logging.getLogger(__name__)

# Decoding problems are reported per file by read_image; OpenCV's own stderr warnings would only add noise.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class Image:
    name: str          # file stem (or sample name): the key used in tables and val_images
    rgb: np.ndarray    # HxWx3 uint8, RGB
    path: Path | None = None  # the file it was read from, for messages
    grey: bool = False  # the file held one channel (its RGB has R = G = B); see to_color


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
    return read_image_info(path)[0]


# The largest image decoded (pixels): a small file can declare a huge canvas (a 291 KB PNG of 10000x10000
# decodes to 300 MB, and restoring it takes many times that). deblur.py --max-megapixels raises it.
MAX_PIXELS = 80_000_000


def declared_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from the file's header, without decoding its pixels; None when Pillow cannot tell."""
    bomb_limit, PILImage.MAX_IMAGE_PIXELS = PILImage.MAX_IMAGE_PIXELS, None  # our own limit applies instead
    try:
        with PILImage.open(io.BytesIO(data.tobytes())) as image:
            return image.size
    except Exception:  # noqa: BLE001  not a format Pillow knows: OpenCV decides below
        return None
    finally:
        PILImage.MAX_IMAGE_PIXELS = bomb_limit


def read_image_info(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, bool]:
    """(HxWx3 uint8 RGB, whether the file held a single grey channel)."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode copes with non-ASCII paths
    except OSError as exc:
        raise DeblurError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if data.size == 0:
        raise DeblurError(f"{path}: file is empty")
    size = declared_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise DeblurError(f"{path}: {size[0]}x{size[1]} is {size[0] * size[1] / 1e6:.0f} megapixels, over the "
                          f"{max_pixels / 1e6:.0f} megapixel limit; skipped (deblur.py --max-megapixels raises it)")
    # ANYCOLOR|ANYDEPTH keeps 16-bit and grey data and, unlike IMREAD_UNCHANGED, applies EXIF orientation.
    pixels = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    if pixels is None:
        raise DeblurError(f"{path}: not a readable image (corrupt, truncated or unsupported format)")
    try:
        return to_rgb_uint8(pixels, "bgr"), pixels.ndim == 2 or pixels.shape[2] == 1
    except ValueError as exc:
        raise DeblurError(f"{path}: {exc}") from None


# ITU-R BT.601 studio-range YCbCr from RGB in [0, 255], as MATLAB's rgb2ycbcr (the SR literature's Y channel).
_YCBCR = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255.0
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxWx3 float64 Y, Cb, Cr in [0, 255] (Y in [16, 235])."""
    return rgb.astype(np.float64) @ _YCBCR.T + _YCBCR_OFFSET


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """The inverse of :func:`rgb_to_ycbcr`, rounded and clipped to uint8 RGB."""
    rgb = (ycbcr - _YCBCR_OFFSET) @ np.linalg.inv(_YCBCR).T
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def to_color(rgb: np.ndarray, color: str, grey: bool = False) -> np.ndarray:
    """``data.color``: "rgb" keeps HxWx3; "y" gives the HxWx1 uint8 luma, rounded as MATLAB does for uint8.

    A file that held one grey channel (``grey``) is taken as its own luma, unconverted, as the SRCNN evaluation
    code does (it converts only 3-channel files); the published Set14 numbers depend on it (``bridge``).
    """
    if color == "rgb":
        return rgb
    if grey:
        return np.ascontiguousarray(rgb[:, :, :1])
    return np.round(rgb_to_ycbcr(rgb)[:, :, :1]).astype(np.uint8)


def read_alpha(path: str | Path) -> np.ndarray | None:
    """The file's alpha channel as HxW uint8, or None when it has none (read only to carry it over untouched)."""
    pixels = cv2.imdecode(np.fromfile(Path(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.ndim != 3 or pixels.shape[2] != 4:
        return None
    alpha = pixels[:, :, 3]
    return np.round(alpha / 257.0).astype(np.uint8) if alpha.dtype == np.uint16 else alpha


def in_format_of(rgb: np.ndarray, grey: bool, alpha: np.ndarray | None) -> np.ndarray:
    """An RGB result back in its input's format: one channel for a grey file (BT.601 luma, as OpenCV greys),
    RGBA with the input's own alpha for a file that had one."""
    if grey:
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
    if alpha is not None and alpha.shape == rgb.shape[:2]:
        return np.concatenate([rgb, alpha[:, :, None]], axis=2)
    return rgb


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB, RGBA or single-channel uint8 image atomically (temp file + rename), never half-written."""
    path = Path(path)
    order = [2, 1, 0, 3][:rgb.shape[2]] if rgb.ndim == 3 and rgb.shape[2] in (3, 4) else [0]
    ok, encoded = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(rgb[:, :, order]))
    if not ok:
        raise DeblurError(f"{path}: cannot encode image as {path.suffix}")
    with atomic_write(path) as f:
        f.write(encoded.tobytes())


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
    files = [path for path in files if names is None or path.stem in names]
    images = []
    for path in tracked(files, f"reading {folder.name}", len(files), "image"):
        try:
            rgb, grey = read_image_info(path)
        except DeblurError as exc:
            problems.append(str(exc))
            continue
        if min(rgb.shape[:2]) < min_size:
            problems.append(f"{path}: {rgb.shape[1]}x{rgb.shape[0]} is smaller than the {min_size}-pixel minimum")
            continue
        images.append(Image(printable(path.stem), rgb, path, grey))
    return images, problems
