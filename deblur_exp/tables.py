"""Tables and records on disk: CSV, JSON and Markdown writers (atomic: a reader never sees half a file) and the
number formats the Markdown tables use. Runs, sweeps, evaluation, reports and benchmarks all write through here."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from deblur_exp.atomic import atomic_write, write_failed
from deblur_exp.metrics import IMAGE_METRICS


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    """Write a table atomically: readers never see a half-written file."""
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: _fmt(v) for k, v in row.items()} for row in rows)


def read_csv(path: Path) -> list[dict]:
    """A table's rows as dicts of strings (metrics.csv, eval/during_training.csv, ...)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temp file + rename)."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=float))


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table_cell(field: str, value) -> str:
    """A number as the markdown tables show it, by its column: a metric (<...>_psnr, <...>_ssim) to its digits
    (PSNR to 0.01 dB, SSIM to 1e-4), times to 0.1 s, samples/s and parameter counts with separators."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if field == "parameters" else str(value)
    if not isinstance(value, float):
        return value
    metric = next((m for name, m in IMAGE_METRICS.items() if field.endswith(f"_{name}")), None)
    if metric is not None:
        return f"{value:.{metric.digits}f}"
    if field == "epochs":  # a last epoch cut by trainer.max_time counts as the share it ran
        return f"{value:g}"
    if field == "samples_per_s":
        return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"
    return f"{value:.1f}"


def _fmt(value):
    return f"{value:.4f}" if isinstance(value, float) else value


class MetricsTable:
    """A CSV table of rows keyed by epoch (metrics.csv; eval/during_training.csv), each row on disk as soon as it
    is appended; on resume, rows past the checkpoint's epoch are dropped."""

    def __init__(self, path: Path, keep_through_epoch: int, fields: list[str]):
        self.path, self.fields = path, fields
        rows = []
        if path.exists() and keep_through_epoch > 0:
            rows = [r for r in read_csv(path) if int(r["epoch"]) <= keep_through_epoch]
        with atomic_write(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict[str, Any]) -> None:
        try:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.fields).writerow(row)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise write_failed(self.path, exc) from None


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of a file name (Python keeps them as lone surrogates) shown as \\xNN
    escapes: what tables, logs and figure titles can hold."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
