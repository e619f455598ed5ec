import cv2
import numpy as np
import pytest

from deblur_exp.config import DegradationConfig
from deblur_exp.data.degrade import degrade
from deblur_exp.data.images import read_image
from deblur_exp.errors import DeblurError
from deblur_exp.metrics import psnr
from tests.conftest import dataset

SEED = DegradationConfig(name="gauss_down3")


def reference_degradation(sharp: np.ndarray) -> np.ndarray:
    """The seed notebook's three OpenCV calls, written out."""
    h, w = sharp.shape[:2]
    blurred = cv2.GaussianBlur(sharp, (7, 7), 0)
    small = cv2.resize(blurred, (w // 3, h // 3), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


@pytest.mark.parametrize("shape", [(35, 35, 3), (64, 50, 3), (37, 41, 3), (3, 3, 3)])
def test_matches_direct_opencv_calls(shape):
    sharp = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert np.array_equal(degrade(sharp, SEED), reference_degradation(sharp))


def test_keys_change_the_output():
    sharp = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    out = degrade(sharp, DegradationConfig(name="x", blur_kernel=0, scale=4, down_interp="cubic"))
    small = cv2.resize(sharp, (12, 12), interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(out, cv2.resize(small, (48, 48), interpolation=cv2.INTER_LINEAR))
    blurred = degrade(sharp, DegradationConfig(name="x", blur_kernel=5, blur_sigma=2.0, scale=1))
    assert np.array_equal(blurred, cv2.GaussianBlur(sharp, (5, 5), 2.0))


def test_too_small_for_scale_is_a_clear_error():
    with pytest.raises(DeblurError, match="too small for degradation.scale=3"):
        degrade(np.zeros((2, 8, 3), np.uint8), SEED)


def test_set5_reference_psnr():
    """The dataset README's facts: butterfly 20.03 dB, Set5 mean 25.98 dB, Set14 mean 23.87 dB (RGB)."""
    set5 = dataset("Set5")
    scores = {p.stem: psnr(degrade(read_image(p), SEED), read_image(p)) for p in sorted(set5.glob("*.png"))}
    assert round(scores["butterfly"], 2) == 20.03
    assert round(float(np.mean(list(scores.values()))), 2) == 25.98
    set14 = dataset("Set14")
    set14_scores = [psnr(degrade(read_image(p), SEED), read_image(p)) for p in sorted(set14.glob("*.png"))]
    assert len(set14_scores) == 14
    assert round(float(np.mean(set14_scores)), 2) == 23.87
