"""Score CBM3D, the classical colour denoiser, on test sets under a noise degradation: the same noisy inputs that
evaluate.py gives every model under that degradation (each image's own seed, noise unclipped).

    python scripts/denoise_baseline.py [--degradation noise_sigma25] [--sets Set5 Set14] [--out DIR]

CBM3D is the ``bm3d`` package's ``bm3d_rgb`` (Mäkinen, Azzari and Foi), told the noise's sigma; its output is
clipped to [0, 1] and scored like a model's. Writes DIR/<set>.csv per image and DIR/summary.md (noisy input and
CBM3D, PSNR/SSIM per set); pip install -e ".[baselines]" installs bm3d.
"""

from __future__ import annotations

import argparse
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from deblur_exp.cli import default_data_dir, default_output_dir, finish, make_output_dir, read_image_sets, run_cli
from deblur_exp.data.degrade import degradation_option, describe_degradation, pipeline_of
from deblur_exp.errors import DeblurError
from deblur_exp.evaluation.scoring import IMAGE_FIELDS, ScoringOptions, image_row, summarize
from deblur_exp.progress import tracked
from deblur_exp.tables import markdown_table, write_csv, write_text


def noise_sigma(degradation) -> float:
    """The sigma (0-255 units) of a degradation that is Gaussian noise and nothing else, which CBM3D assumes."""
    pipeline = pipeline_of(degradation)
    steps = pipeline.steps if pipeline is not None else []
    if len(steps) != 1 or steps[0]["kind"] != "gaussian_noise" or not isinstance(steps[0]["sigma"], (int, float)):
        raise DeblurError(f"--degradation {degradation.name}: CBM3D needs Gaussian noise of one sigma alone, not "
                          f"{describe_degradation(degradation)}")
    return float(steps[0]["sigma"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--degradation", default="noise_sigma25", help="a conf/degradation option of Gaussian noise")
    p.add_argument("--sets", nargs="+", default=["Set5", "Set14"])
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out", type=Path, help="output folder (default: outputs/baselines/<date>_<time>)")
    args = p.parse_args()
    try:
        import bm3d
    except ImportError:
        raise DeblurError('CBM3D needs the bm3d package: pip install -e ".[baselines]"') from None
    degradation = degradation_option(args.degradation)
    sigma = noise_sigma(degradation)
    pipeline = pipeline_of(degradation)
    sets, problems = read_image_sets(args.sets, args.data_dir)
    out = args.out or default_output_dir("baselines")
    make_output_dir(out)
    summary = {}
    for set_name, images in sets.items():
        rows = []
        for image in tracked(images, f"CBM3D on {set_name}", len(images), "image"):
            noisy, _ = pipeline.degrade_image(image.rgb)
            started = time.perf_counter()
            denoised = np.clip(bm3d.bm3d_rgb(noisy.astype(np.float64), sigma / 255), 0, 1)
            rows.append({"image": image.name, **image_row(image.rgb, noisy, denoised, ScoringOptions()),
                         "seconds": round(time.perf_counter() - started, 1)})
        write_csv(out / f"{set_name}.csv", rows, [*IMAGE_FIELDS, "seconds"])
        summary[set_name] = summarize(rows)
    table = markdown_table(["set", "images", "noisy PSNR / SSIM", "CBM3D PSNR / SSIM"], [
        [name, s["images"], f"{s['psnr_degraded']:.2f} / {s['ssim_degraded']:.4f}",
         f"{s['psnr_restored']:.2f} / {s['ssim_restored']:.4f}"] for name, s in summary.items()])
    write_text(out / "summary.md", f"CBM3D (bm3d {version('bm3d')}) under {degradation.name}: "
                                   f"{describe_degradation(degradation)}\n\n{table}")
    print(table)
    return finish(problems, f"results in {out}")


if __name__ == "__main__":
    run_cli(main)
