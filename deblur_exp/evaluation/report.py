"""The results report: finished runs -> one table, learning curves and a zoomed model comparison.

``scripts/report.py`` is the command. Each run's checkpoint (its eval.checkpoint) is scored on whole test images in both
protocols people compare with: RGB (the seed notebook's) and the super-resolution literature's (BT.601 luma,
``y_crop`` pixels shaved from each side). The seed notebook's own reported figures sit beside ours.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from deblur_exp.data.degrade import DegradationConfig, degrade, sharp_for
from deblur_exp.data.images import Image
from deblur_exp.errors import DeblurError
from deblur_exp.evaluation.figures import detail_box, learning_curves, zoomed_comparison
from deblur_exp.evaluation.restore import restore_image
from deblur_exp.evaluation.scoring import Restorer, load_restorer, score_pair
from deblur_exp.metrics import IMAGE_METRICS
from deblur_exp.progress import log_scored
from deblur_exp.runs.run_dir import RunDir, run_checkpoint
from deblur_exp.tables import markdown_table, read_csv, table_cell, write_csv, write_text

# What the seed notebook reported for its five models (202 epochs, experiment=seed). Its validation PSNR is the
# PSNR of each batch's MSE, averaged over batches; ours is the mean of per-patch PSNR (a little lower on the
# same weights, since the mean of logs is below the log of the mean).
SEED_REPORTED = {
    "dncnn": {"butterfly": 26.66, "val": "30.1-30.4"},
    "deblurcnn_res": {"butterfly": 26.46, "val": "29.8"},
    "edsr": {"butterfly": 25.96, "val": "30.4-30.8"},
    "deblurcnn": {"butterfly": 24.93, "val": "27"},
    "deblursuperrescnn": {"butterfly": 23.66, "val": "25.8"},
}
PROTOCOLS = ("rgb", "y")  # rgb: all three channels, no crop; y: BT.601 luma with y_crop pixels shaved


@dataclass
class RunResult:
    """One finished run: where it is, how it was trained, and its whole-image scores."""

    folder: Path
    summary: dict
    restorer: Restorer  # on the CPU until scored
    metrics: list[dict]
    recipe: str
    during: list[dict] = field(default_factory=list)  # eval/during_training.csv's rows (eval.every), if any
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # "<set>_<protocol>" -> means
    compare: np.ndarray | None = None  # the restored comparison image
    compare_psnr: float = math.nan

    @property
    def arch(self) -> str:
        return self.summary["model"]

    @property
    def config(self) -> dict:
        return self.restorer.config

    @property
    def label(self) -> str:
        return f"{self.arch} ({self.recipe})"


def find_runs(targets: list[Path]) -> list[Path]:
    """Finished run folders (with summary.json and a checkpoint) in the given run or sweep folders."""
    runs = []
    for target in targets:
        if not target.is_dir():
            raise DeblurError(f"{target}: no such run or sweep folder")
        found = [target] if RunDir(target).summary.is_file() else sorted(
            p.parent for p in target.glob(f"*/{RunDir(target).summary.name}"))
        found = [r for r in found if run_checkpoint(r) is not None]
        if not found:
            raise DeblurError(f"{target}: holds no finished run (a folder with summary.json and checkpoints/); "
                              f"is training still going, or did it fail (see its error.txt)?")
        runs += found
    return runs


def recipe_of(folder: Path, config: dict) -> str:
    """The recipe a run followed: its experiment= override, else the project's defaults, with the choices that
    tell the seed's and the project's recipes apart (data, schedule, batch, loss). Model settings (a dropout
    rate only some architectures take) are not part of it: one sweep over models is one recipe."""
    saved = RunDir(folder).overrides
    overrides = (yaml.safe_load(saved.read_text()) or []) if saved.is_file() else []
    experiment = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == "experiment"),
                      "defaults")
    schedule = str(config["scheduler"].get("_target_") or "constant").rsplit(".", 1)[-1]
    trainer = config["trainer"]
    return (f"{experiment}: degrade per {config['degradation']['apply_to']}, split by {config['data']['split']}; "
            f"{schedule}, lr {config['optimizer']['lr']:g}, batch {trainer['batch_size']}, "
            f"{trainer['loss']}, {'fp32' if trainer.get('precision', '32') == '32' else trainer['precision']}")


def load_run(folder: Path) -> RunResult:
    run = RunDir(folder)
    summary = json.loads(run.summary.read_text())
    restorer = load_restorer(run_checkpoint(folder), label=summary["model"])
    during = read_csv(run.during_training) if run.during_training.is_file() else []
    return RunResult(folder, summary, restorer, read_csv(run.metrics), recipe_of(folder, restorer.config),
                     during=during)


def score_runs(runs: list[RunResult], sets: dict[str, list[Image]], device, y_crop: int, compare: str
               ) -> dict[str, dict[str, float]]:
    """Fill each run's scores; returns the degraded input's scores (the same for every run whose degradation
    is the same; the runs of one report must share it, or the baseline row would mislead)."""
    baseline: dict[str, dict[str, float]] = {}
    degradations = {json.dumps(r.config["degradation"] | {"apply_to": None}, sort_keys=True) for r in runs}
    if len(degradations) > 1:
        raise DeblurError("the runs use different degradations; report them separately (one report per "
                          "degradation, so the degraded-input row holds for every run)")
    for done, run in enumerate(runs, start=1):
        restorer = run.restorer
        restorer.model.to(device)
        protocols = protocol_options(restorer, y_crop)
        for set_name, images in sets.items():
            rows = {p: [] for p in protocols}
            for image in images:
                sharp = sharp_for(image.rgb, restorer.color, restorer.degradation, image.grey)
                degraded = degrade(sharp, restorer.degradation)
                restored = restore_image(restorer.model, degraded, device)
                for protocol, options in protocols.items():
                    rows[protocol].append(score_pair(sharp, degraded, restored, **options, device=device))
                if image.name == compare and run.compare is None:
                    first = rows[next(iter(protocols))][-1]  # RGB, or Y for a luma-only run (see test_table)
                    run.compare, run.compare_psnr = restored, first["psnr_restored"]
                    baseline.setdefault("compare", {"image": sharp, "degraded": degraded,
                                                    "psnr": first["psnr_degraded"]})
            for protocol in PROTOCOLS:
                scored = rows.get(protocol)
                if not scored:  # no RGB score for a luma-only run: the table shows "-"
                    run.scores[f"{set_name}_{protocol}"] = {m: math.nan for m in IMAGE_METRICS}
                    continue
                means = {k: float(np.mean([r[k] for r in scored])) for k in scored[0]}
                run.scores[f"{set_name}_{protocol}"] = {m: means[f"{m}_restored"] for m in IMAGE_METRICS}
                baseline.setdefault(f"{set_name}_{protocol}", {m: means[f"{m}_degraded"] for m in IMAGE_METRICS})
        shown = next(iter(protocols))  # RGB, or Y for a luma-only run
        psnr = {f"{s} {shown.upper()}": run.scores[f"{s}_{shown}"]["psnr"] for s in sets}
        log_scored(run.folder.name, done, len(runs), psnr)
    return baseline


def protocol_options(restorer: Restorer, y_crop: int) -> dict[str, dict]:
    """score_pair options per protocol this run can be scored in: a run trained on the luma alone
    (data.color=y) has no RGB output, and its images already are the Y channel."""
    if restorer.color == "y":
        return {"y": {"crop_border": y_crop}}
    return {"rgb": {}, "y": {"y_channel": True, "crop_border": y_crop}}


def seed_comparable(run: RunResult) -> bool:
    """The seed's reported figures apply to RGB runs under the seed's degradation (the schema's defaults)."""
    settings = {k: v for k, v in run.config["degradation"].items() if k not in ("name", "apply_to")}
    seed = {k: v for k, v in asdict(DegradationConfig(name="seed")).items() if k not in ("name", "apply_to")}
    return run.restorer.color == "rgb" and settings == seed


def _num(value, digits=2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def training_table(runs: list[RunResult]) -> str:
    header = ["recipe", "model", "parameters", "epochs", "stopped by", "train time", "device",
              "best val PSNR (ours)", "degraded val PSNR", "seed's val PSNR"]
    rows = []
    for run in runs:
        s = run.summary
        epochs = table_cell("epochs", s.get("epochs_done", s["epochs"]))
        rows.append([run.recipe, run.arch, f"{s['parameters']:,}", epochs, s.get("stopped_by", "epochs"),
                     f"{s['train_time_s'] / 60:.1f} min", s.get("device", "-"), _num(s["best_val_psnr"]),
                     _num(s.get("val_psnr_degraded")), SEED_REPORTED.get(run.arch, {}).get("val", "-")])
    return markdown_table(header, rows)


def test_table(runs: list[RunResult], baseline: dict, set_names: list[str], y_crop: int, compare: str) -> str:
    header = ["recipe", "model"]
    labels = " / ".join(m.label for m in IMAGE_METRICS.values())
    for set_name in set_names:
        header += [f"{set_name} RGB {labels}", f"{set_name} Y (crop {y_crop}) {labels}"]
    header += [f"{compare} RGB PSNR", f"seed's {compare} RGB PSNR"]

    def cells(scores: dict) -> list[str]:
        return [" / ".join(_num(scores.get(f"{s}_{p}", {}).get(name), m.digits) for name, m in IMAGE_METRICS.items())
                for s in set_names for p in PROTOCOLS]

    rows = [["-", "degraded input", *cells(baseline), _num(baseline.get("compare", {}).get("psnr")), "-"]]
    for run in runs:
        rgb = run.restorer.color == "rgb"
        seed = SEED_REPORTED.get(run.arch, {}).get("butterfly") if compare == "butterfly" else None
        rows.append([run.recipe, run.arch, *cells(run.scores), _num(run.compare_psnr if rgb else None),
                     _num(seed if seed_comparable(run) else None)])
    return markdown_table(header, rows)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu} x {torch.get_num_threads()} threads{gpu}; torch {torch.__version__}"


@dataclass
class ReportRequest:
    """What a report covers and how it was asked for (its command goes into results.md)."""

    set_names: list[str]
    y_crop: int
    compare: str
    command: str


def write_report(out: Path, runs: list[RunResult], baseline: dict, request: ReportRequest) -> str:
    """results.md (and results.csv) for people and for diffing."""
    set_names, y_crop, compare, command = request.set_names, request.y_crop, request.compare, request.command
    text = "\n".join([
        f"# Results: {len(runs)} runs",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `{command}` on {machine()} (scoring; training device per "
        "row). Whole test images degraded with each run's own degradation, restored in one pass by the checkpoint "
        "its eval.checkpoint names (best.pt unless the run chose last.pt). RGB: all three channels, no crop. Y: "
        f"ITU-R BT.601 luma with {y_crop} pixels shaved from each side (the super-resolution papers' protocol); a "
        "run trained on the luma alone (data.color=y) has only Y scores. PSNR in dB, data range 1.0.",
        "",
        "## Training",
        "",
        training_table(runs),
        "Best val PSNR (ours) is the mean of per-patch PSNR over the run's validation patches; the seed notebook "
        "reported the PSNR of each batch's MSE averaged over batches, which is higher on the same weights. With "
        "`split by image` the validation patches come from held-out images, so that column is not comparable "
        "across recipes; the test sets below are.",
        "",
        "## Test images",
        "",
        test_table(runs, baseline, set_names, y_crop, compare),
        f"The seed's {compare} column is the figure the seed notebook printed for its model after 202 epochs, shown "
        "for RGB runs under the seed's degradation.",
        "",
    ])
    write_text(out / "results.md", text)
    rows = [{"recipe": r.recipe, "model": r.arch, "folder": str(r.folder), **{k: r.summary.get(k) for k in (
        "parameters", "epochs", "stopped_by", "train_time_s", "device", "best_val_psnr", "val_psnr_degraded")},
        **{f"{key}_{m}": v for key, scores in r.scores.items() for m, v in scores.items()},
        f"{compare}_psnr": r.compare_psnr} for r in runs]
    fields = list(rows[0]) if rows else []
    write_csv(out / "results.csv", rows, fields)
    return text


def degraded_baselines(runs: list[RunResult]) -> dict[str, float]:
    """The degraded input's validation PSNR as curves.png draws it: one line when every run shares it, else one
    per recipe."""
    values = {run.recipe: run.summary["val_psnr_degraded"] for run in runs
              if run.summary.get("val_psnr_degraded") is not None}
    if len(set(values.values())) == 1:
        return {"degraded input": next(iter(values.values()))}
    return {f"degraded input ({recipe})": value for recipe, value in values.items()}


def write_figures(out: Path, runs: list[RunResult], baseline: dict, compare: str) -> None:
    """curves.png for all runs together; compare_<image>.png with one row pair per recipe."""
    baselines = degraded_baselines(runs)
    learning_curves(out / "curves.png", {r.label: r.metrics for r in runs}, baselines,
                    during={r.label: r.during for r in runs})
    shown = baseline.get("compare")
    if shown is None:
        return
    sharp, degraded = shown["image"], shown["degraded"]
    rows = []
    for recipe in dict.fromkeys(r.recipe for r in runs):
        row = [("Sharp", sharp), (f"Degraded ({shown['psnr']:.2f} dB)", degraded)]
        row += [(f"{r.arch} ({r.compare_psnr:.2f} dB)", r.compare) for r in runs
                if r.recipe == recipe and r.compare is not None]
        rows.append(row)
    titles = " | ".join(dict.fromkeys(r.recipe for r in runs))
    zoomed_comparison(out / f"compare_{compare}.png", rows, detail_box(sharp), f"{compare}: {titles}")
