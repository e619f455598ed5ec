"""The sweep summary: every job of a sweep folder in one table (summary.csv, summary.md), written by the Hydra
callback ``SweepSummary`` (registered in conf/hydra/default.yaml) when a multirun ends; and the epoch-time helpers
that project a sweep's length from its first epochs."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from deblur_exp.errors import DeblurError
from deblur_exp.metrics import IMAGE_METRICS
from deblur_exp.runs.run_dir import RunDir
from deblur_exp.tables import markdown_table, read_csv, table_cell, write_csv, write_text


# ------------------------------------------------------------------------------------------------ summary
def job_row(job_dir: Path) -> dict:
    run = RunDir(job_dir)
    overrides = yaml.safe_load(run.overrides.read_text()) or []
    row = {"job": job_dir.name, "overrides": " ".join(overrides)}
    if run.slurm.is_file():  # a SLURM job: where its log is
        row["log"] = json.loads(run.slurm.read_text()).get("stdout")  # where the job logged its error
    if run.error.is_file():
        return {**row, "status": "failed", "error": run.error.read_text().strip()}
    if not run.summary.is_file():
        return {**row, "status": "failed", "error": "no summary.json: the job did not finish (killed?)"}
    summary = json.loads(run.summary.read_text())
    row.update(status="ok", model=summary["model"], parameters=summary["parameters"],
               best_val_psnr=summary["best_val_psnr"], best_epoch=summary["best_epoch"],
               epochs=summary.get("epochs_done", summary["epochs"]), train_time_s=summary["train_time_s"],
               samples_per_s=summary["samples_per_s"])
    # The do-nothing baseline in the same columns: the degraded input scored like the restored output.
    row["baseline"] = {"best_val_psnr": summary.get("val_psnr_degraded")}
    for set_name, scores in summary.get("eval", {}).items():
        for name in IMAGE_METRICS:
            row[f"{set_name}_{name}"] = scores[f"{name}_restored"]
            row["baseline"][f"{set_name}_{name}"] = scores[f"{name}_degraded"]
    return row


def objective_column(objective: str) -> str:
    """The summary column holding a run's ``objective``: best_val_psnr, or <eval set>_psnr."""
    return "best_val_psnr" if objective == "val_psnr" else f"{objective}_psnr"


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep (each has the .hydra/overrides.yaml Hydra wrote), sorted by name."""
    return sorted(p for p in sweep_dir.iterdir() if RunDir(p).overrides.is_file())


def named_sweep_jobs(sweep: Path) -> dict[str, Path]:
    """``sweep_jobs`` by folder name, for scripts given a sweep folder: a wrong folder is one clear error."""
    if not sweep.is_dir():
        raise DeblurError(f"{sweep}: no such sweep folder")
    jobs = {p.name: p for p in sweep_jobs(sweep)}
    if not jobs:
        raise DeblurError(f"{sweep}: holds no job folders (is it a sweep folder, made by train.py -m?)")
    return jobs


def metrics_rows(job: Path) -> list[dict]:
    """The job's metrics.csv as dicts of strings, one per finished epoch."""
    metrics = RunDir(job).metrics
    if not metrics.is_file():
        raise DeblurError(f"{job}: no metrics.csv (did the job start?)")
    return read_csv(metrics)


def epoch_times(job: Path) -> list[float]:
    """Seconds each finished epoch of the job took (training and validation), from its metrics.csv."""
    return [float(row["epoch_time_s"]) for row in metrics_rows(job)]


def steady_epoch(times: list[float]) -> float:
    """A job's typical epoch: the median after the first, which pays for start-up and compilation."""
    return statistics.median(times[1:] or times)


def projected_wall(times: dict[str, list[float]], wall_k: float, k: int, full_epochs: int) -> float:
    """Seconds a sweep of ``full_epochs`` would take, projected from its first ``k`` epochs, which took ``wall_k``
    from the command to the summary (``times``: each job's epoch times): the epochs left at the slowest job's
    median epoch after the first (which pays for start-up and compilation). A projection, not a bound: jobs change
    speed as their neighbours start and finish."""
    slowest = max(steady_epoch(t[:k]) for t in times.values())
    return wall_k + (full_epochs - k) * slowest


def projection_checks(times: dict[str, list[float]], wall: float, full_epochs: int) -> dict[str, dict]:
    """For a sweep measured at full length (``wall`` seconds): what a sweep of k epochs (k = 2, 4, 20, 50 below the
    full length) would have projected, beside the measurement. That k-epoch sweep's wall time is rebuilt from this
    one: the same start-up and final scoring (this wall time less the longest job's epochs) plus the longest job's
    first k epochs."""
    overhead = wall - max(sum(t) for t in times.values())
    checks = {}
    for k in (k for k in (2, 4, 20, 50) if k < full_epochs and all(len(t) > k for t in times.values())):
        projected = projected_wall(times, overhead + max(sum(t[:k]) for t in times.values()), k, full_epochs)
        checks[str(k)] = {"projected_minutes": projected / 60, "measured_minutes": wall / 60,
                          "projected_vs_measured": projected / wall}
    return checks


def collect(sweep_dir: Path, objective: str = "val_psnr") -> list[dict]:
    """One row per job folder, best objective (what the sweeper maximised) first, failed jobs last."""
    rows = [job_row(j) for j in sweep_jobs(sweep_dir)]
    column = objective_column(objective)
    return sorted(rows, key=lambda r: (r["status"] != "ok", -(r.get(column) or -math.inf)))


def write_summary(sweep_dir: Path, rows: list[dict]) -> str:
    fields = ["job", "status", "overrides", "model", "parameters", "best_val_psnr", "best_epoch", "epochs"]
    fields += sorted({k for r in rows for k in r if k.endswith(tuple(f"_{m}" for m in IMAGE_METRICS))
                      and k != "best_val_psnr"})
    fields += ["train_time_s", "samples_per_s", "error"]
    write_csv(sweep_dir / "summary.csv", rows, fields)
    shown = [f for f in fields if f not in ("overrides", "error")]
    cells = []
    baseline = shared_baseline(rows)
    if baseline:
        labelled = {**baseline, "job": "-", "model": "degraded input"}
        cells.append([table_cell(f, labelled.get(f, "")) for f in shown])
    for row in rows:
        if row["status"] != "ok":
            cells.append([row["job"], f"failed: {row['error']}"] + [""] * (len(shown) - 2))
        else:
            cells.append([table_cell(f, row.get(f, "")) for f in shown])
    table = markdown_table(shown, cells)
    write_text(sweep_dir / "summary.md", table)
    return table


def shared_baseline(rows: list[dict]) -> dict | None:
    """The degraded input's scores when every finished job has the same ones (same data, degradation and eval
    sets); None when they differ (e.g. a sweep over degradations), where one baseline row would mislead."""
    baselines = [r["baseline"] for r in rows if r["status"] == "ok"]
    if not baselines or any(b.keys() != baselines[0].keys() for b in baselines):
        return None
    for key, value in baselines[0].items():
        if value is None or any(not math.isclose(b[key], value, abs_tol=1e-6) for b in baselines):
            return None
    return baselines[0]


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, tabulate every job in the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = collect(sweep_dir, config.get("objective", "val_psnr"))
        table = write_summary(sweep_dir, rows)
        FAILED_JOBS[:] = [r["job"] for r in rows if r["status"] != "ok"]
        print(f"\nsweep summary ({len(rows)} jobs, {len(FAILED_JOBS)} failed): {sweep_dir / 'summary.md'}\n{table}")
        if FAILED_JOBS:
            print(f"failed: {', '.join(FAILED_JOBS)} (each job's error.txt says why); exit status 1")
        for row in rows:
            if row["status"] != "ok" and row.get("log"):
                print(f"  {row['job']}: SLURM log {row['log']}")


# The jobs of this process's sweep that failed, as SweepSummary found them: scripts/train.py -m exits 1 when there
# are any, so that a shell script, CI or a scheduler running the sweep learns that the table has failed rows.
FAILED_JOBS: list[str] = []
