import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from deblur_exp.evaluation.restore import RestoreOptions, restore_batch, restore_image
from deblur_exp.models import build_model

IMAGE = np.random.default_rng(0).integers(0, 256, (83, 101, 3), dtype=np.uint8)


# Context each tile needs: the receptive field radius (resunet's reaches ~45 pixels; its tiles also start on
# multiples of 4, where its halvings put them in the one-pass run).
@pytest.mark.parametrize("name, overlap", [("deblurcnn", 24), ("deblursuperrescnn", 24), ("dncnn", 24), ("edsr", 24),
                                           ("srcnn", 24), ("resunet", 48)])
def test_tiled_output_matches_one_pass(name, overlap):
    torch.manual_seed(0)
    model = build_model(name).eval()
    whole = restore_image(model, IMAGE)
    tiled = restore_image(model, IMAGE, options=RestoreOptions(tile=32, tile_overlap=overlap))
    assert whole.shape == (83, 101, 3) and whole.dtype == np.float32
    assert np.abs(whole - tiled).max() < 1e-4


class Identity(nn.Module):
    def forward(self, x):
        return x


class Shift(nn.Module):
    """Not flip-equivariant: moves content one pixel right, so the ensemble must differ from one pass."""

    def forward(self, x):
        return torch.roll(x, 1, dims=3)


def test_self_ensemble_inverts_every_transform():
    identity = restore_image(Identity(), IMAGE, options=RestoreOptions(self_ensemble=True))
    assert np.abs(identity - IMAGE / 255).max() < 1e-6
    shifted = restore_image(Shift(), IMAGE, options=RestoreOptions(self_ensemble=True))
    assert not np.allclose(shifted, restore_image(Shift(), IMAGE), atol=1e-3)


@pytest.mark.slow
def test_large_image_tiled_stays_under_2_gib():
    """A 4000x3000 image, tiled, on CPU: peak RSS of the whole process stays below 2 GiB."""
    code = (
        "import numpy as np, torch\n"
        "from deblur_exp.models import build_model\n"
        "from deblur_exp.evaluation.restore import RestoreOptions, restore_image\n"
        "torch.set_num_threads(2)\n"
        "image = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)\n"
        "out = restore_image(build_model('srcnn'), image, options=RestoreOptions(tile=512, tile_overlap=8))\n"
        "assert out.shape == (3000, 4000, 3)\n"
        # VmHWM is this process's own peak; ru_maxrss would carry over the parent's across exec.
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    peak_kib = int(result.stdout.split()[-1])
    assert peak_kib < 2 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"


@pytest.mark.parametrize("options", [RestoreOptions(), RestoreOptions(tile=32, tile_overlap=24),
                                     RestoreOptions(self_ensemble=True)])
def test_a_batch_of_same_sized_images_restores_as_each_alone(options):
    """restore_batch (evaluation batches same-sized images on a GPU) gives each image what restore_image gives it."""
    torch.manual_seed(0)
    model = build_model("deblurcnn_res").eval()
    images = [np.random.default_rng(seed).integers(0, 256, (83, 101, 3), dtype=np.uint8) for seed in range(3)]
    together = restore_batch(model, images, options=options)
    assert len(together) == 3
    for image, restored in zip(images, together):
        assert restored.shape == (83, 101, 3) and restored.dtype == np.float32
        assert np.abs(restored - restore_image(model, image, options=options)).max() < 1e-5


class CountingModel(nn.Module):
    """Identity plus a count of the images in each forward pass."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x):
        self.batches.append(len(x))
        return x


def test_evaluation_batches_same_sized_images_and_keeps_the_sets_order():
    from deblur_exp.data.degrade import DegradationConfig
    from deblur_exp.data.images import Image
    from deblur_exp.evaluation.scoring import Restorer, ScoringOptions, evaluate_set

    rng = np.random.default_rng(1)
    sizes = [(48, 64), (40, 40), (48, 64), (8, 8), (48, 64), (40, 40)]  # (8, 8): too small to score
    images = [Image(f"im{i}", rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for i, size in enumerate(sizes)]
    model = CountingModel()
    restorer = Restorer("counting", "identity", model, DegradationConfig(), "rgb", None, 0, {})
    alone, problems_alone = evaluate_set(restorer, images, "cpu", progress=False)  # on a CPU: one image a pass
    assert model.batches == [1, 1, 1, 1, 1]
    model.batches.clear()
    # room for two 48x64 images a pass: [im0, im2], [im1, im5], [im3] (refused before the model), [im4]
    together, problems = evaluate_set(restorer, images, "cpu", ScoringOptions(batch_pixels=2 * 48 * 64), progress=False)
    assert model.batches == [2, 2, 1]
    assert [row["image"] for row in together] == ["im0", "im1", "im2", "im4", "im5"]
    assert problems == problems_alone and len(problems) == 1 and problems[0].startswith("im3: image of 8x8")
    for a, b in zip(alone, together):
        assert a.keys() == b.keys() and all(a[k] == b[k] if isinstance(a[k], str) else abs(a[k] - b[k]) < 1e-9
                                            for k in a)
