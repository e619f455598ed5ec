"""Several trained models scored on the same whole images and ranked: what ``scripts/evaluate.py`` writes.

Each model restores every image degraded with its own training degradation, on one scoring protocol (the
checkpoints' own eval.y_channel and eval.crop_border unless the caller sets them). Writes <model>/<set>.csv per
image, summary.csv / summary.md ranking the models by mean restored PSNR, the three-panel figure per image, and
compare_<image>.png with one restored panel per model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from deblur_exp.data.degrade import degrade
from deblur_exp.data.images import Image
from deblur_exp.errors import DeblurError
from deblur_exp.evaluation.figures import detail_box, three_panel, zoomed_comparison
from deblur_exp.evaluation.scoring import (
    IMAGE_FIELDS,
    PROTOCOL,
    Restorer,
    ScoringOptions,
    evaluate_set,
    figure_title,
    summarize,
)
from deblur_exp.metrics import IMAGE_METRICS, psnr
from deblur_exp.models import count_parameters
from deblur_exp.progress import log_scored
from deblur_exp.tables import markdown_table, table_cell, write_csv, write_text


def unique_labels(restorers: list[Restorer]) -> None:
    """Label models by architecture; keep the run folder in the label where two runs share one."""
    archs = [r.arch for r in restorers]
    for restorer in restorers:
        if archs.count(restorer.arch) == 1:
            restorer.label = restorer.arch


def scoring_protocol(options: ScoringOptions, given: dict, restorers: list[Restorer]) -> tuple[ScoringOptions, str]:
    """``options`` with the PROTOCOL keys not ``given`` (None) taken from the checkpoints' own eval settings, so an
    SR-protocol checkpoint (Y, 3-pixel crop) is scored as its run was; checkpoints that disagree need the key
    given. Returns the options and a line saying where each value came from."""
    chosen, sources = {}, []
    for key in PROTOCOL:
        if given.get(key) is not None:
            chosen[key] = given[key]
            sources.append(f"{key}={chosen[key]} (given)")
            continue
        values = {r.protocol[key] for r in restorers}
        if len(values) > 1:
            flag = "--" + key.replace("_", "-")
            raise DeblurError(f"{flag}: the checkpoints were scored with different eval.{key} "
                              f"({', '.join(map(str, sorted(values)))}); give {flag} to score them alike")
        chosen[key] = values.pop()
        sources.append(f"{key}={chosen[key]} (the checkpoints')")
    return replace(options, **chosen), "scoring: " + ", ".join(sources)


@dataclass
class Comparison:
    """What the models are compared on and where it goes."""

    out: Path
    sets: dict[str, list[Image]]
    options: ScoringOptions
    compare: str  # the image shown side by side for every model (cli.comparison_image)
    figures: bool = True  # a three-panel figure per model and image
    problems: list[str] = field(default_factory=list)  # images that could not be scored


def compare_models(restorers: list[Restorer], comparison: Comparison, device) -> list[dict]:
    """Score every model on every set; write the tables and figures; returns the summary rows, best first."""
    summary, shown = [], {}
    for done, restorer in enumerate(restorers, start=1):
        summary.append(score_model(restorer, comparison, device, shown))
        log_scored(restorer.label, done, len(restorers), {s: summary[-1][f"{s}_psnr"] for s in comparison.sets})
    summary.sort(key=lambda r: -r["mean_psnr"] if np.isfinite(r["mean_psnr"]) else np.inf)
    write_summary(comparison.out, summary, list(comparison.sets))
    if "sharp" in shown:
        write_comparison(comparison.out, comparison.compare, shown, restorers[0])
    return summary


def score_model(restorer: Restorer, comparison: Comparison, device, shown: dict) -> dict:
    """One model's summary row (mean scores per set); its per-image tables and figures on the way."""
    out = comparison.out
    row = {"model": restorer.label, "arch": restorer.arch, "parameters": count_parameters(restorer.model),
           "epoch": restorer.epoch, "checkpoint": str(restorer.checkpoint)}
    for set_name, images in comparison.sets.items():
        def keep(image, sharp, degraded, restored, scores, set_name=set_name):
            if comparison.figures:
                three_panel(out / restorer.label / "figures" / set_name / f"{image.name}.png", sharp, degraded,
                            restored, scores, figure_title(image.name, restorer.degradation, sharp))
            if image.name == comparison.compare:
                shown.setdefault("sharp", sharp)
                shown[restorer.label] = (restored, scores["psnr_restored"])

        rows, bad = evaluate_set(restorer, images, device, comparison.options, on_image=keep)
        comparison.problems += bad
        write_csv(out / restorer.label / f"{set_name}.csv", rows, IMAGE_FIELDS)
        means = summarize(rows)
        for name in IMAGE_METRICS:
            row[f"{set_name}_{name}"] = means[f"{name}_restored"]
            row[f"{set_name}_{name}_degraded"] = means[f"{name}_degraded"]
    row["mean_psnr"] = float(np.mean([row[f"{s}_psnr"] for s in comparison.sets]))
    return row


def write_summary(out: Path, summary: list[dict], set_names: list[str]) -> str:
    """summary.csv and summary.md: the models ranked, under a row for the degraded input; returns the table."""
    fields = ["rank", "model", "arch", "parameters", "epoch", "mean_psnr"]
    fields += [f"{s}_{name}{which}" for s in set_names for which in ("", "_degraded") for name in IMAGE_METRICS]
    for rank, row in enumerate(summary, 1):
        row["rank"] = rank
    write_csv(out / "summary.csv", summary, fields + ["checkpoint"])
    labels = " / ".join(m.label for m in IMAGE_METRICS.values())
    header = ["rank", "model", "parameters", "mean PSNR"] + [f"{s} {labels}" for s in set_names]
    first = summary[0]
    degraded_mean = float(np.mean([first[f"{s}_psnr_degraded"] for s in set_names]))  # same rule as mean_psnr

    def scores(row, suffix=""):
        return [" / ".join(table_cell(f"{s}_{name}", row[f"{s}_{name}{suffix}"]) for name in IMAGE_METRICS)
                for s in set_names]

    rows = [["-", "degraded input", "-", table_cell("mean_psnr", degraded_mean)] + scores(first, "_degraded")]
    for row in summary:
        rows.append([row["rank"], row["model"], table_cell("parameters", row["parameters"]),
                     table_cell("mean_psnr", row["mean_psnr"])] + scores(row))
    table = markdown_table(header, rows)
    write_text(out / "summary.md", table)
    return table


def write_comparison(out: Path, name: str, shown: dict, reference: Restorer) -> None:
    """compare_<name>.png: Sharp, Degraded, then each model's restoration, zoomed on the busiest detail."""
    sharp = shown["sharp"]
    degraded = degrade(sharp, reference.degradation)
    row = [("Sharp", sharp), (f"Degraded ({psnr(degraded, sharp):.2f} dB)", degraded)]
    models = {label: pair for label, pair in shown.items() if label != "sharp"}
    row += [(f"{label} ({score:.2f} dB)", restored) for label, (restored, score) in models.items()]
    zoomed_comparison(out / f"compare_{name}.png", [row], detail_box(sharp), name)
