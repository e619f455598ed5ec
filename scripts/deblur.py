"""Restore your own photos with a trained model.

    python scripts/deblur.py [--model RUN_OR_CHECKPOINT_OR_pretrained:NAME] INPUT [INPUT ...] [--out DIR]
                             [--simulate] [--tile N] [--self-ensemble] [--device D]

INPUT is an image file or a folder of them; without --model the package's default model restores them. Each
restored image is written to DIR (default outputs/restored/<date>_<time>) as <name>_restored.png with a before/after
figure; inputs are never overwritten. With --simulate the input is taken as sharp ground truth: it is degraded with
the model's own training degradation first, then restored, and PSNR/SSIM of degraded and restored are reported
(metrics.csv, with a mean row) with the Sharp | Degraded | Restored figure. Files that cannot be used are reported
by name, the rest are still processed, and the exit status is 1 if anything failed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deblur_exp.cli import add_eval_options, default_output_dir, make_output_dir, run_cli
from deblur_exp.data.degrade import describe_degradation
from deblur_exp.data.images import MAX_PIXELS, in_format_of, read_alpha, read_image_info, scan_folder, write_image
from deblur_exp.errors import DeblurError
from deblur_exp.evaluation.figures import before_after, three_panel
from deblur_exp.evaluation.restore import restore_photo, to_uint8
from deblur_exp.evaluation.scoring import (
    IMAGE_FIELDS,
    ScoringOptions,
    drawn_values,
    figure_title,
    load_restorer,
    own_options,
    score_image,
    viewable,
)
from deblur_exp.metrics import describe_scores
from deblur_exp.progress import bar_off
from deblur_exp.runs.locate import find_checkpoints
from deblur_exp.runs.pretrained import DEFAULT, PREFIX
from deblur_exp.runtime import resolve_device
from deblur_exp.tables import printable, write_csv


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=PREFIX + DEFAULT,
                   help=f"run folder, checkpoint file or pretrained:NAME (default: {PREFIX + DEFAULT})")
    p.add_argument("inputs", nargs="+", type=Path, help="image files or folders")
    p.add_argument("--out", type=Path, help="folder for the restored images and figures "
                                            "(default: outputs/restored/<date>_<time>)")
    p.add_argument("--simulate", action="store_true", help="degrade the (sharp) inputs first, then score")
    add_eval_options(p, "tile", "tile_overlap", "self_ensemble", from_checkpoints=("self_ensemble",))
    p.add_argument("--max-megapixels", type=float, default=MAX_PIXELS / 1e6,
                   help=f"larger inputs are skipped, named (default {MAX_PIXELS / 1e6:.0f})")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return p.parse_args()


def expand_inputs(inputs: list[Path], problems: list[str]) -> list[Path]:
    files = []
    for item in inputs:
        if item.is_dir():
            found, bad = scan_folder(item)
            files += found
            problems += bad
        elif item.is_file():
            files.append(item)
        else:
            problems.append(f"{item}: no such file or folder")
    return files


# Degrading an image again changes a blurry input little and a sharp one a lot. With the seed degradation the
# PSNR of re-degraded vs original is 19.9-29.6 dB for the sharp Set5/Set14 images and 29.3-41.2 dB for their
# degraded versions: below 29 dB an input is likely sharper than anything the model was trained on.
SHARP_INPUT_DB = 29.0


def sharpness_warning(image, restorer, name: str) -> str | None:
    """A warning when ``image`` looks sharper than the degraded inputs the model learned to restore."""
    from deblur_exp.data.degrade import degrade, pipeline_of, sharp_for
    from deblur_exp.metrics import psnr

    pipeline = pipeline_of(restorer.degradation)
    if pipeline is not None and pipeline.adds_noise:  # fresh noise changes a noisy image as much as a clean one
        return None
    seen = sharp_for(image, restorer.color, restorer.degradation)
    try:
        change = psnr(degrade(seen, restorer.degradation), seen)
    except DeblurError:  # too small to degrade (a 1-pixel line): nothing to judge, restore it as it is
        return None
    if change >= SHARP_INPUT_DB:
        return None
    return (f"warning: {name} looks sharper than the inputs this model was trained on (re-degrading it changes it by "
            f"{change:.1f} dB PSNR; degraded inputs change by {SHARP_INPUT_DB:.0f} dB or less): it may come out "
            f"over-sharpened. The model undoes {describe_degradation(restorer.degradation)}; use --simulate to "
            f"degrade it first")


def output_path(out: Path, stem: str, kind: str) -> Path:
    """Where an input's restored image or figure goes: <stem>_<kind>.png in the output folder."""
    return out / f"{stem}_{kind}.png"


def restore_file(path: Path, stem: str, args: argparse.Namespace, restorer, device, options) -> dict | None:
    """Restore one input into ``args.out``; with --simulate, degrade it first and return its scores' row."""
    image, grey = read_image_info(path, int(args.max_megapixels * 1e6))
    restored_path = output_path(args.out, stem, "restored")
    if not args.simulate:
        warning = sharpness_warning(image, restorer, printable(path.name))
        if warning:
            tqdm.write(warning)
        restored = restore_photo(restorer.model, restorer.color, image, device, options)
        before_after(output_path(args.out, stem, "before_after"), image, restored, path.name)
        # grey stays grey, an alpha channel is carried over untouched
        write_image(restored_path, in_format_of(to_uint8(restored), grey, read_alpha(path)))
        return None
    scores, sharp, degraded, restored = score_image(restorer, image, device, options)
    write_image(output_path(args.out, stem, "degraded"), viewable(degraded))
    three_panel(output_path(args.out, stem, "panel"), sharp, degraded, restored, scores,
                figure_title(path.name, restorer.degradation, sharp))
    drawn = drawn_values(restorer.degradation, sharp)  # a pipeline's values for this image, else ""
    tqdm.write(f"{printable(path.name)}: {describe_scores(scores, arrows=True)}" + (f" ({drawn})" if drawn else ""))
    write_image(restored_path, to_uint8(restored))
    return {"image": printable(path.name), "degradation": drawn, **scores}


def write_scores(rows: list[dict], restorer, out: Path) -> None:
    """metrics.csv of a --simulate run: a row per image and their mean."""
    mean = {"image": "mean", **{k: float(np.mean([r[k] for r in rows])) for k in IMAGE_FIELDS[2:]}}
    drawn = ["degradation"] if restorer.degradation.steps else []  # a pipeline's values, drawn per image
    write_csv(out / "metrics.csv", [*rows, mean], [*IMAGE_FIELDS, *drawn])
    if len(rows) > 1:
        print(f"mean of {len(rows)} images: {describe_scores(mean, arrows=True)}")


def main() -> int:
    args = parse_args()
    if args.tile is not None and args.tile < 1:
        raise DeblurError("--tile must be >= 1")
    device = resolve_device(args.device)
    checkpoint = find_checkpoints(args.model)[0]
    restorer = load_restorer(checkpoint, device)
    options = own_options(ScoringOptions(tile=args.tile, tile_overlap=args.tile_overlap,
                                         self_ensemble=args.self_ensemble), restorer)
    ensemble = ", x8 self-ensemble" if options.self_ensemble else ""
    print(f"restoring with {args.model} ({restorer.arch}, epoch {restorer.epoch}{ensemble}): it undoes "
          f"{describe_degradation(restorer.degradation)}")
    args.out = args.out or default_output_dir("restored")
    problems: list[str] = []
    files = expand_inputs(args.inputs, problems)
    made_out = make_output_dir(args.out)
    inputs = {f.resolve() for f in files}
    rows, used_names, written = [], set(), 0
    for path in tqdm(files, desc="deblur", unit="img", disable=bar_off(len(files) > 1)):
        stem = path.stem
        while stem in used_names:  # two inputs with the same name from different folders
            stem += "_"
        used_names.add(stem)
        if (restored_path := output_path(args.out, stem, "restored")).resolve() in inputs:
            problems.append(f"{path}: refusing to overwrite an input with {restored_path}")
            continue
        try:
            row = restore_file(path, stem, args, restorer, device, options)
        except DeblurError as exc:
            problems.append(str(exc) if str(path) in str(exc) else f"{path}: {exc}")
            continue
        rows += [row] if row else []
        written += 1
    if rows:
        write_scores(rows, restorer, args.out)
    for problem in problems:
        print(f"error: {problem}")
    if made_out and not any(args.out.iterdir()):  # nothing restored: leave no empty folder to puzzle over
        args.out.rmdir()
        print(f"no image restored; {len(problems)} problem(s)")
    else:
        print(f"{written} image(s) restored into {args.out}; {len(problems)} problem(s)")
    return 1 if problems else 0

if __name__ == "__main__":
    run_cli(main)
