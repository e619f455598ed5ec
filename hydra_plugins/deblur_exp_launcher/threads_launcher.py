"""``hydra/launcher=threads``: the jobs of a sweep side by side in this one process, one thread and one CUDA
stream each.

Why: on one GPU, jobs in separate processes (``hydra/launcher=joblib``) time-slice it, because kernels of
different processes do not overlap (short of CUDA MPS); in one process each job's kernels go to its own stream and
can run concurrently, filling a GPU that one small model leaves mostly idle. On a CPU it works (the tests run it
there) but buys nothing: the jobs share the process's one pool of torch threads.

Each job is prepared in the main thread exactly as Hydra's own launchers do it (its folder, ``.hydra/``, its
config with every ``${hydra:...}`` resolved while Hydra's global state is this job's), then all run at once.
SIGINT/SIGTERM stop every job after its step in flight, each saves ``last.pt``, and the process exits 130/143;
``resume=auto`` continues the sweep. ``trainer.compile=true`` is refused: torch.compile is not thread-safe;
``trainer.cuda_graph=true`` gives the jobs CUDA graphs instead. It lives under ``hydra_plugins`` because Hydra loads
launchers only from there.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)
# deblur_exp (and torch) are imported inside the functions: Hydra imports every module under hydra_plugins when any
# Hydra app starts, and that must stay cheap.


class Job:
    # A plain class: Hydra imports plugin modules without registering them in sys.modules, which dataclasses need.
    def __init__(self, number: int, ret: JobReturn, cfg: DictConfig | None):
        self.number, self.ret = number, ret
        self.cfg = cfg  # None: the job failed while being prepared
        self.exit_code: int | None = None  # set when the job stopped on a signal (130/143)
        self.thread: threading.Thread | None = None


class ThreadsLauncher(Launcher):
    def __init__(self, max_parallel: int | None = None) -> None:
        if max_parallel is not None and max_parallel < 1:
            from deblur_exp.errors import DeblurError

            raise DeblurError(f"hydra.launcher.max_parallel: must be at least 1, or null for all jobs at once "
                              f"(got {max_parallel})")
        self.max_parallel = max_parallel
        self.config: DictConfig | None = None
        self.hydra_context: Any = None
        self.task_function: Any = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        configs = [self._sweep_config(list(overrides), initial_job_idx + i) for i, overrides in enumerate(job_overrides)]
        if any(c.trainer.get("compile") for c in configs):  # checked before any job folder exists
            from deblur_exp.errors import DeblurError

            raise DeblurError("trainer.compile: hydra/launcher=threads runs the jobs in threads, and torch.compile is "
                              "not thread-safe (pytorch/pytorch#118260); set trainer.compile=false (CUDA graphs: "
                              "trainer.cuda_graph=true), or use hydra/launcher=joblib for compiled jobs")
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [self._prepare(config) for config in configs]
        runnable = [job for job in jobs if job.cfg is not None]
        width = min(len(runnable), self.max_parallel or len(runnable))
        log.info("Threads launcher: %d jobs, %d at a time, in this process", len(runnable), width)
        from deblur_exp.runtime import stop_thread_runs

        previous = {sig: signal.signal(sig, stop_thread_runs) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with job_prefixes_on_console():
                self._run_all(runnable, width)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        stopped = [job.exit_code for job in jobs if job.exit_code is not None]
        if stopped:  # as a single run does: the process says it was stopped, and resume=auto continues
            sys.exit(stopped[0])
        return [job.ret for job in jobs]

    def _sweep_config(self, overrides: list[str], number: int) -> DictConfig:
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{number}"
            sweep_config.hydra.job.num = number
        return sweep_config

    def _prepare(self, sweep_config: DictConfig) -> Job:
        """The job's folder, .hydra/ and resolved config, made while Hydra's global config is this job's."""
        from deblur_exp.jobs import apply_job_resources

        def prepare(cfg: DictConfig) -> DictConfig:
            OmegaConf.resolve(cfg)
            apply_job_resources(cfg)
            return cfg

        ret = run_job(hydra_context=self.hydra_context, task_function=prepare, config=sweep_config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        return Job(sweep_config.hydra.job.num, ret, ret.return_value if ret.status == JobStatus.COMPLETED else None)

    def _run_all(self, jobs: list[Job], width: int) -> None:
        slots = threading.Semaphore(width)

        def run(job: Job) -> None:
            with slots:
                self._run(job)

        for job in jobs:
            job.thread = threading.Thread(target=run, args=(job,), name=Path(str(job.cfg.paths.run_dir)).name,
                                          daemon=True)
            job.thread.start()
        for job in jobs:
            while job.thread.is_alive():  # a timed join keeps the main thread free to take signals
                job.thread.join(timeout=0.5)

    def _run(self, job: Job) -> None:
        from deblur_exp.jobs import threaded_sweep_job

        try:
            with threaded_sweep_job(), cuda_stream(job.cfg):
                job.ret.return_value = self.task_function(job.cfg)
            job.ret.status = JobStatus.COMPLETED
        except SystemExit as exc:  # exit status 128 + N: the job saved its checkpoint and stopped on signal N
            if isinstance(exc.code, int) and exc.code > 128:
                job.exit_code = exc.code
            job.ret.return_value, job.ret.status = exc, JobStatus.FAILED
        except Exception as exc:
            log.exception("job %d failed", job.number)
            job.ret.return_value, job.ret.status = exc, JobStatus.FAILED


def cuda_stream(cfg: DictConfig):
    """This job's own CUDA stream when it trains on CUDA (streams are per thread in torch), else nothing."""
    import torch

    from deblur_exp.errors import DeblurError
    from deblur_exp.runtime import resolve_device

    try:
        device = resolve_device(str(cfg.trainer.device))
    except DeblurError:  # e.g. cuda asked, none here: the job itself reports it, as one line in its error.txt
        return contextlib.nullcontext()
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.stream(torch.cuda.Stream(device=device))


@contextlib.contextmanager
def job_prefixes_on_console():
    """Console lines of the job threads start with the job's folder name, so interleaved logs stay readable."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)]
    originals = [h.formatter or logging.Formatter() for h in handlers]
    for handler, original in zip(handlers, originals):
        handler.setFormatter(JobPrefixFormatter(original))
    try:
        yield
    finally:
        for handler, original in zip(handlers, originals):
            handler.setFormatter(original)


class JobPrefixFormatter(logging.Formatter):
    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        text = self.inner.format(record)
        return text if record.threadName == "MainThread" else f"[{record.threadName}] {text}"
