"""Degradation pipelines: each step against a reference, the test-time noise protocol, seeds and margins."""

import csv
import math

import cv2
import numpy as np
import pytest
import torch

from deblur_exp.data.images import read_image
from deblur_exp.data.pipeline import (
    Pipeline,
    disk_kernel,
    gaussian_kernel,
    motion_kernel,
    pad_reflect,
)
from deblur_exp.errors import DeblurError
from deblur_exp.metrics import psnr
from tests.conftest import dataset


def photo(size=64, seed=0):
    rng = np.random.default_rng(seed)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (size, size + 8, 3)).astype(np.float32), (0, 0), 2)
    return np.clip(smooth * 2 - 128, 0, 255).astype(np.uint8)


def test_a_fixed_gaussian_blur_equals_opencv_on_the_whole_image():
    sharp = photo()
    degraded, drawn = Pipeline([{"kind": "gaussian_blur", "size": 7, "sigma": 1.5}]).degrade_image(sharp)
    reference = cv2.GaussianBlur(sharp.astype(np.float32) / 255, (7, 7), 1.5, borderType=cv2.BORDER_REFLECT_101)
    assert np.abs(degraded - reference).max() < 1e-5
    assert drawn == [{"kind": "gaussian_blur", "size": 7, "sigma": 1.5, "sigma_y": None, "angle": 0.0}]


def test_kernels_sum_to_one_and_have_their_shape():
    anisotropic = gaussian_kernel(21, 4.0, 1.0, 90.0)  # long along y
    assert anisotropic.sum() == pytest.approx(1) and anisotropic[:, 10].sum() > 3 * anisotropic[10, :].sum()
    disk = disk_kernel(15, 4.0)
    assert disk.sum() == pytest.approx(1) and disk[7, 7] > 0 and disk[7, 0] == 0 and disk[0, 0] == 0
    motion = motion_kernel(31, 12.0, np.random.default_rng(3))
    assert motion.sum() == pytest.approx(1) and (motion >= 0).all()
    support = np.argwhere(motion > 0)
    assert 4 <= np.ptp(support, axis=0).max() <= 15  # a 12-pixel path, not a dot and not the whole kernel


def test_a_window_with_its_margin_degrades_as_the_whole_image_does():
    """Blur and resize of a patch cut with the pipeline's margin equal the same window of the degraded image."""
    pipeline = Pipeline([{"kind": "gaussian_blur", "size": 9, "sigma": 2.0, "sigma_y": 0.7, "angle": 30},
                         {"kind": "defocus", "size": 7, "radius": 2.5}])
    sharp = photo(80)
    whole, _ = pipeline.degrade_image(sharp)
    m, top, left, size = pipeline.margin, 20, 24, 24
    padded = pad_reflect(torch.from_numpy(sharp).permute(2, 0, 1)[None].float() / 255, m)
    window = padded[:, :, top:top + size + 2 * m, left:left + size + 2 * m]
    degraded, cropped, _ = pipeline.degrade_windows(window, seed=0)
    assert torch.equal(cropped[0].permute(1, 2, 0), torch.from_numpy(sharp[top:top + size, left:left + size]) / 255)
    assert np.abs(degraded[0].permute(1, 2, 0).numpy() - whole[top:top + size, left:left + size]).max() < 1e-5


def test_test_time_noise_is_unclipped_and_its_psnr_is_20_17_db_at_sigma_25():
    """The denoising literature's protocol: noise added in floating point, not clipped or rounded; the noisy
    input's PSNR is then 20*log10(255/25) = 20.17 dB on any set."""
    pipeline = Pipeline([{"kind": "gaussian_noise", "sigma": 25}])
    scores = []
    for path in sorted(dataset("Set5").glob("*.png")):
        sharp = read_image(path)
        noisy, _ = pipeline.degrade_image(sharp)
        assert noisy.min() < 0 and noisy.max() > 1  # not clipped
        again, _ = pipeline.degrade_image(sharp)
        assert np.array_equal(noisy, again)  # one fixed seed per image
        scores.append(psnr(noisy, sharp))
    assert np.mean(scores) == pytest.approx(20 * math.log10(255 / 25), abs=0.02)


def test_draws_depend_on_the_seed_alone():
    pipeline = Pipeline([{"kind": "one_of", "steps": [{"kind": "gaussian_blur", "sigma": [0.5, 3.0]},
                                                      {"kind": "motion_blur", "length": [3, 12]}]},
                         {"kind": "resize", "factor": [1.0, 3.0], "down": ["bilinear", "area"]},
                         {"kind": "gaussian_noise", "sigma": [1, 20]}, {"kind": "jpeg", "quality": [40, 90], "p": 0.5}])
    assert pipeline.random
    windows = torch.rand(6, 3, 32 + 2 * pipeline.margin, 32 + 2 * pipeline.margin)
    first, _, draws = pipeline.degrade_windows(windows, seed=7)
    again, _, draws_again = pipeline.degrade_windows(windows, seed=7)
    other, _, _ = pipeline.degrade_windows(windows, seed=8)
    assert torch.equal(first, again) and draws == draws_again and not torch.equal(first, other)
    assert first.shape == (6, 3, 32, 32)
    assert len({str(d) for d in draws}) == 6  # every sample its own degradation


def test_a_fixed_pipeline_is_not_random_and_jpeg_matches_opencv():
    pipeline = Pipeline([{"kind": "jpeg", "quality": 40}])
    assert not pipeline.random
    sharp = photo()
    degraded, _ = pipeline.degrade_image(sharp)
    ok, encoded = cv2.imencode(".jpg", sharp[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 40])
    reference = cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255
    assert pipeline.image_margin % 16 == 0  # whole coded blocks: the image's blocks stay where a file has them
    inside = (slice(16, -16), slice(16, -16))  # the blocks at the border see the reflected margin
    assert np.abs(degraded - reference)[inside].max() < 1e-6


@pytest.mark.parametrize("steps, key", [
    ([{"kind": "gausian_blur"}], "degradation.steps[0].kind"),
    ([{"kind": "gaussian_noise", "sigm": 5}], "degradation.steps[0].sigm"),
    ([{"kind": "resize", "factor": [3, 1]}], "degradation.steps[0].factor"),
    ([{"kind": "jpeg", "quality": [10, 120]}], "degradation.steps[0].quality"),
    ([{"kind": "gaussian_blur", "size": 8}], "degradation.steps[0].size"),
    ([{"kind": "resize", "down": "cubic"}], "degradation.steps[0].down"),
    ([{"kind": "one_of", "steps": [{"kind": "defocus", "radius": -1}]}], "degradation.steps[0].steps[0].radius"),
    ([{"sigma": 2}], "degradation.steps[0]"),
    ([], "degradation.steps"),
])
def test_a_bad_step_is_one_line_naming_its_key(steps, key):
    with pytest.raises(DeblurError) as error:
        Pipeline(steps)
    assert str(error.value).startswith(f"{key}: ") and "\n" not in str(error.value)


def test_patches_degraded_on_the_fly_are_redrawn_every_epoch_and_alike_for_one_seed():
    from deblur_exp.data.batches import PatchTensors

    pipeline = Pipeline([{"kind": "gaussian_blur", "sigma": [0.5, 2.0], "size": 7}, {"kind": "gaussian_noise",
                                                                                        "sigma": [5, 15]}])
    windows = (torch.rand(10, 16 + 2 * pipeline.margin, 16 + 2 * pipeline.margin, 3) * 255).byte()
    tensors = PatchTensors(windows, None, torch.device("cpu"), pipeline)

    def epoch(*draws):
        return [tuple(t.clone() for t in pair) for pair in tensors.batches(4, draws=draws)]
    first, again, second = epoch(42, 1, 0), epoch(42, 1, 0), epoch(42, 2, 0)
    assert [d.shape for d, _ in first] == [(4, 3, 16, 16), (4, 3, 16, 16), (2, 3, 16, 16)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    assert not any(torch.equal(a[0], b[0]) for a, b in zip(first, second))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, second))  # the sharp patches themselves stay


def test_the_figure_of_the_steps_is_made_by_its_script(tmp_path):
    from tests.conftest import run_script

    result = run_script("degradation_figure.py", "--out", str(tmp_path / "steps.jpg"))
    assert result.returncode == 0, result.stderr
    assert cv2.imread(str(tmp_path / "steps.jpg")).shape[1] > 1000  # five panels a row


@pytest.mark.slow
def test_cbm3d_is_scored_on_the_noisy_inputs_models_get(tmp_path):
    """scripts/denoise_baseline.py: the bm3d package's CBM3D on each image's own noisy input (the one evaluate.py
    --degradation noise_sigma25 gives models), better than the input."""
    from tests.conftest import run_script, write_sharp_images

    write_sharp_images(tmp_path / "data" / "Tiny", names=("a", "b"), size=(48, 64))
    out = tmp_path / "cbm3d"
    result = run_script("denoise_baseline.py", "--sets", "Tiny", "--data-dir", str(tmp_path / "data"),
                        "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(out / "Tiny.csv", newline="")))
    assert [r["image"] for r in rows] == ["a", "b"]
    pipeline = Pipeline([{"kind": "gaussian_noise", "sigma": 25}])
    for row in rows:
        sharp = read_image(tmp_path / "data" / "Tiny" / f"{row['image']}.png")
        assert float(row["psnr_degraded"]) == pytest.approx(psnr(pipeline.degrade_image(sharp)[0], sharp), abs=1e-4)
        assert float(row["psnr_restored"]) > float(row["psnr_degraded"]) + 3
    assert (out / "summary.md").is_file()
    motion = run_script("denoise_baseline.py", "--degradation", "motion_noise", "--sets", "Tiny",
                        "--data-dir", str(tmp_path / "data"))
    assert motion.returncode == 2 and motion.stderr.startswith("error: --degradation motion_noise: ")


@pytest.mark.slow
def test_evaluate_scores_a_model_under_another_degradation(tmp_path):
    """A model trained on the seed's blur, scored on noise: every model gets the same noisy inputs (20.17 dB)."""
    from tests.conftest import run_script

    set5 = dataset("Set5")
    out = tmp_path / "eval"
    result = run_script("evaluate.py", "pretrained:deblur", "--sets", "Set5", "--data-dir", str(set5.parent),
                        "--degradation", "noise_sigma25", "--no-self-ensemble", "--out", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(out / "edsr" / "Set5.csv", newline="")))
    assert np.mean([float(r["psnr_degraded"]) for r in rows]) == pytest.approx(20.17, abs=0.02)
    wrong = run_script("evaluate.py", "pretrained:deblur", "--degradation", "noise_sigma2")
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: degradation 'noise_sigma2': no such option")


def test_restoring_a_photo_warns_of_sharpness_only_where_re_degrading_can_tell():
    """deblur.py's "looks sharper than the inputs" check re-degrades the photo; fresh noise changes a noisy photo
    as much as a clean one, so a model trained with noise never warns, and a blur model still does."""
    import importlib.util
    from types import SimpleNamespace

    from deblur_exp.config import REPO_ROOT
    from deblur_exp.data.degrade import degradation_option, pipeline_of

    assert [pipeline_of(degradation_option(n)).adds_noise for n in ("noise_sigma25", "motion_noise", "random_mix")] \
        == [True, True, True]
    assert pipeline_of(degradation_option("gauss_down3")) is None
    spec = importlib.util.spec_from_file_location("deblur_script", REPO_ROOT / "scripts" / "deblur.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sharp = np.random.default_rng(5).integers(0, 256, (48, 40, 3), dtype=np.uint8)  # as sharp as an image gets
    for name, warns in (("noise_sigma25", False), ("gauss_down3", True)):
        restorer = SimpleNamespace(color="rgb", degradation=degradation_option(name))
        assert (script.sharpness_warning(sharp, restorer, "sharp.png") is not None) == warns, name
