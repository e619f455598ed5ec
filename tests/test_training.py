import csv
import logging

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from deblur_exp.data.dihedral import dihedral
from deblur_exp.errors import DeblurError
from deblur_exp.runs.checkpoint import load_checkpoint
from deblur_exp.runtime import TrainingInterrupted
from deblur_exp.training.loop import train
from deblur_exp.training.tracking import METRIC_FIELDS
from tests.conftest import TINY, dataset, interrupt_after_epoch, write_sharp_images


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_run_writes_every_artefact(make_cfg, tmp_path):
    run_dir = tmp_path / "run"
    best = train(make_cfg(TINY, run_dir))
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"] and list(rows[0]) == METRIC_FIELDS
    assert best == max(float(r["val_psnr"]) for r in rows)
    for row in rows:
        assert float(row["train_loss"]) > 0 and float(row["val_psnr_degraded"]) > 10

    log_text = (run_dir / "train.log").read_text()
    assert "train /" in log_text and "val patches" in log_text and "epoch 2/2" in log_text

    last = load_checkpoint(run_dir / "checkpoints" / "last.pt", expected_arch="deblurcnn_res")
    best_ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert last["epoch"] == 2 and best_ckpt["best_psnr"] == pytest.approx(best)
    for key in ("model", "optimizer", "scheduler", "rng", "config", "best_psnr", "best_epoch"):
        assert key in last
    assert "deblurcnn_res" in last["config"]
    assert not list((run_dir / "checkpoints").glob(".*tmp"))  # no temp file left behind

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/val", "psnr/val", "psnr/val_degraded", "schedule/lr"} <= scalars
    assert len(events.Scalars("psnr/val")) == 2
    assert events.Tags()["images"] and events.Tags()["tensors"]  # image grid and config text
    layout = EventAccumulator(str(run_dir / "tensorboard")).Reload().PluginTagToContent("custom_scalars")
    assert layout  # restored and degraded PSNR on one chart (CUSTOM SCALARS tab)
    assert "whole_images" in {tag.split("/")[0] for tag in scalars}  # the end-of-run scores
    hparams = EventAccumulator(str(run_dir / "tensorboard" / "hparams")).Reload()  # the HPARAMS table's row
    assert "summary/best_val_psnr" in hparams.Tags()["scalars"]
    assert set(hparams.PluginTagToContent("hparams")) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}


def test_hparams_hold_the_usual_settings_and_every_key_the_command_overrode(make_cfg, tmp_path):
    from deblur_exp.training.tracking import HPARAM_KEYS, run_hparams

    cfg = make_cfg([*TINY, "optimizer.weight_decay=0.001", "model=edsr", "data.augment=true"], tmp_path / "run")
    values = run_hparams(cfg, ["model=edsr", "optimizer.weight_decay=0.001", "+hydra.launcher.n_jobs=2",
                               "paths.run_dir=x", "data.augment=true"])
    assert list(values)[:len(HPARAM_KEYS)] == HPARAM_KEYS
    assert values["model"] == "edsr" and values["data"] == "sample" and values["optimizer"] == "Adam"
    assert values["optimizer.weight_decay"] == 0.001 and values["data.augment"] is True
    assert values["trainer.max_time"] == "none" and not any(k.startswith(("hydra", "paths")) for k in values)


def train_whole_and_resumed(make_cfg, tmp_path, monkeypatch, overrides, before_resume=None):
    """(a run trained without a stop, the same run stopped after epoch 1 and resumed); ``before_resume(folder)``
    may damage the stopped run as a kill would."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(make_cfg(overrides, whole))
    interrupt_after_epoch(monkeypatch, 1)
    with pytest.raises(TrainingInterrupted):
        train(make_cfg(overrides, split))
    if before_resume is not None:
        before_resume(split)
    train(make_cfg([*overrides, f"resume={split}"], tmp_path / "ignored"))
    return whole, split


@pytest.mark.parametrize("scheduler, augment", [("cosine", False), ("plateau", False), ("cosine", True)])
def test_resume_matches_an_uninterrupted_run(make_cfg, tmp_path, monkeypatch, scheduler, augment):
    # deblurcnn with the seed's dropout: RNG state matters; cosine sets the rate every step from the share of the
    # run; data.augment draws a view per batch from the shuffling generator
    overrides = [*TINY, "model=deblurcnn", "trainer.dropout=0.2", "trainer.epochs=3", f"scheduler={scheduler}",
                 f"data.augment={str(augment).lower()}"]
    whole, split = train_whole_and_resumed(make_cfg, tmp_path, monkeypatch, overrides)
    a = load_checkpoint(whole / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(split / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop_timing = lambda rows: [{k: v for k, v in r.items() if k not in ("epoch_time_s", "samples_per_s")}
                                for r in rows]
    assert drop_timing(read_metrics(whole)) == drop_timing(read_metrics(split))


def read_during_training(run_dir):
    with open(run_dir / "eval" / "during_training.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_eval_every_scores_the_sets_as_the_model_trains(make_cfg, tmp_path):
    """eval.every=2 over 3 epochs scores the held-out image after epochs 2 and 3 (the last): rows in
    eval/during_training.csv and psnr/held_out in TensorBoard; the last row is the end-of-run score of last.pt."""
    import json

    run_dir = tmp_path / "run"
    train(make_cfg([*TINY, "trainer.epochs=3", "eval.every=2", "eval.checkpoint=last"], run_dir))
    rows = read_during_training(run_dir)
    assert [(r["epoch"], r["set"], r["images"]) for r in rows] == [("2", "held_out", "1"), ("3", "held_out", "1")]
    final = json.loads((run_dir / "eval" / "summary.json").read_text())["held_out"]
    assert {k: float(rows[-1][k]) for k in final if k != "images"} == {k: v for k, v in final.items() if k != "images"}
    assert rows[0]["psnr_restored"] != rows[1]["psnr_restored"]  # the weights as they were at each epoch
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("psnr/held_out")] == [2, 3]
    assert [e.value for e in events.Scalars("psnr/held_out_degraded")] == pytest.approx(
        [float(r["psnr_degraded"]) for r in rows])
    assert "eval/during_training.csv" in (run_dir / "train.log").read_text()  # the run's closing lines point at it


def test_eval_every_scoring_is_not_counted_in_max_time(make_cfg, tmp_path, monkeypatch):
    """A run with a 30-minute trainer.max_time trains all its epochs although each scoring takes an hour on the
    clock the budget reads (time.perf_counter, moved on by the patched scoring): the scoring is paused time."""
    import time

    import deblur_exp.evaluation.scoring as evaluation

    real, skipped = time.perf_counter, [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: real() + skipped[0])
    score = evaluation.ScoresDuringTraining.score

    def an_hour_of_scoring(self, epoch, writer):
        score(self, epoch, writer)
        skipped[0] += 3600.0

    monkeypatch.setattr(evaluation.ScoresDuringTraining, "score", an_hour_of_scoring)
    run_dir = tmp_path / "run"
    train(make_cfg([*TINY, "trainer.epochs=3", "eval.every=1", "trainer.max_time=30"], run_dir))
    assert [r["epoch"] for r in read_metrics(run_dir)] == ["1", "2", "3"]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["train_time_s"] < 600  # the hours left out


def test_eval_every_rows_survive_a_resume(make_cfg, tmp_path, monkeypatch):
    """A run stopped after epoch 1 and resumed has the rows of an uninterrupted one, also when a kill left a row
    past its checkpoint (scored, then killed before last.pt was saved): the resume drops it and scores again."""
    overrides = [*TINY, "trainer.epochs=3", "eval.every=1"]

    def kill_after_scoring(split):  # what a kill between epoch 2's scoring and its checkpoint leaves
        with open(split / "eval" / "during_training.csv", "a") as f:
            f.write("2,held_out,1,0,0,0,0\n")

    whole, split = train_whole_and_resumed(make_cfg, tmp_path, monkeypatch, overrides, kill_after_scoring)
    assert read_during_training(split) == read_during_training(whole)
    assert [r["epoch"] for r in read_during_training(whole)] == ["1", "2", "3"]


def test_resume_refuses_another_architecture(make_cfg, tmp_path):
    run_dir = tmp_path / "run"
    train(make_cfg([*TINY, "trainer.epochs=1"], run_dir))
    with pytest.raises(DeblurError, match="holds a 'deblurcnn_res' model but the config asks for 'edsr'"):
        train(make_cfg([*TINY, "model=edsr", f"resume={run_dir}"], run_dir))


@pytest.mark.parametrize("optimizer,scheduler,loss", [("sgd", "cosine", "l1"), ("adamw", "none", "mse")])
def test_optimizer_scheduler_and_loss_options_train(make_cfg, tmp_path, optimizer, scheduler, loss):
    cfg = make_cfg([*TINY, "model=srcnn", f"optimizer={optimizer}", f"scheduler={scheduler}", f"trainer.loss={loss}"])
    assert train(cfg) > 0


def test_bf16_autocast_runs_on_cpu(make_cfg):
    assert train(make_cfg([*TINY, "model=srcnn", "trainer.precision=bf16", "trainer.epochs=1"])) > 0


@pytest.mark.parametrize("capabilities,expected", [({"avx512_bf16": True}, "bf16"), ({"amx_bf16": True}, "bf16"),
                                                   ({"avx512_bf16": False, "avx2": True}, "32"), ({}, "32")])
def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, capabilities, expected):
    from deblur_exp.runtime import resolve_precision

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("auto", torch.device("cuda")) == "32"  # until bf16 is checked against fp32 on a GPU
    assert resolve_precision("32", torch.device("cpu")) == "32"
    assert resolve_precision("bf16", torch.device("cuda")) == "bf16"


def test_a_run_records_the_precision_auto_chose(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    run = tmp_path / "auto"
    train(make_cfg([*TINY, "model=srcnn", "trainer.precision=auto", "trainer.epochs=1"], run_dir=run))
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert "precision: bf16" in state["config"]
    assert "trainer.precision=auto: bf16 on cpu" in (run / "train.log").read_text()


def test_fp16_on_cpu_is_refused(make_cfg):
    with pytest.raises(DeblurError, match="fp16 needs a CUDA device"):
        train(make_cfg([*TINY, "trainer.precision=fp16"]))


def test_cuda_without_a_gpu_is_refused(make_cfg):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the refusal cannot happen here")
    with pytest.raises(DeblurError, match="trainer.device: 'cuda' requested but no CUDA device"):
        train(make_cfg([*TINY, "trainer.device=cuda"]))


def test_unwritable_output_fails_at_start(make_cfg, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DeblurError, match="paths.run_dir: cannot write to"):
        train(make_cfg(TINY, blocker / "run"))


@pytest.mark.slow
def test_seed_experiment_trains_on_t91(make_cfg, tmp_path, caplog):
    t91 = dataset("T91")
    cfg = make_cfg(["experiment=seed", "model=edsr", f"data.root={t91}", "trainer.epochs=1",
                    "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.progress=false",
                    "eval.enabled=false", "trainer.device=cpu"])
    with caplog.at_level(logging.INFO, logger="deblur_exp"):
        train(cfg)
    assert "19548 train / 2173 val patches of 35x35" in caplog.text


@pytest.mark.slow
def test_torch_compile_trains_on_cpu(make_cfg):
    assert train(make_cfg([*TINY, "model=srcnn", "trainer.compile=true", "trainer.epochs=1"])) > 0


@pytest.mark.parametrize("resident", [True, False], ids=["on-device", "host-staged"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batches_equal_to_tensor_of_the_permuted_patches(monkeypatch, channels_last, resident):
    """Chunked gathering is an optimisation only: the batches are exactly torchvision's ToTensor of the patches
    in the given order, whatever the chunk size, including the short last batch and the `limit` cut; the same
    when the patches stay in host memory and each chunk goes through the staging buffer (a GPU too small)."""
    import numpy as np
    from torchvision.transforms.functional import to_tensor

    from deblur_exp.data.batches import PatchTensors
    from deblur_exp.data.patches import PatchSet

    rng = np.random.default_rng(0)
    sharp, degraded = (rng.integers(0, 256, (23, 5, 5, 3), dtype=np.uint8) for _ in range(2))
    patches = PatchSet(sharp, degraded, np.zeros(23, np.int64), ["random"])
    indices = np.arange(2, 23)  # 21 patches: a subset, as a train split would be
    monkeypatch.setattr(PatchTensors, "CHUNK_BYTES", 4 * 5 * 5 * 3 * 4)  # 4 patches: many chunk boundaries
    tensors = PatchTensors.from_patches(patches, indices, torch.device("cpu"))
    assert tensors.resident  # on a CPU the patches always live where training runs
    tensors.resident = resident
    order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(1))

    got = [(d.clone(), s.clone(), d.is_contiguous(memory_format=torch.channels_last))
           for d, s in tensors.batches(2, order, channels_last=channels_last)]
    expected_order = indices[order.numpy()]
    assert [len(d) for d, _, _ in got] == [2] * 10 + [1]
    assert torch.equal(torch.cat([d for d, _, _ in got]), torch.stack([to_tensor(degraded[i]) for i in expected_order]))
    assert torch.equal(torch.cat([s for _, s, _ in got]), torch.stack([to_tensor(sharp[i]) for i in expected_order]))
    assert all(is_cl == channels_last for _, _, is_cl in got)
    limited = [d.clone() for d, _ in tensors.batches(2, None, limit=3, channels_last=channels_last)]
    assert torch.equal(torch.cat(limited), torch.stack([to_tensor(degraded[i]) for i in indices[:6]]))


@pytest.mark.parametrize("channels_last", [False, True])
def test_augmented_batches_are_one_dihedral_view_of_both_tensors(channels_last):
    """data.augment: each batch is one of the 8 flips/quarter turns of the plain batch, the same one for degraded
    and sharp (pairs stay aligned), drawn from the generator (so reproducible), and all 8 occur."""
    import numpy as np

    from deblur_exp.data.batches import PatchTensors
    from deblur_exp.data.patches import PatchSet

    rng = np.random.default_rng(2)
    sharp, degraded = (rng.integers(0, 256, (64, 6, 6, 3), dtype=np.uint8) for _ in range(2))
    tensors = PatchTensors.from_patches(PatchSet(sharp, degraded, np.zeros(64, np.int64), ["random"]),
                                        np.arange(64), torch.device("cpu"))
    plain = [(d.clone(), s.clone()) for d, s in tensors.batches(1, channels_last=channels_last)]
    views = [(k, flip) for k in range(4) for flip in (False, True)]
    seen = set()
    augment = torch.Generator().manual_seed(5)
    for (d, s), (d0, s0) in zip(tensors.batches(1, channels_last=channels_last, augment=augment), plain):
        transform = [v for v in views if torch.equal(d, dihedral(d0, *v)) and torch.equal(s, dihedral(s0, *v))]
        assert transform, "degraded and sharp must be the same view of the plain batch"
        assert d.is_contiguous(memory_format=torch.channels_last) == channels_last
        seen.add(transform[0])
    assert seen == set(views)  # 64 seeded draws
    again = [d.clone() for d, _ in tensors.batches(2, channels_last=channels_last,
                                                   augment=torch.Generator().manual_seed(5))]
    first = [d.clone() for d, _ in tensors.batches(2, channels_last=channels_last,
                                                   augment=torch.Generator().manual_seed(5))]
    assert all(torch.equal(a, b) for a, b in zip(again, first))


def test_fused_adam_trains_on_cpu_like_the_plain_one(make_cfg, tmp_path):
    """optimizer.fused=true is a speed knob only: same validation PSNR as the plain Adam step, to rounding."""
    from hydra.utils import instantiate

    plain = train(make_cfg([*TINY, "model=srcnn", "trainer.epochs=1"], run_dir=tmp_path / "plain"))
    fused_cfg = make_cfg([*TINY, "model=srcnn", "trainer.epochs=1", "optimizer.fused=true"], run_dir=tmp_path / "f")
    assert instantiate(fused_cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))]).defaults["fused"] is True
    assert train(fused_cfg) == pytest.approx(plain, abs=1e-3)


def test_reduce_overhead_compile_mode_trains_on_cpu(make_cfg, monkeypatch):
    """The sweep's GPU setting (CUDA graphs) must not break a CPU run: Inductor compiles without graphs there."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored afterwards
    assert train(make_cfg([*TINY, "model=srcnn", "trainer.compile=true", "trainer.compile_mode=reduce-overhead",
                           "trainer.epochs=1"])) > 0
    # cuDNN autotuned the first step only, before any graph is recorded (graphed_step.autotune_then_freeze)
    assert torch.backends.cudnn.benchmark is False


def test_patches_that_do_not_fit_the_gpu_stay_in_host_memory(monkeypatch):
    import numpy as np

    from deblur_exp.data.batches import PatchTensors
    from deblur_exp.data.patches import PatchSet

    sharp = np.zeros((100, 8, 8, 3), np.uint8)  # 2 x 19,200 bytes of patches
    patches = PatchSet(sharp, sharp.copy(), np.zeros(100, np.int64), ["zeros"])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100_000, 10**9))  # 25 KB usable < 38 KB
    tensors = PatchTensors.from_patches(patches, np.arange(100), torch.device("cuda"))
    assert not tensors.resident and tensors.sharp.device.type == "cpu" and tensors.device.type == "cuda"


def test_a_run_with_host_staged_patches_equals_one_with_resident_patches(make_cfg, tmp_path, monkeypatch):
    """The whole loop (training, validation, image grid) through the staging path gives the same run, bit for
    bit, as with patches on the training device: where the patches live changes speed, never results."""
    from deblur_exp.data.batches import PatchTensors

    overrides = [*TINY, "model=srcnn", "trainer.deterministic=true"]
    resident = train(make_cfg(overrides, run_dir=tmp_path / "resident"))
    build = PatchTensors.from_patches.__func__

    def host_staged(cls, *args, **kwargs):
        tensors = build(cls, *args, **kwargs)
        tensors.resident = False
        return tensors

    monkeypatch.setattr(PatchTensors, "from_patches", classmethod(host_staged))
    staged = train(make_cfg(overrides, run_dir=tmp_path / "staged"))
    assert staged == resident

    def results(run):  # every metric except the timings
        timings = ("epoch_time_s", "samples_per_s")
        return [{k: v for k, v in row.items() if k not in timings} for row in read_metrics(run)]

    assert results(tmp_path / "staged") == results(tmp_path / "resident")


@pytest.mark.parametrize("value, seconds", [("00:10:00", 600), ("1:00:00:30", 86430), ("10", 600), (2.5, 150),
                                            ("00:00:00.5", 0.5), (None, None)])
def test_max_time_accepts_lightning_durations_and_minutes(value, seconds):
    from deblur_exp.config import parse_duration

    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "0", "-5", "1:2", "00:-1:00", "nan"])
def test_a_bad_max_time_is_refused_naming_the_key(make_cfg, value):
    with pytest.raises(DeblurError, match="trainer.max_time: must be a duration"):
        train(make_cfg([*TINY, f"trainer.max_time='{value}'"]))


def test_max_time_stops_after_the_step_in_flight_then_saves_and_evaluates(make_cfg, tmp_path, caplog):
    import json

    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="deblur_exp"):
        # A budget of a millisecond runs out during the first step: that step finishes, the rest do not.
        best = train(make_cfg([*TINY, "trainer.epochs=5", "trainer.max_time='00:00:00.001'"], run_dir))
    assert "max_time reached at step 1 of 2 in epoch 1" in caplog.text
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == ["1"] and float(rows[0]["val_psnr"]) == pytest.approx(best)
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and last["train_time_s"] > 0 and "partial_epoch" not in last
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_by"] == "max_time" and summary["max_time_s"] == pytest.approx(0.001)
    assert summary["eval"]["held_out"]["images"] == 1  # the held-out image is still scored after the stop
    assert summary["epochs"] == 1 and summary["epochs_done"] == 0.5  # one step of two
    assert "and 0.5 epoch(s): training stops here" in caplog.text
    # resumed with the budget lifted, the run trains epochs 2 and 3 whole: two and a half epochs' worth in all
    train(make_cfg([*TINY, "trainer.epochs=3", "trainer.max_time=null", f"resume={run_dir}"], run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["epochs_done"] == 2.5


def test_the_closing_lines_say_above_or_below_the_input():
    from deblur_exp.training.tracking import versus_input

    assert versus_input(-14.861) == "14.86 dB below the degraded input"
    assert versus_input(2.5) == "2.50 dB above the degraded input"


def test_a_budget_that_is_not_reached_changes_nothing(make_cfg, tmp_path):
    import json

    plain, budgeted = tmp_path / "plain", tmp_path / "budgeted"
    train(make_cfg([*TINY, "model=deblurcnn"], plain))
    train(make_cfg([*TINY, "model=deblurcnn", "trainer.max_time=60"], budgeted))
    a = load_checkpoint(plain / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(budgeted / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((budgeted / "summary.json").read_text())["stopped_by"] == "epochs"


def test_a_luma_model_trains_scores_and_restores_rgb_photos(make_cfg, tmp_path):
    """data.color=y end to end: single-channel patches, a one-channel model, Y scores on the held-out image,
    grey figures, and deblur.py putting the restored luma back together with the photo's own colour."""
    import json

    import numpy as np

    from deblur_exp.data.images import read_image
    from tests.conftest import run_script, write_sharp_images

    run_dir = tmp_path / "run"
    train(make_cfg([*TINY, "model=srcnn", "data.color=y", "model.params.channels=1", "degradation=bicubic_x3",
                    "data.patch_size=18", "data.stride=18", "eval.crop_border=3"], run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval"]["held_out"]["images"] == 1 and summary["eval"]["held_out"]["psnr_degraded"] > 15
    assert (run_dir / "eval" / "figures" / "held_out" / "chelsea.png").is_file()

    photos = write_sharp_images(tmp_path / "photos", names=("alpha",), size=(48, 60))
    result = run_script("deblur.py", "--model", str(run_dir), str(photos), "--out", str(tmp_path / "out"),
                        "--device", "cpu")
    assert result.returncode == 0, result.stderr
    before, after = read_image(photos / "alpha.png"), read_image(tmp_path / "out" / "alpha_restored.png")
    assert after.shape == before.shape

    # Only Y goes through the model: with a model that changes nothing the photo comes back as it was.
    from deblur_exp.evaluation.restore import restore_photo

    restored = restore_photo(torch.nn.Identity(), "y", before)
    assert np.abs(np.round(restored * 255) - before).max() <= 1


def test_model_channels_must_match_the_data_colour(make_cfg):
    with pytest.raises(DeblurError, match="model.params.channels: must be 1 for data.color=y"):
        train(make_cfg([*TINY, "data.color=y"]))


def test_objective_held_out_returns_the_whole_image_psnr_of_the_held_out_images(make_cfg, tmp_path):
    import json

    run_dir = tmp_path / "run"
    value = train(make_cfg([*TINY, "trainer.epochs=1", "objective=held_out"], run_dir))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert value == summary["eval"]["held_out"]["psnr_restored"] and value != summary["best_val_psnr"]


@pytest.mark.parametrize("overrides", [["objective=Set5"], ["objective=held_out", "eval.enabled=false"],
                                       ["objective=held_out", "data.split=patch"], ["objective=psnr"]])
def test_an_objective_the_run_does_not_score_is_refused_before_training(make_cfg, overrides):
    from deblur_exp.training.config import check_config

    with pytest.raises(DeblurError, match=f"^{overrides[0]}: not scored by this run; choose val_psnr or"):
        check_config(make_cfg([*TINY, *overrides]))


def test_eval_checkpoint_last_makes_last_pt_stand_for_the_run(make_cfg, tmp_path, caplog):
    """eval.checkpoint=last: the end-of-run scores, summary.json and every reader of the run folder (report.py,
    evaluate.py RUN, export) use last.pt; the default stays best.pt, and a lone checkpoint is used either way."""
    import json
    import logging
    import shutil

    from deblur_exp.runs.run_dir import RunDir, run_checkpoint

    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="deblur_exp"):
        train(make_cfg([*TINY, "model=srcnn", "trainer.epochs=2", "eval.checkpoint=last"], run_dir))
    assert "eval: scoring checkpoints/last.pt (epoch 2)" in caplog.text
    assert json.loads((run_dir / "summary.json").read_text())["checkpoint"] == "last"
    run = RunDir(run_dir)
    assert run_checkpoint(run_dir) == run.last and run.checkpoint("best") == run.best

    summary = json.loads(run.summary.read_text())
    del summary["checkpoint"]  # a run from before the key existed
    run.summary.write_text(json.dumps(summary))
    assert run_checkpoint(run_dir) == run.best
    shutil.move(run.best, tmp_path / "elsewhere.pt")
    assert run_checkpoint(run_dir) == run.last


def initial_model(cfg):
    from deblur_exp.runtime import Distributed
    from deblur_exp.training.loop import build_parts, set_up_runtime

    device = torch.device("cpu")
    return build_parts(cfg, device, set_up_runtime(cfg.trainer, device, Distributed()))["model"]


def same_weights(model, weights) -> bool:
    return all(torch.equal(tensor, weights[name]) for name, tensor in model.state_dict().items())


def test_init_weights_starts_the_model_from_a_run_and_nothing_else(make_cfg, tmp_path, caplog):
    """Fine-tuning: the weights come from the named run (its eval.checkpoint), the run itself starts at epoch 1."""
    source = tmp_path / "source"
    train(make_cfg([*TINY, "model=srcnn", "trainer.epochs=2", "eval.checkpoint=last"], source))
    trained = load_checkpoint(source / "checkpoints" / "last.pt")["model"]

    tuned = [*TINY, "model=srcnn", "trainer.seed=7"]
    assert not same_weights(initial_model(make_cfg(tuned)), trained)  # the seed alone gives other weights
    assert same_weights(initial_model(make_cfg([*tuned, f"init_weights={source}"])), trained)

    with caplog.at_level(logging.INFO, logger="deblur_exp"):
        train(make_cfg([*tuned, "trainer.epochs=1", f"init_weights={source}"], tmp_path / "tuned"))
    assert f"init_weights: the model starts from the weights in {source / 'checkpoints' / 'last.pt'}" in caplog.text
    assert load_checkpoint(tmp_path / "tuned" / "checkpoints" / "last.pt")["epoch"] == 1


def test_init_weights_takes_a_shipped_pretrained_model(make_cfg):
    from deblur_exp.runs.pretrained import pretrained_path

    shipped = load_checkpoint(pretrained_path("pretrained:edsr"))["model"]
    assert same_weights(initial_model(make_cfg([*TINY, "model=edsr", "init_weights=pretrained:edsr"])), shipped)


def test_init_weights_that_do_not_fit_are_refused_naming_the_file(make_cfg, tmp_path):
    from deblur_exp.training.config import check_config

    source = tmp_path / "source"
    train(make_cfg([*TINY, "model=srcnn", "trainer.epochs=1"], source))
    best = source / "checkpoints" / "best.pt"
    with pytest.raises(DeblurError, match=f"^{best}: checkpoint holds a 'srcnn' model but the config asks for 'edsr'"):
        initial_model(make_cfg([*TINY, "model=edsr", f"init_weights={source}"]))
    with pytest.raises(DeblurError, match=rf"^{best}: its weights do not fit this srcnn's model.params \(it was "
                                          r"trained with \{'channels': 3, 'features': 64, 'hidden': 32\}\)"):
        initial_model(make_cfg([*TINY, "model=srcnn", "model.params.features=8", f"init_weights={source}"]))
    with pytest.raises(DeblurError, match=f"^init_weights: {tmp_path / 'nowhere'}: no such checkpoint file"):
        check_config(make_cfg([*TINY, f"init_weights={tmp_path / 'nowhere'}"]))
    train(make_cfg([*TINY, "model=srcnn", "trainer.epochs=1"], tmp_path / "sweep" / "1"))
    train(make_cfg([*TINY, "model=srcnn", "trainer.epochs=1"], tmp_path / "sweep" / "2"))
    with pytest.raises(DeblurError, match="holds 2 runs' checkpoints; name one run folder or file"):
        initial_model(make_cfg([*TINY, "model=srcnn", f"init_weights={tmp_path / 'sweep'}"]))
    # a resumed run continues from its own last.pt: init_weights is not even looked at
    train(make_cfg([*TINY, "model=srcnn", "trainer.epochs=2", f"resume={source}",
                    f"init_weights={tmp_path / 'nowhere'}"], source))
    assert load_checkpoint(source / "checkpoints" / "last.pt")["epoch"] == 2


@pytest.mark.parametrize("others, threads", [(0.0, 2), (0.4, 2), (0.6, 1), (2.0, 1), (11.0, 1)])
def test_cpu_threads_leave_the_cores_other_processes_hold(others, threads):
    from deblur_exp.training.cpu_threads import threads_for_load

    assert threads_for_load(2, others) == threads
    assert threads_for_load(16, others) == max(1, round(16 - others))


def fake_task(proc, pid: int, state: str, nice: int, group: str) -> None:
    """A process of one task in a stand-in /proc: its stat line (as the kernel writes it) and its autogroup."""
    task = proc / str(pid) / "task" / str(pid)
    task.mkdir(parents=True)
    fields = [state, "1", str(pid), str(pid), "0", "-1", "4194560", *["0"] * 9, str(nice), "1"]
    (task / "stat").write_text(f"{pid} (a (busy) job) {' '.join(fields)}\n")
    (proc / str(pid) / "autogroup").write_text(f"{group} nice 0\n")


@pytest.mark.parametrize("grouped", [True, False])
def test_runnable_tasks_count_by_what_they_take_from_this_process(tmp_path, grouped):
    """A runnable task of this process's autogroup takes its nice weight over ours of what an equal task would, and
    is discounted by the rest; one of another group is not (its group's share does not depend on its nice), nor is a
    sleeping task. Autogroup off: every task by its weight."""
    import os

    from deblur_exp.training.cpu_threads import NICE_WEIGHTS, niced_discount

    proc = tmp_path / "proc"
    (proc / "sys" / "kernel").mkdir(parents=True)
    (proc / "sys" / "kernel" / "sched_autogroup_enabled").write_text("1\n" if grouped else "0\n")
    (proc / "self").mkdir()
    (proc / "self" / "autogroup").write_text("/autogroup-7 nice 0\n")
    fake_task(proc, 100, "R", 19, "/autogroup-7")  # a niced job of this session
    fake_task(proc, 101, "R", 0, "/autogroup-7")  # a plain job of this session
    fake_task(proc, 200, "R", 19, "/autogroup-9")  # a niced job of another session
    fake_task(proc, 300, "S", 19, "/autogroup-7")  # asleep
    (proc / "400").mkdir()  # a process whose tasks cannot be read (hidepid, or gone): it keeps counting one
    ours = NICE_WEIGHTS[os.getpriority(os.PRIO_PROCESS, 0) + 20]
    niced, plain = 1 - NICE_WEIGHTS[39] / ours, 1 - NICE_WEIGHTS[20] / ours
    assert niced_discount(proc) == pytest.approx(niced + plain + (0.0 if grouped else niced))


def test_niced_jobs_of_this_session_leave_the_run_its_cores():
    """Two real `nice -n 19` busy processes started from this session: the load seen is what their nice weight
    takes from this process (a few hundredths of a task at nice 0), so a 2-core run keeps both threads; the same
    processes at this process's own nice count two tasks."""
    import os
    import subprocess
    import sys

    from deblur_exp.training.cpu_threads import NICE_WEIGHTS, runnable_elsewhere, threads_for_load

    def load_beside(nice: int) -> float:
        # -S: no site import, so the busy loop starts at once; the child says when it is niced and spinning.
        script = f"import os, sys\nos.nice({nice})\nprint(flush=True)\nwhile True: pass"
        busy = [subprocess.Popen([sys.executable, "-S", "-c", script], stdout=subprocess.PIPE) for _ in range(2)]
        try:
            for process in busy:
                process.stdout.readline()
            return runnable_elsewhere()
        finally:
            for process in busy:
                process.kill()
                process.wait()

    own_nice = os.getpriority(os.PRIO_PROCESS, 0)
    niced_share = 2 * NICE_WEIGHTS[39] / NICE_WEIGHTS[own_nice + 20]  # 0.03 at nice 0
    quiet = runnable_elsewhere()  # whatever else the machine runs meanwhile is not the children's
    niced, plain = load_beside(19) - quiet, load_beside(0) - quiet
    assert niced == pytest.approx(niced_share, abs=0.4)
    assert threads_for_load(2, niced) == threads_for_load(2, niced_share)
    assert plain >= 1.5 and threads_for_load(2, plain) == 1


def test_a_run_on_a_busy_cpu_trains_with_fewer_threads_and_says_so(make_cfg, tmp_path, monkeypatch, caplog):
    """trainer.num_threads=null: the run starts from all its cores and drops to the free ones while other processes
    are runnable, checked before every epoch."""
    import deblur_exp.training.cpu_threads as cpu_threads

    busy = iter([3.0, 0.0])  # before epoch 1: busy; before epoch 2: quiet again
    monkeypatch.setattr(cpu_threads, "runnable_elsewhere", lambda: next(busy))
    monkeypatch.setattr(cpu_threads, "cpu_cores", lambda: 2)
    import deblur_exp.training.loop as loop
    monkeypatch.setattr(loop, "cpu_cores", lambda: 2)
    seen = []
    step = loop.run_epoch
    monkeypatch.setattr(loop, "run_epoch", lambda *a: seen.append(torch.get_num_threads()) or step(*a))
    threads = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="deblur_exp"):
            train(make_cfg([o for o in TINY if not o.startswith("trainer.num_threads")], tmp_path / "run"))
    finally:
        torch.set_num_threads(threads)
    assert seen == [1, 2]
    assert len([r for r in caplog.records if r.funcName == "report_threads"]) == 2  # one line per change


def test_a_run_resumed_before_its_first_validation_has_no_best_score_yet(make_cfg, tmp_path, monkeypatch, caplog):
    import os
    import signal

    import deblur_exp.training.loop as loop

    make_step = loop.training_step

    def interrupted_at_first_step(state):
        step, calls = make_step(state), []

        def once(degraded, sharp):
            if not calls:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during step 1 of epoch 1
            calls.append(1)
            return step(degraded, sharp)
        return once

    monkeypatch.setattr(loop, "training_step", interrupted_at_first_step)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(make_cfg(TINY, run_dir))
    monkeypatch.setattr(loop, "training_step", make_step)
    with caplog.at_level(logging.INFO, logger="deblur_exp"):
        train(make_cfg([*TINY, f"resume={run_dir}"], run_dir))
    (resumed,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed from")]
    assert "step 1 of epoch 1" in resumed and "inf" not in resumed


def test_the_held_out_images_are_read_alone(make_cfg, tmp_path, caplog):
    """For scoring after training, data.split=image reads back only the whole images it held out (9 of T91's
    91), not the whole folder: an unreadable training file is not met again."""
    from deblur_exp.training.loop import load_held_out

    folder = write_sharp_images(tmp_path / "images", names=("alpha", "beta", "gamma"))
    (folder / "broken.png").write_bytes(b"not a png")
    cfg = make_cfg(["data=folder", f"data.root={folder}", "data.split=image"])
    with caplog.at_level(logging.WARNING, logger="deblur_exp"):
        held_out = load_held_out(cfg, ["beta"])
    assert [image.name for image in held_out] == ["beta"] and "broken.png" not in caplog.text
    assert held_out[0].rgb.shape == (40, 56, 3)
