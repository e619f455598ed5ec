"""Pretrained models shipped inside the package: ``pretrained:<name>`` wherever a checkpoint is accepted.

Each model is a weights-only checkpoint (architecture, weights, the resolved training config and how it was
trained; no optimizer state) in ``deblur_exp/weights/``, pinned by SHA-256 in ``manifest.json`` beside it,
with the Set5 score it was published with. ``scripts/export_pretrained.py`` makes them from finished runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from deblur_exp.errors import DeblurError
from deblur_exp.runs.checkpoint import load_checkpoint, save_checkpoint, weights_only
from deblur_exp.tables import write_json

PREFIX = "pretrained:"
FOLDER = Path(__file__).resolve().parents[1] / "weights"  # deblur_exp/weights
MANIFEST = "manifest.json"
DEGRADED = "_degraded"  # the suffix of a score key that holds the degraded input's figure


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


def weak_model_note(target: str) -> str | None:
    """For ``pretrained:<name>`` models that restore Set5 worse than its degraded input (the seed-recipe models
    trained 4 CPU minutes: docs/models.md): a note naming the figures and the best model shipped for
    the same scoring; None for every other model."""
    entries = manifest()
    entry = entries.get(target[len(PREFIX):]) if is_pretrained(target) else None
    key = next((k for k in (entry or {}).get("scores", {}) if k.startswith("Set5_psnr_") and
                not k.endswith(DEGRADED)), None)
    if key is None or entry["scores"].get(key + DEGRADED) is None:
        return None
    restored, degraded = entry["scores"][key], entry["scores"][key + DEGRADED]
    if restored >= degraded:
        return None
    best = max((n for n, e in entries.items() if key in e.get("scores", {})), key=lambda n: entries[n]["scores"][key])
    trained = entry.get("trained", {})
    return (f"note: {target} restores Set5 to {restored:.2f} dB, below the {degraded:.2f} dB of the degraded input "
            f"itself: it trained {trained.get('epochs', '?')} epoch(s) in {trained.get('train_time_s', 0) / 60:.1f} "
            f"min on {trained.get('device', '?')}, too little for this architecture; {PREFIX}{best} "
            f"({entries[best]['scores'][key]:.2f} dB) is the best shipped model for this degradation")


def export(checkpoint: Path, name: str, trained: dict, scores: dict) -> dict:
    """Write ``checkpoint``'s weights as ``weights/<name>.pt`` and pin it in the manifest.

    ``trained`` says how it was trained (recipe, epochs, device, time); ``scores`` its published test scores
    (``<set>_psnr_<protocol>``, and the degraded input's under the same key + ``_degraded``).
    """
    state = load_checkpoint(checkpoint)
    path = FOLDER / f"{name}.pt"
    save_checkpoint(path, {**weights_only(state), "trained": trained})
    entry = {"file": path.name, "sha256": sha256(path), "arch": state["arch"], "bytes": path.stat().st_size,
             "trained": trained, "scores": scores}
    entries = manifest()
    entries[name] = entry
    write_json(FOLDER / MANIFEST, dict(sorted(entries.items())))
    return entry
