import cv2
import numpy as np
import pytest

from deblur_exp.data.degrade import DegradationConfig, degrade
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


# --- the super-resolution protocol: MATLAB's bicubic imresize --------------------------------------------------
BICUBIC_X3 = DegradationConfig(name="bicubic_x3", blur_kernel=0, scale=3, down_interp="matlab_bicubic",
                               up_interp="matlab_bicubic", crop_to_scale=True)


@pytest.mark.parametrize("name, published", [("Set5", 30.39), ("Set14", 27.54)])
def test_bicubic_rows_equal_the_published_ones(name, published):
    """Dong et al. (TPAMI 2016), Table 2, x3 bicubic: Y channel, 3-pixel border, images cropped to a multiple of 3.
    No training involved: this checks the resize, the colour conversion, the crop and the metric together."""
    from deblur_exp.data.degrade import sharp_for
    from deblur_exp.data.images import read_folder

    images, _ = read_folder(dataset(name))
    scores = []
    for image in images:
        sharp = sharp_for(image.rgb, "y", BICUBIC_X3, image.grey)
        scores.append(psnr(degrade(sharp, BICUBIC_X3), sharp, crop_border=3))
    assert np.mean(scores) == pytest.approx(published, abs=0.05)


def test_matlab_bicubic_equals_pillow_bicubic_away_from_the_borders():
    """Pillow's BICUBIC is the same kernel (a = -0.5, stretched when shrinking); only border handling differs."""
    from PIL import Image as PILImage

    from deblur_exp.data.degrade import _matlab_weights

    rng = np.random.default_rng(3)
    image = rng.random((60, 90)) * 255
    for size, margin in (((30, 20), 3), ((270, 180), 9), ((45, 31), 3)):  # down by 3, up by 3, an odd ratio
        ours = np.zeros((size[1], size[0]))
        rows, row_index = _matlab_weights(60, size[1])
        cols, col_index = _matlab_weights(90, size[0])
        tall = sum(rows[t][:, None] * image[row_index[t]] for t in range(len(rows)))
        ours = sum(cols[t][None, :] * tall[:, col_index[t]] for t in range(len(cols)))
        pillow = np.asarray(PILImage.fromarray(image.astype(np.float32), "F").resize(size, PILImage.BICUBIC))
        assert np.abs(ours - pillow)[margin:-margin, margin:-margin].max() < 1e-3


def test_matlab_bicubic_keeps_flat_images_flat_and_rounds_to_uint8():
    from deblur_exp.data.degrade import imresize_matlab

    flat = np.full((30, 33, 3), 77, np.uint8)
    assert np.array_equal(imresize_matlab(flat, (11, 10)), np.full((10, 11, 3), 77, np.uint8))
    ramp = np.tile(np.arange(0, 240, 8, dtype=np.uint8), (9, 1))[:, :, None]  # 9 x 30 x 1
    up = imresize_matlab(ramp, (90, 27))
    assert up.dtype == np.uint8 and up.shape == (27, 90, 1)
    assert np.all(np.diff(up[13, 6:-6, 0].astype(int)) >= 0)  # a ramp stays monotone inside


def test_single_channel_images_degrade_and_keep_their_shape():
    luma = np.random.default_rng(1).integers(0, 256, (30, 36, 1), dtype=np.uint8)
    assert degrade(luma, SEED).shape == (30, 36, 1) and degrade(luma, BICUBIC_X3).shape == (30, 36, 1)


def test_a_new_degradation_step_needs_no_other_edit(monkeypatch):
    # The extension point README promises: a step appended to STEPS is what degrade() (and so patches, training
    # and scoring, which all call it) applies, after the steps before it.
    import deblur_exp.data.degrade as degrade_module

    def invert(image, degradation):
        return 255 - image

    sharp = np.random.default_rng(4).integers(0, 256, (30, 33, 3), dtype=np.uint8)
    before = degrade(sharp, SEED)
    monkeypatch.setattr(degrade_module, "STEPS", (*degrade_module.STEPS, invert))
    assert np.array_equal(degrade(sharp, SEED), 255 - before)


def test_settings_out_of_range_are_named_by_field():
    from deblur_exp.data.degrade import degradation_problems

    assert list(degradation_problems(SEED)) == []
    bad = DegradationConfig(name="x", blur_kernel=4, scale=0, down_interp="bicubic")
    assert [field for field, _ in degradation_problems(bad)] == ["down_interp", "scale", "blur_kernel"]
