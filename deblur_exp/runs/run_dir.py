"""The run folder's layout: ``RunDir`` names every file a run writes, and finding run folders and their checkpoints.

A new run artefact gets its name here and its writer beside the code that produces it; everything that reads a run
folder (resume, sweep summaries, reports, evaluation) asks ``RunDir`` where to look.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

from deblur_exp.errors import DeblurError

# eval.checkpoint: which checkpoint stands for a run (scored at its end, by report.py and by evaluate.py RUN).
# best: best validation PSNR; last: the final weights, for when validation cannot pick (e.g. patches that
# overlap the training ones).
CHECKPOINT_CHOICES = ("best", "last")

# Where Hydra writes the record of a resume=RUN attempt (resume.resume_argv): it replaces the run's .hydra/ only
# once the checkpoint has loaded, so an attempt that fails leaves the run's record, which the next resume replays,
# as it was.
STAGED_RECORD = ".hydra_resume"


class RunDir:
    """One run's folder. Hydra writes ``.hydra/``; training writes the rest."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def hydra(self) -> Path:
        return self.path / ".hydra"

    @property
    def staged_hydra(self) -> Path:
        """A resume attempt's .hydra/ record, waiting to be accepted (``accept_staged_record``)."""
        return self.path / STAGED_RECORD

    def accept_staged_record(self) -> None:
        """The resume was accepted: its record becomes the run's, file by file (each replace is atomic), with
        overrides.yaml last since the next resume replays it. A no-op when nothing is staged."""
        staged = self.staged_hydra
        if not staged.is_dir():
            return
        self.hydra.mkdir(exist_ok=True)
        for name in sorted(p.name for p in staged.iterdir() if p.name != self.overrides.name):
            os.replace(staged / name, self.hydra / name)
        if (staged / self.overrides.name).is_file():
            os.replace(staged / self.overrides.name, self.overrides)
        shutil.rmtree(staged, ignore_errors=True)

    def discard_staged_record(self) -> None:
        """The resume failed before it was accepted: the run's own record stays as it was."""
        shutil.rmtree(self.staged_hydra, ignore_errors=True)

    @property
    def config(self) -> Path:
        """The resolved config Hydra saved for the run."""
        return self.hydra / "config.yaml"

    @property
    def overrides(self) -> Path:
        """The command-line overrides that made the run (resume and sweep summaries replay them)."""
        return self.hydra / "overrides.yaml"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        """Written after every epoch (and on an interruption): what resume continues from."""
        return self.checkpoints / "last.pt"

    @property
    def previous(self) -> Path:
        """The last.pt before the current one, kept in case the current one is damaged."""
        return self.checkpoints / "previous.pt"

    @property
    def lock(self) -> Path:
        """.lock: held (flock) by the process training in this folder; its pid inside."""
        return self.path / ".lock"

    def holds_run(self) -> bool:
        """Whether a run has trained here (a checkpoint or a summary): a fresh run must not start over it."""
        return self.summary.is_file() or any(c.is_file() for c in (self.last, self.previous, self.best))

    @contextlib.contextmanager
    def owned(self):
        """Hold the run folder for this process while it trains: a second training process into the same folder
        is refused. The lock is the kernel's (flock), so a process that dies, even by SIGKILL, holds nothing."""
        try:
            import fcntl
        except ImportError:  # no flock on this platform: no guard, as before
            yield
            return
        with open(self.lock, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise DeblurError(f"{self.path}: another training process (pid {holder}) is using this run "
                                  f"folder; wait for it to end, or choose another folder") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def has_resume_checkpoint(self) -> bool:
        """Whether a resume can continue this run: last.pt, or previous.pt where a kill left no last.pt."""
        return self.last.is_file() or self.previous.is_file()

    @property
    def best(self) -> Path:
        """The epoch with the best validation PSNR: what evaluation and inference use."""
        return self.checkpoints / "best.pt"

    @property
    def metrics(self) -> Path:
        """metrics.csv: one row per epoch."""
        return self.path / "metrics.csv"

    @property
    def summary(self) -> Path:
        """summary.json: what the run reached, written when it ends; a finished run has one."""
        return self.path / "summary.json"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def eval(self) -> Path:
        """Whole-image scores of best.pt: eval/<set>.csv, eval/summary.json, eval/figures/<set>/."""
        return self.path / "eval"

    def eval_table(self, set_name: str) -> Path:
        return self.eval / f"{set_name}.csv"

    @property
    def during_training(self) -> Path:
        """eval.every: the sets' mean scores as the model trained, one row per epoch scored and set."""
        return self.eval / "during_training.csv"

    @property
    def eval_figures(self) -> Path:
        return self.eval / "figures"

    def eval_figure(self, set_name: str, image_name: str) -> Path:
        return self.eval_figures / set_name / f"{image_name}.png"

    @property
    def slurm(self) -> Path:
        """slurm.json: the SLURM job that ran this run (job id, node, its log files), when one did."""
        return self.path / "slurm.json"

    @property
    def error(self) -> Path:
        """error.txt: why a sweep job failed (written by the sweep runner)."""
        return self.path / "error.txt"

    def checkpoint(self, choice: str | None = None) -> Path | None:
        """The checkpoint that stands for the run: eval.checkpoint ("best" or "last"; by default the one its
        summary.json records), else the other one if only that exists, else None."""
        choice = choice or self.checkpoint_choice()
        order = (self.last, self.best) if choice == "last" else (self.best, self.last)
        return next((c for c in order if c.is_file()), None)

    def checkpoint_choice(self) -> str:
        """The eval.checkpoint a finished run recorded in summary.json (its final config's, so a resume that
        changed it counts); "best" for unfinished runs and runs from before the key existed."""
        try:
            return json.loads(self.summary.read_text()).get("checkpoint", "best")
        except (OSError, ValueError):
            return "best"

    def prepare(self) -> None:
        """Create the folder and prove it is writable now, not after an hour of training."""
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise DeblurError(f"paths.run_dir: cannot write to {self.path} ({exc.strerror or exc}); "
                              f"choose a writable paths.output_root or set DEBLUR_OUTPUT_DIR") from None

    def attach_log(self) -> logging.Handler:
        """Send the deblur_exp log to train.log (appending: a resumed run continues its log)."""
        handler = logging.FileHandler(self.log, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
        logging.getLogger("deblur_exp").addHandler(handler)
        logging.getLogger("deblur_exp").setLevel(logging.INFO)
        return handler

    @staticmethod
    def of_checkpoint(checkpoint: Path) -> "RunDir | None":
        """The run folder a checkpoint sits in, or None for a checkpoint outside one."""
        return RunDir(checkpoint.parent.parent) if checkpoint.parent.name == "checkpoints" else None


def run_checkpoint(run: Path) -> Path | None:
    """The checkpoint that stands for a run folder (RunDir.checkpoint), else None."""
    return RunDir(run).checkpoint()


