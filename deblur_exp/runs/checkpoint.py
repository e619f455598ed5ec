"""Checkpoints: written atomically, loaded with ``weights_only=True``, versioned and labelled.

A checkpoint is a plain dict of tensors and primitives (no pickled classes), so the safe loader can read it
and a crafted file cannot run code. It carries the architecture name and the resolved config, so evaluation
and inference scripts can rebuild the model from the file alone.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from deblur_exp.atomic import atomic_write, remove_stale_temps
from deblur_exp.errors import DeblurError
from deblur_exp.runs.run_dir import RunDir

log = logging.getLogger("deblur_exp")

FORMAT_VERSION = 1


class CheckpointMismatch(DeblurError):
    """The checkpoint is fine but holds another architecture than asked for."""


def save_checkpoint(path: str | Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """Write ``state`` to ``path`` via a temp file, fsync and rename: a kill leaves the old file or the new one.

    With ``keep_previous`` the file being replaced is kept as ``previous.pt`` beside it, a fallback should the
    new one ever turn out unreadable (a disk error, a copy cut short). Order matters: the new file is whole on
    disk before the old one is touched, and the old one is copied (not moved) to previous.pt, so at every instant
    ``path`` holds a complete checkpoint.
    """
    path = Path(path)
    with atomic_write(path) as f:
        torch.save({"format_version": FORMAT_VERSION, **state}, f)
        if keep_previous and path.exists():
            f.flush()
            os.fsync(f.fileno())
            keep_as_previous(path)
    _fsync_dir(path.parent)


def keep_as_previous(path: Path) -> None:
    """Make ``previous.pt`` a copy of ``path`` (a hard link where the file system has them) without moving it."""
    previous = path.with_name("previous.pt")
    staged = path.with_name(f".previous.pt.{os.getpid()}.tmp")
    staged.unlink(missing_ok=True)
    try:
        os.link(path, staged)
    except OSError:  # no hard links here (some network file systems): a copy does the same, more slowly
        shutil.copyfile(path, staged)
    os.replace(staged, previous)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _first_line(exc: BaseException, width: int = 160) -> str:
    """The first line of an error, shortened at a word boundary (never cut mid-word)."""
    import textwrap

    return textwrap.shorten(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, width, placeholder=" ...")


def load_checkpoint(path: str | Path, expected_arch: str | None = None) -> dict[str, Any]:
    """Load a checkpoint safely; every way it can be wrong becomes one DeblurError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DeblurError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DeblurError(f"{path}: refused to load: the file holds objects other than tensors and plain data "
                          f"(weights_only=True); it may be malicious ({_first_line(exc)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise DeblurError(f"{path}: checkpoint is truncated or corrupt ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001  any other file (a text file named .pt) fails torch's legacy unpickler
        # in ways of its own (KeyError, IndexError...): none of them is worth a traceback
        raise DeblurError(f"{path}: not a torch checkpoint file ({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(state, dict) or "format_version" not in state or "model" not in state:
        raise DeblurError(f"{path}: not a deblur_exp checkpoint (no format_version/model entries)")
    if state["format_version"] > FORMAT_VERSION:
        raise DeblurError(f"{path}: checkpoint format {state['format_version']} is newer than this deblur_exp "
                          f"understands ({FORMAT_VERSION}); upgrade deblur_exp")
    if expected_arch is not None and state.get("arch") != expected_arch:
        raise CheckpointMismatch(f"{path}: checkpoint holds a '{state.get('arch')}' model but the config asks for "
                          f"'{expected_arch}'; set model={state.get('arch')} or pick another checkpoint")
    return state


# What a checkpoint keeps when only its weights matter (shipping, evaluation): the model and how it was trained.
WEIGHTS_KEYS = ("arch", "model", "config", "epoch", "best_psnr")


def weights_only(state: dict) -> dict:
    """``state`` without what only resuming needs (optimizer, scheduler, scaler, RNG): a third of the size."""
    return {key: state[key] for key in WEIGHTS_KEYS if key in state}


def drop_training_state(path: str | Path) -> None:
    """Rewrite a checkpoint as ``weights_only`` (atomically): e.g. a run's best.pt, which resuming never reads."""
    save_checkpoint(path, weights_only(load_checkpoint(path)))


def load_resume_state(run: RunDir, arch: str) -> dict:
    """last.pt, or previous.pt when last.pt is missing or damaged (a warning names it)."""
    remove_stale_temps(run.checkpoints)  # writes a kill interrupted; never renamed into place
    problems = []
    for path in (run.last, run.previous):
        try:
            state = load_checkpoint(path, expected_arch=arch)
        except CheckpointMismatch:
            raise
        except DeblurError as exc:
            problems.append(str(exc))
            log.warning("resume: %s; trying the previous checkpoint", exc)
            continue
        return {**state, "path": path}
    raise DeblurError(f"resume: no usable checkpoint in {run.checkpoints} ({'; '.join(problems)})")


