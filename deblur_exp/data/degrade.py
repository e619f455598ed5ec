"""The degradation: Gaussian blur, then down- and up-scaling with OpenCV, on uint8 RGB arrays.

The same function degrades training patches, whole training images and whole test images, so what the
model learns and what it is scored on are produced by one piece of code.
"""

from __future__ import annotations

import cv2
import numpy as np

from deblur_exp.config import DegradationConfig
from deblur_exp.errors import DeblurError

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


def min_image_size(spec: DegradationConfig) -> int:
    """Smallest side that survives the downscale (floor(size / scale) >= 1)."""
    return max(1, spec.scale)


def degrade(sharp: np.ndarray, spec: DegradationConfig) -> np.ndarray:
    """Blur, downscale to floor(size/scale) and upscale back to the original size."""
    height, width = sharp.shape[:2]
    if min(height, width) < min_image_size(spec):
        raise DeblurError(f"image of {width}x{height} is too small for degradation.scale={spec.scale}: "
                          f"each side needs at least {min_image_size(spec)} pixels")
    degraded = sharp
    if spec.blur_kernel > 0:
        kernel = (spec.blur_kernel, spec.blur_kernel)
        degraded = cv2.GaussianBlur(degraded, kernel, spec.blur_sigma)
    if spec.scale > 1:
        small = cv2.resize(degraded, (width // spec.scale, height // spec.scale),
                           interpolation=INTERPOLATIONS[spec.down_interp])
        degraded = cv2.resize(small, (width, height), interpolation=INTERPOLATIONS[spec.up_interp])
    return degraded
