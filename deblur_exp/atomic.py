"""Atomic file writes: every file the project writes appears whole or not at all.

``atomic_write`` hands out a temporary file beside the target, fsyncs it and renames it into place. When the
write fails (a full disk, a lost mount) the temporary file is removed, so a failed write never eats the space
that is left, and the error becomes one line naming the file, the reason and the free space.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import IO, Iterator

from deblur_exp.errors import DeblurError


class WriteFailed(DeblurError):
    """A file could not be written; the previous version of it (if any) is untouched."""


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:.1f} MiB free there"


def write_failed(path: Path, exc: BaseException) -> WriteFailed:
    if isinstance(exc, OSError):
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    else:  # torch.save reports a full disk as a RuntimeError ("unexpected pos ...")
        reason = f"the write failed ({str(exc).splitlines()[0][:80]}; is the disk full?)"
    return WriteFailed(f"{path.parent}: could not write {path.name}: {reason}; {_free_space(path.parent)}")


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """``with atomic_write(path) as f: ...`` writes ``path`` via a synced temp file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        raise write_failed(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temp files (``.<name>.<pid>.tmp``) in ``folder`` whose writer is gone (a kill mid-write never
    renames them into place); returns what was removed. A live writer's temp file is left alone."""
    removed = []
    for temp in Path(folder).glob(".*.tmp"):
        pid = temp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and _alive(int(pid)) and int(pid) != os.getpid():
            continue
        temp.unlink(missing_ok=True)
        removed.append(temp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
