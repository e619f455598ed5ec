"""Kills, signals, damaged checkpoints, divergence, determinism, unsafe checkpoints, hostile input files."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from deblur_exp.config import REPO_ROOT
from deblur_exp.data.degrade import DegradationConfig
from deblur_exp.data.images import write_image
from deblur_exp.data.patches import load_patches
from deblur_exp.data.sources import DataConfig
from deblur_exp.errors import DeblurError
from deblur_exp.runs.checkpoint import load_checkpoint, save_checkpoint
from deblur_exp.runtime import TrainingInterrupted
from deblur_exp.training.loop import train
from tests.conftest import TINY, interrupt_after_epoch, run_script

# Deterministic, dropout on (RNG state matters), four steps an epoch, three epochs.
STEADY = [*TINY, "model=deblurcnn", "trainer.dropout=0.2", "trainer.deterministic=true",
          "trainer.limit_train_batches=4", "trainer.epochs=3", "eval.enabled=false"]


def weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def metric_rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "samples_per_s")} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same run, never stopped."""
    from hydra import compose, initialize_config_dir

    from deblur_exp.config import CONF_DIR

    root = tmp_path_factory.mktemp("reference")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*STEADY, f"paths.run_dir={root / 'run'}", f"paths.cache_dir={root / 'c'}"])
    train(cfg)
    return root / "run"


# A child process that trains STEADY and SIGKILLs itself at a chosen point.
KILLER = r"""
import os, signal, sys
import torch
from hydra import compose, initialize_config_dir
import deblur_exp.runs.checkpoint as checkpoint
import deblur_exp.training.loop as training
from deblur_exp.config import CONF_DIR

point, run_dir, cache = sys.argv[1], sys.argv[2], sys.argv[3]
overrides = sys.argv[4:]
calls = {"n": 0}

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

def counted(n):
    calls["n"] += 1
    return calls["n"] == n

if point == "mid-epoch":            # in epoch 2, after its second optimizer step
    step = torch.optim.Adam.step
    def patched(self, *a, **k):
        out = step(self, *a, **k)
        if counted(6): kill()
        return out
    torch.optim.Adam.step = patched
elif point == "checkpoint-write":   # half-way through writing epoch 2's checkpoint file
    save = torch.save
    def patched(obj, f, *a, **k):
        if counted(3):
            import io
            buffer = io.BytesIO(); save(obj, buffer, *a, **k)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2]); f.flush(); kill()
        return save(obj, f, *a, **k)
    checkpoint.torch.save = patched
elif point == "between-renames":    # last.pt already moved to previous.pt, the new one not yet in place
    replace = os.replace
    def patched(src, dst):
        replace(src, dst)
        if str(dst).endswith("previous.pt") and counted(1): kill()
    checkpoint.os.replace = patched
elif point == "after-metrics-row":  # epoch 2's row written, its checkpoint not
    import deblur_exp.training.tracking as tracking
    append = tracking.MetricsTable.append
    def patched(self, row):
        append(self, row)
        if row["epoch"] == 2: kill()
    tracking.MetricsTable.append = patched

with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
    cfg = compose("train", overrides=[*overrides, f"paths.run_dir={run_dir}", f"paths.cache_dir={cache}"])
training.train(cfg)
"""


@pytest.mark.parametrize("point", ["mid-epoch", "checkpoint-write", "between-renames", "after-metrics-row"])
@pytest.mark.slow
def test_sigkill_anywhere_then_resume_matches_an_uninterrupted_run(make_cfg, tmp_path, uninterrupted, point):
    run_dir = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", KILLER, point, str(run_dir), str(tmp_path / "c"), *STEADY],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    train(make_cfg([*STEADY, f"resume={run_dir}"], run_dir))
    assert same_weights(weights(run_dir), weights(uninterrupted))
    assert metric_rows(run_dir) == metric_rows(uninterrupted)
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.slow
def test_signal_finishes_the_step_saves_and_exits(tmp_path, uninterrupted, signum):
    env = {"DEBLUR_OUTPUT_DIR": str(tmp_path), "DEBLUR_CACHE_DIR": str(tmp_path / "c")}
    args = [*STEADY, "trainer.limit_train_batches=4"]
    proc = subprocess.Popen([sys.executable, str(REPO_ROOT / "scripts" / "train.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("runs/*/*/checkpoints/last.pt")):
        time.sleep(0.05)  # wait for epoch 1's checkpoint, then interrupt somewhere in epoch 2 or 3
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    (run_dir,) = tmp_path.glob("runs/*/*")
    if proc.returncode == 0:
        pytest.fail(f"the run finished before the signal arrived; make it longer\n{err}")
    assert proc.returncode == 128 + signum, err
    assert (out + err).count(f"Resume with: python scripts/train.py resume={run_dir}") == 1  # said once
    assert "Traceback" not in err
    resumed = run_script("train.py", f"resume={run_dir}", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert same_weights(weights(run_dir), weights(uninterrupted))
    assert metric_rows(run_dir) == metric_rows(uninterrupted)


def test_corrupt_last_checkpoint_falls_back_to_the_previous_one(make_cfg, tmp_path, uninterrupted, caplog,
                                                              monkeypatch):
    run_dir = tmp_path / "run"
    interrupt_after_epoch(monkeypatch, 2)  # last.pt holds epoch 2, previous.pt epoch 1
    with pytest.raises(TrainingInterrupted):
        train(make_cfg(STEADY, run_dir))
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    train(make_cfg([*STEADY, f"resume={run_dir}"], run_dir))
    assert "last.pt: checkpoint is truncated or corrupt" in caplog.text and "trying the previous" in caplog.text
    assert same_weights(weights(run_dir), weights(uninterrupted))
    assert metric_rows(run_dir) == metric_rows(uninterrupted)


def test_no_usable_checkpoint_is_a_clear_error(make_cfg, tmp_path):
    run_dir = tmp_path / "run"
    train(make_cfg([*STEADY, "trainer.epochs=1"], run_dir))
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"garbage")
    with pytest.raises(DeblurError, match="resume: no usable checkpoint in .*last.pt"):
        train(make_cfg([*STEADY, f"resume={run_dir}"], run_dir))


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_good_checkpoint(make_cfg, tmp_path, monkeypatch):
    import deblur_exp.training.loop as training

    calls = {"n": 0}
    real_mse = training.LOSSES["mse"]

    def poisoned(restored, sharp, **kwargs):
        calls["n"] += 1
        loss = real_mse(restored, sharp, **kwargs)
        return loss * float("nan") if calls["n"] > 6 else loss  # fine through epoch 1 (4 steps + val)

    monkeypatch.setitem(training.LOSSES, "mse", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(DeblurError, match=r"training diverged: the loss became nan in epoch 2 by step 4 .*"
                                          r"\(the last good checkpoint is kept in checkpoints/\)"):
        train(make_cfg(STEADY, run_dir))
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 1

    def nan_from_the_start(restored, sharp, **kwargs):  # no good checkpoint to speak of
        return real_mse(restored, sharp, **kwargs) * float("nan")

    monkeypatch.setitem(training.LOSSES, "mse", nan_from_the_start)
    with pytest.raises(DeblurError, match=r"in epoch 1 by step 4 .*\(no checkpoint had been saved yet\)"):
        train(make_cfg(STEADY, tmp_path / "fresh"))


def test_temp_files_of_killed_writes_are_removed_when_the_folder_is_next_used(make_cfg, tmp_path):
    """A SIGKILL mid-write leaves .<name>.<pid>.tmp behind (a patch cache write: tens of MB); the next run that
    uses the folder removes those whose writer is gone, a fresh start into the run folder included."""
    dead = 2**22 + 12345  # above the kernel's pid range: no such process
    cache, run_dir = tmp_path / "c", tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    cache.mkdir()
    leftovers = [cache / f".patches-t-abc.npz.{dead}.tmp", run_dir / "checkpoints" / f".last.pt.{dead}.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"x" * 1000)
    live = cache / f".patches-t-def.npz.{os.getppid()}.tmp"  # a writer still at work
    live.write_bytes(b"x")
    cfg = make_cfg([*STEADY, "trainer.epochs=1", f"paths.cache_dir={cache}"], run_dir)
    train(cfg)
    assert not any(leftover.exists() for leftover in leftovers) and live.exists()


def test_deterministic_runs_are_bitwise_identical(make_cfg, tmp_path, uninterrupted):
    train(make_cfg(STEADY, tmp_path / "again"))
    assert same_weights(weights(tmp_path / "again"), weights(uninterrupted))


class Payload:
    """Unpickling this would create a marker file: proof that code from the checkpoint ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": {}, "arch": "srcnn", "payload": Payload(str(marker))}, evil)
    with pytest.raises(DeblurError, match="refused to load: the file holds objects other than tensors"):
        load_checkpoint(evil)
    assert not marker.exists()
    result = run_script("deblur.py", "--model", str(evil), str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "refused to load" in result.stderr and not marker.exists()


def test_future_format_and_foreign_files_are_named(tmp_path):
    future = tmp_path / "future.pt"
    save_checkpoint(future, {"model": {}, "arch": "srcnn"})
    state = torch.load(future, weights_only=True)
    torch.save({**state, "format_version": 99}, future)
    with pytest.raises(DeblurError, match="format 99 is newer than this deblur_exp understands"):
        load_checkpoint(future)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(DeblurError, match="not a deblur_exp checkpoint"):
        load_checkpoint(foreign)
    # files that are not torch files at all: each way torch's unpickler fails is one named error
    garbage = {"text.pt": b"hi\n", "empty.pt": b"", "noise.pt": np.random.default_rng(0).bytes(4096),
               "zip_head.pt": b"PK\x03\x04" + bytes(100)}
    for name, data in garbage.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DeblurError, match=rf"{name}: (checkpoint is truncated or corrupt|not a torch checkpoint"
                                              rf"|refused to load)"):
            load_checkpoint(tmp_path / name)


def test_settings_are_checked_before_any_data_is_read(make_cfg, tmp_path):
    # The data folder does not exist either; the config error must come first.
    cfg = make_cfg(["data=t91", f"paths.data_dir={tmp_path / 'none'}", "trainer.batch_size=0"])
    with pytest.raises(DeblurError, match="trainer.batch_size"):
        train(cfg)


# ------------------------------------------------------------------------------------- hostile input files
@pytest.fixture
def hostile(tmp_path):
    folder = tmp_path / "hostile"
    folder.mkdir()
    rng = np.random.default_rng(0)
    good = (np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((4, 4, 1)))).astype(np.uint8)  # 48 x 64
    write_image(folder / "good.png", good)
    write_image(folder / "spaced naïve ünïcode.png", good[:, ::-1])
    (folder / "random.png").write_bytes(rng.bytes(4096))
    (folder / "truncated.png").write_bytes((folder / "good.png").read_bytes()[:200])
    PILImage.fromarray(good).save(folder / "whole.jpg", quality=90)
    (folder / "truncated.jpg").write_bytes((folder / "whole.jpg").read_bytes()[:300])
    (folder / "whole.jpg").unlink()
    write_image(folder / "one_pixel.png", good[:1, :1])
    write_image(folder / "line.png", np.zeros((1, 10000, 3), np.uint8))
    (folder / "loop_a.png").symlink_to(folder / "loop_b.png")
    (folder / "loop_b.png").symlink_to(folder / "loop_a.png")
    (folder / "empty.png").write_bytes(b"")
    return folder


BAD = ["random.png", "truncated.png", "truncated.jpg", "one_pixel.png", "line.png", "loop_a.png", "empty.png"]


def test_hostile_folder_in_data_preparation(hostile, caplog):
    patches = load_patches(DataConfig(name="h", root=str(hostile), patch_size=16, stride=16),
                           DegradationConfig(name="g"), None)
    assert sorted(patches.image_names) == ["good", "spaced naïve ünïcode"]
    for name in BAD:
        assert name in caplog.text, name


@pytest.mark.slow
def test_hostile_folder_in_evaluate_and_deblur(hostile, trained_run, tmp_path):
    before = sorted(p.name for p in hostile.iterdir())
    out = tmp_path / "eval"
    result = run_script("evaluate.py", str(trained_run), "--sets", "--images", str(hostile), "--out", str(out))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    for name in BAD:
        assert name in result.stdout, name
    with open(out / "srcnn" / "hostile.csv", newline="") as f:
        assert sorted(r["image"] for r in csv.DictReader(f)) == ["good", "spaced naïve ünïcode"]

    restored = tmp_path / "restored"
    result = run_script("deblur.py", "--model", str(trained_run), str(hostile), "--out", str(restored))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    for name in ("random.png", "truncated.png", "truncated.jpg", "loop_a.png", "empty.png"):
        assert name in result.stdout, name
    made = sorted(p.name for p in restored.iterdir())
    assert "good_restored.png" in made and "spaced naïve ünïcode_restored.png" in made
    assert "line_restored.png" in made and "one_pixel_restored.png" in made  # tiny but restorable as they are
    assert not [m for m in made if m.startswith(".")]  # nothing half-written
    assert sorted(p.name for p in hostile.iterdir()) == before


# --- a full disk ------------------------------------------------------------------------------------------------
def test_a_full_disk_mid_run_is_one_line_keeps_last_pt_and_leaves_no_temp_file(make_cfg, tmp_path, monkeypatch):
    import deblur_exp.runs.checkpoint as checkpoint

    run_dir = tmp_path / "run"
    real_save, calls = torch.save, {"n": 0}

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 3:  # epoch 1's best.pt and last.pt fit; then the disk is full
            f.write(b"x" * 1000)  # partly written, as a real failure leaves it
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1000 vs 900")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_the_disk_fills)
    with pytest.raises(DeblurError) as failure:
        train(make_cfg([*STEADY, "trainer.epochs=3"], run_dir))
    message = str(failure.value)
    assert "\n" not in message and "could not write" in message and "MiB free there" in message
    assert f"resume with: python scripts/train.py resume={run_dir}" in message
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert not list((run_dir / "checkpoints").glob(".*tmp"))
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 1


def test_a_full_disk_at_tensorboards_flush_is_the_same_one_line(make_cfg, tmp_path, monkeypatch):
    import errno

    from torch.utils.tensorboard import SummaryWriter

    run_dir, calls = tmp_path / "run", {"n": 0}
    real_flush = SummaryWriter.flush

    def flush_until_the_disk_fills(self):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_flush(self)

    monkeypatch.setattr(SummaryWriter, "flush", flush_until_the_disk_fills)
    with pytest.raises(DeblurError) as failure:
        train(make_cfg([*STEADY, "trainer.epochs=3"], run_dir))
    message = str(failure.value)
    assert "\n" not in message and "could not write events: the disk is full" in message
    assert f"resume with: python scripts/train.py resume={run_dir}" in message


def test_atomic_writes_that_hit_enospc_keep_the_old_file_and_remove_the_temp(tmp_path, monkeypatch):
    import errno

    from deblur_exp import atomic
    from deblur_exp.atomic import WriteFailed
    from deblur_exp.tables import write_text

    target = tmp_path / "summary.md"
    write_text(target, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(WriteFailed, match=r"could not write summary.md: the disk is full; [\d.]+ MiB free there"):
        write_text(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.md"]


# ---------------------------------------------------------------------------------------- one run, one folder
def test_last_checkpoint_is_whole_at_every_step_of_a_save(tmp_path, monkeypatch):
    """save_checkpoint(keep_previous=True) writes the new file fully before it touches the old one, and copies the
    old one to previous.pt rather than moving it: at every file operation of the save, last.pt loads."""
    last = tmp_path / "last.pt"
    save_checkpoint(last, {"model": {"w": torch.zeros(1)}, "epoch": 1})
    seen = []
    real_replace, real_link = os.replace, os.link

    def loads_before_and_after(operation):
        def checked(src, dst):
            seen.append(load_checkpoint(last)["epoch"])
            operation(src, dst)
            seen.append(load_checkpoint(last)["epoch"])
        return checked

    monkeypatch.setattr(os, "replace", loads_before_and_after(real_replace))
    monkeypatch.setattr(os, "link", loads_before_and_after(real_link))
    save_checkpoint(last, {"model": {"w": torch.ones(1)}, "epoch": 2}, keep_previous=True)
    assert seen[0] == 1 and seen[-1] == 2 and len(seen) >= 6  # link, previous into place, new last into place
    assert load_checkpoint(tmp_path / "previous.pt")["epoch"] == 1


def tiny_run(tmp_path, *overrides):
    """A finished two-epoch run made by scripts/train.py into tmp_path/run, its record included."""
    run = tmp_path / "run"
    result = run_script("train.py", *TINY, "eval.enabled=false", f"paths.run_dir={run}", *overrides,
                        env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    return run


def record(run):
    return {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()}


def test_a_run_whose_last_checkpoint_a_kill_took_resumes_from_the_previous_one(tmp_path):
    """The state a kill in an older save could leave (previous.pt, no last.pt): resume=RUN and resume=auto both
    continue the run from previous.pt, saying so, instead of refusing or starting fresh."""
    run = tiny_run(tmp_path)
    os.replace(run / "checkpoints" / "last.pt", run / "checkpoints" / "previous.pt")
    resumed = run_script("train.py", f"resume={run}", "trainer.epochs=3", env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert resumed.returncode == 0, resumed.stderr
    log = (run / "train.log").read_text()
    assert "trying the previous checkpoint" in log and "resumed from" in log and "previous.pt after epoch" in log
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3

    os.replace(run / "checkpoints" / "last.pt", run / "checkpoints" / "previous.pt")
    auto = run_script("train.py", *TINY, "eval.enabled=false", "trainer.epochs=4", f"hydra.run.dir={run}",
                      "resume=auto", env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert auto.returncode == 0, auto.stderr
    assert "resume=auto" in auto.stdout and "continuing from" in auto.stdout
    assert [int(row["epoch"]) for row in csv.DictReader(open(run / "metrics.csv"))] == [1, 2, 3, 4]


def test_a_fresh_run_into_a_run_folder_is_refused_before_it_touches_anything(tmp_path):
    run = tiny_run(tmp_path)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    again = run_script("train.py", *TINY, "model=edsr", f"paths.run_dir={run}",
                       env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert again.returncode == 2 and again.stderr.strip().count("\n") == 0
    assert f"resume={run}" in again.stderr
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_second_process_cannot_train_into_a_folder_in_use(tmp_path):
    """A run folder belongs to the one live process training in it (a kernel lock: a dead process holds none)."""
    from deblur_exp.runs.run_dir import RunDir

    run = tiny_run(tmp_path)
    with RunDir(run).owned():  # another process's training, as far as the lock can tell
        busy = run_script("train.py", f"resume={run}", "trainer.epochs=3", env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert busy.returncode == 2 and f"pid {os.getpid()}" in busy.stderr and "another training process" in busy.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    free = run_script("train.py", f"resume={run}", "trainer.epochs=3", env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert free.returncode == 0, free.stderr  # the lock went with its holder


def test_resume_auto_that_skips_or_is_refused_leaves_the_record_as_it_was(tmp_path):
    run = tiny_run(tmp_path, "model=deblurcnn_res")
    before = record(run)
    skipped = run_script("train.py", *TINY, "eval.enabled=false", "model=deblurcnn_res", "trainer.seed=7",
                         f"hydra.run.dir={run}", "resume=auto", env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert skipped.returncode == 0, skipped.stderr
    assert "finished" in skipped.stdout
    assert record(run) == before and not (run / ".hydra_resume").exists()

    other = run_script("train.py", *TINY, "model=edsr", f"hydra.run.dir={run}", "resume=auto",
                       env={"DEBLUR_OUTPUT_DIR": str(tmp_path)})
    assert other.returncode == 2 and "model=deblurcnn_res, not model=edsr" in other.stderr
    assert record(run) == before and not (run / ".hydra_resume").exists()


@pytest.mark.slow
def test_a_run_with_random_degradations_killed_mid_epoch_resumes_bit_exact(make_cfg, tmp_path):
    """Degradations drawn per sample on the fly (blur kind, resize, noise, JPEG) come from seeds of (run seed,
    epoch, step): a run SIGKILLed mid-epoch and resumed draws what the uninterrupted run drew."""
    overrides = [*STEADY, "degradation=random_mix"]
    reference = tmp_path / "reference"
    train(make_cfg(overrides, reference))
    run_dir = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", KILLER, "mid-epoch", str(run_dir), str(tmp_path / "c"),
                            *overrides], capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    train(make_cfg([*overrides, f"resume={run_dir}"], run_dir))
    assert same_weights(weights(run_dir), weights(reference))
    assert metric_rows(run_dir) == metric_rows(reference)
