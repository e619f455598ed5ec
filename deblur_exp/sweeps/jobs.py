"""Running one job of a run or a sweep.

``run_job`` is what ``scripts/train.py`` calls: in a multirun it gives each parallel job its share of CPU
threads (and its own GPU on a multi-GPU machine), and a job that fails records a one-line ``error.txt`` and
returns NaN instead of raising, so the other jobs and the sweep summary (summary.py) still happen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from deblur_exp.config import settled
from deblur_exp.errors import DeblurError
from deblur_exp.runs.run_dir import RunDir
from deblur_exp.runtime import TrainingInterrupted, ranks_from_slurm
from deblur_exp.tables import write_json
from deblur_exp.training.loop import train

log = logging.getLogger("deblur_exp")


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def parallel_jobs(launcher: DictConfig, cpus: int) -> int:
    """How many jobs the launcher runs at once (joblib's n_jobs: -1 = all CPUs, -2 = all but one, ...)."""
    if "joblib" not in str(launcher.get("_target_", "")):
        return 1
    n_jobs = launcher.get("n_jobs") or -1
    return max(1, cpus + 1 + n_jobs if n_jobs < 0 else n_jobs)


def job_resources(cfg: DictConfig) -> dict:
    """This job's share of the machine, as settings: CPU threads split between parallel jobs, and jobs spread over
    GPUs, unless the config pins them."""
    hydra_cfg = HydraConfig.get()
    cpus = os.cpu_count() or 1
    jobs = parallel_jobs(hydra_cfg.launcher, cpus)
    changes = {}
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK")  # a SLURM job: the cores it was given, not the node's
    if cfg.trainer.num_threads is None and slurm_cpus:
        changes["trainer.num_threads"] = int(slurm_cpus)
    elif cfg.trainer.num_threads is None and jobs > 1:
        changes["trainer.num_threads"] = max(1, cpus // jobs)
    gpus = torch.cuda.device_count()
    if gpus > 1 and cfg.trainer.device in ("auto", "cuda"):
        changes["trainer.device"] = f"cuda:{hydra_cfg.job.num % gpus}"
    return changes


def run_job(cfg: DictConfig) -> float:
    """Train, returning the run's objective; see the module docstring for multirun behaviour. Ctrl-C before
    training's own handler is installed (imports, data preparation) or after it (the final evaluation) leaves a
    single run as a failed start does (``forget_failed_start``) and goes on up, saying where the run stands, to
    cli.run_hydra_cli, which prints it in one line (a sweep just stops)."""
    try:
        return _run_job(cfg)
    except KeyboardInterrupt as exc:  # Ctrl-C, or Terminated (SIGTERM): the same clean-up, its own exit status
        if is_multirun():
            raise
        forget_failed_start(cfg)
        run_dir = resumed_run(cfg) or Path(cfg.paths.run_dir)
        raise type(exc)(f"run folder kept: {run_dir}" if run_dir.is_dir() else "no run folder was kept") from None


def resumed_run(cfg: DictConfig) -> Path | None:
    """The run folder a resume=RUN continues; None for a fresh run and for resume=auto (decided per job)."""
    return Path(cfg.resume) if cfg.resume and cfg.resume != "auto" else None


def forget_failed_start(cfg: DictConfig) -> None:
    """A single run that fails or is interrupted before it trains leaves nothing: a fresh run's folder goes (if it
    holds no checkpoint), and a resume=RUN attempt leaves the run's record as it was."""
    if (resumed := resumed_run(cfg)) is not None:
        RunDir(resumed).discard_staged_record()
    elif cfg.resume == "auto":
        RunDir(cfg.paths.run_dir).discard_staged_record()
    else:
        remove_unstarted_run(Path(cfg.paths.run_dir))


def _run_job(cfg: DictConfig) -> float:
    ranks_from_slurm()  # a SLURM job of several tasks: RANK and WORLD_SIZE before anything asks for them
    multirun = is_multirun()
    if multirun:
        requeued = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0 and not cfg.resume
        # a job SLURM requeued (pre-empted, or warned before its time limit) continues its own run folder
        cfg = settled(cfg, **job_resources(cfg), **({"resume": "auto"} if requeued else {}))
        record_slurm_job(RunDir(cfg.paths.run_dir))
        # A re-run job (resume=auto) starts clean: a failure recorded by an earlier attempt no longer holds.
        RunDir(cfg.paths.run_dir).error.unlink(missing_ok=True)
    try:
        return train(cfg)
    except TrainingInterrupted as exc:  # its message is already logged, with the resume command
        sys.exit(exc.exit_code)
    except Exception as exc:
        message = str(exc) if isinstance(exc, DeblurError) else f"{type(exc).__name__}: {exc}"
        message = message.splitlines()[0] if message else type(exc).__name__
        if not multirun:
            if isinstance(exc, DeblurError):
                forget_failed_start(cfg)
                print(f"error: {message}", file=sys.stderr)
                sys.exit(2)
            # a crash: a fresh run's folder stays (its train.log has the traceback); a resume leaves the run as it was
            if (resumed := resumed_run(cfg)) is not None:
                RunDir(resumed).discard_staged_record()
            raise
        if cfg.resume:  # a failed resume leaves the job's record as it was
            forget_failed_start(cfg)
        if isinstance(exc, DeblurError):
            log.error("job failed: %s", message)
        else:
            log.exception("job failed: %s", message)
        run = RunDir(cfg.paths.run_dir)
        run.path.mkdir(parents=True, exist_ok=True)
        run.error.write_text(message + "\n")
        return float("nan")


def remove_unstarted_run(run_dir: Path) -> None:
    """A single run that failed before it trained an epoch leaves no folder behind (only .hydra/ and an empty
    log would be in it); a folder holding anything else is left alone."""
    run = RunDir(run_dir)
    expected = {p.name for p in (run.hydra, run.log, run.checkpoints, run.metrics, run.tensorboard, run.lock)}
    if not run_dir.is_dir() or any(p.name not in expected for p in run_dir.iterdir()):
        return
    metrics = run.metrics
    if any(run.checkpoints.glob("*.pt")) or (metrics.is_file() and len(metrics.read_text().splitlines()) > 1):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # the date folder too, when this run was its only one
        run_dir.parent.rmdir()


def record_slurm_job(run: RunDir) -> None:
    """Under SLURM, write slurm.json into the run folder: the job id and where its logs are, so that a run folder
    leads to its job (and a failed job's summary line to its log). Rank 0 of a job of several tasks writes it."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id or int(os.environ.get("RANK", "0")) != 0:
        return
    record = {"job_id": job_id, "array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
              "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"), "node": os.environ.get("SLURMD_NODENAME"),
              "partition": os.environ.get("SLURM_JOB_PARTITION")}
    try:
        import submitit

        paths = submitit.JobEnvironment().paths
        record.update(stdout=str(paths.stdout), stderr=str(paths.stderr))
    except Exception:  # noqa: BLE001  not launched through submitit (an sbatch script of one's own)
        pass
    run.path.mkdir(parents=True, exist_ok=True)
    write_json(run.slurm, record)
