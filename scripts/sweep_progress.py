"""Where each job of a sweep stands, finished or not: epochs done, best validation PSNR, measured epoch times.

    python scripts/sweep_progress.py SWEEP [--epochs N] [--wall SECONDS] [--out FILE]

Reads every job's metrics.csv, so it works on a sweep that is still running or was stopped (a time limit that ran out,
a SIGTERM) where no summary.md exists yet. The epoch times are measured; the last column, the time each job would
still need for its epochs (its own ``trainer.epochs``, or --epochs) at its median epoch time after the first, is a
projection and labelled as one. For a finished sweep, ``--wall`` (its measured time from the command to the
summary) adds the back-test of that projection: what the first 2, 4, 20 or 50 epochs would have projected for the
whole sweep, as a ratio to the measured time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omegaconf import OmegaConf

from deblur_exp.cli import run_cli
from deblur_exp.errors import DeblurError
from deblur_exp.runs.run_dir import RunDir
from deblur_exp.sweeps.summary import epoch_times, metrics_rows, named_sweep_jobs, projection_checks, steady_epoch
from deblur_exp.tables import markdown_table, write_text

COLUMNS = ["job", "epochs done", "of", "best val PSNR", "first epoch (s)", "median later epoch (s)",
           "projected s to finish"]


def planned_epochs(job: Path) -> int:
    """The job's own trainer.epochs, from the config Hydra saved in its folder."""
    config = RunDir(job).config
    if not config.is_file():
        raise DeblurError(f"{job}: no .hydra/config.yaml to read trainer.epochs from; pass --epochs")
    return int(OmegaConf.load(config).trainer.epochs)


def job_progress(job: Path, epochs: int | None) -> list:
    """One table row; a job that has not finished an epoch yet says so."""
    epochs = epochs or planned_epochs(job)
    rows = metrics_rows(job) if RunDir(job).metrics.is_file() else []
    if not rows:
        return [job.name, 0, epochs, "-", "-", "-", "no epoch finished yet"]
    times = [float(r["epoch_time_s"]) for r in rows]
    steady = steady_epoch(times)
    done = int(rows[-1]["epoch"])
    left = max(epochs - done, 0)
    best = max(float(r["val_psnr"]) for r in rows)
    return [job.name, done, epochs, f"{best:.3f}", f"{times[0]:.1f}", f"{steady:.2f}",
            "finished" if left == 0 else f"{left * steady:.0f} (projection: {left} x {steady:.2f} s)"]


def back_test(rows: list, jobs: dict[str, Path], wall: float) -> str:
    """The projection from a sweep's first epochs against its measured ``wall`` seconds, for a finished sweep."""
    unfinished = [f"{row[0]} ({row[1]} of {row[2]} epochs)" for row in rows if row[1] < row[2]]
    if unfinished or wall <= 0:
        raise DeblurError(f"--wall: the back-test needs a finished sweep and a positive time; "
                          f"{', '.join(unfinished) or f'got {wall}'}")
    checks = projection_checks({name: epoch_times(job) for name, job in jobs.items()}, wall, max(r[2] for r in rows))
    lines = [[k, f"{c['projected_minutes']:.2f}", f"{c['measured_minutes']:.2f}", f"{c['projected_vs_measured']:.2f}x"]
             for k, c in checks.items()]
    return (markdown_table(["projected from the first k epochs", "projected min", "measured min", "ratio"], lines)
            + "\n(the k-epoch sweep's time rebuilt from this one: its start-up and scoring plus the first k epochs)\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path, help="a sweep folder (hydra.sweep.dir)")
    p.add_argument("--epochs", type=int, default=None,
                   help="the epochs each job is meant to train (default: each job's own trainer.epochs)")
    p.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    p.add_argument("--wall", type=float, default=None,
                   help="a finished sweep's measured seconds from the command to its summary: adds the back-test")
    args = p.parse_args()
    if args.epochs is not None and args.epochs < 1:
        raise DeblurError(f"--epochs: must be at least 1 (got {args.epochs})")
    jobs = named_sweep_jobs(args.sweep)
    rows = [job_progress(job, args.epochs) for job in jobs.values()]
    table = markdown_table(COLUMNS, rows) + f"\nsweep: {args.sweep}\n"
    if args.wall is not None:
        table += "\n" + back_test(rows, jobs, args.wall)
    print(table)
    if args.out:
        write_text(args.out, table)
    return 0


if __name__ == "__main__":
    run_cli(main)
