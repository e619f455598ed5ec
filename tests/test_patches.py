import logging

import numpy as np
import pytest

from deblur_exp.data.degrade import DegradationConfig, degrade, imresize_matlab
from deblur_exp.data.images import write_image
from deblur_exp.data.patches import cache_key, cut_patches, load_patches, split_indices
from deblur_exp.data.sources import DataConfig
from deblur_exp.errors import DeblurError
from tests.conftest import dataset

SEED_DEGRADATION = DegradationConfig(name="gauss_down3", apply_to="patch")


def loop_patches(image, size, stride):
    h, w = image.shape[:2]
    return np.stack([image[y:y + size, x:x + size] for y in range(0, h - size + 1, stride)
                     for x in range(0, w - size + 1, stride)])


@pytest.mark.parametrize("size,stride", [(35, 14), (8, 3), (10, 10)])
def test_cut_patches_matches_the_seed_loops(size, stride):
    image = np.random.default_rng(0).integers(0, 256, (47, 61, 3), dtype=np.uint8)
    assert np.array_equal(cut_patches(image, size, stride), loop_patches(image, size, stride))


def make_folder(root, sizes):
    rng = np.random.default_rng(3)
    root.mkdir(exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        write_image(root / f"img{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return root


def test_patch_and_image_degradation_are_aligned(tmp_path):
    root = make_folder(tmp_path / "imgs", [(40, 52)])
    image = np.asarray(__import__("deblur_exp.data.images", fromlist=["read_image"]).read_image(root / "img0.png"))
    data = DataConfig(name="t", root=str(root), patch_size=12, stride=6)
    per_patch = load_patches(data, SEED_DEGRADATION, None)
    assert np.array_equal(per_patch.sharp, loop_patches(image, 12, 6))
    assert np.array_equal(per_patch.degraded, np.stack([degrade(p, SEED_DEGRADATION) for p in per_patch.sharp]))
    per_image = load_patches(data, DegradationConfig(name="g", apply_to="image"), None)
    assert np.array_equal(per_image.sharp, per_patch.sharp)
    assert np.array_equal(per_image.degraded, loop_patches(degrade(image, SEED_DEGRADATION), 12, 6))


def test_cache_hit_and_invalidation(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs", [(30, 30), (40, 30)])
    data = DataConfig(name="t", root=str(root), patch_size=10, stride=5)
    cache = tmp_path / "cache"
    first = load_patches(data, SEED_DEGRADATION, cache)
    with caplog.at_level(logging.INFO):
        second = load_patches(data, SEED_DEGRADATION, cache)
    assert "from cache" in caplog.text
    assert np.array_equal(first.degraded, second.degraded) and first.image_names == second.image_names
    assert len(list(cache.glob("*.npz"))) == 1
    load_patches(data, DegradationConfig(name="other", scale=2), cache)   # another degradation
    load_patches(DataConfig(name="t", root=str(root), patch_size=10, stride=4), SEED_DEGRADATION, cache)
    assert len(list(cache.glob("*.npz"))) == 3
    (root / "img0.png").unlink()  # changed images must not hit the old entry
    make_folder(root, [(50, 50)])
    assert len(load_patches(data, SEED_DEGRADATION, cache)) != len(first)


def test_corrupt_cache_is_rebuilt(tmp_path):
    root = make_folder(tmp_path / "imgs", [(30, 30)])
    data = DataConfig(name="t", root=str(root), patch_size=10, stride=5)
    first = load_patches(data, SEED_DEGRADATION, tmp_path / "cache")
    entry = next((tmp_path / "cache").glob("*.npz"))
    entry.write_bytes(b"garbage")
    assert np.array_equal(load_patches(data, SEED_DEGRADATION, tmp_path / "cache").sharp, first.sharp)


def test_images_smaller_than_a_patch_are_skipped_and_none_is_an_error(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs", [(8, 8), (30, 30)])
    with caplog.at_level(logging.WARNING):
        patches = load_patches(DataConfig(name="t", root=str(root), patch_size=10, stride=10), SEED_DEGRADATION, None)
    assert "img0.png" in caplog.text and patches.image_names == ["img1"]
    with pytest.raises(DeblurError, match="no usable image of at least 40x40"):
        load_patches(DataConfig(name="t", root=str(root), patch_size=40, stride=10), SEED_DEGRADATION, None)


def test_missing_folder_names_the_path_and_the_fixes(tmp_path):
    with pytest.raises(DeblurError, match=r"data.root: folder .*nowhere does not exist.*DEBLUR_DATA_DIR"):
        load_patches(DataConfig(name="t", root=str(tmp_path / "nowhere")), SEED_DEGRADATION, None)


def test_image_split_keeps_images_apart_and_is_reproducible(tmp_path):
    root = make_folder(tmp_path / "imgs", [(30, 30)] * 6)
    data = DataConfig(name="t", root=str(root), patch_size=10, stride=5, split="image", val_fraction=0.34)
    patches = load_patches(data, SEED_DEGRADATION, None)
    train, val = split_indices(patches, data, seed=1)
    assert set(patches.image_index[train]).isdisjoint(patches.image_index[val])
    assert len(set(patches.image_index[val])) == 2 and len(train) + len(val) == len(patches)
    again = split_indices(patches, data, seed=1)
    assert np.array_equal(again[1], val)
    named = DataConfig(name="t", root=str(root), patch_size=10, stride=5, split="image", val_images=["img2"])
    assert set(patches.image_index[split_indices(patches, named, seed=1)[1]]) == {2}


def test_scales_add_the_patches_of_shrunk_copies_under_their_image(tmp_path):
    root = make_folder(tmp_path / "imgs", [(40, 52), (30, 30)])
    per_image = DegradationConfig(name="g", apply_to="image")
    image = np.asarray(__import__("deblur_exp.data.images", fromlist=["read_image"]).read_image(root / "img0.png"))
    plain = DataConfig(name="t", root=str(root), patch_size=12, stride=6, split="image", val_images=["img1"])
    scaled = DataConfig(name="t", root=str(root), patch_size=12, stride=6, split="image", val_images=["img1"],
                        scales=[1.0, 0.5, 0.25])  # img1 at 0.5 is 15x15; every copy at 0.25 is under 12: skipped
    base, extra = load_patches(plain, per_image, None), load_patches(scaled, per_image, None)
    half = imresize_matlab(image, (26, 20))
    expected_img0 = np.concatenate([loop_patches(image, 12, 6), loop_patches(half, 12, 6)])
    assert np.array_equal(extra.sharp[extra.image_index == 0], expected_img0)
    assert np.array_equal(extra.degraded[extra.image_index == 0][len(loop_patches(image, 12, 6)):],
                          loop_patches(degrade(half, per_image), 12, 6))
    assert len(extra) == len(base) + len(loop_patches(half, 12, 6)) + 1  # img1 at 0.5: one 12x12 patch
    train, val = split_indices(extra, scaled, seed=0)  # every size of img1 is held out with it
    assert set(extra.image_index[val]) == {1} and (extra.image_index == 1).sum() == len(val)
    fingerprint = [["img0", 1]]
    assert cache_key(fingerprint, scaled, per_image) != cache_key(fingerprint, plain, per_image)
    with pytest.raises(DeblurError, match=r"data.scales: \[0.2\] shrinks every image below data.patch_size=12"):
        load_patches(DataConfig(name="t", root=str(root), patch_size=12, stride=6, scales=[0.2]), per_image,
                     None)


def test_t91_patch_count_and_seed_split():
    data = DataConfig(name="t91", root=str(dataset("T91")), patch_size=35, stride=14, split="patch",
                      val_fraction=0.1, cache=False)
    patches = load_patches(data, SEED_DEGRADATION, None)
    assert len(patches) == 21_721 and len(patches.image_names) == 91
    train, val = split_indices(patches, data, seed=42)
    assert (len(train), len(val)) == (19_548, 2_173)
    assert np.intersect1d(train, val).size == 0


def test_a_readable_but_inconsistent_cache_is_rebuilt(tmp_path, caplog):
    """A valid .npz whose arrays disagree in length (written by anything but this code) is not trusted: the
    patches are cut again, and the next run reads the rebuilt cache."""
    root = make_folder(tmp_path / "imgs", [(30, 30), (40, 30)])
    data = DataConfig(name="t", root=str(root), patch_size=10, stride=5)
    cache = tmp_path / "cache"
    good = load_patches(data, SEED_DEGRADATION, cache)
    (path,) = cache.glob("*.npz")
    np.savez(path, sharp=good.sharp, degraded=good.degraded[:-3], image_index=good.image_index,
             image_names=np.array(good.image_names))
    with caplog.at_level(logging.WARNING):
        rebuilt = load_patches(data, SEED_DEGRADATION, cache)
    assert "inconsistent patch cache" in caplog.text
    assert np.array_equal(rebuilt.degraded, good.degraded) and len(rebuilt) == len(good)
    assert len(load_patches(data, SEED_DEGRADATION, cache).degraded) == len(good)


def test_data_preparation_says_how_far_it_is_in_a_log(tmp_path, caplog):
    """Away from a terminal (a log file, a pipe) reading and cutting log a line at each quarter, so a long
    preparation is never minutes of silence."""
    root = make_folder(tmp_path / "imgs", [(30, 30)] * 8)
    with caplog.at_level(logging.INFO, logger="deblur_exp"):
        load_patches(DataConfig(name="t", root=str(root), patch_size=10, stride=5), SEED_DEGRADATION, None)
    lines = [r.getMessage() for r in caplog.records]
    assert [line for line in lines if line.startswith("cutting and degrading patches")] == [
        f"cutting and degrading patches: {k}/8 images" for k in (2, 4, 6, 8)]
    assert f"reading {root.name}: 8/8 images" in lines
