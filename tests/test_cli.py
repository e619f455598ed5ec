"""Drive scripts/train.py from the shell, the way a user does."""

import csv
import json
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


@pytest.mark.slow
def test_train_then_resume_from_the_shell(tmp_path):
    env = {"DEBLUR_OUTPUT_DIR": str(tmp_path)}
    first = run_script("train.py", *TINY, "trainer.epochs=1", "model=srcnn", env=env)
    assert first.returncode == 0, first.stderr
    (run,) = runs_under(tmp_path)
    for artefact in (".hydra/config.yaml", "train.log", "metrics.csv", "checkpoints/last.pt",
                     "checkpoints/best.pt", "tensorboard"):
        assert (run / artefact).exists(), artefact

    record = {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()}
    wrong = run_script("train.py", f"resume={run}", "model=edsr", env=env)  # the checkpoint holds srcnn
    assert wrong.returncode == 2 and "checkpoint holds a 'srcnn' model" in wrong.stderr, wrong.stderr
    # the failed attempt left the run's record (which the next resume replays) as it was
    assert {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()} == record
    assert not (run / ".hydra_resume").exists()

    again = run_script("train.py", f"resume={run}", "trainer.epochs=2", env=env)
    assert again.returncode == 0, again.stderr
    assert runs_under(tmp_path) == [run]  # continued in the same folder
    assert "trainer.epochs=2" in (run / ".hydra" / "overrides.yaml").read_text()  # the accepted resume's record
    assert not (run / ".hydra_resume").exists()
    finished = run_script("train.py", f"resume={run}", env=env)  # nothing left: it says so, and scores again
    assert finished.returncode == 0, finished.stderr
    assert "the run has trained all its 2 epochs: nothing left to train" in finished.stdout
    with open(run / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    assert "name: srcnn" in (run / ".hydra" / "config.yaml").read_text()  # the saved config was kept
    assert "resumed from" in (run / "train.log").read_text()


def test_a_run_folder_given_by_paths_run_dir_holds_its_whole_record_and_resumes(tmp_path):
    """paths.run_dir=DIR puts .hydra/ (what resume= and report.py read) in DIR too, not in outputs/runs/."""
    env = {"DEBLUR_OUTPUT_DIR": str(tmp_path / "outputs")}
    run = tmp_path / "my_run"
    first = run_script("train.py", *TINY, "trainer.epochs=1", "model=srcnn", f"paths.run_dir={run}", env=env)
    assert first.returncode == 0, first.stderr
    assert f"paths.run_dir={run}" in (run / ".hydra" / "overrides.yaml").read_text()
    assert not (tmp_path / "outputs" / "runs").exists()  # no second, half-empty folder
    again = run_script("train.py", f"resume={run}", "trainer.epochs=2", env=env)
    assert again.returncode == 0, again.stderr
    with open(run / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    # mistakes in the folder, as in evaluate.py and deblur.py: one line naming it, exit status 2, nothing written
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for mistake in ([f"resume={run}_typo"], [*TINY, f"paths.run_dir={run}"]):
        result = run_script("train.py", *mistake, env=env)
        assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert str(run) in result.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.slow
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
@pytest.mark.slow
def test_bad_input_gives_one_line_error(tmp_path, args, message):
    result = run_script("train.py", *TINY, *args, env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_unknown_group_option_lists_the_available_ones():
    result = run_script("train.py", "model=unet")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "model=unet: no such option; choose from deblurcnn" in result.stderr and "dncnn" in result.stderr


@pytest.mark.slow
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
    assert "model: deblurcnn, deblurcnn_res, deblursuperrescnn, dncnn, edsr, resunet, srcnn\n" in result.stdout
    assert "experiment: seed, seed_defaults, srcnn_x3\n" in result.stdout and "is powered by Hydra" not in result.stdout
    assert "schema:" not in result.stdout  # the typed schemas are not an option to pick


@pytest.mark.parametrize("override, message", [
    ("model=dncn", "model=dncn: no such option; choose from deblurcnn, deblurcnn_res, deblursuperrescnn, dncnn"),
    ("trainer.batch_size=abc", "trainer.batch_size=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    ("optimizer.lr=fast", "optimizer.lr=fast: Value 'fast' of type 'str' could not be converted to Float"),
    ("model.params.featurs=32", "model.params.featurs: no such setting; did you mean `model.params.features`?"),
    ("trainer.epoch=3", "trainer.epoch: no such setting; did you mean `trainer.epochs`?"),
    ("+trainer.epoch=3", "trainer.epoch: no such setting; did you mean `trainer.epochs`?"),
    ("+optimizer.lrr=1", "optimizer.lrr: no such setting; did you mean `optimizer.lr`?"),
    ("+model.params.featurs=3", "model.params.featurs: no such setting for model=deblurcnn_res (it takes: "),
])
@pytest.mark.slow
def test_every_configuration_mistake_is_one_line_with_exit_2(tmp_path, override, message):
    result = run_script("train.py", override, env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert result.returncode == 2 and result.stderr.startswith(f"error: {message}"), result.stderr
    assert result.stderr.count("\n") == 1 and "HYDRA_FULL_ERROR" not in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.hydra"))


def test_hydra_full_error_still_shows_everything(tmp_path):
    result = run_script("train.py", "model=dncn", env={"DEBLUR_OUTPUT_DIR": str(tmp_path), "HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 1 and "Traceback" in result.stderr and "MissingConfigException" in result.stderr


@pytest.mark.parametrize("override", ["optimizer.lr=-1", "data=t91 paths.data_dir=/nonexistent",
                                      "trainer.device=cuda"])
@pytest.mark.slow
def test_a_run_that_fails_before_training_leaves_no_folder(tmp_path, override):
    result = run_script("train.py", *override.split(), env={"DEBLUR_OUTPUT_DIR": str(tmp_path),
                                                            "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_a_run_ends_with_a_summary_of_gains_and_where_to_look(tmp_path):
    result = run_script("train.py", *TINY, env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    (run,) = (tmp_path / "runs").glob("*/*")
    tail = result.stdout[result.stdout.index("run summary:"):]
    summary = json.loads((run / "summary.json").read_text())
    gain = summary["best_val_psnr"] - summary["val_psnr_degraded"]  # two tiny epochs: usually still below it
    assert f"{abs(gain):.2f} dB {'above' if gain >= 0 else 'below'} the degraded input" in tail
    assert "held_out: PSNR" in tail
    assert f"run folder: {run}" in tail and f"tensorboard --logdir {run / 'tensorboard'}" in tail


@pytest.mark.slow
def test_no_progress_bar_floods_a_log_when_output_is_not_a_terminal(tmp_path):
    result = run_script("train.py", *TINY, "trainer.progress=true", env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout + result.stderr and "epoch 2/2" in result.stdout


def test_ctrl_c_before_training_leaves_no_half_made_run(make_cfg, trained_run, tmp_path, monkeypatch):
    """Ctrl-C while a run starts (imports, data) comes before training's own SIGINT handler: a fresh run's folder
    is removed, a resume attempt's staged record discarded with the run left as it was, and the interrupt goes on
    up saying so (run_hydra_cli prints it: the next test)."""
    import shutil

    from deblur_exp.sweeps import jobs
    from deblur_exp.sweeps.jobs import run_job

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "train", interrupted)
    fresh = tmp_path / "fresh"  # what Hydra has made by the time the job starts
    (fresh / ".hydra").mkdir(parents=True)
    (fresh / ".hydra" / "overrides.yaml").write_text("- model=srcnn\n")
    (fresh / "train.log").write_text("")
    with pytest.raises(KeyboardInterrupt, match=r"^no run folder was kept$"):
        run_job(make_cfg(TINY, fresh))
    assert not fresh.exists()

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / ".hydra_resume").mkdir()
    (run / ".hydra_resume" / "overrides.yaml").write_text("- model=edsr\n")
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and ".hydra_resume" not in
              p.parts}
    with pytest.raises(KeyboardInterrupt, match=f"^run folder kept: {run}$"):
        run_job(make_cfg([*TINY, f"resume={run}"], run))
    assert not (run / ".hydra_resume").exists()
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_ctrl_c_outside_training_is_one_line_with_status_130(monkeypatch, capsys):
    import logging

    from deblur_exp.cli import run_hydra_cli

    for raised, line in ((KeyboardInterrupt(), "interrupted\n"),
                         (KeyboardInterrupt("no run folder was kept"), "interrupted (no run folder was kept)\n")):
        monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # run_hydra_cli sets it to 1; monkeypatch puts it back

        def starting():
            raise raised

        try:
            with pytest.raises(SystemExit) as stopped:
                run_hydra_cli(starting)
        finally:
            logging.disable(logging.NOTSET)  # run_hydra_cli silences INFO for the exit; the other tests log
        assert stopped.value.code == 130 and capsys.readouterr().err == line


def test_sigterm_while_the_data_is_prepared_is_one_line_143_and_leaves_no_folder(tmp_path, monkeypatch):
    """SIGTERM before training's own handler is installed (here: while the patches are prepared) unwinds like
    Ctrl-C: a fresh run's folder is removed, one line says so, and the exit status is 143 as a shell expects."""
    import os
    import signal

    import deblur_exp.training.loop as loop

    def terminated_mid_preparation(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(loop, "prepare_data", terminated_mid_preparation)
    run_dir = tmp_path / "run"
    result = run_script("train.py", *TINY, f"paths.run_dir={run_dir}", env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert result.returncode == 143, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "terminated (no run folder was kept)"
    assert not run_dir.exists()
