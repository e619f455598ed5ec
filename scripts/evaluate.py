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

from deblur_exp.cli import (
    add_compare_option,
    add_eval_options,
    comparison_image,
    default_data_dir,
    default_output_dir,
    finish,
    make_output_dir,
    read_image_sets,
    run_cli,
)
from deblur_exp.data.degrade import degradation_option, describe_degradation
from deblur_exp.data.images import read_folder
from deblur_exp.errors import DeblurError
from deblur_exp.evaluation.compare import Comparison, compare_models, scoring_protocol, unique_labels
from deblur_exp.evaluation.scoring import PROTOCOL, ScoringOptions, load_restorer, under
from deblur_exp.runs.locate import find_checkpoints
from deblur_exp.runtime import resolve_device


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders, sweep folders or checkpoint files")
    add_eval_options(p, "sets")
    p.add_argument("--images", type=Path, help="another folder of sharp images to score")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="default: $DEBLUR_DATA_DIR or data/")
    p.add_argument("--out", type=Path, help="output folder (default: outputs/eval/<date>_<time>)")
    add_eval_options(p, "tile", "tile_overlap", "self_ensemble", *PROTOCOL,
                     from_checkpoints=(*PROTOCOL, "self_ensemble"))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--degradation", help="score under this conf/degradation option instead of each model's own "
                                         "(e.g. a model trained on one degradation, tested on another)")
    add_compare_option(p)
    p.add_argument("--no-figures", action="store_true", help="skip the per-image figures")
    return p.parse_args()


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
    if args.degradation:  # every model scored on the same inputs, degraded this way
        chosen = degradation_option(args.degradation)
        restorers = [under(r, chosen) for r in restorers]
        print(f"degradation {chosen.name} for every model: {describe_degradation(chosen)}")
    unique_labels(restorers)
    given = {key: getattr(args, key) for key in PROTOCOL}
    options = ScoringOptions(tile=args.tile, tile_overlap=args.tile_overlap, self_ensemble=args.self_ensemble)
    options, protocol_line = scoring_protocol(options, given, restorers)
    print(protocol_line)
    ensembled = [r.label for r in restorers if args.self_ensemble is None and r.self_ensemble]
    if ensembled:
        print(f"x8 self-ensemble, as the checkpoint asks (--no-self-ensemble for one pass): {', '.join(ensembled)}")

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
    args.compare = comparison_image(args.compare, sets)
    comparison = Comparison(out, sets, options, figures=not args.no_figures, compare=args.compare)
    compare_models(restorers, comparison, device)
    print((out / "summary.md").read_text())
    problems += comparison.problems
    return finish(problems, f"results in {out}")


if __name__ == "__main__":
    run_cli(main)
