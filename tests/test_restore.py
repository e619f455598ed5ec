import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from deblur_exp.models import build_model
from deblur_exp.restore import restore_image

IMAGE = np.random.default_rng(0).integers(0, 256, (83, 101, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", ["deblurcnn", "deblursuperrescnn", "dncnn", "edsr", "srcnn"])
def test_tiled_output_matches_one_pass(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    whole = restore_image(model, IMAGE)
    tiled = restore_image(model, IMAGE, tile=32, tile_overlap=24)
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
    identity = restore_image(Identity(), IMAGE, self_ensemble=True)
    assert np.abs(identity - IMAGE / 255).max() < 1e-6
    shifted = restore_image(Shift(), IMAGE, self_ensemble=True)
    assert not np.allclose(shifted, restore_image(Shift(), IMAGE), atol=1e-3)


@pytest.mark.slow
def test_large_image_tiled_stays_under_2_gib():
    """A 4000x3000 image, tiled, on CPU: peak RSS of the whole process stays below 2 GiB."""
    code = (
        "import numpy as np, torch\n"
        "from deblur_exp.models import build_model\n"
        "from deblur_exp.restore import restore_image\n"
        "torch.set_num_threads(2)\n"
        "image = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)\n"
        "out = restore_image(build_model('srcnn'), image, tile=512, tile_overlap=8)\n"
        "assert out.shape == (3000, 4000, 3)\n"
        # VmHWM is this process's own peak; ru_maxrss would carry over the parent's across exec.
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    peak_kib = int(result.stdout.split()[-1])
    assert peak_kib < 2 * 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
