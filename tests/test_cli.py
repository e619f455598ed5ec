"""Drive scripts/train.py from the shell, the way a user does."""

import csv
import os
import subprocess
import sys

import pytest

from deblur_exp.config import REPO_ROOT

from tests.conftest import TINY, run_script


def runs_under(root):
    return sorted(p for p in (root / "runs").glob("*/*") if p.is_dir())


def test_cfg_job_prints_the_composed_config():
    result = run_script("train.py", "--cfg", "job", "model=dncnn", "optimizer.lr=1e-3")
    assert result.returncode == 0, result.stderr
    assert "name: dncnn" in result.stdout and "lr: 0.001" in result.stdout and "depth: 17" in result.stdout


def test_train_then_resume_from_the_shell(tmp_path):
    env = {"DEBLUR_OUTPUT_DIR": str(tmp_path)}
    first = run_script("train.py", *TINY, "trainer.epochs=1", "model=srcnn", env=env)
    assert first.returncode == 0, first.stderr
    (run,) = runs_under(tmp_path)
    for artefact in (".hydra/config.yaml", "train.log", "metrics.csv", "checkpoints/last.pt",
                     "checkpoints/best.pt", "tensorboard"):
        assert (run / artefact).exists(), artefact

    again = run_script("train.py", f"resume={run}", "trainer.epochs=2", env=env)
    assert again.returncode == 0, again.stderr
    assert runs_under(tmp_path) == [run]  # continued in the same folder
    with open(run / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    assert "name: srcnn" in (run / ".hydra" / "config.yaml").read_text()  # the saved config was kept
    assert "resumed from" in (run / "train.log").read_text()


def test_two_runs_started_together_get_their_own_folders(tmp_path):
    args = [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), *TINY, "trainer.epochs=1", "model=srcnn"]
    env = {**os.environ, "DEBLUR_OUTPUT_DIR": str(tmp_path)}
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    runs = runs_under(tmp_path)
    assert len(runs) == 2 and all((r / "checkpoints" / "last.pt").is_file() for r in runs)


@pytest.mark.parametrize("args,message", [
    (["data=t91", "paths.data_dir=/nonexistent/data"], "error: data.root: folder /nonexistent/data/T91 does not exist"),
    (["trainer.batch_size=0"], "error: trainer.batch_size: must be a positive integer (got 0)"),
    (["model.name=unet"], "error: model.name: unknown model 'unet'; known models: deblurcnn"),
])
def test_bad_input_gives_one_line_error(tmp_path, args, message):
    result = run_script("train.py", *TINY, *args, env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_unknown_group_option_lists_the_available_ones():
    result = run_script("train.py", "model=unet")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Could not find 'model/unet'" in result.stderr and "dncnn" in result.stderr


def test_default_run_beats_the_degraded_input(tmp_path):
    """The Quick start's `python scripts/train.py`, exactly: bundled photos, default settings (~2 min on 2 cores)."""
    result = run_script("train.py", env={"DEBLUR_OUTPUT_DIR": str(tmp_path), "DEBLUR_DATA_DIR": str(tmp_path / "none")})
    assert result.returncode == 0, result.stderr
    (run,) = runs_under(tmp_path)
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    best = max(float(r["val_psnr"]) for r in rows)
    assert best > float(rows[-1]["val_psnr_degraded"]) + 0.5, rows  # a clear gain over doing nothing
    assert (run / "eval" / "held_out.csv").is_file()


def test_help_shows_usage_and_the_groups_to_pick_from():
    result = run_script("train.py", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("scripts/train.py: train one deblurring CNN")
    assert "model: deblurcnn, deblurcnn_res, deblursuperrescnn, dncnn, edsr, srcnn\n" in result.stdout
    assert "experiment: seed\n" in result.stdout and "is powered by Hydra" not in result.stdout
