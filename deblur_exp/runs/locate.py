"""What a user names as a model (a checkpoint file, a run folder, a sweep folder or ``pretrained:<name>``), resolved
to checkpoint files; and ``init_weights``, which starts a new run from one of them."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from deblur_exp.errors import DeblurError
from deblur_exp.runs.checkpoint import load_checkpoint
from deblur_exp.runs.pretrained import is_pretrained, pretrained_path
from deblur_exp.runs.run_dir import RunDir, run_checkpoint


def find_checkpoints(target: str | Path) -> list[Path]:
    """A checkpoint file, a run folder (its eval.checkpoint: best.pt unless it says last), a sweep folder (every
    run in it) or
    ``pretrained:<name>`` (a model shipped with the package)."""
    if is_pretrained(target):
        return [pretrained_path(target)]
    target = Path(target).expanduser()
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise DeblurError(f"{target}: no such checkpoint file or run folder")
    runs = [target] if RunDir(target).checkpoints.is_dir() else sorted({p.parent.parent
                                                                        for p in target.rglob("checkpoints/*.pt")})
    found = [c for c in map(run_checkpoint, runs) if c is not None]
    if not found:
        raise DeblurError(f"{target}: holds no checkpoints/best.pt or last.pt (is it a run or sweep folder?)")
    return found


def load_init_weights(model: torch.nn.Module, target: str, arch: str) -> Path:
    """Start ``model`` from the weights of ``target`` (top-level ``init_weights``: a checkpoint, a run folder or
    ``pretrained:<name>``); returns the file used. Only the weights: optimizer, schedule and epochs start fresh."""
    found = find_checkpoints(target)
    if len(found) != 1:
        raise DeblurError(f"init_weights={target}: holds {len(found)} runs' checkpoints; name one run folder or file")
    state = load_checkpoint(found[0], expected_arch=arch)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:  # same architecture, other model.params (features, blocks, channels...)
        trained = OmegaConf.create(state.get("config") or {}).get("model", {}).get("params")  # YAML text
        raise DeblurError(f"{found[0]}: its weights do not fit this {arch}'s model.params"
                          f"{f' (it was trained with {dict(trained)})' if trained else ''}; "
                          f"set the same model.params") from None
    return found[0]
