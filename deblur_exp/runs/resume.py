"""Resuming from the command line: turning ``resume=<run folder>`` into a Hydra command line, giving torchrun's
other ranks a scratch folder, and deciding what ``resume=auto`` does with a folder that may already hold a run
(the way a re-run sweep continues)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from deblur_exp.config import parse_duration
from deblur_exp.errors import DeblurError
from deblur_exp.runs.run_dir import STAGED_RECORD, RunDir


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _quote(path: Path) -> str:
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def resume_argv(argv: list[str]) -> list[str]:
    """Rewrite ``train.py resume=RUN [overrides]`` so Hydra recomposes RUN's config in RUN's folder.

    The run's saved overrides (``RUN/.hydra/overrides.yaml``) come first and the new ones after, so
    ``resume=RUN trainer.epochs=50`` keeps the run's model, data and so on, and changes only the epochs. Hydra
    writes this attempt's record into ``RUN/.hydra_resume/``, which replaces ``RUN/.hydra/`` once the checkpoint has
    loaded (``RunDir.accept_staged_record``): a resume with a wrong override fails without changing the run.
    """
    args = argv[1:]
    resumes = [a for a in args if a.startswith("resume=")]
    if not resumes:
        return argv
    if resumes[-1] == "resume=auto":  # decided per job, in the job's own folder; its record waits there until then
        given = any(_override_key(a) == "hydra.output_subdir" for a in args)
        return argv if given else [*argv, f"hydra.output_subdir={STAGED_RECORD}"]
    run = Path(resumes[-1].split("=", 1)[1].strip("'\"")).expanduser().resolve()
    saved_file = RunDir(run).overrides
    if not RunDir(run).has_resume_checkpoint() or not saved_file.is_file():
        raise DeblurError(f"resume: {run} is not a run folder with checkpoints/last.pt and .hydra/overrides.yaml; "
                          f"give the folder a run was trained in")
    saved = yaml.safe_load(saved_file.read_text()) or []
    given = {_override_key(a) for a in args if not a.startswith("-")}
    kept = [o for o in saved if _override_key(o) not in given and _override_key(o) != "resume"
            and not _override_key(o).startswith("hydra.")]
    rest = [a for a in args if not a.startswith("resume=")]
    return [argv[0], *kept, *rest, f"resume={_quote(run)}", f"hydra.run.dir={_quote(run)}",
            f"hydra.output_subdir={STAGED_RECORD}"]


def run_dir_argv(argv: list[str]) -> list[str]:
    """``paths.run_dir=DIR`` for a single run also makes DIR Hydra's output folder, so the run's .hydra/ record
    (config, overrides: what resume and report.py read) lands in the run folder, not in a second folder under
    outputs/runs/. A sweep (-m) gives every job its own folder and is left alone."""
    args = argv[1:]
    given = [a for a in args if _override_key(a) == "paths.run_dir"]
    resuming = any(a.startswith("resume=") and a != "resume=auto" for a in args)  # resume_argv sets the folder
    if resuming or any(a in ("-m", "--multirun") for a in args):
        return argv
    folders = [a.split("=", 1)[1] for a in args if _override_key(a) in ("paths.run_dir", "hydra.run.dir")]
    if folders and "resume=auto" not in args and RunDir(Path(folders[-1]).expanduser()).holds_run():
        # before Hydra writes its record into the folder: a fresh run must not overwrite a run's
        folder = Path(folders[-1]).expanduser().resolve()
        raise DeblurError(f"{folder} already holds a run; continue it with: python scripts/train.py "
                          f"resume={folder}, or choose another folder")
    if not given or any(_override_key(a) == "hydra.run.dir" for a in args):
        return argv
    return [*argv, "hydra.run.dir=" + given[-1].split("=", 1)[1]]


def distributed_argv(argv: list[str]) -> list[str]:
    """Under torchrun, let only rank 0 have a run folder: the other ranks' Hydra output goes to a temp dir.

    Every rank composes the same config from the same command line; rank 0 alone writes logs, TensorBoard,
    checkpoints and the .hydra/ record, so a distributed run still lands in one run folder.
    """
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        return argv
    scratch = Path(tempfile.gettempdir()) / f"deblur_exp-rank{rank}-{os.getpid()}"
    return [*argv, f"hydra.run.dir={_quote(scratch)}", "hydra.output_subdir=null"]


@dataclass
class AutoResume:
    """What ``resume=auto`` does in a run folder: skip a finished run, continue one with a last.pt, or start."""

    action: str  # "skip" | "resume" | "start"
    reason: str


def auto_resume(cfg) -> AutoResume:
    """A run is finished when its summary.json says it trained the epochs (or the time budget) asked for now;
    asking for more epochs or a longer budget continues it from last.pt like an unfinished one. A command that
    asks for another model or other data than the run in the folder is refused: it is not this run."""
    run_dir = Path(cfg.paths.run_dir)
    epochs, max_time_s = cfg.trainer.epochs, parse_duration(cfg.trainer.max_time)
    check_same_run(RunDir(run_dir), cfg)
    summary_file, last = RunDir(run_dir).summary, RunDir(run_dir).last
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        budget_spent = (summary.get("stopped_by") == "max_time"
                        and (max_time_s or math.inf) <= (summary.get("max_time_s") or 0))
        if summary.get("epochs", 0) >= epochs or budget_spent:
            return AutoResume("skip", f"finished ({summary.get('epochs')} epochs, summary.json)")
    if RunDir(run_dir).has_resume_checkpoint():  # last.pt, or previous.pt where a kill took last.pt
        return AutoResume("resume", f"continuing from {last if last.is_file() else RunDir(run_dir).previous}")
    return AutoResume("start", "no checkpoint yet: starting fresh")


def check_same_run(run: RunDir, cfg) -> None:
    """resume=auto: the folder's own record must name the model and data this command asks for."""
    if not run.config.is_file() or not run.holds_run():
        return
    recorded = yaml.safe_load(run.config.read_text()) or {}
    for key in ("model", "data"):
        was, now = (recorded.get(key) or {}).get("name"), cfg[key].name
        if was is not None and was != now:
            raise DeblurError(f"resume=auto: {run.path} holds a run with {key}={was}, not {key}={now}; give "
                              f"{key}={was} to continue it, or another hydra.run.dir / hydra.sweep.dir")
