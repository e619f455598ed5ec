"""Pretrained models shipped inside the package: ``pretrained:<name>`` wherever a checkpoint is accepted.

Each model is a weights-only checkpoint (architecture, weights, the resolved training config and how it was
trained; no optimizer state) in ``deblur_exp/weights/``, pinned by SHA-256 in ``manifest.json`` beside it,
with the Set5 score it was published with. ``scripts/export_pretrained.py`` makes them from finished runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import OmegaConf

from deblur_exp.errors import DeblurError
from deblur_exp.runs.checkpoint import load_checkpoint, save_checkpoint, weights_only
from deblur_exp.tables import write_json

PREFIX = "pretrained:"
FOLDER = Path(__file__).resolve().parents[1] / "weights"  # deblur_exp/weights
MANIFEST = "manifest.json"
DEGRADED = "_degraded"  # the suffix of a score key that holds the degraded input's figure
DEFAULT = "deblur"  # what scripts/deblur.py restores with when --model is not given


def manifest() -> dict[str, dict]:
    """name -> {file, sha256, arch, bytes, trained, scores} for every shipped model."""
    path = FOLDER / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_pretrained(target) -> bool:
    return isinstance(target, str) and target.startswith(PREFIX)


def pretrained_path(target: str) -> Path:
    """The verified file behind ``pretrained:<name>``; an unknown name or a file that fails its pin is an error."""
    name = target[len(PREFIX):]
    entries = manifest()
    if name not in entries:
        raise DeblurError(f"{target}: no such pretrained model; choose from "
                          f"{', '.join(PREFIX + n for n in sorted(entries)) or '(none shipped)'}")
    path = FOLDER / entries[name]["file"]
    if not path.is_file():
        raise DeblurError(f"{target}: {path} is missing from the installed package; reinstall deblur_exp")
    if sha256(path) != entries[name]["sha256"]:
        raise DeblurError(f"{target}: {path} does not match its SHA-256 pin in {MANIFEST}; the file is "
                          f"damaged or was replaced; reinstall deblur_exp")
    return path


def weaker_than_input(scores: dict) -> list[str]:
    """The score keys where a model restores worse than its degraded input scores (nothing like that ships)."""
    return [key for key, value in scores.items() if not key.endswith(DEGRADED)
            and key + DEGRADED in scores and value <= scores[key + DEGRADED]]


def export(checkpoint: Path, name: str, trained: dict, scores: dict, self_ensemble: bool = False) -> dict:
    """Write ``checkpoint``'s weights as ``weights/<name>.pt`` and pin it in the manifest.

    ``trained`` says how it was trained (recipe, epochs, device, time); ``scores`` its published test scores
    (``<set>_psnr_<protocol>``, and the degraded input's under the same key + ``_degraded``), made with the x8
    self-ensemble when ``self_ensemble``, which the shipped file then asks for (its eval.self_ensemble).
    """
    weaker = weaker_than_input(scores)
    if weaker:
        raise DeblurError(f"{checkpoint}: restores worse than its degraded input on {', '.join(weaker)}; a model "
                          f"that makes images worse is not shipped")
    state = load_checkpoint(checkpoint)
    config = OmegaConf.create(state["config"])  # YAML text, as the run wrote it
    config.eval.self_ensemble = self_ensemble
    state["config"] = OmegaConf.to_yaml(config)
    path = FOLDER / f"{name}.pt"
    save_checkpoint(path, {**weights_only(state), "trained": trained})
    entry = {"file": path.name, "sha256": sha256(path), "arch": state["arch"], "bytes": path.stat().st_size,
             "trained": trained, "self_ensemble": self_ensemble, "scores": scores}
    entries = manifest()
    entries[name] = entry
    write_json(FOLDER / MANIFEST, dict(sorted(entries.items())))
    return entry
