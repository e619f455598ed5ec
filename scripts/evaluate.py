"""Score checkpoints on whole images and compare them.

    python scripts/evaluate.py RUN [RUN ...] [--sets Set5 Set14] [--images FOLDER] [--out DIR]
                               [--tile N] [--self-ensemble] [--[no-]y-channel] [--crop-border N] [--device D]

RUN is a run folder (its eval.checkpoint: best.pt unless the run chose last), a sweep folder (every run in it)
or a checkpoint file. Each image is degraded with the checkpoint's own degradation settings, restored, and
scored against the sharp original, on the checkpoints' own scoring protocol (their eval.y_channel and
eval.crop_border; --y-channel/--no-y-channel and --crop-border override it). Writes into --out:
<model>/<set>.csv per image, summary.csv / summary.md ranking the models by mean restored PSNR, the three-panel
figure per image, and compare_<image>.png with one restored panel per model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from deblur_exp.cli import (add_eval_options, default_data_dir, default_output_dir, make_output_dir, read_image_sets,
                            run_cli, warn_if_not_shown)
from deblur_exp.data.degrade import degrade
from deblur_exp.errors import DeblurError
from deblur_exp.data.images import read_folder
from deblur_exp.evaluation import IMAGE_FIELDS, PROTOCOL, evaluate_set, load_restorer, summarize
from deblur_exp.figures import detail_box, three_panel, zoomed_comparison
from deblur_exp.metrics import IMAGE_METRICS, psnr
from deblur_exp.models import count_parameters
from deblur_exp.run_dir import find_checkpoints
from deblur_exp.runtime import resolve_device
from deblur_exp.tables import markdown_table, table_cell, write_csv, write_text


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders, sweep folders or checkpoint files")
    add_eval_options(p, "sets")
    p.add_argument("--images", type=Path, help="another folder of sharp images to score")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="default: $DEBLUR_DATA_DIR or data/")
    p.add_argument("--out", type=Path, help="output folder (default: outputs/eval/<date>_<time>)")
    add_eval_options(p, "tile", "tile_overlap", "self_ensemble", *PROTOCOL, from_checkpoints=PROTOCOL)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--compare", default="butterfly", help="image for the side-by-side model figure")
    p.add_argument("--no-figures", action="store_true", help="skip the per-image figures")
    return p.parse_args()


def unique_labels(restorers) -> None:
    """Label models by architecture; add the run folder where two runs share one."""
    archs = [r.arch for r in restorers]
    for r in restorers:
        if archs.count(r.arch) == 1:
            r.label = r.arch


def scoring_protocol(args: argparse.Namespace, restorers) -> None:
    """Fill the protocol options not given on the command line from the checkpoints' own eval settings, so an
    SR-protocol checkpoint (Y, 3-pixel crop) is scored as its run was; checkpoints that disagree need the flag."""
    sources = []
    for key in PROTOCOL:
        flag = "--" + key.replace("_", "-")
        if getattr(args, key) is not None:
            sources.append(f"{key}={getattr(args, key)} (given)")
            continue
        values = {r.protocol[key] for r in restorers}
        if len(values) > 1:
            raise DeblurError(f"{flag}: the checkpoints were scored with different eval.{key} "
                              f"({', '.join(map(str, sorted(values)))}); give {flag} to score them alike")
        setattr(args, key, values.pop())
        sources.append(f"{key}={getattr(args, key)} (the checkpoints')")
    print("scoring: " + ", ".join(sources))


def main() -> int:
    args = parse_args()
    if (args.crop_border is not None and args.crop_border < 0) or (args.tile is not None and args.tile < 1):
        raise DeblurError("--crop-border must be >= 0 and --tile >= 1")
    device = resolve_device(args.device)
    out = args.out or default_output_dir("eval")
    problems: list[str] = []

    checkpoints = [c for run in args.runs for c in find_checkpoints(run)]
    restorers = []
    for checkpoint in checkpoints:
        try:
            restorers.append(load_restorer(checkpoint, device))
        except DeblurError as exc:
            problems.append(str(exc))
    if not restorers:
        raise DeblurError("no usable checkpoint: " + "; ".join(problems))
    unique_labels(restorers)
    scoring_protocol(args, restorers)

    sets, bad = read_image_sets(args.sets, args.data_dir)
    problems += bad
    if args.images:
        if not args.images.is_dir():
            raise DeblurError(f"--images: {args.images} is not a folder")
        sets[args.images.name], bad = read_folder(args.images)
        problems += bad
    if not any(sets.values()):
        raise DeblurError("nothing to score: give --sets that exist or --images with readable images")
    make_output_dir(out)
    warn_if_not_shown(args.compare, sets)

    options = dict(tile=args.tile, tile_overlap=args.tile_overlap, self_ensemble=args.self_ensemble,
                   y_channel=args.y_channel, crop_border=args.crop_border)
    summary, compare = [], {}
    for restorer in restorers:
        row = {"model": restorer.label, "arch": restorer.arch, "parameters": count_parameters(restorer.model),
               "epoch": restorer.epoch, "checkpoint": str(restorer.checkpoint)}
        for set_name, images in sets.items():
            def keep(image, sharp, degraded, restored, scores, set_name=set_name):
                if not args.no_figures:
                    three_panel(out / restorer.label / "figures" / set_name / f"{image.name}.png", sharp,
                                degraded, restored, scores["psnr_degraded"], scores["psnr_restored"], image.name)
                if image.name == args.compare:
                    compare.setdefault("sharp", sharp)
                    compare[restorer.label] = (restored, scores["psnr_restored"])

            rows, bad = evaluate_set(restorer, images, device, on_image=keep, **options)
            problems += bad
            write_csv(out / restorer.label / f"{set_name}.csv", rows, IMAGE_FIELDS)
            means = summarize(rows)
            for name in IMAGE_METRICS:
                row[f"{set_name}_{name}"] = means[f"{name}_restored"]
                row[f"{set_name}_{name}_degraded"] = means[f"{name}_degraded"]
        row["mean_psnr"] = float(np.mean([row[f"{s}_psnr"] for s in sets]))
        summary.append(row)

    summary.sort(key=lambda r: -r["mean_psnr"] if np.isfinite(r["mean_psnr"]) else np.inf)
    write_summary(out, summary, list(sets))
    if "sharp" in compare:
        write_comparison(out, args.compare, compare, restorers[0])
    for problem in problems:
        print(f"warning: {problem}")
    print(f"results in {out}")
    return 1 if problems else 0


def write_summary(out: Path, summary: list[dict], set_names: list[str]) -> None:
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
    print(table)


def write_comparison(out: Path, name: str, compare: dict, reference) -> None:
    sharp = compare.pop("sharp")
    degraded = degrade(sharp, reference.degradation)
    row = [("Sharp", sharp), (f"Degraded ({psnr(degraded, sharp):.2f} dB)", degraded)]
    row += [(f"{label} ({score:.2f} dB)", restored) for label, (restored, score) in compare.items()]
    zoomed_comparison(out / f"compare_{name}.png", [row], detail_box(sharp), name)


if __name__ == "__main__":
    run_cli(main)
