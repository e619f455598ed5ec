"""Turn finished runs into the results report: a table, learning curves and a zoomed model comparison.

    python scripts/report.py SWEEP_OR_RUN [SWEEP_OR_RUN ...] [--out DIR] [--sets Set5 Set14] [--compare butterfly]

Each run's checkpoint (its eval.checkpoint: best.pt unless the run chose last) is scored on whole images of the test
sets in RGB and in Y with a 3-pixel crop (the super-resolution protocol), beside the degraded input and the seed
notebook's reported figures. Writes DIR/results.md (and results.csv), DIR/curves.png (validation PSNR and losses per
epoch, every run on one axes; whole-image PSNR per set too for runs trained with eval.every) and
DIR/compare_<image>.png (each model's restoration of one image with a zoomed crop).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from deblur_exp.cli import (
    add_compare_option,
    comparison_image,
    default_data_dir,
    default_output_dir,
    finish,
    make_output_dir,
    read_image_sets,
    run_cli,
)
from deblur_exp.data.degrade import degradation_option
from deblur_exp.errors import DeblurError
from deblur_exp.evaluation.report import (
    ReportRequest,
    find_runs,
    load_run,
    score_runs,
    write_figures,
    write_report,
)
from deblur_exp.evaluation.scoring import under
from deblur_exp.runtime import resolve_device


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders or sweep folders (every finished job in them)")
    p.add_argument("--degradation", help="score under this conf/degradation option instead of the runs' own")
    p.add_argument("--out", type=Path, help="folder for results.md, curves.png, compare_*.png "
                                            "(default: outputs/reports/<date>_<time>)")
    p.add_argument("--sets", nargs="+", default=["Set5", "Set14"],
                   help="folders under --data-dir (default: Set5 Set14)")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="default: $DEBLUR_DATA_DIR or data/")
    add_compare_option(p)
    p.add_argument("--y-crop", type=int, default=3, help="pixels shaved per side for the Y-channel scores (default 3)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    if args.y_crop < 0:
        raise DeblurError("--y-crop must be >= 0")
    runs = [load_run(folder) for folder in find_runs(args.runs)]  # first: a typo in them is the likeliest error
    if args.degradation:  # every run scored on the same inputs, degraded this way
        chosen = degradation_option(args.degradation)
        for run in runs:
            run.restorer = under(run.restorer, chosen)
    device = resolve_device(args.device)
    sets, problems = read_image_sets(args.sets, args.data_dir)
    runs.sort(key=lambda r: r.recipe)
    out = args.out or default_output_dir("reports")
    make_output_dir(out)
    args.compare = comparison_image(args.compare, sets)
    baseline = score_runs(runs, sets, device, args.y_crop, args.compare)
    command = "python scripts/report.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(write_report(out, runs, baseline, ReportRequest(list(sets), args.y_crop, args.compare, command)))
    write_figures(out, runs, baseline, args.compare)
    return finish(problems, f"report in {out}: results.md, results.csv, curves.png, compare_{args.compare}.png")


if __name__ == "__main__":
    run_cli(main)
