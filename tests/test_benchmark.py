"""scripts/benchmark.py keeps working and writes the documented JSON (timings are reported, never asserted)."""

import json

import pytest

from tests.conftest import run_script


@pytest.mark.slow
def test_benchmark_writes_the_documented_report(tmp_path):
    report_path = tmp_path / "bench.json"
    result = run_script("benchmark.py", "--models", "srcnn", "edsr", "--steps", "1", "--data-patches", "60",
                        "--device", "cpu", "--skip", "patches", "large", "contention", "--json", str(report_path),
                        env={"DEBLUR_DATA_DIR": str(tmp_path / "none")})
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["machine"]["device"] == "cpu" and report["machine"]["torch"]
    run = report["run"]  # what a figure quoted from the JSON needs: when, on which code, by which command
    assert run["date"].startswith("20") and run["date"].endswith("Z")
    assert run["commit"] and run["command"].startswith("python scripts/benchmark.py --models srcnn edsr --steps 1")
    assert report["data_path"]["project_samples_per_s"] > 0 and report["data_path"]["reference_samples_per_s"] > 0
    for model in ("srcnn", "edsr"):
        row = report["training"][model]
        assert row["loop_samples_per_s"] > 0 and row["ceiling_samples_per_s"] > 0
        assert row["loop_cuda_graph_samples_per_s"] > 0  # the trainer.cuda_graph step (uncaptured on a CPU)
        assert row["memory_format"] in ("nchw", "channels_last")
    assert report["inference"] == {"skipped": f"no Set14 at {tmp_path / 'none' / 'Set14'}"}
    served = report["degradation"]["samples_per_s"]  # each step kind on the fly, the mix, and the cached path
    assert set(served) == {"fixed (cached)", "gaussian_blur", "motion_blur", "defocus", "resize", "gaussian_noise",
                           "poisson_noise", "jpeg", "random_mix"} and min(served.values()) > 0
    assert "data path:" in result.stdout and "training (samples/s):" in result.stdout
    table = result.stdout[result.stdout.index("| measurement |"):]  # the closing summary table
    assert "| data path (samples/s) |" in table and "| training edsr (samples/s) |" in table
    assert "; cuda_graph loop " in table
    assert f"| Set14 whole images | skipped: no Set14 at {tmp_path / 'none' / 'Set14'} |" in table


SWEEP_TINY = ["data=sample", "data.images=[chelsea,coffee]", "data.val_images=[chelsea]", "data.patch_size=16",
              "data.stride=16", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "eval.enabled=false"]


def run_sweep_section(tmp_path, *overrides, launcher="joblib", epochs=2):
    report_path = tmp_path / "bench.json"
    result = run_script("benchmark.py", "--models", "srcnn", "edsr", "--device", "cpu", "--skip", "data", "training",
                        "patches", "inference", "scoring", "large", "contention", "degradation",
                        "--sweep-epochs", str(epochs), "--sweep-launcher", launcher, "--sweep-overrides", *SWEEP_TINY,
                        *overrides, "--json", str(report_path), env={"DEBLUR_OUTPUT_DIR": str(tmp_path / "out")})
    assert result.returncode == 0, result.stderr
    return json.loads(report_path.read_text())["seed_sweep"], result.stdout


@pytest.mark.slow
def test_sweep_section_runs_the_real_parallel_sweep_and_projects_it(tmp_path):
    sweep, stdout = run_sweep_section(tmp_path)
    assert sorted(sweep["jobs"]) == ["edsr", "srcnn"] and sweep["launcher"] == "joblib"
    for job in sweep["jobs"].values():  # the jobs' own metrics.csv rows, one per epoch
        assert len(job["epoch_times_s"]) == 2 and job["steady_epoch_s"] == job["epoch_times_s"][1]
    slowest = max(job["steady_epoch_s"] for job in sweep["jobs"].values())
    assert sweep["slowest_steady_epoch_s"] == slowest
    assert abs(sweep["projected_minutes"] * 60 - (sweep["wall_s"] + 200 * slowest)) < 1e-6
    assert "measured_minutes" not in sweep and "2x too low" in sweep["projection_record"]
    assert f"projected 202 epochs: {sweep['projected_minutes']:.1f} min (a projection, not a measurement" in stdout


@pytest.mark.slow
def test_a_full_length_sweep_is_measured_and_back_tests_the_projection(tmp_path):
    """--sweep-epochs at the study's length (here a 3-epoch study): the wall time is the figure, and the projection
    a 2-epoch sweep would have made is set beside it, from this run's own epoch times."""
    sweep, stdout = run_sweep_section(tmp_path, "--sweep-full-epochs", "3", epochs=3)
    assert "projected_minutes" not in sweep and sweep["measured_minutes"] == sweep["wall_s"] / 60
    times = [job["epoch_times_s"] for job in sweep["jobs"].values()]
    assert all(len(t) == 3 for t in times)
    two_epoch_wall = sweep["wall_s"] - max(sum(t) for t in times) + max(t[0] + t[1] for t in times)
    projected = two_epoch_wall + max(t[1] for t in times)  # one epoch left, at the slowest second epoch
    assert list(sweep["projection_checks"]) == ["2"]
    check = sweep["projection_checks"]["2"]
    assert abs(check["projected_minutes"] * 60 - projected) < 1e-6
    assert abs(check["projected_vs_measured"] - projected / sweep["wall_s"]) < 1e-9
    assert f"measured 3 epochs: {sweep['measured_minutes']:.1f} min" in stdout and "projected 3" not in stdout
    assert f"back-test: 2 epochs would have projected {check['projected_minutes']:.1f} min" in stdout


@pytest.mark.slow
def test_sweep_section_reports_a_failed_job(tmp_path):
    sweep, stdout = run_sweep_section(tmp_path, "optimizer.lr=-1")
    assert "optimizer.lr" in sweep["failed"]
    assert "| experiment=seed sweep, the models in parallel | failed: job" in stdout


@pytest.mark.parametrize("args,message", [
    (["--models", "nosuch"], "error: --models: unknown model 'nosuch'; known models: deblurcnn,"),
    (["--device", "gpu"], "error: --device: 'gpu' is not a device"),
    (["--steps", "0"], "error: --steps: must be at least 1 (got 0)"),
    (["--json", "/proc/no/report.json"], "error: --json: cannot write /proc/no/report.json"),
])
@pytest.mark.slow
def test_bad_flags_fail_at_once_in_one_line(args, message):
    result = run_script("benchmark.py", *args, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert "data path" not in result.stdout  # nothing was measured


def test_each_section_is_saved_as_soon_as_it_is_measured(tmp_path, monkeypatch):
    """A benchmark that dies in a later section keeps the earlier ones in its JSON."""
    import sys

    from deblur_exp.config import REPO_ROOT

    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import benchmark
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))

    def broken(*args):
        raise RuntimeError("machine caught fire")

    monkeypatch.setattr(benchmark, "bench_patches", broken)
    report_path = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--models", "srcnn", "--steps", "1", "--data-patches", "30",
                                      "--device", "cpu", "--skip", "contention", "degradation", "--json",
                                      str(report_path)])
    with pytest.raises(RuntimeError, match="caught fire"):
        benchmark.main()
    report = json.loads(report_path.read_text())
    assert report["data_path"]["speedup"] > 0 and report["training"]["srcnn"]["loop_samples_per_s"] > 0
    assert "patches" not in report


@pytest.mark.slow
def test_scoring_section_times_torch_and_scikit_image_ssim(tmp_path):
    from tests.conftest import write_sharp_images

    write_sharp_images(tmp_path / "data" / "Set14", names=("a", "b"), size=(48, 64))
    report_path = tmp_path / "bench.json"
    result = run_script("benchmark.py", "--models", "srcnn", "--device", "cpu", "--skip", "data", "training",
                        "patches", "inference", "large", "contention", "degradation", "sweep", "--json",
                        str(report_path),
                        env={"DEBLUR_DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 0, result.stderr
    scoring = json.loads(report_path.read_text())["scoring"]
    assert scoring["images"] == 2 and scoring["images_per_s"] > 0 and scoring["skimage_images_per_s"] > 0
    assert scoring["scoring_only_images_per_s"] > 0 and scoring["skimage_scoring_only_images_per_s"] > 0
    assert "| Set14 evaluation (degrade + restore + PSNR/SSIM) |" in result.stdout
    assert "; PSNR/SSIM alone " in result.stdout


@pytest.mark.slow
def test_busy_cpu_section_measures_quiet_and_busy_and_stops_its_busy_processes(tmp_path):
    from pathlib import Path

    def spinners():
        return [p for p in Path("/proc").iterdir() if p.name.isdigit() and (p / "cmdline").is_file()
                and b"while True: pass" in (p / "cmdline").read_bytes()]

    report_path = tmp_path / "bench.json"
    result = run_script("benchmark.py", "--device", "cpu", "--skip", "data", "training", "patches", "inference",
                        "scoring", "large", "degradation", "--contention-model", "srcnn", "--contention-steps", "2",
                        "--json", str(report_path))
    assert result.returncode == 0, result.stderr
    busy = json.loads(report_path.read_text())["contention"]
    assert busy["model"] == "srcnn" and busy["busy_processes"] == busy["cores"] >= 1
    for prefix in ("busy", "busy_one_job", "busy_same_session", "busy_niced"):
        assert busy[f"{prefix}_fixed_threads_samples_per_s"] > 0 and busy[f"{prefix}_default_samples_per_s"] > 0
        assert 1 <= busy[f"{prefix}_default_threads"] <= busy["cores"]
        assert busy[f"{prefix}_default_vs_quiet"] == busy[f"{prefix}_default_samples_per_s"] / busy[
            "quiet_samples_per_s"]
    assert busy["quiet_samples_per_s"] > 0
    assert busy["batch_size"] == 4  # the trainer's default batch (conf/trainer/default.yaml)
    assert not spinners()
