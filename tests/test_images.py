import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from deblur_exp.data.images import read_folder, read_image, write_image
from deblur_exp.errors import DeblurError

RGB = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)


def test_rgb_png_round_trip(tmp_path):
    write_image(tmp_path / "a.png", RGB)
    assert np.array_equal(read_image(tmp_path / "a.png"), RGB)
    # OpenCV stores BGR: the conversion happens at the edge, exactly once.
    assert np.array_equal(cv2.imread(str(tmp_path / "a.png"))[:, :, ::-1], RGB)


def test_grey_rgba_and_16_bit_become_8_bit_rgb(tmp_path):
    grey = RGB[:, :, 0]
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([RGB[:, :, ::-1], np.full(grey.shape, 7, np.uint8)]))
    cv2.imwrite(str(tmp_path / "deep.png"), RGB[:, :, ::-1].astype(np.uint16) * 257)
    assert np.array_equal(read_image(tmp_path / "grey.png"), np.dstack([grey] * 3))
    assert np.array_equal(read_image(tmp_path / "rgba.png"), RGB)
    assert np.array_equal(read_image(tmp_path / "deep.png"), RGB)
    for name in ("grey.png", "rgba.png", "deep.png"):
        image = read_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (20, 30, 3)


def test_exif_rotated_jpeg_is_read_upright(tmp_path):
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :20] = 255  # left half white
    exif = PILImage.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    PILImage.fromarray(wide).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    upright = read_image(tmp_path / "rot.jpg")
    assert upright.shape == (40, 20, 3)
    assert upright[:15].mean() > 200 and upright[25:].mean() < 50  # white half now on top


@pytest.mark.parametrize("content", [b"", b"not an image at all", None])
def test_unreadable_files_are_named(tmp_path, content):
    path = tmp_path / "bad file é.png"
    if content is None:  # truncated PNG
        write_image(tmp_path / "good.png", RGB)
        content = (tmp_path / "good.png").read_bytes()[:60]
    path.write_bytes(content)
    with pytest.raises(DeblurError, match="bad file é.png"):
        read_image(path)


def test_folder_skips_what_it_cannot_use_and_says_so(tmp_path):
    write_image(tmp_path / "ok.png", RGB)
    write_image(tmp_path / "tiny.png", RGB[:5, :5])
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    (tmp_path / "loop_a.png").symlink_to(tmp_path / "loop_b.png")
    (tmp_path / "loop_b.png").symlink_to(tmp_path / "loop_a.png")
    (tmp_path / "subfolder").mkdir()
    images, problems = read_folder(tmp_path, min_size=10)
    assert [im.name for im in images] == ["ok"]
    assert len(problems) == 5
    for name, reason in (("tiny.png", "smaller than the 10-pixel minimum"), ("notes.txt", "not an image file"),
                         ("broken.png", "not a readable image"), ("loop_a.png", "link loop")):
        assert any(name in p and reason in p for p in problems), (name, problems)
