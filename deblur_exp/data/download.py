"""Fetch a dataset archive into the data directory: progress bar, checksum, extraction, count check.

Everything happens in a temporary folder beside the target; only a complete, verified folder is renamed
into place, so a failed download never leaves a half-extracted dataset behind.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from deblur_exp.data.images import IMAGE_SUFFIXES
from deblur_exp.errors import DeblurError

log = logging.getLogger(__name__)


# A whole download may take this long (seconds), however slowly the server trickles; extraction may write this
# many bytes (an archive's members can declare far more than the archive holds). fetch_dataset takes both.
DOWNLOAD_DEADLINE_S = 3600.0
MAX_EXTRACTED_BYTES = 20 * 2**30


def _download(url: str, dest: Path, timeout: float, deadline_s: float = DOWNLOAD_DEADLINE_S) -> None:
    received, total, started = 0, None, time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {Path(url).name}", leave=False) as bar:
                while chunk := response.read1(1 << 20):  # read1: whatever has arrived, so the deadline is checked
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    if time.monotonic() - started > deadline_s:
                        raise DeblurError(f"{url}: download still unfinished after {deadline_s:g} s "
                                          f"({received} bytes); check the server, or put the images in place by "
                                          f"hand")
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.__class__.__name__ + (f": {exc}" if str(exc) else "")
        raise DeblurError(f"{url}: download failed ({reason}); check the URL and the network, "
                          f"or put the images in place by hand") from None
    if total is not None and received != total:
        raise DeblurError(f"{url}: download truncated ({received} of {total} bytes)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _extract(archive: Path, dest: Path, url: str, max_bytes: int = MAX_EXTRACTED_BYTES) -> None:
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                _check_size(sum(member.file_size for member in z.infolist()), max_bytes, url)
                z.extractall(dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                _check_size(sum(member.size for member in t.getmembers()), max_bytes, url)
                t.extractall(dest, filter="data")
        else:
            raise DeblurError(f"{url}: not a zip or tar archive (truncated or wrong URL?)")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DeblurError(f"{url}: archive is corrupt or truncated ({exc})") from None


def _check_size(declared: int, max_bytes: int, url: str) -> None:
    if declared > max_bytes:
        raise DeblurError(f"{url}: the archive would extract to {declared / 2**20:.0f} MiB, over the "
                          f"{max_bytes / 2**20:.0f} MiB limit; refused")


def refuse_links(extracted: Path, url: str) -> None:
    """A dataset is plain folders and files: a link in the archive (even one that points inside it) would be
    moved into the data directory as a link, and could make a dataset folder of any folder on the machine."""
    for folder, dirs, files in os.walk(extracted):  # does not follow links
        for name in dirs + files:
            entry = Path(folder) / name
            if entry.is_symlink() or not (entry.is_dir() or entry.is_file()):
                raise DeblurError(f"{url}: the archive holds {entry.relative_to(extracted)}, which is not a plain "
                                  f"file or folder (a link or a device); refused")


def _image_folder(extracted: Path) -> Path:
    """The folder in the archive that holds the images (archives often wrap them in one top folder)."""
    candidates = [extracted] + sorted(p for p in extracted.rglob("*") if p.is_dir())
    counts = {d: sum(1 for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for d in candidates}
    return max(counts, key=counts.get)


@dataclass(frozen=True)
class DownloadLimits:
    """How long a socket may stay silent, how long the whole download may take, and how much it may extract."""

    timeout_s: float = 60.0
    deadline_s: float = DOWNLOAD_DEADLINE_S
    max_extracted_bytes: int = MAX_EXTRACTED_BYTES


def fetch_dataset(url: str, root: Path, sha256: str | None = None, expected_images: int | None = None,
                  limits: DownloadLimits = DownloadLimits()) -> Path:
    """Download ``url`` (zip or tar), verify and extract it so that ``root`` holds the images."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s", url, root)
    with tempfile.TemporaryDirectory(prefix=f".{root.name}-", dir=root.parent) as tmp:
        archive = Path(tmp) / "archive"
        _download(url, archive, limits.timeout_s, limits.deadline_s)
        if sha256 and _sha256(archive) != sha256.lower():
            raise DeblurError(f"{url}: checksum mismatch (expected sha256 {sha256}, got {_sha256(archive)}); "
                              f"the file is corrupt or the URL serves something else")
        extracted = Path(tmp) / "extracted"
        _extract(archive, extracted, url, limits.max_extracted_bytes)
        refuse_links(extracted, url)
        images = _image_folder(extracted)
        found = sum(1 for f in images.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if found == 0 or (expected_images is not None and found != expected_images):
            raise DeblurError(f"{url}: archive holds {found} images, expected {expected_images or 'at least 1'}")
        shutil.move(str(images), str(root))
    log.info("%s: %d images ready", root, found)
    return root
