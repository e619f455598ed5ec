"""Shared fixtures: composing configs in-process, tiny training budgets, the shared datasets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from deblur_exp.config import CONF_DIR, REPO_ROOT

DATA_DIR = Path(os.environ.get("DEBLUR_DATA_DIR", REPO_ROOT / "data"))

# A budget that exercises every code path in seconds: two small sample images, 16x16 patches, 2 steps.
TINY = [
    "data=sample", "data.images=[chelsea,coffee]", "data.val_images=[chelsea]", "data.patch_size=16",
    "data.stride=16", "trainer.batch_size=8", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
    "trainer.epochs=2", "trainer.progress=false", "trainer.device=cpu", "trainer.image_every=1",
    "eval.sets=[]",  # whole-image scoring is tested on its own; the held-out chelsea is still scored
    "trainer.num_threads=2",  # fixed, not following the machine's load: tests compare runs bit for bit
]


def dataset(name: str) -> Path:
    """A folder of the shared datasets; tests needing it skip, saying where they looked, when it is absent."""
    folder = DATA_DIR / name
    if not folder.is_dir():
        pytest.skip(f"{name} not found at {folder}: set DEBLUR_DATA_DIR to the folder holding T91/Set5/Set14")
    return folder


@pytest.fixture
def make_cfg(tmp_path):
    """compose('train') with test-friendly paths under tmp_path plus the given overrides."""

    def _make(overrides=(), run_dir: Path | None = None):
        paths = [f"paths.output_root={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
                 f"paths.run_dir={run_dir or tmp_path / 'run'}"]
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=[*paths, *overrides])

    return _make


def run_script(script: str, *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 600,
               isolated: bool = False) -> subprocess.CompletedProcess:
    """Run scripts/<script> the way a user would, capturing its output and exit status.

    In this process by default: a new interpreter spends seconds importing torch, and the script runs the same
    code either way. ``isolated=True`` starts a process of its own, for what needs one (signals, peak memory,
    what a fresh interpreter imports)."""
    if isolated:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / script), *args], capture_output=True,
                              text=True, env=full_env, cwd=cwd or REPO_ROOT, timeout=timeout)
    return _run_in_process(REPO_ROOT / "scripts" / script, list(args), env or {}, cwd or REPO_ROOT)


def _run_in_process(path: Path, args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """runpy the script as __main__ with its argv, environment and working directory; stdout, stderr and the exit
    status as a subprocess would give them. Process-wide state a script changes (environment, logging, signal
    handlers, torch's thread count and determinism) is put back afterwards."""
    import contextlib
    import io
    import logging
    import runpy
    import signal
    import traceback

    import torch

    saved = {"environ": dict(os.environ), "argv": sys.argv[:], "cwd": os.getcwd(),
             "threads": torch.get_num_threads(), "deterministic": torch.are_deterministic_algorithms_enabled(),
             "signals": {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}}
    root, ours = logging.getLogger(), logging.getLogger("deblur_exp")
    saved_logging = (root.handlers[:], root.level, ours.handlers[:], ours.level, logging.root.manager.disable)
    root.handlers.clear()  # so that the script's own logging set-up (basicConfig, Hydra's) takes effect
    os.environ.update({"PYTHONUNBUFFERED": "1", **env})
    sys.argv = [str(path), *args]
    os.chdir(cwd)
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(path), run_name="__main__")
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
            except BaseException:  # what an interpreter does with an uncaught exception
                traceback.print_exc()
                code = 1
    finally:
        os.environ.clear()
        os.environ.update(saved["environ"])
        sys.argv = saved["argv"]
        os.chdir(saved["cwd"])
        torch.set_num_threads(saved["threads"])
        torch.use_deterministic_algorithms(saved["deterministic"])
        for sig, handler in saved["signals"].items():
            signal.signal(sig, handler)
        root.handlers[:], ours.handlers[:] = saved_logging[0], saved_logging[2]
        root.setLevel(saved_logging[1])
        ours.setLevel(saved_logging[3])
        logging.disable(saved_logging[4])
    return subprocess.CompletedProcess([str(path), *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One tiny srcnn run made through scripts/train.py, shared by the evaluation and inference tests."""
    root = tmp_path_factory.mktemp("trained")
    result = run_script("train.py", *TINY, "model=srcnn", "trainer.epochs=1", env={"DEBLUR_OUTPUT_DIR": str(root)})
    assert result.returncode == 0, result.stderr
    (run,) = [p for p in (root / "runs").glob("*/*") if p.is_dir()]
    return run


def interrupt_after_epoch(monkeypatch, epoch: int) -> None:
    """Make the next in-process run stop as Ctrl-C would, right after ``epoch`` is logged: it saves that epoch's
    checkpoint and raises TrainingInterrupted. Unlike a shorter trainer.epochs, this leaves the run's length (and
    so a schedule over the run, like cosine) as the uninterrupted run has it."""
    import signal

    import deblur_exp.training.tracking as tracking

    append = tracking.MetricsTable.append

    def append_then_interrupt(self, row):
        append(self, row)
        if row["epoch"] == epoch:
            monkeypatch.undo()  # only this run
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(tracking.MetricsTable, "append", append_then_interrupt)


def write_sharp_images(folder: Path, names=("alpha", "beta"), size=(40, 56)) -> Path:
    """Small smooth-ish images that any model can be scored on."""
    import numpy as np

    from deblur_exp.data.images import write_image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for name in names:
        base = rng.integers(0, 256, (size[0] // 4, size[1] // 4, 3)).astype(np.uint8)
        write_image(folder / f"{name}.png", np.kron(base, np.ones((4, 4, 1), np.uint8)))
    return folder


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A one-node SLURM cluster on this machine (tests/slurm_cluster.py), installed when missing and allowed,
    for the whole session; clients find it through SLURM_CONF. Where it cannot be had the SLURM tests are skipped
    saying why, unless DEBLUR_REQUIRE_SLURM=1 (as CI sets), which makes that a failure."""
    from tests.slurm_cluster import Cluster, install

    reason = install()
    if reason:
        if os.environ.get("DEBLUR_REQUIRE_SLURM") == "1":
            pytest.fail(f"the SLURM tests must run here (DEBLUR_REQUIRE_SLURM=1): {reason}")
        pytest.skip(reason)
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    saved = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env)
    yield cluster
    cluster.stop()
    if saved is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = saved
