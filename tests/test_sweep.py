"""Multirun sweeps, launchers, the Optuna sweeper and torchrun, driven from the shell as a user would."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import backend_context

from deblur_exp.config import REPO_ROOT, swept_job_name
from deblur_exp.sweeps.jobs import parallel_jobs
from deblur_exp.tables import read_csv
from tests.conftest import TINY, run_script

FIVE = "deblurcnn,deblurcnn_res,deblursuperrescnn,dncnn,edsr"
QUICK = [*TINY, "trainer.epochs=1"]


def sweep_dir(root):
    (folder,) = (root / "multirun").glob("*/*")
    return folder


def summary_rows(folder):
    with open(folder / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_five_model_sweep_ends_in_a_comparison(tmp_path):
    result = run_script("train.py", "-m", f"model={FIVE}", *QUICK, env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    folder = sweep_dir(tmp_path)
    jobs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0_model=deblurcnn", "1_model=deblurcnn_res", "2_model=deblursuperrescnn", "3_model=dncnn",
                    "4_model=edsr"]
    for job in jobs:  # each a complete run folder
        for artefact in (".hydra/config.yaml", "metrics.csv", "checkpoints/best.pt", "tensorboard", "summary.json"):
            assert (folder / job / artefact).exists(), (job, artefact)
    rows = summary_rows(folder)
    assert sorted(r["model"] for r in rows) == sorted(FIVE.split(","))
    psnrs = [float(r["best_val_psnr"]) for r in rows]
    assert psnrs == sorted(psnrs, reverse=True)  # sorted by the main metric
    for row in rows:
        assert row["status"] == "ok" and int(row["parameters"]) > 0 and row["held_out_psnr"]
        assert float(row["train_time_s"]) > 0 and float(row["samples_per_s"]) > 0 and row["best_epoch"] == "1"
    table = (folder / "summary.md").read_text()
    assert "| job | status | model |" in table and "sweep summary (5 jobs, 0 failed)" in result.stdout
    # first row: the degraded input scored the same way, the bar every model has to clear
    dncnn = json.loads((folder / "3_model=dncnn" / "summary.json").read_text())
    baseline = table.splitlines()[2].split(" | ")
    assert baseline[2] == "degraded input"
    assert f" {dncnn['val_psnr_degraded']:.2f} " in table.splitlines()[2]
    assert f" {dncnn['eval']['held_out']['psnr_degraded']:.2f} " in table.splitlines()[2]
    # TensorBoard's HPARAMS tab: every job has its hyperparameters and final metrics, and TensorBoard's own backend,
    # reading the five together, puts the one that varies first (its table shows the first five columns)
    records = {}
    for job in (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        events = EventAccumulator(str(job / "tensorboard" / "hparams")).Reload()
        scalars = events.Tags()["scalars"]  # the table's metric columns: the scores, nothing else
        assert "summary/best_val_psnr" in scalars and all(tag.startswith("summary/") for tag in scalars)
        records[job.name] = events.PluginTagToContent("hparams")
    experiment = backend_context.Context(None).experiment_from_metadata(None, "", False, records, None)
    assert [info.name for info in experiment.hparam_infos if info.differs] == ["model"]
    assert experiment.hparam_infos[0].name == "model"


@pytest.mark.slow
def test_a_failing_job_is_listed_and_does_not_stop_the_others(tmp_path):
    quick = [o for o in QUICK if not o.startswith("data.patch_size")]
    result = run_script("train.py", "-m", "model=srcnn", "data.patch_size=16,2", *quick,
                        env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert result.returncode == 1, result.stderr  # the sweep ran to its summary, and says a job failed
    assert "failed: 1_data.patch_size=2 (each job's error.txt says why); exit status 1" in result.stdout
    folder = sweep_dir(tmp_path)
    rows = {r["job"]: r for r in summary_rows(folder)}
    assert rows["0_data.patch_size=16"]["status"] == "ok"
    failed = rows["1_data.patch_size=2"]
    assert failed["status"] == "failed"
    assert failed["error"] == "data.patch_size: is smaller than degradation.scale=3; a patch must survive the " \
                              "downscale (got 2)"
    assert "1 failed" in result.stdout


@pytest.mark.slow
def test_joblib_runs_jobs_in_parallel_with_split_threads(tmp_path):
    quick = [o for o in QUICK if not o.startswith("trainer.num_threads")]  # the launcher splits the cores
    result = run_script("train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=srcnn,edsr",
                        *quick, env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    folder = sweep_dir(tmp_path)
    assert [r["status"] for r in summary_rows(folder)] == ["ok", "ok"]
    threads = max(1, (os.cpu_count() or 1) // 2)
    for job in ("0_model=srcnn", "1_model=edsr"):
        assert f"{threads} CPU threads" in (folder / job / "train.log").read_text()


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path):
    result = run_script("train.py", "-m", "hydra/launcher=submitit_local", "model=srcnn,edsr", *QUICK,
                        env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    folder = sweep_dir(tmp_path)
    assert sorted(r["job"] for r in summary_rows(folder)) == ["0_model=srcnn", "1_model=edsr"]
    assert (folder / ".submitit").is_dir()


def test_slurm_preset_composes():
    result = run_script("train.py", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra")
    assert result.returncode == 0, result.stderr
    for line in ("partition: gpu", "gpus_per_node: 1", "cpus_per_task: 8", "mem_gb: 32", "timeout_min: 240",
                 "SlurmLauncher"):
        assert line in result.stdout


@pytest.mark.slow
def test_optuna_search_maximises_the_returned_metric(tmp_path):
    result = run_script("train.py", "hparams_search=optuna_lr", "hydra.sweeper.n_trials=2",
                        "hydra.sweeper.params.model='choice(srcnn,edsr)'", *QUICK,
                        env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    folder = sweep_dir(tmp_path)
    rows = summary_rows(folder)
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert all(r["job"].split("_", 1)[1].startswith("optimizer.lr=") for r in rows)
    best = (folder / "optimization_results.yaml").read_text()
    assert "best_value" in best
    best_value = float(best.split("best_value:")[1].split()[0])
    assert best_value == pytest.approx(max(float(r["best_val_psnr"]) for r in rows), abs=1e-4)  # csv: 4 decimals


@pytest.mark.parametrize("search,model", [("recipe_cpu", "edsr"), ("recipe_cpu_deblurcnn", "deblurcnn_res")])
def test_the_recipe_search_scores_held_out_images_and_never_the_test_sets(make_cfg, search, model):
    from deblur_exp.training.config import check_config

    cfg = make_cfg([f"hparams_search={search}"])
    assert (cfg.objective, cfg.data.split, list(cfg.eval.sets), cfg.eval.held_out) == ("held_out", "image", [], True)
    assert cfg.trainer.max_time is not None and cfg.data.name == "t91" and cfg.model.name == model
    assert cfg.trainer.precision == "32"  # as the committed trials ran; a trial's own override still wins
    check_config(cfg)


@pytest.mark.slow
def test_the_recipe_search_maximises_the_held_out_psnr(tmp_path):
    result = run_script("train.py", "hparams_search=recipe_cpu", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
                        "model=srcnn", "trainer.max_time=null", *QUICK, env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    folder = sweep_dir(tmp_path)
    rows = summary_rows(folder)
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    best_value = float((folder / "optimization_results.yaml").read_text().split("best_value:")[1].split()[0])
    assert best_value == pytest.approx(max(float(r["held_out_psnr"]) for r in rows), abs=1e-4)  # csv: 4 decimals
    assert float(rows[0]["held_out_psnr"]) == max(float(r["held_out_psnr"]) for r in rows)  # the objective first


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
@pytest.mark.slow
def test_torchrun_two_process_gloo_run_lands_in_one_folder(tmp_path):
    env = {**os.environ, "DEBLUR_OUTPUT_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    cmd = [shutil.which("torchrun"), "--standalone", "--nproc_per_node=2", str(REPO_ROOT / "scripts" / "train.py"),
           *QUICK, "trainer.epochs=2", "model=srcnn", "eval.every=1"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "runs").glob("*/*")  # one run folder, written by rank 0 only
    log = (run / "train.log").read_text()
    assert "distributed: 2 processes (Gloo); effective batch 16 = 8 per process x 2" in log
    for artefact in (".hydra/config.yaml", "metrics.csv", "checkpoints/last.pt", "checkpoints/best.pt",
                     "tensorboard", "summary.json"):
        assert (run / artefact).exists(), artefact
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # two ranks x 2 steps x batch 8: each epoch saw 32 samples, reduced across ranks
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    assert log.count("epoch 1/2") == 1  # logged once, by rank 0
    # eval.every: rank 0 scores while the other rank waits (no deadlock), one row per epoch
    during = csv.DictReader((run / "eval" / "during_training.csv").read_text().splitlines())
    assert [r["epoch"] for r in during] == ["1", "2"]


def test_job_names_show_only_the_swept_values(tmp_path):
    (tmp_path / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: ['model=a,b', 'trainer.epochs=1']\n")
    assert swept_job_name(3, str(tmp_path), ["model=b", "trainer.epochs=1"]) == "3_model=b"
    assert swept_job_name(0, str(tmp_path / "none"), ["x=1"], {"x": "choice(1,2)"}) == "0_x=1"
    assert swept_job_name(1, str(tmp_path / "none"), ["data.root=/a/b"]) == "1_data.root=_a_b"


@pytest.mark.parametrize("target,n_jobs,expected", [("...JoblibLauncher", 2, 2), ("...JoblibLauncher", -1, 8),
                                                    ("...JoblibLauncher", -2, 7), ("...BasicLauncher", 4, 1)])
def test_parallel_jobs(target, n_jobs, expected):
    from omegaconf import OmegaConf

    assert parallel_jobs(OmegaConf.create({"_target_": target.replace("...", "joblib." if "Job" in target else ""),
                                           "n_jobs": n_jobs}), cpus=8) == expected


def test_parallel_jobs_get_their_own_gpu_and_a_share_of_the_cores(monkeypatch, make_cfg):
    """On a multi-GPU machine job k of a joblib sweep trains on cuda:(k % gpus); threads are split."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from deblur_exp.sweeps import jobs

    cfg = make_cfg(["trainer.device=auto"])
    hydra_cfg = OmegaConf.create({"hydra": {"launcher": {"_target_": "hydra_plugins.hydra_joblib_launcher."
                                                                      "joblib_launcher.JoblibLauncher", "n_jobs": 3},
                                            "job": {"num": 5}}})
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hydra_cfg.hydra))
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    monkeypatch.setattr("os.cpu_count", lambda: 12)
    assert jobs.job_resources(cfg) == {"trainer.device": "cuda:1", "trainer.num_threads": 4}


def test_baseline_row_only_when_every_job_shares_it():
    from deblur_exp.sweeps.summary import shared_baseline

    ok = {"status": "ok", "baseline": {"best_val_psnr": 30.0, "Set5_psnr": 28.0}}
    other_degradation = {"status": "ok", "baseline": {"best_val_psnr": 27.5, "Set5_psnr": 25.0}}
    failed = {"status": "failed"}
    assert shared_baseline([ok, dict(ok), failed]) == ok["baseline"]
    assert shared_baseline([ok, other_degradation]) is None
    assert shared_baseline([failed]) is None


@pytest.mark.slow
def test_a_killed_sweep_resumes_as_a_whole(tmp_path):
    """Kill a sweep in its second job, re-run it with resume=auto: the finished job is skipped, the killed one
    continues from its last.pt (ending with the weights of a run that never stopped), the third starts fresh."""
    import signal
    import sys
    import time

    import torch

    from deblur_exp.runs.checkpoint import load_checkpoint

    steady = [*TINY, "trainer.dropout=0.2", "trainer.deterministic=true", "trainer.epochs=25", "eval.enabled=false"]
    env = {**os.environ, "DEBLUR_OUTPUT_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), "-m", "model=srcnn,deblurcnn,edsr", *steady]
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    metrics = None
    while time.time() < deadline and first.poll() is None:
        found = list((tmp_path / "multirun").glob("*/*/1_model=deblurcnn/metrics.csv"))
        if found and len(found[0].read_text().splitlines()) >= 3:  # header + 2 epochs of job 1
            metrics = found[0]
            break
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert metrics is not None, "job 1 never got going"
    folder = metrics.parent.parent
    killed_at = load_checkpoint(folder / "1_model=deblurcnn" / "checkpoints" / "last.pt")["epoch"]
    assert 1 <= killed_at < 25 and not (folder / "1_model=deblurcnn" / "summary.json").exists()
    assert not (folder / "summary.md").exists()
    finished_before = (folder / "0_model=srcnn" / "checkpoints" / "last.pt").stat().st_mtime_ns

    result = run_script("train.py", "-m", "model=srcnn,deblurcnn,edsr", *steady, f"hydra.sweep.dir={folder}",
                        "resume=auto", env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "resume=auto" in result.stdout and "finished (25 epochs" in result.stdout
    assert f"resumed from {folder / '1_model=deblurcnn' / 'checkpoints' / 'last.pt'} after epoch {killed_at}" \
        in result.stdout
    assert (folder / "0_model=srcnn" / "checkpoints" / "last.pt").stat().st_mtime_ns == finished_before
    rows = summary_rows(folder)
    assert sorted(r["model"] for r in rows) == ["deblurcnn", "edsr", "srcnn"]
    assert all(r["status"] == "ok" and r["epochs"] == "25" for r in rows)
    with open(folder / "1_model=deblurcnn" / "metrics.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, 26))

    reference = run_script("train.py", "model=deblurcnn", *steady, f"hydra.run.dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stderr
    a = load_checkpoint(tmp_path / "reference" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(folder / "1_model=deblurcnn" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def divergence(job, ours, reference, stopped: str, resumed: str) -> str:
    """What a rare failure of the threaded resume needs to be understood: where the job stopped and resumed, which
    job set up first, and the first epoch whose metrics.csv row differs from the reference's."""
    rows = [read_csv(folder / job / "metrics.csv") for folder in (ours, reference)]
    parted = next((f"epoch {a['epoch']}: train_loss {a['train_loss']} vs {b['train_loss']}, val_loss "
                   f"{a['val_loss']} vs {b['val_loss']}" for a, b in zip(*rows)
                   if (a["train_loss"], a["val_loss"]) != (b["train_loss"], b["val_loss"])), "no metrics row differs")
    stops = [line for line in stopped.splitlines() if "stopped by SIGTERM" in line]
    order = [line for line in resumed.splitlines() if "resumed from" in line]
    return (f"{job}: weights differ from the reference; first differing row: {parted}; stops: {stops}; resumes in "
            f"order: {order}")


def fake_sweep(root, psnrs_by_job):
    """Job folders as train.py -m leaves them, as far as compare_sweeps reads them: overrides and metrics.csv."""
    from deblur_exp.runs.run_dir import RunDir

    for job, psnrs in psnrs_by_job.items():
        run = RunDir(root / job)
        run.hydra.mkdir(parents=True)
        run.overrides.write_text(f"- {job.split('_', 1)[1]}\n")
        rows = "".join(f"{e},{p}\n" for e, p in enumerate(psnrs, 1))
        run.metrics.write_text("epoch,val_psnr\n" + rows)
    return root


@pytest.mark.parametrize("candidate, epoch, status, verdicts", [
    ([[30.0, 31.05, 31.2], [28.0, 28.9]], None, 0, ["within", "within"]),  # up to epoch 2, both reached
    ([[30.0, 30.8, 31.2], [28.0, 28.9]], "2", 1, ["OFF by more than 0.1 dB", "within"]),
    ([[30.0, 31.0, 31.2], [28.0, 28.9]], "3", 1, ["within", "not compared: an epoch 3 is missing"]),
])
def test_compare_sweeps_holds_each_job_to_the_tolerance(tmp_path, candidate, epoch, status, verdicts):
    reference = fake_sweep(tmp_path / "ref", {"0_model=srcnn": [30.0, 31.0, 31.1], "1_model=edsr": [28.0, 28.95]})
    fast = fake_sweep(tmp_path / "fast", dict(zip(["0_model=srcnn", "1_model=edsr"], candidate)))
    args = [str(reference), str(fast), "--out", str(tmp_path / "cmp.md"), *(["--epoch", epoch] if epoch else [])]
    result = run_script("compare_sweeps.py", *args)
    assert result.returncode == status, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("| 0_") or line.startswith("| 1_")]
    assert [line.rsplit(" | ", 1)[1].rstrip(" |") for line in lines] == verdicts
    assert (tmp_path / "cmp.md").read_text() == result.stdout.rstrip("\n") + "\n"


def test_compare_sweeps_refuses_sweeps_over_different_jobs(tmp_path):
    reference = fake_sweep(tmp_path / "ref", {"0_model=srcnn": [30.0]})
    other = fake_sweep(tmp_path / "other", {"0_model=edsr": [30.0]})
    result = run_script("compare_sweeps.py", str(reference), str(other))
    assert result.returncode == 2 and result.stderr.startswith("error: the sweeps hold different jobs: ")


def test_sweep_progress_reports_measured_epoch_times_of_an_unfinished_sweep(tmp_path):
    """A stopped sweep has no summary.md; sweep_progress.py reads each job's metrics.csv instead."""
    sweep = fake_sweep(tmp_path / "sweep", {"0_model=srcnn": [30.0, 31.0, 31.5], "1_model=edsr": [28.0],
                                            "2_model=dncnn": []})
    for job, times in (("0_model=srcnn", [9.0, 2.0, 4.0]), ("1_model=edsr", [7.5])):
        metrics = sweep / job / "metrics.csv"
        rows = metrics.read_text().splitlines()
        metrics.write_text("\n".join([rows[0] + ",epoch_time_s"] + [f"{r},{t}" for r, t in zip(rows[1:], times)]))
    result = run_script("sweep_progress.py", str(sweep), "--epochs", "3", "--out", str(tmp_path / "p.md"))
    assert result.returncode == 0, result.stderr
    lines = {line.split(" | ")[0].lstrip("| "): line for line in result.stdout.splitlines()}
    assert lines["0_model=srcnn"] == "| 0_model=srcnn | 3 | 3 | 31.500 | 9.0 | 3.00 | finished |"
    assert lines["1_model=edsr"] == "| 1_model=edsr | 1 | 3 | 28.000 | 7.5 | 7.50 | 15 (projection: 2 x 7.50 s) |"
    assert lines["2_model=dncnn"] == "| 2_model=dncnn | 0 | 3 | - | - | - | no epoch finished yet |"
    assert (tmp_path / "p.md").read_text() == result.stdout.rstrip("\n") + "\n"
    bad = run_script("sweep_progress.py", str(tmp_path / "nowhere"))
    assert bad.returncode != 0 and bad.stderr.strip() == f"error: {tmp_path / 'nowhere'}: no such sweep folder"
    unknown = run_script("sweep_progress.py", str(sweep))  # fake jobs have no saved config to read epochs from
    assert unknown.returncode != 0 and unknown.stderr.strip().endswith("trainer.epochs from; pass --epochs")


def test_sweep_progress_back_tests_the_projection_on_a_finished_sweep(tmp_path):
    """--wall: what the first k epochs would have projected for a finished sweep, beside its measured time."""
    epochs = 6
    times = {"0_model=srcnn": [9.0, 2.0, 2.0, 2.0, 2.0, 2.0], "1_model=edsr": [5.0, 1.0, 3.0, 3.0, 3.0, 3.0]}
    sweep = fake_sweep(tmp_path / "sweep", {job: [30.0] * epochs for job in times})
    for job, seconds in times.items():
        metrics = sweep / job / "metrics.csv"
        rows = metrics.read_text().splitlines()
        metrics.write_text("\n".join([rows[0] + ",epoch_time_s"] + [f"{r},{t}" for r, t in zip(rows[1:], seconds)]))
    # 30 s of start-up and scoring around srcnn's 19 s of epochs, the longest job's. From 2 epochs: 30 + 11 (srcnn's
    # first two) + 4 epochs left x 2.0 (the slower second epoch) = 49 s; from 4: 30 + 15 + 2 x 3.0 (edsr's median) = 51.
    result = run_script("sweep_progress.py", str(sweep), "--epochs", str(epochs), "--wall", "49")
    assert result.returncode == 0, result.stderr
    assert "| 2 | 0.82 | 0.82 | 1.00x |" in result.stdout and "| 4 | 0.85 | 0.82 | 1.04x |" in result.stdout
    unfinished = run_script("sweep_progress.py", str(sweep), "--epochs", "8", "--wall", "49")
    assert unfinished.returncode != 0 and unfinished.stderr.strip() == (
        "error: --wall: the back-test needs a finished sweep and a positive time; "
        "0_model=srcnn (6 of 8 epochs), 1_model=edsr (6 of 8 epochs)")


# A CPU-only job of the test cluster: the lab preset asks for a GPU, 8 cores and 32 GB.
ON_SLURM = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]


@pytest.mark.slow
def test_the_five_model_sweep_on_slurm_gives_the_same_run_folders_and_summary(slurm_cluster, tmp_path):
    """One SLURM job per architecture on a real (one-node) cluster; each writes a complete run folder with
    slurm.json naming its job and log, and the sweep root gets the usual summary."""
    result = run_script("train.py", "-m", *ON_SLURM, f"model={FIVE}", *QUICK, "eval.enabled=false",
                        env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = sweep_dir(tmp_path)
    rows = summary_rows(folder)
    assert sorted(r["model"] for r in rows) == sorted(FIVE.split(",")) and {r["status"] for r in rows} == {"ok"}
    job_ids = set()
    for job in (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        slurm = json.loads((job / "slurm.json").read_text())
        assert (job / "checkpoints" / "last.pt").is_file() and (job / ".hydra" / "overrides.yaml").is_file()
        assert slurm["partition"] == "debug" and Path(slurm["stdout"]).is_file()
        job_ids.add(slurm["job_id"])
    assert len(job_ids) == 5


@pytest.mark.slow
def test_a_job_that_fails_on_slurm_is_named_with_its_log(slurm_cluster, tmp_path):
    quick = [o for o in QUICK if not o.startswith("data.patch_size")]
    result = run_script("train.py", "-m", *ON_SLURM, "model=srcnn", "data.patch_size=16,2", *quick,
                        "eval.enabled=false", env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert result.returncode == 1, result.stderr[-3000:]
    assert "failed: 1_data.patch_size=2" in result.stdout
    (log_line,) = [line for line in result.stdout.splitlines() if "SLURM log" in line]
    log = Path(log_line.split("SLURM log ", 1)[1])
    assert log.is_file() and "data.patch_size" in log.read_text()
    assert {r["status"] for r in summary_rows(sweep_dir(tmp_path))} == {"ok", "failed"}


@pytest.mark.slow
def test_a_slurm_job_warned_before_its_time_limit_is_requeued_and_ends_bit_exact(slurm_cluster, make_cfg, tmp_path):
    """SIGUSR2, what SLURM sends before a time limit or a pre-emption (here by scancel --signal=USR2): the job
    finishes its step, saves last.pt, submitit requeues it, and the requeued job continues from last.pt to the
    weights of a run that was never stopped."""
    import time

    import torch

    from deblur_exp.runs.checkpoint import load_checkpoint
    from deblur_exp.training.loop import train

    steady = [*TINY, "model=deblurcnn", "trainer.dropout=0.2", "trainer.deterministic=true", "trainer.num_threads=1",
              "trainer.precision=32", "trainer.limit_train_batches=20", "trainer.epochs=8", "eval.enabled=false"]
    sweep = tmp_path / "sweep"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), "-m", *ON_SLURM, *steady,
               f"hydra.sweep.dir={sweep}"]
    submitter = subprocess.Popen(command, env={**os.environ, "DEBLUR_OUTPUT_DIR": str(tmp_path)},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not any("epoch 2/8" in log.read_text() for log in sweep.glob("*/train.log")):
        assert time.monotonic() < deadline and submitter.poll() is None, submitter.communicate()
        time.sleep(0.2)
    (job,) = [p.parent for p in sweep.glob("*/train.log")]
    job_id = json.loads((job / "slurm.json").read_text())["job_id"]
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    # SLURM holds a requeued job back for a couple of minutes (its begin time); let it start at once
    while submitter.poll() is None and "resumed from" not in (job / "train.log").read_text():
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True).stdout
        if state.startswith("PENDING"):
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
        assert time.monotonic() < deadline + 120, state
        time.sleep(0.5)
    stdout, stderr = submitter.communicate(timeout=300)
    assert submitter.returncode == 0, stdout[-2000:] + stderr[-2000:]
    log = (job / "train.log").read_text()
    assert "SIGUSR2: checkpoint saved" in log and "resumed from" in log

    threads = torch.get_num_threads()
    try:
        train(make_cfg(steady, tmp_path / "uninterrupted"))
    finally:
        torch.set_num_threads(threads)
    resumed = load_checkpoint(job / "checkpoints" / "last.pt")["model"]
    reference = load_checkpoint(tmp_path / "uninterrupted" / "checkpoints" / "last.pt")["model"]
    assert resumed.keys() == reference.keys() and all(torch.equal(resumed[k], reference[k]) for k in reference)


@pytest.mark.slow
def test_a_cancelled_slurm_sweep_rerun_with_resume_auto_continues_the_cut_job_and_skips_the_finished_one(
        slurm_cluster, tmp_path):
    """A sweep whose submitting command died (a lost login session) and whose running job was scancelled, after
    the other job had finished: the same command with resume=auto continues the cancelled job from its last.pt to
    its last epoch and leaves the finished one untouched."""
    import time

    sweep = tmp_path / "sweep"
    arguments = ["-m", *ON_SLURM, "model=srcnn", *TINY, "trainer.epochs=2,40", "eval.enabled=false",
                 f"hydra.sweep.dir={sweep}"]
    submitter = subprocess.Popen([sys.executable, str(REPO_ROOT / "scripts" / "train.py"), *arguments],
                                 env={**os.environ, "DEBLUR_OUTPUT_DIR": str(tmp_path)},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finished, cut = sweep / "0_trainer.epochs=2", sweep / "1_trainer.epochs=40"
    deadline = time.monotonic() + 180
    try:
        while not ((finished / "summary.json").is_file() and (cut / "train.log").is_file()
                   and "epoch 3/40" in (cut / "train.log").read_text()):
            assert time.monotonic() < deadline and submitter.poll() is None, submitter.communicate()
            time.sleep(0.1)
    finally:
        submitter.kill()  # the lost login session (and never a submitter left behind by a failed test)
        submitter.communicate()
    job_id = json.loads((cut / "slurm.json").read_text())["job_id"]
    subprocess.run(["scancel", job_id], check=True)
    while subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline + 60
        time.sleep(0.2)
    epochs_before = [r["epoch"] for r in read_csv(cut / "metrics.csv")]
    assert 3 <= len(epochs_before) < 40
    untouched = {f: f.read_bytes() for f in (finished / "train.log", finished / "summary.json",
                                             finished / "checkpoints" / "last.pt", finished / "metrics.csv")}

    rerun = run_script("train.py", *arguments, "resume=auto", env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert {f: f.read_bytes() for f in untouched} == untouched
    log = (cut / "train.log").read_text()
    assert log.count("resumed from") == 1 and "epoch 40/40" in log
    assert [int(r["epoch"]) for r in read_csv(cut / "metrics.csv")] == list(range(1, 41))
    assert {r["status"] for r in summary_rows(sweep)} == {"ok"}


@pytest.mark.slow
def test_a_slurm_job_of_two_tasks_trains_ddp_into_one_run_folder(slurm_cluster, tmp_path):
    """tasks_per_node=2: srun starts two processes, which join one Gloo process group from SLURM's own rank and
    world-size variables and write one run folder (rank 0)."""
    result = run_script("train.py", "-m", *ON_SLURM, "hydra.launcher.tasks_per_node=2", "model=srcnn", *QUICK,
                        "trainer.epochs=2", "eval.enabled=false", env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (job,) = [p for p in sweep_dir(tmp_path).iterdir() if p.is_dir() and not p.name.startswith(".")]
    log = (job / "train.log").read_text()
    assert "distributed: 2 processes (Gloo); effective batch 16 = 8 per process x 2" in log
    assert log.count("epoch 2/2") == 1 and [r["epoch"] for r in read_csv(job / "metrics.csv")] == ["1", "2"]
    assert json.loads((job / "summary.json").read_text())["epochs"] == 2
