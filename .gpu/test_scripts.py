"""The GPU-machine scripts of this folder, run on the CPU with tiny settings: pytest .gpu/test_scripts.py"""

import csv
import json
import os
import re
import subprocess

import pytest

from deblur_exp.config import REPO_ROOT
from tests.conftest import TINY, write_sharp_images

QUICK = [*TINY, "trainer.epochs=1"]


@pytest.mark.slow
def test_gpu_study_script_carries_a_sweep_across_leases(tmp_path):
    """.gpu/study.sh on the CPU with tiny settings: lease 1 stops every job on its time budget and packs the
    sweep; the next lease, unpacked elsewhere, continues each job and, once all have their epochs, writes the report."""
    import sys

    set5 = REPO_ROOT.parent / "shared" / "datasets"
    data_dir = os.environ.get("DEBLUR_DATA_DIR", str(set5))
    overrides = ["model=srcnn,deblurcnn", *TINY, "trainer.epochs=8", "trainer.deterministic=true"]
    env = {**os.environ, "DEBLUR_OUTPUT_DIR": str(tmp_path / "o"), "DEBLUR_DATA_DIR": data_dir,
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}

    def lease(number, minutes, sweep, out):
        return subprocess.run(["bash", str(REPO_ROOT / ".gpu" / "study.sh"), str(number), str(minutes),
                               str(sweep), str(out), *overrides], cwd=REPO_ROOT, env=env, capture_output=True,
                              text=True, timeout=600)

    first = lease(1, 0.002, tmp_path / "a" / "study", tmp_path / "out1")  # 0.12 s per job: stops in epoch 1
    assert first.returncode == 0, first.stdout + first.stderr
    assert "0 of 2 jobs have trained all their epochs" in first.stdout
    for job in (tmp_path / "a" / "study").glob("*_model=*"):
        assert json.loads((job / "summary.json").read_text())["stopped_by"] == "max_time"
    parts = sorted((tmp_path / "out1").glob("state.tar.gz.part-*"))
    assert parts and not (tmp_path / "out1" / "report").exists()

    (tmp_path / "b").mkdir()  # the next lease: a fresh machine with the packed state
    unpacked = subprocess.run(f"cat {' '.join(map(str, parts))} | tar -xzf - -C {tmp_path / 'b'}", shell=True)
    assert unpacked.returncode == 0
    second = lease(2, 30, tmp_path / "b" / "study", tmp_path / "out2")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 of 2 jobs have trained all their epochs" in second.stdout
    log = (tmp_path / "out2" / "sweep_lease2.log").read_text()
    assert log.count("continuing from") == 2 and "after epoch" in log
    for job in (tmp_path / "b" / "study").glob("*_model=*"):
        with open(job / "metrics.csv", newline="") as f:
            assert [int(r["epoch"]) for r in csv.DictReader(f)][-1] == 8
    assert (tmp_path / "out2" / "report" / "results.md").is_file()



def test_gpu_lease_script_sets_up_from_the_carried_folder(tmp_path):
    """.gpu/lease.sh: the carried datasets become DEBLUR_DATA_DIR, the checkout is importable, the command's
    exit status comes back, its output lands in $OUT/lease.log, MPS=1 says plainly when MPS is off, and a missing
    carry folder is a one-line error."""
    import sys

    carry = tmp_path / "carry"
    (carry / "datasets").mkdir(parents=True)
    (carry / "wheels").mkdir()
    env = {**os.environ, "CARRY": str(carry), "OUT": str(tmp_path / "out"), "MPS": "1",
           "PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin"}  # no nvidia-cuda-mps-control on it
    script = str(REPO_ROOT / ".gpu" / "lease.sh")
    probe = "import os, sys, deblur_exp; print('data', os.environ['DEBLUR_DATA_DIR']); sys.exit(3)"
    result = subprocess.run(["bash", script, "python", "-c", probe], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 3, result.stdout + result.stderr
    log = (tmp_path / "out" / "lease.log").read_text()
    assert f"data {carry}/datasets" in log
    assert "MPS off: nvidia-cuda-mps-control not found" in log

    missing = subprocess.run(["bash", script, "true"], env={**env, "CARRY": str(tmp_path / "nowhere")},
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "run .gpu/carry.sh here and carry it" in missing.stderr



def test_gpu_lease_script_installs_the_carried_hydra_beside_the_image(tmp_path):
    """On a machine without Hydra (the GPU image), gpu_lease.sh installs the four carried Hydra wheels into a folder
    of its own and puts it on the command's path; the image's pytest is kept, so pytest's carried family stays out."""
    import sys

    carry, blocked = tmp_path / "carry", tmp_path / "blocked"
    (carry / "wheels").mkdir(parents=True)
    for dist, package in [("hydra_core", "hydra"), ("omegaconf", "omegaconf"), ("antlr4_python3_runtime", "antlr4"),
                          ("hydra_joblib_launcher", "hydra_plugins/hydra_joblib_launcher"),
                          ("iniconfig", "iniconfig")]:  # the last stands for pytest's family
        fake_wheel(carry / "wheels", dist, package)
    (blocked / "hydra").mkdir(parents=True)  # this machine's Hydra made unimportable, as on the GPU image
    (blocked / "hydra" / "__init__.py").write_text("raise ImportError('no Hydra on this machine')\n")
    env = {**os.environ, "CARRY": str(carry), "LEASE_SITE": str(tmp_path / "site"), "PYTHONPATH": str(blocked),
           "PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin"}
    probe = ("import hydra, omegaconf, antlr4, hydra_plugins.hydra_joblib_launcher as launcher, pytest, iniconfig; "
             "print(hydra.CARRIED, omegaconf.CARRIED, antlr4.CARRIED, launcher.CARRIED, iniconfig.__file__)")
    result = subprocess.run(["bash", str(REPO_ROOT / ".gpu" / "lease.sh"), "python", "-c", probe], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    carried, iniconfig_file = result.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert carried == "hydra_core omegaconf antlr4_python3_runtime hydra_joblib_launcher"
    assert not iniconfig_file.startswith(str(tmp_path))

    (carry / "wheels" / "omegaconf-1.0-py3-none-any.whl").write_bytes(b"not a wheel")
    broken = subprocess.run(["bash", str(REPO_ROOT / ".gpu" / "lease.sh"), "true"],
                            env={**env, "LEASE_SITE": str(tmp_path / "site2")}, capture_output=True, text=True,
                            timeout=120)
    assert broken.returncode == 1 and "installing the carried wheels from" in broken.stderr



def gpu_sweep_check(tmp_path, out, *overrides, **env):
    import sys

    env = {**os.environ, "DEBLUR_OUTPUT_DIR": str(tmp_path / "o"), "SWEEPS": str(tmp_path / "sweeps"),
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", **env}
    return subprocess.run(["bash", str(REPO_ROOT / ".gpu" / "sweep_check.sh"), str(out), *overrides],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)



@pytest.mark.slow
def test_gpu_sweep_check_times_the_sweep_and_holds_it_to_a_plain_one(tmp_path):
    """.gpu/sweep_check.sh on the CPU with tiny settings, in two calls as in a lease: the threaded sweep is
    timed from the command to its summary, then held against a plain joblib fp32 sweep at the same epoch."""
    import tarfile

    out = tmp_path / "out"
    # deblurcnn with dropout, as experiment=seed has it: the threaded jobs draw the masks the plain ones draw
    tiny = ["model=srcnn,deblurcnn", *THREADED, "trainer.epochs=3", "trainer.precision=32"]
    fast = gpu_sweep_check(tmp_path, out, *tiny, PHASES="fast")
    assert fast.returncode == 0, fast.stdout + fast.stderr
    timing = (out / "timing.txt").read_text()
    assert "fast sweep: exit status 0, " in timing and " s wall from the command to summary.md" in timing
    assert "hydra/launcher=joblib" in timing and "plain check" not in timing
    assert "cuda_graph check: graphed steps follow eager ones" in timing  # on this CPU: the uncaptured path
    # each job's epochs, and the back-test of a projection from the first 2 epochs against the measured wall time
    assert "| 1_model=deblurcnn | 3 | 3 |" in timing and re.search(r"\n\| 2 \| [\d.]+ \| [\d.]+ \| [\d.]+x \|", timing)
    assert "| 1_model=deblurcnn | ok | deblurcnn |" in (out / "summary_fast.md").read_text()
    assert not (out / "progress_fast.md").exists()  # for stopped sweeps (the next test)
    with tarfile.open(out / "weights_fast.tar") as tar:  # every job's best weights, without the optimizer state
        assert sorted(tar.getnames()) == ["fast/0_model=srcnn/checkpoints/best.pt",
                                          "fast/1_model=deblurcnn/checkpoints/best.pt"]
        tar.extractall(tmp_path / "unpacked", filter="data")
    import torch

    from deblur_exp.evaluation.scoring import load_restorer

    for job, arch in (("0_model=srcnn", "srcnn"), ("1_model=deblurcnn", "deblurcnn")):
        weights = tmp_path / "unpacked" / "fast" / job / "checkpoints" / "best.pt"
        assert "optimizer" not in torch.load(weights, weights_only=True)
        assert load_restorer(weights).arch == arch

    data = tmp_path / "data"  # the sweeps train on data=sample; the scoring phase reads a tiny Set14 here
    write_sharp_images(data / "Set14", names=("alpha", "beta"), size=(48, 64))
    plain = gpu_sweep_check(tmp_path, out, *tiny, PHASES="plain scoring", PLAIN_EPOCHS="2", DEBLUR_DATA_DIR=str(data))
    assert plain.returncode == 0, plain.stdout + plain.stderr
    timing = (out / "timing.txt").read_text()
    assert "plain check at epoch 2: every job within 0.1 dB" in timing
    scoring = json.loads((out / "scoring.json").read_text())["scoring"]
    assert scoring["images"] == 2 and scoring["images_per_s"] > 0 and scoring["skimage_images_per_s"] > 0
    assert (f"Set14 scoring (cpu, dncnn, 2 images): {scoring['images_per_s']:.2f} images/s with torch SSIM on cpu "
            f"vs {scoring['skimage_images_per_s']:.2f} with scikit-image") in timing
    assert "| 0_model=srcnn | 2 |" in (out / "compare.md").read_text()
    with tarfile.open(out / "sweeps.tar.gz") as tar:
        names = tar.getnames()
    assert "./fast/0_model=srcnn/metrics.csv" in names and "./plain/1_model=deblurcnn/metrics.csv" in names
    assert not any("checkpoints" in n for n in names)



@pytest.mark.slow
def test_gpu_sweep_check_stops_a_sweep_at_its_time_limit_and_reports_how_far_it_got(tmp_path):
    out = tmp_path / "out"
    endless = ["model=srcnn,deblurcnn", *THREADED, "trainer.epochs=100000", "trainer.precision=32"]
    result = gpu_sweep_check(tmp_path, out, *endless, PHASES="fast", FAST_LIMIT="45")
    assert result.returncode == 124, result.stdout + result.stderr
    assert "fast sweep: STOPPED at FAST_LIMIT=45 s" in (out / "timing.txt").read_text()
    assert not (out / "weights_fast.tar").exists() and not (out / "summary_fast.md").exists()
    progress = (out / "progress_fast.md").read_text()
    for job in ("0_model=srcnn", "1_model=deblurcnn"):
        done, planned = map(int, progress.split(f"| {job} | ")[1].split(" | ")[:2])
        assert done >= 1 and planned == 100000 and f"(projection: {planned - done} x " in progress
        assert (tmp_path / "sweeps" / "fast" / job / "checkpoints" / "last.pt").is_file()  # resumable


def fake_wheel(folder, dist, package):
    """A minimal pure-Python wheel whose package records which wheel it came from."""
    import zipfile

    info = f"{dist}-1.0.dist-info"
    files = {f"{package}/__init__.py": f"CARRIED = {dist!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(folder / f"{dist}-1.0-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)



# Both models with the seed's dropout: each job draws its masks from its own generator (models/layers.py), so the
# jobs sharing a process still end with the weights they reach alone.
THREADED = [*TINY, "trainer.deterministic=true", "eval.enabled=false", "trainer.dropout=0.2"]



def job_weights(folder, job):
    from deblur_exp.runs.checkpoint import load_checkpoint

    return load_checkpoint(folder / job / "checkpoints" / "last.pt")["model"]
