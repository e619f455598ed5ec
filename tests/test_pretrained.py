"""pretrained:<name>: the shipped models, their pins, and the export that makes them."""

import csv
import shutil
import statistics

import pytest

import deblur_exp.runs.pretrained as pretrained
from deblur_exp.config import REPO_ROOT
from deblur_exp.data.images import read_folder
from deblur_exp.errors import DeblurError
from deblur_exp.evaluation.scoring import load_restorer
from deblur_exp.runs.checkpoint import load_checkpoint
from deblur_exp.runs.locate import find_checkpoints
from deblur_exp.runs.run_dir import run_checkpoint
from tests.conftest import dataset, run_script, write_sharp_images

SHIPPED = pretrained.manifest()


SEED_RGB = {"deblurcnn_res", "edsr"}  # seed-degradation models named by architecture
SR_PROTOCOL = {"edsr_x3": "edsr"}  # experiment=srcnn_x3 models: name -> architecture


def test_the_seed_architectures_and_the_sr_model_ship_small_and_pinned():
    assert set(SHIPPED) >= SEED_RGB | set(SR_PROTOCOL)
    files = [pretrained.FOLDER / e["file"] for e in SHIPPED.values()]
    assert sum(f.stat().st_size for f in files) < 10 * 10**6
    for name, entry in SHIPPED.items():
        path = pretrained.pretrained_path(f"pretrained:{name}")  # verifies the SHA-256 pin
        state = load_checkpoint(path, expected_arch=SHIPPED[name]["arch"])
        assert "optimizer" not in state
        if name in SR_PROTOCOL or name in SEED_RGB:
            experiment = "experiment=srcnn_x3" if name in SR_PROTOCOL else "experiment=seed"
            assert experiment in state["trained"]["overrides"]
        assert state["trained"]["device"] and state["trained"]["epochs"] >= 1 and "model:" in state["config"]
    assert set(SHIPPED["edsr_x3"]["scores"]) == {"Set5_psnr_y_crop3", "Set14_psnr_y_crop3",
                                                 "Set5_psnr_y_crop3_degraded", "Set14_psnr_y_crop3_degraded"}


@pytest.mark.parametrize("name", sorted(SHIPPED))
@pytest.mark.slow
def test_a_shipped_model_scores_what_its_manifest_says(name):
    """Each shipped model, scored on Set5 on its own protocol (RGB, or Y with a 3-pixel crop for edsr_x3), gives
    the restored and degraded figures its manifest entry records."""
    from deblur_exp.evaluation.scoring import ScoringOptions, evaluate_set, load_restorer, summarize

    images, problems = read_folder(dataset("Set5"))
    restorer = load_restorer(pretrained.pretrained_path(f"pretrained:{name}"))
    options = ScoringOptions(**restorer.protocol, self_ensemble=None)  # None: the model's own, as scripts do
    means = summarize(evaluate_set(restorer, images, "cpu", options, progress=False)[0])
    (restored,) = [k for k in SHIPPED[name]["scores"] if k.startswith("Set5") and not k.endswith(pretrained.DEGRADED)]
    assert problems == [] and means["images"] == 5
    assert means["psnr_restored"] == pytest.approx(SHIPPED[name]["scores"][restored], abs=0.05)
    assert means["psnr_degraded"] == pytest.approx(SHIPPED[name]["scores"][restored + pretrained.DEGRADED], abs=0.005)


def test_deblur_restores_with_a_pretrained_model_offline(tmp_path):
    photos = write_sharp_images(tmp_path / "photos")
    result = run_script("deblur.py", "--model", "pretrained:edsr", str(photos), "--out", str(tmp_path / "out"),
                        "--device", "cpu", env={"no_proxy": "*", "http_proxy": "http://127.0.0.1:9",
                                                "https_proxy": "http://127.0.0.1:9"})
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*_restored.png")) == ["alpha_restored.png",
                                                                                  "beta_restored.png"]
    assert "restoring with pretrained:edsr (edsr, epoch 1): it undoes a 7x7 Gaussian blur" in result.stdout


def test_deblur_without_a_model_restores_with_the_default_as_it_ships(tmp_path):
    """No --model: pretrained:deblur, named, with the x8 self-ensemble its file asks for; --no-self-ensemble
    restores in one pass, a different image."""
    photos = write_sharp_images(tmp_path / "photos", names=("alpha",))
    ensembled = run_script("deblur.py", str(photos), "--out", str(tmp_path / "x8"), "--device", "cpu")
    assert ensembled.returncode == 0, ensembled.stderr
    assert "restoring with pretrained:deblur (edsr, epoch 46, x8 self-ensemble): it undoes" in ensembled.stdout
    one_pass = run_script("deblur.py", str(photos), "--out", str(tmp_path / "x1"), "--no-self-ensemble")
    assert one_pass.returncode == 0 and "(edsr, epoch 46): it undoes" in one_pass.stdout
    x8, x1 = (tmp_path / name / "alpha_restored.png" for name in ("x8", "x1"))
    assert x8.read_bytes() != x1.read_bytes()


def test_nothing_that_makes_images_worse_ships():
    """Every shipped model restores Set5 and Set14 better than its degraded input scores, under its own protocol
    (the manifest's figures, which the slow test holds to a fresh scoring); export refuses anything else."""
    for name, entry in SHIPPED.items():
        assert pretrained.weaker_than_input(entry["scores"]) == [], name
        assert {k.split("_")[0] for k in entry["scores"]} == {"Set5", "Set14"}, name
    assert pretrained.weaker_than_input({"Set5_psnr_rgb": 24.0, "Set5_psnr_rgb_degraded": 25.98,
                                         "Set14_psnr_rgb": 25.0, "Set14_psnr_rgb_degraded": 23.87}) == ["Set5_psnr_rgb"]


def test_the_shipped_denoiser_beats_cbm3d_on_the_same_noisy_inputs():
    """pretrained:denoise_sigma25 (T91 only, noise_sigma25) scores above CBM3D on Set5 and Set14, CBM3D measured on
    the identical noisy inputs (results/denoise_sigma25); the slow test holds the manifest to a fresh scoring."""
    entry = SHIPPED["denoise_sigma25"]
    state = load_checkpoint(pretrained.pretrained_path("pretrained:denoise_sigma25"), expected_arch=entry["arch"])
    assert "degradation=noise_sigma25" in state["trained"]["overrides"] and "data=t91" in state["trained"]["overrides"]
    for name in ("Set5", "Set14"):
        with open(REPO_ROOT / "results" / "denoise_sigma25" / f"cbm3d_{name}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        cbm3d = statistics.mean(float(row["psnr_restored"]) for row in rows)
        noisy = statistics.mean(float(row["psnr_degraded"]) for row in rows)
        assert entry["scores"][f"{name}_psnr_rgb_degraded"] == pytest.approx(noisy, abs=0.005)
        assert entry["scores"][f"{name}_psnr_rgb"] > cbm3d, name


def test_an_unknown_name_lists_the_shipped_ones(tmp_path):
    result = run_script("evaluate.py", "pretrained:unet", "--out", str(tmp_path), "--device", "cpu")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "pretrained:unet: no such pretrained model; choose from pretrained:deblur, pretrained:deblurcnn_res" in \
        result.stderr


def test_export_pins_and_a_tampered_file_is_refused(trained_run, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "FOLDER", tmp_path / "weights")
    entry = pretrained.export(run_checkpoint(trained_run), "tiny", {"epochs": 1, "device": "cpu"}, {"Set5": 1.0})
    (path,) = find_checkpoints("pretrained:tiny")
    assert path == tmp_path / "weights" / "tiny.pt" and entry["sha256"] == pretrained.sha256(path)
    restorer = load_restorer(path)
    original = load_restorer(run_checkpoint(trained_run))
    assert all((a == b).all() for a, b in zip(restorer.model.state_dict().values(),
                                               original.model.state_dict().values()))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DeblurError, match="does not match its SHA-256 pin"):
        find_checkpoints("pretrained:tiny")
    shutil.rmtree(tmp_path / "weights")
    with pytest.raises(DeblurError, match=r"choose from \(none shipped\)"):
        find_checkpoints("pretrained:tiny")


def test_a_model_shipped_with_self_ensemble_restores_with_it_unless_told_not_to(trained_run, tmp_path, monkeypatch):
    """export(self_ensemble=True) records it in the shipped file; scoring that leaves the choice open (None, the
    scripts' default) then averages the 8 views, and an explicit False restores in one pass."""
    from deblur_exp.evaluation.scoring import ScoringOptions, evaluate_set

    monkeypatch.setattr(pretrained, "FOLDER", tmp_path / "weights")
    entry = pretrained.export(run_checkpoint(trained_run), "tiny", {"epochs": 1}, {"Set5": 1.0}, self_ensemble=True)
    restorer = load_restorer(pretrained.pretrained_path("pretrained:tiny"))
    assert entry["self_ensemble"] and restorer.self_ensemble
    assert not load_restorer(run_checkpoint(trained_run)).self_ensemble
    images, _ = read_folder(write_sharp_images(tmp_path / "photos"))

    def psnr(self_ensemble):
        rows, _ = evaluate_set(restorer, images, "cpu", ScoringOptions(self_ensemble=self_ensemble), progress=False)
        return [row["psnr_restored"] for row in rows]

    assert psnr(None) == psnr(True) and psnr(None) != psnr(False)


@pytest.mark.slow
def test_export_script_ships_a_run_scored_on_both_sets(trained_run, tmp_path, monkeypatch, capsys):
    """scripts/export_pretrained.py end to end (what a finished sweep goes through), into a scratch weights folder:
    a model worse than its input refused; otherwise the run's weights pinned, how it was trained, and Set5/Set14
    scores of the model and of the degraded input."""
    import importlib.util
    import sys

    set5 = dataset("Set5")
    monkeypatch.setattr(pretrained, "FOLDER", tmp_path / "weights")
    spec = importlib.util.spec_from_file_location("export_pretrained", REPO_ROOT / "scripts" / "export_pretrained.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys, "argv", ["export_pretrained.py", str(trained_run), "--name", "tiny",
                                      "--data-dir", str(set5.parent)])
    with pytest.raises(DeblurError, match="restores worse than its degraded input on Set5_psnr_rgb"):
        script.main()  # a 2-step model makes images worse: it does not ship
    assert not (tmp_path / "weights" / "tiny.pt").exists()
    monkeypatch.setattr(pretrained, "weaker_than_input", lambda scores: [])  # what a good model gets from here on
    assert script.main() == 0
    entry = pretrained.manifest()["tiny"]
    assert entry["arch"] == "srcnn" and entry["trained"]["epochs"] == 1
    assert "model=srcnn" in entry["trained"]["overrides"]
    assert set(entry["scores"]) == {"Set5_psnr_rgb", "Set5_psnr_rgb_degraded", "Set14_psnr_rgb",
                                    "Set14_psnr_rgb_degraded"}
    assert entry["scores"]["Set5_psnr_rgb_degraded"] == pytest.approx(25.98, abs=0.005)  # the line to beat
    assert "| `pretrained:tiny` | 1 |" in capsys.readouterr().out  # the row docs/models.md's table takes
    assert load_restorer(pretrained.pretrained_path("pretrained:tiny")).arch == "srcnn"


def test_export_takes_a_sweep_folder_and_refuses_what_is_not_a_run_in_one_line(trained_run, tmp_path):
    """A sweep folder stands for its finished runs (a finished sweep goes straight to export), and both mistakes
    are caught before anything is scored or written."""
    sweep = tmp_path / "sweep"
    for job in ("0_model=a", "1_model=b"):
        shutil.copytree(trained_run, sweep / job)
    (sweep / "unfinished").mkdir()  # a job folder without summary.json is not a run to ship
    before = sorted(p.name for p in pretrained.FOLDER.iterdir())
    named = run_script("export_pretrained.py", str(sweep), "--name", "x")
    assert named.returncode == 2 and named.stderr.count("\n") == 1, named.stderr
    assert "--name: give exactly one run to ship under a name (2 found)" in named.stderr
    empty = run_script("export_pretrained.py", str(sweep / "unfinished"))
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1, empty.stderr
    assert "unfinished: holds no finished run" in empty.stderr
    assert sorted(p.name for p in pretrained.FOLDER.iterdir()) == before
