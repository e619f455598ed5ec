"""scripts/report.py: finished runs -> results.md / results.csv, curves.png, compare_butterfly.png."""

import csv
import json
import re

import numpy as np
import pytest
import torch

from deblur_exp.data.degrade import DegradationConfig, degrade
from deblur_exp.data.images import read_folder
from deblur_exp.evaluation.report import load_run
from deblur_exp.metrics import psnr
from deblur_exp.runtime import resolve_precision
from tests.conftest import TINY, dataset, run_script


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """Two architectures, two epochs each, scored on Set5 after training (RGB) by the runs themselves, and once
    during training (eval.every=2: after the last epoch)."""
    root = tmp_path_factory.mktemp("sweep")
    set5 = dataset("Set5")
    result = run_script("train.py", "-m", "model=srcnn,deblurcnn_res", *TINY, "eval.sets=[Set5]",
                        "eval.figures=false", "eval.every=2", env={"DEBLUR_OUTPUT_DIR": str(root),
                                                   "DEBLUR_DATA_DIR": str(set5.parent)})
    assert result.returncode == 0, result.stderr
    (folder,) = (root / "multirun").glob("*/*")
    return folder


@pytest.mark.slow
def test_report_tables_figures_and_scores_agree_with_the_runs(tiny_sweep, tmp_path):
    set5 = dataset("Set5")
    out = tmp_path / "report"
    result = run_script("report.py", str(tiny_sweep), "--out", str(out), "--sets", "Set5",
                        "--data-dir", str(set5.parent), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    for name in ("results.md", "results.csv", "curves.png", "compare_butterfly.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "results.csv", newline="") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"srcnn", "deblurcnn_res"}
    for model, row in rows.items():
        (job,) = tiny_sweep.glob(f"*_model={model}")
        summary = json.loads((job / "summary.json").read_text())
        # RGB scores re-computed by the report equal the run's own end-of-training evaluation
        assert float(row["Set5_rgb_psnr"]) == pytest.approx(summary["eval"]["Set5"]["psnr_restored"], abs=1e-4)
        assert float(row["Set5_rgb_ssim"]) == pytest.approx(summary["eval"]["Set5"]["ssim_restored"], abs=1e-4)
        assert row["epochs"] == "2" and row["stopped_by"] == "epochs" and row["device"].startswith("cpu")
        precision = "fp32" if resolve_precision("auto", torch.device("cpu")) == "32" else "bf16"  # as trained here
        assert row["recipe"] == ("defaults: degrade per image, split by image; WarmupCosine, lr 0.0003, batch 8, mse, "
                                 f"{precision}")  # the same for both models: one sweep, one recipe
        assert (job / "curves.png").stat().st_size > 0  # every run draws its own curves when it ends
        during = [(r["epoch"], r["set"]) for r in load_run(job).during]  # what the report's curves.png draws
        assert during == [("2", "Set5"), ("2", "held_out")]
        # a line per run as it is scored, in a log as on a terminal, with the score the table holds
        scored = rf"scored {re.escape(job.name)} \([12]/2\): PSNR Set5 RGB {float(row['Set5_rgb_psnr']):.2f} dB"
        assert re.search(scored, result.stderr)

    # The degraded-input row, in the SR protocol, computed here independently
    images, _ = read_folder(set5)
    seed = DegradationConfig(name="gauss_down3")
    y_rgb = [(psnr(degrade(i.rgb, seed), i.rgb, y_channel=True, crop_border=3), psnr(degrade(i.rgb, seed), i.rgb))
             for i in images]
    table = (out / "results.md").read_text()
    baseline = next(line for line in table.splitlines() if "degraded input" in line)
    assert f"{np.mean([y for y, _ in y_rgb]):.2f} / " in baseline
    assert f"{np.mean([r for _, r in y_rgb]):.2f} / " in baseline
    butterfly = dict(zip((i.name for i in images), (r for _, r in y_rgb)))["butterfly"]
    assert f"| {butterfly:.2f} |" in baseline  # the degraded butterfly, 20.03 dB per the datasets' README
    # the seed notebook's own figures sit beside ours
    assert "| 26.46 |" in table and "29.8" in table and "PSNR of each batch's MSE" in table


@pytest.mark.slow
def test_a_luma_only_run_is_reported_in_y_alone(tmp_path):
    """A data.color=y run (the SR protocol) has no RGB scores: the report shows "-" there, not a Y figure under
    an RGB label, scores Y with the crop as the run itself did, and leaves out the seed's RGB references."""
    set5 = dataset("Set5")
    run = tmp_path / "run"
    result = run_script("train.py", *TINY, "model=srcnn", "data.color=y", "model.params.channels=1",
                        "degradation=bicubic_x3", "eval.sets=[Set5]", "eval.crop_border=3", "eval.checkpoint=last",
                        "eval.held_out=false", "eval.figures=false", f"paths.run_dir={run}",
                        env={"DEBLUR_DATA_DIR": str(set5.parent)})
    assert result.returncode == 0, result.stderr
    result = run_script("report.py", str(run), "--sets", "Set5", "--data-dir", str(set5.parent), "--device", "cpu",
                        env={"DEBLUR_OUTPUT_DIR": str(tmp_path / "outputs")})  # no --out: under the output root
    assert result.returncode == 0, result.stderr
    (out,) = (tmp_path / "outputs" / "reports").iterdir()
    with open(out / "results.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    own = json.loads((run / "summary.json").read_text())["eval"]["Set5"]
    assert float(row["Set5_y_psnr"]) == pytest.approx(own["psnr_restored"], abs=1e-4)
    assert row["Set5_rgb_psnr"] == "nan"
    tests = (out / "results.md").read_text().split("## Test images")[1]
    line = next(line for line in tests.splitlines() if "| srcnn |" in line)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "- / -" and cells[3].startswith(f"{own['psnr_restored']:.2f} / ") and cells[4:] == ["-", "-"]


@pytest.mark.parametrize("folder, message", [("empty", "holds no finished run"),
                                             ("missing", "no such run or sweep folder")])
def test_report_refuses_a_folder_without_finished_runs(tmp_path, folder, message):
    """The folders the user named are checked first: a typo in them is the error shown, even where the test sets
    are missing too (here the data folder does not exist)."""
    (tmp_path / "empty").mkdir()
    result = run_script("report.py", str(tmp_path / folder), "--out", str(tmp_path / "r"), "--device", "cpu",
                        env={"DEBLUR_DATA_DIR": str(tmp_path / "no-data")})
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: {tmp_path / folder}: {message}")
    assert not (tmp_path / "r").exists()


def test_curves_add_whole_image_scores_when_runs_have_them(monkeypatch, tmp_path):
    """eval.every's rows become a third axes: a line per run and set (the run's colour, the set's style) and each
    set's degraded input in grey; runs without them keep the seed's two plots."""
    import deblur_exp.evaluation.figures as figures

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig))
    metrics = [{"epoch": str(e), "train_loss": "0.01", "val_loss": "0.02", "val_psnr": "30"} for e in (1, 2)]
    during = [{"epoch": str(e), "set": s, "psnr_restored": str(26 + e), "psnr_degraded": d}
              for e in (1, 2) for s, d in (("Set5", "25.98"), ("Set14", "23.87"))]
    figures.learning_curves(tmp_path / "a.png", {"a": metrics, "b": metrics}, during={"a": during, "b": []})
    figures.learning_curves(tmp_path / "b.png", {"a": metrics}, during={"a": []})
    with_scores, without = drawn
    assert len(without.axes) == 2 and len(with_scores.axes) == 3
    scores = with_scores.axes[2]
    lines = [(line.get_linestyle(), list(line.get_ydata())) for line in scores.get_lines()]
    assert lines[:2] == [("-", [27.0, 28.0]), ("--", [27.0, 28.0])]  # run a: Set5 solid, Set14 dashed
    assert [(style, y[0]) for style, y in lines[2:]] == [("-", 25.98), ("--", 23.87)]  # the degraded inputs
    assert [t.get_text() for t in scores.get_legend().get_texts()] == ["Set5", "Set14"]


def test_the_zoom_goes_where_the_detail_is():
    from deblur_exp.evaluation.figures import detail_box

    image = np.full((100, 120, 3), 128, np.uint8)
    image[60:85, 30:55] = np.random.default_rng(0).integers(0, 256, (25, 25, 3))
    assert detail_box(image, size=25) == (60, 30, 25)
    assert detail_box(image)[2] == 25  # default: a quarter of the shorter side


def test_one_sweep_over_models_is_one_recipe_with_one_degraded_line(tmp_path):
    """A dropout rate only the deblurcnn family takes does not split a five-model sweep into two recipes, and the
    degraded input's validation PSNR, shared by every run, is one line in curves.png."""
    from types import SimpleNamespace

    from deblur_exp.evaluation.report import degraded_baselines, recipe_of

    base = {"scheduler": {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau"}, "optimizer": {"lr": 5e-4},
            "trainer": {"batch_size": 30, "loss": "mse", "precision": "32"}, "degradation": {"apply_to": "patch"},
            "data": {"split": "patch"}}
    with_dropout = {**base, "model": {"name": "deblurcnn", "params": {"dropout": 0.2}}}
    without = {**base, "model": {"name": "edsr", "params": {"features": 64}}}
    assert recipe_of(tmp_path, with_dropout) == recipe_of(tmp_path, without)
    runs = [SimpleNamespace(recipe=recipe_of(tmp_path, c), summary={"val_psnr_degraded": 26.55})
            for c in (with_dropout, without)]
    assert degraded_baselines(runs) == {"degraded input": 26.55}
    runs[1] = SimpleNamespace(recipe="defaults: other", summary={"val_psnr_degraded": 24.71})
    assert degraded_baselines(runs) == {f"degraded input ({runs[0].recipe})": 26.55,
                                        "degraded input (defaults: other)": 24.71}


def test_a_run_cut_by_its_time_budget_shows_the_share_of_an_epoch_it_ran(tmp_path):
    """The training table's epochs column, like the sweep table's: 0.291 epochs, not 1, for a run that
    trainer.max_time stopped inside its first epoch."""
    from types import SimpleNamespace

    from deblur_exp.evaluation.report import training_table

    summary = {"parameters": 292355, "epochs": 1, "epochs_done": 0.291, "stopped_by": "max_time",
               "train_time_s": 31.9, "device": "cpu (1 thread)", "best_val_psnr": 27.05, "val_psnr_degraded": 24.71}
    table = training_table([SimpleNamespace(recipe="defaults", arch="deblurcnn_res", summary=summary)])
    assert "| defaults | deblurcnn_res | 292,355 | 0.291 | max_time | 0.5 min | cpu (1 thread) | 27.05 |" in table
    whole = {**summary, "epochs": 2, "epochs_done": 2, "stopped_by": "epochs"}
    assert "| 292,355 | 2 | epochs |" in training_table([SimpleNamespace(recipe="d", arch="edsr", summary=whole)])
