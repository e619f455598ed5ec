import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from deblur_exp.data.degrade import DegradationConfig, degrade
from deblur_exp.metrics import batch_psnr, psnr, rgb_to_y, ssim


@pytest.fixture(scope="module")
def pairs():
    """(sharp, degraded uint8, restored-like float) triples from real photographs (scikit-image's bundled ones)."""
    import skimage.data

    out = []
    for name in ("astronaut", "coffee", "chelsea"):
        sharp = getattr(skimage.data, name)()
        degraded = degrade(sharp, DegradationConfig(name="g"))
        noisy = np.clip(degraded / 255 + np.random.default_rng(0).normal(0, 0.02, sharp.shape), -0.1, 1.1)
        out.append((sharp, degraded, noisy))
    return out


def test_psnr_matches_scikit_image(pairs):
    for sharp, degraded, noisy in pairs:
        expected = peak_signal_noise_ratio(sharp / 255, degraded / 255, data_range=1.0)
        assert abs(psnr(degraded, sharp) - expected) < 1e-4
        # float input is scored as it is, unclipped (a noisy test input, as the denoising protocol scores it)
        expected = peak_signal_noise_ratio(sharp / 255, noisy, data_range=1.0)
        assert abs(psnr(noisy, sharp) - expected) < 1e-4


def test_ssim_matches_scikit_image_reference_settings(pairs):
    for sharp, degraded, _ in pairs:
        expected = structural_similarity(sharp / 255, degraded / 255, data_range=1.0, channel_axis=2,
                                         gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert abs(ssim(degraded, sharp) - expected) < 1e-4


def test_y_channel_and_crop_border(pairs):
    sharp, degraded, _ = pairs[0]
    y_sharp, y_degraded = rgb_to_y(sharp / 255), rgb_to_y(degraded / 255)
    expected = peak_signal_noise_ratio(y_sharp[4:-4, 4:-4], y_degraded[4:-4, 4:-4], data_range=1.0)
    assert abs(psnr(degraded, sharp, y_channel=True, crop_border=4) - expected) < 1e-4
    expected = structural_similarity(y_sharp[4:-4, 4:-4], y_degraded[4:-4, 4:-4], data_range=1.0,
                                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert abs(ssim(degraded, sharp, y_channel=True, crop_border=4) - expected) < 1e-4
    # BT.601 luma of white and black (MATLAB rgb2ycbcr): 235 and 16
    assert np.allclose(rgb_to_y(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])) * 255, [235, 16])


def test_known_cases():
    zeros, ones = np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 255, np.uint8)
    assert psnr(zeros, zeros) == float("inf")
    assert psnr(zeros, ones) == 0.0
    assert ssim(ones, ones) == pytest.approx(1.0)
    assert psnr(np.full((8, 8, 3), 0.5), np.zeros((8, 8, 3))) == pytest.approx(10 * np.log10(4))
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(zeros, ones[:4])
    with pytest.raises(ValueError, match="SSIM needs at least 11x11 pixels"):
        ssim(zeros[:8], ones[:8])


def test_batch_psnr_is_per_image_and_capped():
    sharp = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    restored = sharp.clone()
    restored[1] += 0.1
    restored[2] = 1 - sharp[2]
    values = batch_psnr(restored, sharp)
    assert values[0] == pytest.approx(100.0)  # identical: capped, not inf
    for i in (1, 2):
        expected = peak_signal_noise_ratio(sharp[i].numpy(), restored[i].clamp(0, 1).numpy(), data_range=1.0)
        assert values[i].item() == pytest.approx(expected, abs=1e-6)


def test_ssim_on_one_channel_and_on_the_torch_device_path_equals_scikit_image(pairs):
    sharp, degraded, noisy = pairs[1]
    luma, luma_degraded = sharp[:, :, 1:2], degraded[:, :, 1:2]
    expected = structural_similarity(luma[:, :, 0] / 255, luma_degraded[:, :, 0] / 255, data_range=1.0,
                                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert abs(ssim(luma_degraded, luma, device="cpu") - expected) < 1e-4
    expected = structural_similarity(sharp / 255, noisy, data_range=1.0, channel_axis=2,
                                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert abs(ssim(noisy, sharp, device=torch.device("cpu")) - expected) < 1e-4
