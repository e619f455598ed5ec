"""scripts/benchmark.py keeps working and writes the documented JSON (timings are reported, never asserted)."""

import json

from tests.conftest import run_script


def test_benchmark_writes_the_documented_report(tmp_path):
    report_path = tmp_path / "bench.json"
    result = run_script("benchmark.py", "--models", "srcnn", "edsr", "--steps", "1", "--data-patches", "60",
                        "--device", "cpu", "--skip", "patches", "large", "--json", str(report_path),
                        env={"DEBLUR_DATA_DIR": str(tmp_path / "none")})
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["machine"]["device"] == "cpu" and report["machine"]["torch"]
    assert report["data_path"]["project_samples_per_s"] > 0 and report["data_path"]["reference_samples_per_s"] > 0
    for model in ("srcnn", "edsr"):
        row = report["training"][model]
        assert row["loop_samples_per_s"] > 0 and row["ceiling_samples_per_s"] > 0
        assert row["memory_format"] in ("nchw", "channels_last")
    assert report["inference"] == {"skipped": f"no Set14 at {tmp_path / 'none' / 'Set14'}"}
    assert "data path:" in result.stdout and "training (samples/s):" in result.stdout
