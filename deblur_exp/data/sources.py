"""Where training images come from: scikit-image's bundled photographs or a folder of files.

Each source returns a fingerprint (cheap to compute, changes whenever the pixels could) and a loader, so the
patch cache can be checked without decoding a single image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

from omegaconf import MISSING

from deblur_exp.data.images import Image, read_folder, scan_folder, to_rgb_uint8
from deblur_exp.errors import DeblurError

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    name: str = MISSING
    source: str = "folder"
    root: Optional[str] = None
    images: Optional[List[str]] = None
    val_images: Optional[List[str]] = None
    patch_size: int = 35
    stride: int = 14
    val_fraction: float = 0.1
    split: str = "image"
    color: str = "rgb"
    augment: bool = False
    scales: List[float] = field(default_factory=lambda: [1.0])
    cache: bool = True
    download: bool = False
    url: Optional[str] = None
    sha256: Optional[str] = None
    expected_images: Optional[int] = None


@dataclass
class ImageSource:
    fingerprint: list            # JSON-serialisable identity of the images
    load: Callable[[int], list[Image]]  # min_size -> usable images


def sample_source(data: DataConfig) -> ImageSource:
    import skimage
    import skimage.data

    names = list(data.images or [])
    if not names:
        raise DeblurError("data.images: list the scikit-image sample images to use, e.g. [astronaut, coffee]")
    unknown = [n for n in names if not callable(getattr(skimage.data, n, None))]
    if unknown:
        raise DeblurError(f"data.images: {', '.join(unknown)} is not a scikit-image sample image")

    def load(min_size: int) -> list[Image]:
        images = [Image(name, to_rgb_uint8(getattr(skimage.data, name)(), "rgb")) for name in names]
        return [im for im in images if min(im.rgb.shape[:2]) >= min_size]

    return ImageSource(["skimage", skimage.__version__, names], load)


def folder_source(data: DataConfig) -> ImageSource:
    if not data.root:
        raise DeblurError("data.root: set it to the folder of training images (data.root=/path/to/images)")
    root = Path(data.root).expanduser()
    if not root.is_dir():
        from deblur_exp.data.download import fetch_dataset  # only needed on a miss

        if data.download and data.url:
            fetch_dataset(data.url, root, sha256=data.sha256, expected_images=data.expected_images)
        else:
            raise DeblurError(
                f"data.root: folder {root} does not exist; put the images there, point DEBLUR_DATA_DIR "
                f"(or paths.data_dir=...) at the folder that holds it, set data.root=..., "
                f"or set data.download=true with data.url=..."
            )
    files = [p for p in scan_folder(root)[0] if data.images is None or p.stem in data.images]
    fingerprint = [str(root.resolve())] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]

    def load(min_size: int) -> list[Image]:
        images, problems = read_folder(root, data.images, min_size)
        for problem in problems:
            log.warning("skipping %s", problem)
        return images

    return ImageSource(fingerprint, load)


SOURCES: dict[str, Callable[[DataConfig], ImageSource]] = {"sample": sample_source, "folder": folder_source}


def image_source(data: DataConfig) -> ImageSource:
    return SOURCES[data.source](data)
