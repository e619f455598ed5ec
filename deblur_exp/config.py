"""The configuration's ground floor: where ``conf/`` is, the resolvers its YAML uses (``${deblur_root:}``,
``${deblur_env:...}``, ``${deblur_run_id:}``, ``${deblur_job_name:...}``), durations, and ``settled``, the
read-only copy a run reads.

Each group's typed schema lives beside the code it configures; ``training/config.py`` composes them into the run's
schema and checks ranges and consistency.
"""

from __future__ import annotations

import copy
import math
import os
import secrets
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"

# One id per process: two runs that start in the same second still get different folders.
_RUN_ID = f"{os.getpid()}{secrets.token_hex(2)}"


def swept_job_name(num: int, sweep_dir: str, task_overrides, sweeper_params=None) -> str:
    """``<job number>_<the overrides that vary across the sweep>``, e.g. ``3_model=dncnn``.

    The keys that vary are the sweeper's ``params`` (Optuna) plus the comma lists, ranges and choices of the
    command line, read from the multirun.yaml that Hydra's basic sweeper writes before any job starts.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    swept = set((sweeper_params or {}).keys())
    multirun_yaml = Path(sweep_dir) / "multirun.yaml"
    if multirun_yaml.is_file():
        parsed = OverridesParser.create().parse_overrides(list(OmegaConf.load(multirun_yaml).hydra.overrides.task))
        swept |= {o.key_or_group for o in parsed if o.is_sweep_override()}
    if not swept:  # nothing known to vary: name the job by all its overrides
        swept = None
    chosen = [o for o in task_overrides if swept is None or o.split("=", 1)[0].lstrip("+~") in swept]
    name = ",".join(chosen).replace("/", "_")[:150] or "job"
    return f"{num}_{name}"


def config_groups() -> str:
    """``group: option, ...`` per line for --help: the groups a user picks from (conf/*/ without hydra/), not
    the ``schema`` group the option files extend."""
    lines = []
    for group in sorted(p for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra"):
        options = sorted(f.stem for f in group.glob("*.yaml"))
        lines.append(f"{group.name}: {', '.join(options)}")
    return "\n".join(lines) + "\n"


def env_or(name: str, default):
    """$name, or ``default`` where it is unset or empty: ``DEBLUR_OUTPUT_DIR=`` in a script means "not set", not
    the file system's root."""
    return os.environ.get(name) or default


def register_resolvers() -> None:
    resolvers = {
        "deblur_env": env_or,
        "deblur_config_groups": config_groups,
        "deblur_root": lambda: str(REPO_ROOT),
        "deblur_run_id": lambda: _RUN_ID,
        "deblur_job_name": swept_job_name,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


COLOR_CHANNELS = {"rgb": 3, "y": 1}  # data.color -> channels of every image, patch and model input


def parse_duration(value) -> float | None:
    """``trainer.max_time`` in seconds: ``"[DD:]HH:MM:SS"`` (Lightning's convention) or a number of minutes.

    None stays None (no budget); anything else that is not a positive duration raises ValueError.
    """
    if value is None:
        return None
    text = str(value).strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if not 3 <= len(parts) <= 4 or any(p < 0 for p in parts):
                raise ValueError
            seconds = sum(p * unit for p, unit in zip(reversed(parts), (1, 60, 3600, 86400)))
        else:
            seconds = float(text) * 60
    except ValueError:
        raise ValueError(f"not a duration: {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"not a positive duration: {value!r}")
    return seconds


def did_you_mean(key: str, known) -> str:
    """'; did you mean `x`?' for the closest known key, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def settled(cfg: DictConfig, **changes) -> DictConfig:
    """A read-only copy of ``cfg`` with start-up's decisions written in (keys dotted, e.g. ``trainer.precision``):
    what the rest of a run reads, so that nothing changes a setting behind the record."""
    cfg = copy.deepcopy(cfg)
    OmegaConf.set_readonly(cfg, False)
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, merge=False)
    OmegaConf.set_readonly(cfg, True)
    return cfg
