"""Draw what each degradation step does to one image: the sharp crop, then every step kind on its own.

    python scripts/degradation_figure.py [--image PATH] [--out docs/degradation_steps.jpg]

Each step is drawn with the values its panel names (fixed, so the figure is the same every time); without
--image, a 160x160 crop of scikit-image's chelsea (the bundled sample data).
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import numpy as np

from deblur_exp.cli import make_output_dir, run_cli
from deblur_exp.data.images import read_image
from deblur_exp.data.pipeline import Pipeline
from deblur_exp.errors import DeblurError
from deblur_exp.evaluation.figures import grid

STEPS = [
    {"kind": "gaussian_blur", "size": 21, "sigma": 2.5},
    {"kind": "gaussian_blur", "size": 21, "sigma": 4.0, "sigma_y": 0.8, "angle": 30},
    {"kind": "motion_blur", "size": 25, "length": 15},
    {"kind": "defocus", "size": 21, "radius": 4},
    {"kind": "resize", "factor": 4, "down": "area", "up": "bicubic"},
    {"kind": "gaussian_noise", "sigma": 25},
    {"kind": "gaussian_noise", "sigma": 25, "grey": True},
    {"kind": "poisson_noise", "peak": 30},
    {"kind": "jpeg", "quality": 15},
]


def sample_crop() -> np.ndarray:
    import skimage.data

    return np.ascontiguousarray(skimage.data.chelsea()[70:230, 170:330])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, help="an image file (default: a crop of the bundled chelsea)")
    p.add_argument("--out", type=Path, default=Path("docs/degradation_steps.jpg"))
    args = p.parse_args()
    if args.image is not None and not args.image.is_file():
        raise DeblurError(f"--image: {args.image} is not a file")
    sharp = read_image(args.image) if args.image else sample_crop()
    make_output_dir(args.out.parent)
    images, titles = [sharp], ["sharp"]
    for step in STEPS:
        pipeline = Pipeline([step])
        degraded, drawn = pipeline.degrade_image(sharp)
        images.append(np.clip(degraded, 0, 1))
        titles.append(textwrap.fill(pipeline.describe(drawn).replace(f"size {step.get('size')} ", ""), 26))
    grid(args.out, images, titles, columns=5)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
