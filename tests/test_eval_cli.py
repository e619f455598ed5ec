"""evaluate.py and deblur.py driven through the shell, on a tiny trained run."""

import csv
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image as PILImage
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from deblur_exp.data.images import read_image, write_image
from deblur_exp.errors import DeblurError
from deblur_exp.training.loop import train
from tests.conftest import TINY, dataset, run_script, write_sharp_images


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_training_ends_with_evaluation(make_cfg, tmp_path):
    set5 = dataset("Set5")
    write_sharp_images(tmp_path / "data" / "Mini")
    run_dir = tmp_path / "run"
    train(make_cfg([*TINY, "model=srcnn", f"paths.data_dir={tmp_path / 'data'}", "eval.sets=[Mini,Absent]",
                    f"eval.images={set5}"], run_dir))
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert set(summary) == {"Mini", "images", "held_out"}  # Absent is skipped, chelsea is the held-out image
    rows = read_rows(run_dir / "eval" / "images.csv")
    assert [r["image"] for r in rows] == ["baby", "bird", "butterfly", "head", "woman"]
    assert list(rows[0]) == ["image", "size", "psnr_degraded", "psnr_restored", "ssim_degraded", "ssim_restored"]
    butterfly = next(r for r in rows if r["image"] == "butterfly")
    assert butterfly["size"] == "256x256" and float(butterfly["psnr_degraded"]) == pytest.approx(20.03, abs=0.005)
    assert summary["images"]["psnr_degraded"] == pytest.approx(25.98, abs=0.005)
    assert (run_dir / "eval" / "figures" / "held_out" / "chelsea.png").is_file()
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert {"whole_images/Mini/psnr", "whole_images/images/ssim", "whole_images/held_out/psnr_degraded"} <= set(
        events.Tags()["scalars"])
    assert any(tag.startswith("whole_images/images/") for tag in events.Tags()["images"])


@pytest.mark.slow
def test_evaluate_script_writes_tables_and_figures(trained_run, tmp_path):
    images = write_sharp_images(tmp_path / "mine", names=("alpha", "butterfly"))
    second = tmp_path / "second"
    shutil.copytree(trained_run, second)  # two runs of one architecture: labels must tell them apart
    out = tmp_path / "eval"
    result = run_script("evaluate.py", str(trained_run), str(second / "checkpoints" / "best.pt"), "--sets",
                        "--images", str(images), "--out", str(out), "--tile", "16", "--y-channel",
                        "--crop-border", "2")
    assert result.returncode == 0, result.stderr
    summary = read_rows(out / "summary.csv")
    assert [r["rank"] for r in summary] == ["1", "2"] and len({r["model"] for r in summary}) == 2
    assert all(r["model"].startswith("srcnn@") for r in summary)
    for row in summary:
        per_image = read_rows(out / row["model"] / "mine.csv")
        assert [r["image"] for r in per_image] == ["alpha", "butterfly"]
        assert float(row["mean_psnr"]) == pytest.approx(np.mean([float(r["psnr_restored"]) for r in per_image]),
                                                        abs=1e-3)
        assert (out / row["model"] / "figures" / "mine" / "butterfly.png").is_file()
    table = (out / "summary.md").read_text()
    degraded_mean = np.mean([float(r["psnr_degraded"]) for r in read_rows(out / summary[0]["model"] / "mine.csv")])
    assert "| rank | model |" in table and f"| - | degraded input | - | {degraded_mean:.2f} |" in table
    assert (out / "compare_butterfly.png").is_file()
    # a line per model as it is scored, in a log as on a terminal, with the score the table holds
    scored = re.findall(r"scored (\S+) \(([12])/2\): PSNR mine ([0-9.]+) dB", result.stderr)
    assert sorted(done for _, done, _ in scored) == ["1", "2"]
    assert {model: psnr for model, _, psnr in scored} == {r["model"]: f"{float(r['mean_psnr']):.2f}" for r in summary}


@pytest.mark.slow
def test_evaluate_on_set5_with_a_sweep_folder(trained_run, tmp_path):
    set5 = dataset("Set5")
    sweep = tmp_path / "sweep"
    shutil.copytree(trained_run, sweep / "0_model=srcnn")
    out = tmp_path / "eval"
    result = run_script("evaluate.py", str(sweep), "--sets", "Set5", "--data-dir", str(set5.parent), "--out",
                        str(out), "--no-figures")
    assert result.returncode == 0, result.stderr
    rows = read_rows(out / "srcnn" / "Set5.csv")
    assert len(rows) == 5 and float(read_rows(out / "summary.csv")[0]["Set5_psnr_degraded"]) == pytest.approx(25.98,
                                                                                                              abs=0.005)
    assert (out / "compare_butterfly.png").is_file()


def test_evaluate_refuses_a_checkpoint_of_another_architecture(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = run / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("name: srcnn", "name: dncnn", 1))
    result = run_script("evaluate.py", str(run), "--images", str(write_sharp_images(tmp_path / "i")))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds a 'srcnn' model but the config asks for 'dncnn'" in result.stderr


def test_a_best_checkpoint_without_training_state_restores_the_same_model(trained_run, tmp_path):
    """drop_training_state (what gpu_sweep_check.sh does to the best.pt it brings back) keeps everything evaluation
    and export read, and nothing that only resuming needs."""
    import torch

    from deblur_exp.evaluation.scoring import load_restorer
    from deblur_exp.runs.checkpoint import drop_training_state

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    best = run / "checkpoints" / "best.pt"
    drop_training_state(best)
    slim = torch.load(best, weights_only=True)
    assert not {"optimizer", "scheduler", "scaler", "rng"} & set(slim)
    assert best.stat().st_size < (trained_run / "checkpoints" / "best.pt").stat().st_size
    full, kept = load_restorer(trained_run / "checkpoints" / "best.pt"), load_restorer(best)
    assert (kept.arch, kept.epoch, kept.config) == (full.arch, full.epoch, full.config)
    assert all(torch.equal(a, b) for a, b in zip(full.model.state_dict().values(), kept.model.state_dict().values()))


def test_evaluate_scores_on_the_checkpoints_own_protocol(trained_run, tmp_path):
    """A checkpoint trained with eval.crop_border=3 and y_channel=true is scored that way without flags; flags
    override; checkpoints that disagree need the flag."""
    import torch
    from omegaconf import OmegaConf

    from deblur_exp.runs.checkpoint import save_checkpoint

    state = torch.load(trained_run / "checkpoints" / "best.pt", weights_only=True)
    config = OmegaConf.create(state["config"])
    config.eval.crop_border, config.eval.y_channel = 3, True
    protocol_pt = tmp_path / "protocol" / "best.pt"
    save_checkpoint(protocol_pt, {**state, "config": OmegaConf.to_yaml(config)})
    plain_pt = trained_run / "checkpoints" / "best.pt"
    images = write_sharp_images(tmp_path / "i")

    def mean_psnr(*args):
        out = tmp_path / f"eval{len(list(tmp_path.glob('eval*')))}"
        result = run_script("evaluate.py", *args, "--sets", "--images", str(images), "--out", str(out),
                            "--no-figures")
        assert result.returncode == 0, result.stderr
        return [float(r["mean_psnr"]) for r in read_rows(out / "summary.csv")], result.stdout

    own, stdout = mean_psnr(str(protocol_pt))
    assert "scoring: y_channel=True (the checkpoints'), crop_border=3 (the checkpoints')" in stdout
    assert own == mean_psnr(str(plain_pt), "--y-channel", "--crop-border", "3")[0]
    assert own != mean_psnr(str(plain_pt))[0]
    assert mean_psnr(str(protocol_pt), "--no-y-channel", "--crop-border", "0")[0] == mean_psnr(str(plain_pt))[0]
    mixed = run_script("evaluate.py", str(plain_pt), str(protocol_pt), "--sets", "--images", str(images))
    assert mixed.returncode == 2 and "Traceback" not in mixed.stderr
    assert "--y-channel: the checkpoints were scored with different eval.y_channel (False, True)" in mixed.stderr


@pytest.mark.slow
def test_missing_checkpoint_is_one_line(tmp_path):
    for script, args in (("evaluate.py", [str(tmp_path / "nope.pt")]),
                         ("deblur.py", ["--model", str(tmp_path / "nope"), str(tmp_path), "--out", str(tmp_path)])):
        result = run_script(script, *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "no such checkpoint file or run folder" in result.stderr


@pytest.mark.parametrize("script, args", [
    ("evaluate.py", ["--sets", "--images", "IMAGES"]),
    ("deblur.py", ["--model", "RUN", "IMAGES"]),
    ("report.py", ["--sets", "in", "--data-dir", "TMP", "--device", "cpu"]),
])
def test_an_output_folder_that_cannot_be_made_is_one_line_before_any_work(trained_run, tmp_path, script, args):
    images = write_sharp_images(tmp_path / "in", names=("a",))
    (tmp_path / "file").write_text("a file, not a folder")
    named = {"IMAGES": str(images), "RUN": str(trained_run), "TMP": str(tmp_path)}
    args = [named.get(a, a) for a in args]
    runs = [] if script == "deblur.py" else [str(trained_run)]
    result = run_script(script, *runs, *args, "--out", str(tmp_path / "file" / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr == f"error: --out: cannot create {tmp_path / 'file' / 'out'} (Not a directory)\n"


def test_evaluate_compares_on_an_image_it_has_and_says_at_once_when_the_one_asked_for_is_in_no_set(trained_run,
                                                                                                    tmp_path):
    images = write_sharp_images(tmp_path / "mine", names=("alpha", "beta"))
    out = tmp_path / "eval"
    result = run_script("evaluate.py", str(trained_run), "--sets", "--images", str(images), "--out", str(out),
                        "--no-figures")  # no butterfly here: the first image is compared instead, without a warning
    assert result.returncode == 0 and "warning" not in result.stdout, result.stdout
    assert [p.name for p in out.glob("compare_*.png")] == ["compare_alpha.png"]
    out = tmp_path / "eval_asked"
    result = run_script("evaluate.py", str(trained_run), "--sets", "--images", str(images), "--out", str(out),
                        "--no-figures", "--compare", "butterfly")
    assert result.returncode == 0, result.stderr
    warning = "warning: --compare butterfly: no image of that name in mine (alpha, beta); no comparison figure"
    assert warning in result.stdout
    assert result.stdout.index(warning) < result.stdout.index("| rank |")  # before the scoring, not after
    assert not list(out.glob("compare_*.png"))


def test_deblur_with_nothing_to_restore_leaves_no_empty_folder(trained_run, tmp_path):
    out = tmp_path / "out"
    result = run_script("deblur.py", "--model", str(trained_run), str(tmp_path / "missing.jpg"), "--out", str(out))
    assert result.returncode == 1 and "missing.jpg: no such file or folder" in result.stdout
    assert "no image restored; 1 problem(s)" in result.stdout and not out.exists()
    out.mkdir()  # a folder the user made stays, empty or not
    result = run_script("deblur.py", "--model", str(trained_run), str(tmp_path / "missing.jpg"), "--out", str(out))
    assert result.returncode == 1 and out.is_dir()


def test_deblur_restores_photos_and_reports_bad_files(trained_run, tmp_path):
    inputs = write_sharp_images(tmp_path / "in", names=("a", "b"))
    wide = np.zeros((24, 48, 3), np.uint8)
    wide[:, :24] = 255
    exif = PILImage.Exif()
    exif[0x0112] = 6  # stored sideways, displayed rotated
    PILImage.fromarray(wide).save(inputs / "phone.jpg", exif=exif, quality=95)
    grey16 = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
    PILImage.fromarray(grey16).save(inputs / "grey16.png")
    rgba = np.dstack([read_image(inputs / "a.png"), np.full((40, 56), 128, np.uint8)])
    PILImage.fromarray(rgba, "RGBA").save(inputs / "rgba.png")
    (inputs / "empty.png").write_bytes(b"")
    (inputs / "random.png").write_bytes(np.random.default_rng(0).bytes(500))
    (inputs / "readme.txt").write_text("not an image")
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    out = tmp_path / "out"
    result = run_script("deblur.py", "--model", str(trained_run), str(inputs), "--out", str(out))
    assert result.returncode == 1  # something failed
    for bad in ("empty.png", "random.png", "readme.txt"):
        assert bad in result.stdout
    assert "Traceback" not in result.stderr
    for name in ("a", "b", "phone", "grey16", "rgba"):
        assert (out / f"{name}_restored.png").is_file() and (out / f"{name}_before_after.png").is_file()
    assert read_image(out / "phone_restored.png").shape == (48, 24, 3)  # upright
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before  # inputs untouched
    assert not list(out.glob(".*"))  # no temp files left


def test_deblur_simulate_scores_and_refuses_tiny_images(trained_run, tmp_path):
    inputs = write_sharp_images(tmp_path / "in", names=("photo",))
    write_image(inputs / "tiny.png", np.zeros((5, 5, 3), np.uint8))
    out = tmp_path / "out"
    result = run_script("deblur.py", "--model", str(trained_run / "checkpoints" / "last.pt"), str(inputs / "photo.png"),
                        str(inputs / "tiny.png"), "--out", str(out), "--simulate", "--self-ensemble")
    assert result.returncode == 1
    assert "tiny.png" in result.stdout and "smaller than the 11x11 minimum" in result.stdout
    rows = read_rows(out / "metrics.csv")
    assert [r["image"] for r in rows] == ["photo.png", "mean"]  # the mean row closes the table
    sharp = read_image(inputs / "photo.png")
    from deblur_exp.metrics import psnr
    assert float(rows[0]["psnr_degraded"]) == pytest.approx(psnr(read_image(out / "photo_degraded.png"), sharp),
                                                            abs=1e-3)
    for name in ("photo_restored.png", "photo_degraded.png", "photo_panel.png"):
        assert (out / name).is_file()
    assert "photo.png: PSNR" in result.stdout


def test_deblur_never_overwrites_an_input(trained_run, tmp_path):
    inputs = write_sharp_images(tmp_path / "in", names=("x", "x_restored"))
    original = (inputs / "x_restored.png").read_bytes()
    result = run_script("deblur.py", "--model", str(trained_run), str(inputs), "--out", str(inputs))
    assert result.returncode == 1 and "refusing to overwrite an input" in result.stdout
    assert (inputs / "x_restored.png").read_bytes() == original


def test_deblur_writes_to_a_fresh_default_folder_and_ends_simulate_with_the_mean(trained_run, tmp_path):
    inputs = write_sharp_images(tmp_path / "in", names=("one", "two"))
    result = run_script("deblur.py", "--model", str(trained_run), str(inputs), "--simulate",
                        env={"DEBLUR_OUTPUT_DIR": str(tmp_path / "outputs")})
    assert result.returncode == 0, result.stderr
    (out,) = (tmp_path / "outputs" / "restored").iterdir()
    rows = read_rows(out / "metrics.csv")
    assert [r["image"] for r in rows] == ["one.png", "two.png", "mean"]
    mean = np.mean([float(r["psnr_restored"]) for r in rows[:2]])
    assert float(rows[2]["psnr_restored"]) == pytest.approx(mean, abs=1e-3)
    assert "mean of 2 images: PSNR" in result.stdout and f"-> {mean:.2f} dB" in result.stdout


@pytest.mark.slow
def test_deblur_keeps_grey_grey_and_alpha_untouched_and_warns_on_sharp_inputs(trained_run, tmp_path):
    import cv2

    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (48, 40), dtype=np.uint8)  # noise: as sharp as an image gets
    cv2.imwrite(str(inputs / "grey.png"), grey)
    bgra = np.dstack([rng.integers(0, 256, (48, 40, 3), dtype=np.uint8), np.linspace(0, 255, 48 * 40).astype(
        np.uint8).reshape(48, 40)])
    cv2.imwrite(str(inputs / "rgba.png"), bgra)
    out = tmp_path / "out"
    result = run_script("deblur.py", "--model", str(trained_run), str(inputs), "--out", str(out))
    assert result.returncode == 0, result.stderr
    grey_out = cv2.imread(str(out / "grey_restored.png"), cv2.IMREAD_UNCHANGED)
    rgba_out = cv2.imread(str(out / "rgba_restored.png"), cv2.IMREAD_UNCHANGED)
    assert grey_out.shape == (48, 40) and rgba_out.shape == (48, 40, 4)
    assert np.array_equal(rgba_out[:, :, 3], bgra[:, :, 3])  # the alpha channel, carried over untouched
    assert "warning: grey.png looks sharper than the inputs this model was trained on" in result.stdout
    assert "a 7x7 Gaussian blur, a x1/3 downscale (area) and upscale (linear)" in result.stdout

    blurry = cv2.GaussianBlur(cv2.resize(cv2.resize(bgra[:, :, :3], (13, 16), interpolation=cv2.INTER_AREA),
                                         (40, 48)), (7, 7), 0)
    cv2.imwrite(str(inputs / "blurry.png"), blurry)
    result = run_script("deblur.py", "--model", str(trained_run), str(inputs / "blurry.png"), "--out", str(out))
    assert result.returncode == 0 and "looks sharper" not in result.stdout


def test_a_file_name_that_is_not_utf8_is_restored_and_shown_escaped(tmp_path):
    """A name with undecodable bytes (bad\\xff\\xfe.png) neither crashes the figure titles nor the CSV, and the
    other inputs are still processed."""
    photos = write_sharp_images(tmp_path / "photos", names=("good",))
    (photos / "good.png").rename(os.fsdecode(os.fsencode(str(photos)) + b"/bad\xff\xfename.png"))
    write_sharp_images(photos, names=("good",))
    result = run_script("deblur.py", "--model", "pretrained:edsr", str(photos), "--out", str(tmp_path / "out"),
                        "--simulate", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    rows = (tmp_path / "out" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["image", "bad\\xff\\xfename.png", "good.png", "mean"]
    assert len(list((tmp_path / "out").glob("*_panel.png"))) == 2


def test_a_huge_canvas_in_a_small_file_is_skipped_by_name_and_the_rest_restored(tmp_path):
    """A 291 KB PNG that declares 10000x10000 pixels is refused from its header, before decoding; the other inputs
    of the same call are restored; --max-megapixels raises the limit."""
    import struct
    import zlib

    def png(width, height):
        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        rows = b"".join(b"\x00" + bytes(width * 3) for _ in range(height))
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))

    photos = write_sharp_images(tmp_path / "photos")
    (photos / "huge.png").write_bytes(png(10000, 10000))
    result = run_script("deblur.py", "--model", "pretrained:edsr", str(photos), "--out", str(tmp_path / "out"),
                        "--device", "cpu")
    assert result.returncode == 1
    assert "huge.png: 10000x10000 is 100 megapixels, over the 80 megapixel limit" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").glob("*_restored.png")) == ["alpha_restored.png",
                                                                                  "beta_restored.png"]
    from deblur_exp.data.images import read_image_info

    with pytest.raises(DeblurError, match="over the 80 megapixel limit"):
        read_image_info(photos / "huge.png")
    assert read_image_info(photos / "alpha.png", max_pixels=2240)[0].shape == (40, 56, 3)  # 56x40: at the limit
    with pytest.raises(DeblurError, match="alpha.png: 56x40 is 0 megapixels, over the 0 megapixel limit"):
        read_image_info(photos / "alpha.png", max_pixels=2239)
