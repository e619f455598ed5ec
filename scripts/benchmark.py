"""Measure throughput and memory, the project's way and a reference way, side by side in one process.

    python scripts/benchmark.py [--models ...] [--steps N] [--batch-size B] [--device D] [--json PATH]

1. data path: the in-memory batch source vs a per-file pipeline built the way the seed notebook did it
   (each patch a PNG; per item cv2.imread + ToPILImage + Resize + ToTensor; DataLoader, batch 30, shuffle);
2. degradation steps drawn on the fly (each step kind alone, and the random mix) beside the cached fixed
   degradation: training batches served per second;
3. training samples/s per model: the project's training loop (data, step, bookkeeping) vs an isolated
   forward+backward+optimizer step on random tensors (the ceiling), in NCHW and channels_last;
4. T91 patch preparation, cold (no cache) and warm (cache hit), when T91 is under the data directory;
5. whole-image inference on Set14 (images/s, peak memory), Set14 evaluation with torch vs scikit-image SSIM
   (images/s), and one 4000x3000 image, tiled (time, peak RSS);
6. a busy CPU: the default model's training samples/s at the trainer's default batch and precision, quiet and with
   one busy process per core started by the benchmark, in three arrangements of sessions (torch's fixed thread
   count vs the loop's default, which fits the threads to the load);
7. the five-model experiment=seed sweep itself (on CUDA by default): the real `train.py -m` with the joblib
   launcher, all models side by side, for a
   few epochs or all 202 (`--sweep-epochs 202`); its measured wall time plus the remaining epochs at the
   slowest job's steady epoch time projects the full 202-epoch sweep.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from deblur_exp.atomic import WriteFailed
from deblur_exp.cli import default_data_dir, run_cli
from deblur_exp.config import REPO_ROOT
from deblur_exp.data.batches import PatchTensors
from deblur_exp.data.degrade import DegradationConfig
from deblur_exp.data.patches import PatchSet, load_patches
from deblur_exp.data.sources import DataConfig
from deblur_exp.errors import DeblurError
from deblur_exp.models import build_model, list_models
from deblur_exp.runtime import (
    PRECISIONS,
    TimeBudget,
    autocast_for,
    resolve_device,
    resolve_precision,
    threads_text,
)
from deblur_exp.sweeps.summary import collect, epoch_times, projected_wall, projection_checks, steady_epoch
from deblur_exp.tables import markdown_table, write_json
from deblur_exp.training.cpu_threads import autogroup_enabled, cpu_cores, fit_threads_to_load
from deblur_exp.training.loop import train_epoch
from deblur_exp.training.state import Compute, PatchData, RunState
from deblur_exp.training.step import eager_step, graphed

SEED_MODELS = ["deblurcnn", "deblurcnn_res", "deblursuperrescnn", "dncnn", "edsr"]
SEED_TRAIN, SEED_VAL, SEED_EPOCHS = 19_548, 2_173, 202


def provenance() -> dict:
    """When, how and on which code the measurements were taken: what a figure quoted from the JSON needs."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except OSError:  # no git on this machine
        commit = None
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit,
            "command": shlex.join(["python", "scripts/benchmark.py", *sys.argv[1:]])}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_patches(n: int, size: int = 35) -> PatchSet:
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    degraded = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return PatchSet(sharp, degraded, np.zeros(n, np.int64), ["random"])


# ------------------------------------------------------------------------------------------- 1. data path
def bench_data_path(n: int, batch_size: int, device: torch.device) -> dict:
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    patches = random_patches(n)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):  # the seed wrote every patch as its own PNG, sharp and degraded
            cv2.imwrite(f"{tmp}/sharp_{i}.png", patches.sharp[i])
            cv2.imwrite(f"{tmp}/degraded_{i}.png", patches.degraded[i])

        class PerFile(Dataset):
            transform = transforms.Compose([transforms.ToPILImage(), transforms.Resize((35, 35)),
                                            transforms.ToTensor()])

            def __len__(self):
                return n

            def __getitem__(self, i):
                degraded = cv2.imread(f"{tmp}/degraded_{i}.png")
                sharp = cv2.imread(f"{tmp}/sharp_{i}.png")
                return self.transform(degraded), self.transform(sharp)

        loader = DataLoader(PerFile(), batch_size=batch_size, shuffle=True)
        for _, (degraded, sharp) in zip(range(3), loader):  # warm-up, as for the project below
            degraded.to(device), sharp.to(device)
        started = time.perf_counter()
        for degraded, sharp in loader:
            degraded.to(device), sharp.to(device)
        sync(device)
        reference = n / (time.perf_counter() - started)

    tensors = PatchTensors.from_patches(patches, np.arange(n), device)
    for _ in tensors.batches(batch_size, torch.randperm(n).to(device), channels_last=True):
        pass  # warm-up: allocates the chunk buffers once
    rounds = 50
    started = time.perf_counter()
    for _ in range(rounds):
        order = torch.randperm(n).to(device)
        for degraded, sharp in tensors.batches(batch_size, order, channels_last=True):
            pass
    sync(device)
    project = rounds * n / (time.perf_counter() - started)
    return {"project_samples_per_s": project, "reference_samples_per_s": reference, "speedup": project / reference,
            "patches": n}


# -------------------------------------------------------------------------------------------- 2. training
def loop_samples_per_s(name, device, steps, batch_size, channels_last, precision="32", cuda_graph=False) -> float:
    """The project's train_epoch on in-memory patches: data slicing, step and bookkeeping included; with
    ``cuda_graph`` the step replayed from a CUDA graph (trainer.cuda_graph; uncaptured on a CPU)."""
    torch.manual_seed(0)
    model = build_model(name).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    tensors = PatchTensors.from_patches(random_patches(batch_size * (steps + 3)), np.arange(batch_size * (steps + 3)),
                                        device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast = autocast_for(precision, device)
    generator = torch.Generator().manual_seed(0)

    compute = Compute(autocast, scaler, channels_last)
    step = eager_step(model, optimizer, F.mse_loss, compute)
    if cuda_graph:
        step = graphed(step, optimizer, device, batch_size)

    def run(limit):
        cfg = OmegaConf.create({"trainer": {"batch_size": batch_size, "epochs": 1, "limit_train_batches": limit,
                                            "seed": 0, "progress": False}, "data": {"augment": False}})
        state = RunState(cfg, None, device, compute, PatchData(tensors, tensors, tensors, []), model, model,
                         optimizer, None, F.mse_loss, generator, budget=TimeBudget(None))
        return train_epoch(state, step, 1)

    run(3)  # warm-up: allocator, cudnn autotuning (and with cuda_graph: 2 eager steps, then the capture)
    started = time.perf_counter()
    seen = run(steps).seen  # ends with .item(): synchronised
    return seen / (time.perf_counter() - started)


def ceiling_samples_per_s(name, device, steps, batch_size, channels_last, precision="32") -> float:
    """An isolated forward+backward+Adam step on one fixed random batch: nothing else in the way."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(name).to(device).to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    degraded = torch.rand(batch_size, 3, 35, 35, device=device).contiguous(memory_format=memory_format)
    sharp = torch.rand(batch_size, 3, 35, 35, device=device).contiguous(memory_format=memory_format)
    autocast = autocast_for(precision, device)

    def step():
        with autocast():
            loss = F.mse_loss(model(degraded), sharp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch_size / (time.perf_counter() - started)


def bench_training(models, device, steps, batch_size, precision) -> dict:
    results = {}
    for name in models:
        row = {}
        for fmt, channels_last in (("nchw", False), ("channels_last", True)):
            row[f"ceiling_{fmt}"] = ceiling_samples_per_s(name, device, steps, batch_size, channels_last, precision)
        chosen = "channels_last" if row["ceiling_channels_last"] >= row["ceiling_nchw"] else "nchw"
        loop = loop_samples_per_s(name, device, steps, batch_size, chosen == "channels_last", precision)
        graphed = loop_samples_per_s(name, device, steps, batch_size, chosen == "channels_last", precision, True)
        results[name] = {"loop_samples_per_s": loop, "loop_cuda_graph_samples_per_s": graphed,
                         "ceiling_samples_per_s": row[f"ceiling_{chosen}"],
                         "memory_format": chosen, "loop_vs_ceiling": loop / row[f"ceiling_{chosen}"],
                         "ceiling_nchw_samples_per_s": row["ceiling_nchw"],
                         "ceiling_channels_last_samples_per_s": row["ceiling_channels_last"]}
        print(f"  {name:18s} loop {loop:9.1f}/s  cuda_graph {graphed:9.1f}/s  "
              f"ceiling {row[f'ceiling_{chosen}']:9.1f}/s ({chosen})  "
              f"nchw {row['ceiling_nchw']:9.1f}/s  channels_last {row['ceiling_channels_last']:9.1f}/s", flush=True)
    return results


def default_model() -> str:
    """The model a plain `train.py` trains (conf/train.yaml's defaults list)."""
    defaults = OmegaConf.load(REPO_ROOT / "conf" / "train.yaml").defaults
    return next(entry["model"] for entry in defaults if isinstance(entry, DictConfig) and "model" in entry)


# How the busy processes are started decides what Linux's autogroup scheduling (where enabled) gives this process:
# it shares the CPU session by session first, then thread by thread within a session.
BUSY_LOOP = "while True: pass"
ARRANGEMENTS = {
    "busy": "each busy process in a session of its own (other logins' or terminals' single-process jobs)",
    "busy_one_job": "all busy processes in one other session (another login's multi-process job)",
    "busy_same_session": "the busy processes in this process's session (jobs started from the same shell)",
    "busy_niced": "the busy processes in this process's session, started with nice -n 19 (jobs that can wait)",
}


def start_busy(arrangement: str, count: int) -> list[subprocess.Popen]:
    """``count`` processes that keep a core busy each, started as ``arrangement`` says."""
    if arrangement == "busy_one_job":  # one session, its leader forks the others
        job = f"import os\nfor _ in range({count - 1}):\n    if os.fork() == 0:\n        break\n{BUSY_LOOP}"
        return [subprocess.Popen([sys.executable, "-c", job], start_new_session=True)]
    loop = f"import os\nos.nice(19)\n{BUSY_LOOP}" if arrangement == "busy_niced" else BUSY_LOOP
    return [subprocess.Popen([sys.executable, "-c", loop], start_new_session=arrangement == "busy")
            for _ in range(count)]


def stop_busy(processes: list[subprocess.Popen], arrangement: str) -> None:
    for process in processes:
        if arrangement == "busy_one_job":
            os.killpg(process.pid, signal.SIGKILL)  # the forked ones too: the session's process group
        else:
            process.kill()
        process.wait()


def bench_contention(name: str, steps: int) -> dict:
    """Training samples/s on this CPU, quiet, then beside one busy process per core (started and stopped here) in
    each of ``ARRANGEMENTS``: with torch's thread count fixed at all cores, and with the training loop's default
    (trainer.num_threads=null), which fits the threads to the load before every epoch."""
    cpu, cores = torch.device("cpu"), cpu_cores()
    trainer = OmegaConf.load(REPO_ROOT / "conf" / "trainer" / "default.yaml")
    precision = resolve_precision(trainer.precision, cpu)

    def measure(threads: int | None = None) -> float:
        """samples/s with ``threads`` torch threads, or (None) with the count the training loop would pick now."""
        if threads:
            torch.set_num_threads(threads)
        else:
            torch.set_num_threads(cores)  # where a run starts, before it looks at the load
            fit_threads_to_load()
        return loop_samples_per_s(name, cpu, steps, trainer.batch_size, True, precision)

    result = {"model": name, "batch_size": trainer.batch_size, "precision": precision, "cores": cores,
              "busy_processes": cores, "arrangements": ARRANGEMENTS, "quiet_samples_per_s": measure()}
    result["quiet_threads"] = torch.get_num_threads()
    result["quiet_one_thread_samples_per_s"] = measure(1)
    for prefix in ARRANGEMENTS:
        busy = start_busy(prefix, cores)
        try:
            time.sleep(1.0)
            result[f"{prefix}_fixed_threads_samples_per_s"] = measure(cores)
            result[f"{prefix}_default_samples_per_s"] = measure()
            result[f"{prefix}_default_threads"] = torch.get_num_threads()
        finally:
            stop_busy(busy, prefix)
            torch.set_num_threads(cores)
        for policy, key in (("default", f"{prefix}_default_samples_per_s"),
                            ("fixed", f"{prefix}_fixed_threads_samples_per_s")):
            result[f"{prefix}_{policy}_vs_quiet"] = result[key] / result["quiet_samples_per_s"]
    result["autogroup"] = autogroup_enabled()
    return result


# ---------------------------------------------------------------------------------------- degradation steps
# One typical setting per step kind (the ranges of conf/degradation/random_mix.yaml), and that whole mix.
STEP_SAMPLES = {
    "gaussian_blur": [{"kind": "gaussian_blur", "size": 21, "sigma": [0.2, 3.0], "sigma_y": [0.2, 3.0],
                       "angle": [0, 180]}],
    "motion_blur": [{"kind": "motion_blur", "size": 21, "length": [3, 15]}],
    "defocus": [{"kind": "defocus", "size": 21, "radius": [1, 5]}],
    "resize": [{"kind": "resize", "factor": [1.0, 4.0], "down": ["bilinear", "bicubic", "area"]}],
    "gaussian_noise": [{"kind": "gaussian_noise", "sigma": [1, 25]}],
    "poisson_noise": [{"kind": "poisson_noise", "peak": [50, 1000]}],
    "jpeg": [{"kind": "jpeg", "quality": [30, 95]}],
}


def bench_degradations(device: torch.device, batch_size: int, n: int = 600) -> dict:
    """Training batches served per second (samples/s) from the cached fixed degradation, and degraded on the fly
    by each step kind alone and by the random mix, from 35x35 patches with the margin each needs."""
    from deblur_exp.data.degrade import degradation_option
    from deblur_exp.data.pipeline import Pipeline

    def rate(tensors: PatchTensors) -> float:
        for _ in tensors.batches(batch_size, limit=2):  # warm-up
            pass
        started = time.perf_counter()
        for degraded, _ in tensors.batches(batch_size, torch.randperm(n).to(device), draws=(0, 1)):
            pass
        sync(device)
        return n / (time.perf_counter() - started)

    result = {"fixed (cached)": rate(PatchTensors.from_patches(random_patches(n), np.arange(n), device))}
    mix = Pipeline(degradation_option("random_mix").steps)
    for name, steps in [*STEP_SAMPLES.items(), ("random_mix", mix.steps)]:
        pipeline = Pipeline(steps)
        windows = random_patches(n, 35 + 2 * pipeline.margin)
        result[name] = rate(PatchTensors.from_patches(dataclasses.replace(windows, degraded=None), np.arange(n),
                                                      device, pipeline=pipeline))
    return {"batch_size": batch_size, "patches": n, "samples_per_s": result}


# --------------------------------------------------------------------------------------------- 3. patches
def bench_patches(data_dir: Path) -> dict:
    t91 = data_dir / "T91"
    if not t91.is_dir():
        return {"skipped": f"no T91 at {t91}"}
    data = DataConfig(name="t91", root=str(t91), patch_size=35, stride=14, split="patch")
    degradation = DegradationConfig(name="gauss_down3", apply_to="patch")
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        patches = load_patches(data, degradation, cache)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        load_patches(data, degradation, cache)
        warm = time.perf_counter() - started
    return {"cold_s": cold, "warm_s": warm, "patches": len(patches)}


# ------------------------------------------------------------------------------------------- 4. inference
# Each inference measurement runs in a fresh process so that its peak RSS (VmHWM) is its own.
INFERENCE = """
import json, sys, time, numpy as np, torch
from pathlib import Path
from deblur_exp.data.images import read_image
from deblur_exp.models import build_model
from deblur_exp.evaluation.restore import RestoreOptions, restore_image
name, device, what = sys.argv[1], torch.device(sys.argv[2]), sys.argv[3]
sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
model = build_model(name).to(device)
if what == "large":
    images, tile = [np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)], 512
else:
    images, tile = [read_image(p) for p in sorted(Path(what).glob("*.png"))], None
    restore_image(model, images[0], device)  # warm-up
if device.type == "cuda":
    torch.cuda.reset_peak_memory_stats(device)
sync()
started = time.perf_counter()
for image in images:
    restore_image(model, image, device, RestoreOptions(tile=tile, tile_overlap=32))
sync()
elapsed = time.perf_counter() - started
peak_rss = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM"))) / 1024
result = {"model": name, "images": len(images), "seconds": elapsed, "images_per_s": len(images) / elapsed,
          "peak_rss_mib": peak_rss, "tile": tile}
if device.type == "cuda":
    result["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
print(json.dumps(result))
"""


def bench_inference(name: str, device: torch.device, what: str) -> dict:
    """``what``: a folder of PNGs (Set14) or "large" (one 4000x3000 image, tiled 512)."""
    out = subprocess.run([sys.executable, "-c", INFERENCE, name, str(device), what], capture_output=True, text=True)
    if out.returncode != 0:
        return {"failed": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_scoring(name: str, device: torch.device, folder: Path) -> dict:
    """Whole-image evaluation as training ends it (degrade, restore, PSNR + SSIM of degraded and restored), Set14
    images/s: the project's ``evaluate_set`` (SSIM with torch on ``device``; on a GPU, same-sized images restored
    together) vs the previous path (one image at a time, SSIM by scikit-image on the CPU)."""
    from skimage.metrics import structural_similarity

    from deblur_exp.data.degrade import DegradationConfig, degrade
    from deblur_exp.data.images import read_folder
    from deblur_exp.evaluation.restore import restore_image
    from deblur_exp.evaluation.scoring import Restorer, evaluate_set, score_pair
    from deblur_exp.metrics import psnr, to_float64

    images = read_folder(folder)[0]
    model = build_model(name).to(device).eval()
    restorer = Restorer(name, name, model, DegradationConfig(name="gauss_down3"), "rgb", folder, 0, {})

    def skimage_pair(sharp, degraded, restored):
        ssim = [structural_similarity(to_float64(x), to_float64(sharp), data_range=1.0, channel_axis=2,
                                      gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                for x in (degraded, restored)]
        return [psnr(degraded, sharp), psnr(restored, sharp), *ssim]

    def previous_path():
        for image in images:
            degraded = degrade(image.rgb, restorer.degradation)
            skimage_pair(image.rgb, degraded, restore_image(model, degraded, device))

    def rate(one_pass, repeats=1) -> float:
        best = math.inf
        for _ in range(repeats):  # best of several: the least disturbed pass
            started = time.perf_counter()
            one_pass()
            sync(device)
            best = min(best, time.perf_counter() - started)
        return len(images) / best

    triples = []  # the warm-up pass keeps its (sharp, degraded, restored) for the scoring-only timing below
    evaluate_set(restorer, images, device, progress=False, on_image=lambda image, *triple_and_row:
                 triples.append(triple_and_row[:3]))
    project = rate(lambda: evaluate_set(restorer, images, device, progress=False))
    reference = rate(previous_path)
    # The scoring alone, on the warm-up's triples: on a CPU the model's restoration takes most of each image's
    # time, and its run-to-run noise (+-15% on the 2-core VM) hides the difference that the metrics make.
    metrics = rate(lambda: [score_pair(*triple, device=device) for triple in triples], repeats=3)
    metrics_reference = rate(lambda: [skimage_pair(*triple) for triple in triples], repeats=3)
    return {"model": name, "images": len(images), "images_per_s": project, "skimage_images_per_s": reference,
            "speedup": project / reference, "scoring_only_images_per_s": metrics,
            "skimage_scoring_only_images_per_s": metrics_reference}


# ------------------------------------------------------------------------------------------ 5. seed sweep
# What makes the sweep fast on one GPU (docs/performance.md): jobs side by side, CUDA graphs, fused Adam.
SWEEP_KNOBS = {"cuda": ["trainer.compile=true", "trainer.compile_mode=reduce-overhead", "optimizer.fused=true"],
               "cpu": []}


# How the sweep's jobs share the device: one process per job.
SWEEP_LAUNCHERS = {"joblib": lambda jobs: ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]}


def bench_sweep(models: list[str], device: torch.device, epochs: int, overrides: list[str],
                launcher: str = "joblib", full_epochs: int = SEED_EPOCHS) -> dict:
    """Run the real experiment=seed multirun, every model in parallel, for ``epochs`` epochs. At the study's full
    length (``epochs >= full_epochs``) the wall time is the measurement; shorter runs are projected to it.

    Projection = measured wall time (start-up, data, compilation, these epochs, Set5/Set14 scoring) plus the
    remaining epochs at the slowest job's median epoch time after the first (which pays for compilation). It is
    neither a bound nor an estimate with a known margin: jobs change speed as their neighbours start, tune and
    finish (on the H200 a 20-epoch projection came out 2x too low, PROJECTION_RECORD). So a full-length run also
    back-tests it: ``projection_checks`` says what a run of k epochs would have projected, against the measurement.
    """
    import importlib.util

    if launcher == "joblib" and importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None:
        return {"failed": "the joblib launcher is not installed: pip install -e '.[sweep]'"}
    with tempfile.TemporaryDirectory() as sweep_dir:
        command = [sys.executable, str(Path(__file__).with_name("train.py")), "-m", "experiment=seed",
                   f"model={','.join(models)}", f"trainer.epochs={epochs}", f"trainer.device={device.type}",
                   "trainer.progress=false", *SWEEP_LAUNCHERS[launcher](len(models)), f"hydra.sweep.dir={sweep_dir}",
                   *overrides]
        started = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        rows = collect(Path(sweep_dir)) if out.returncode in (0, 1) else []  # 1: a job failed, its row says why
        for row in rows:
            if row["status"] != "ok":
                return {"failed": f"job {row['job']}: {row['error']}", "command": command}
        if out.returncode != 0 or not rows:
            return {"failed": (out.stderr.strip().splitlines() or ["no output"])[-1], "command": command}
        times = {row["model"]: epoch_times(Path(sweep_dir) / row["job"]) for row in rows}
    jobs = {model: {"epoch_times_s": t, "steady_epoch_s": steady_epoch(t)} for model, t in times.items()}
    result = {"epochs": epochs, "full_epochs": full_epochs, "launcher": launcher, "overrides": overrides,
              "wall_s": wall, "jobs": jobs, "slowest_steady_epoch_s": max(j["steady_epoch_s"] for j in jobs.values())}
    if epochs >= full_epochs:
        checks = projection_checks(times, wall, full_epochs)
        return {**result, "measured_minutes": wall / 60, "projection_checks": checks}
    return {**result, "projected_minutes": projected_wall(times, wall, epochs, full_epochs) / 60,
            "projection_record": PROJECTION_RECORD}


# How far the projection has been from a measured run (results/h200_seed_sweep_20_epochs/).
PROJECTION_RECORD = ("H200, joblib + compile: a 20-epoch run projected 13.4 min; the full-length run, stopped at "
                     "450 s, ran dncnn at 8.1 s per epoch, about 27 min: 2x too low")


# ------------------------------------------------------------------------------------------------- main
def check_args(args: argparse.Namespace) -> torch.device:
    """Every flag checked before minutes of measuring (--json: in main, by writing the machine section);
    returns the device. Raises DeblurError naming the flag."""
    for flag, names in (("--models", args.models), ("--large-model", [args.large_model])):
        unknown = [n for n in names if n not in list_models()]
        if unknown:
            raise DeblurError(f"{flag}: unknown model {unknown[0]!r}; known models: {', '.join(list_models())}")
    for flag, value, least in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1),
                               ("--data-patches", args.data_patches, 1), ("--sweep-epochs", args.sweep_epochs, 0),
                               ("--sweep-full-epochs", args.sweep_full_epochs, 1)):
        if value is not None and value < least:
            raise DeblurError(f"{flag}: must be at least {least} (got {value})")
    try:
        device = resolve_device(args.device)
    except DeblurError:
        raise DeblurError(f"--device: {args.device!r} requested but no CUDA device is available; "
                          f"use --device cpu or auto") from None
    except RuntimeError:
        raise DeblurError(f"--device: {args.device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if args.precision == "fp16" and device.type != "cuda":
        raise DeblurError("--precision: fp16 needs a CUDA device; use bf16 or 32 on CPU")
    return device


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=SEED_MODELS)
    p.add_argument("--steps", type=int, default=16, help="timed training steps per measurement")
    p.add_argument("--batch-size", type=int, default=30)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="32", choices=list(PRECISIONS))
    p.add_argument("--data-patches", type=int, default=1500, help="patches in the data-path comparison")
    p.add_argument("--large-model", default="srcnn", help="model for the 4000x3000 tiled restoration")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["data", "training", "degradation", "patches", "inference", "scoring", "large", "contention",
                            "sweep"])
    p.add_argument("--contention-model", default=None,
                   help="model of the busy-CPU section (default: the default model)")
    p.add_argument("--contention-steps", type=int, default=150,
                   help="timed training steps per busy-CPU measurement, at the trainer's default batch size")
    p.add_argument("--sweep-epochs", type=int, default=None,
                   help="epochs of the parallel experiment=seed sweep (default: 4 on CUDA, 0 = skipped on CPU, "
                        "where one seed epoch takes minutes)")
    p.add_argument("--sweep-full-epochs", type=int, default=SEED_EPOCHS,
                   help="the study's length: shorter sweeps are projected to it, one of this length is measured")
    p.add_argument("--sweep-launcher", default="joblib", choices=list(SWEEP_LAUNCHERS),
                   help="joblib: one process per job")
    p.add_argument("--sweep-overrides", nargs="*", default=None,
                   help=f"extra train.py overrides for the sweep (default on CUDA: {' '.join(SWEEP_KNOBS['cuda'])})")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--json", type=Path, default=Path("benchmark.json"))
    return p.parse_args()


def machine(args: argparse.Namespace, device: torch.device) -> dict:
    """What the figures were measured on, and the settings every section shares."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "precision": args.precision, "batch_size": args.batch_size, "steps": args.steps}


def main() -> int:
    args = parse_args()
    device = check_args(args)
    report = {"machine": machine(args, device), "run": provenance()}
    try:  # prove the report can be written now, not after minutes of measuring
        write_json(args.json, report)
    except WriteFailed as exc:
        raise DeblurError(f"--json: cannot write {args.json} ({str(exc).split(': ', 2)[-1]})") from None
    print(json.dumps(report["machine"]))

    def save(key: str, result: dict) -> dict:
        """Keep each section as soon as it is measured: an interrupted benchmark keeps what it has."""
        report[key] = result
        write_json(args.json, report)
        return result

    if "data" not in args.skip:
        d = save("data_path", bench_data_path(args.data_patches, args.batch_size, device))
        print(f"data path: project {d['project_samples_per_s']:,.0f}/s vs per-file "
              f"{d['reference_samples_per_s']:,.0f}/s = {d['speedup']:,.0f}x", flush=True)
    if "training" not in args.skip:
        print("training (samples/s):", flush=True)
        training = save("training", bench_training(args.models, device, args.steps, args.batch_size, args.precision))
        if device.type == "cuda":
            sequential = save("seed_sweep_projection", project_sweep(training))
            print(f"projected experiment=seed sweep ({len(args.models)} models x {SEED_EPOCHS} epochs, one after "
                  f"another, eager): {sequential['total_minutes']:.1f} min", flush=True)
    if "degradation" not in args.skip:
        steps = save("degradation", bench_degradations(device, args.batch_size))
        print("degradation steps on the fly (samples/s): " + ", ".join(
            f"{k} {v:,.0f}" for k, v in steps["samples_per_s"].items()), flush=True)
    if "patches" not in args.skip:
        print(f"T91 patches: {save('patches', bench_patches(args.data_dir))}", flush=True)
    set14 = args.data_dir / "Set14"
    no_set14 = None if set14.is_dir() else {"skipped": f"no Set14 at {set14}"}
    if "inference" not in args.skip:
        result = no_set14 or bench_inference(args.models[0], device, str(set14))
        print(f"Set14 inference: {save('inference', result)}", flush=True)
    if "scoring" not in args.skip:
        result = no_set14 or bench_scoring(args.models[0], device, set14)
        print(f"Set14 evaluation (degrade, restore, score): {save('scoring', result)}", flush=True)
    if "large" not in args.skip:
        print(f"4000x3000 tiled: {save('large_image', bench_inference(args.large_model, device, 'large'))}",
              flush=True)
    if "contention" not in args.skip and device.type == "cpu":
        model = args.contention_model or default_model()
        c = save("contention", bench_contention(model, args.contention_steps))
        print(f"busy CPU: {contention_verdict(c)}", flush=True)
    sweep_epochs = args.sweep_epochs if args.sweep_epochs is not None else (4 if device.type == "cuda" else 0)
    if "sweep" not in args.skip and sweep_epochs > 0:
        sweep_section(args, device, sweep_epochs, save)
    print("\n" + markdown_table(["measurement", "result", "target (2-core CPU; sweep: one H100-class GPU)"],
                                summary_rows(report)))
    print(f"wrote {args.json}")
    return 0


def sweep_section(args: argparse.Namespace, device: torch.device, epochs: int, save) -> None:
    """The parallel experiment=seed sweep, timed, with its projection to the study's length back-tested."""
    overrides = args.sweep_overrides if args.sweep_overrides is not None else SWEEP_KNOBS[device.type]
    print(f"experiment=seed sweep, {len(args.models)} models in parallel, {epochs} epochs ...", flush=True)
    sweep = save("seed_sweep", bench_sweep(args.models, device, epochs, overrides, args.sweep_launcher,
                                           args.sweep_full_epochs))
    print(f"  failed: {sweep['failed']}" if "failed" in sweep else
          f"  {sweep_verdict(sweep)}; slowest job {sweep['slowest_steady_epoch_s']:.2f} s/epoch ({SWEEP_GOAL})",
          flush=True)
    for k, check in sweep.get("projection_checks", {}).items():
        print(f"  back-test: {k} epochs would have projected {check['projected_minutes']:.1f} min, "
              f"{check['projected_vs_measured']:.2f}x the measured time", flush=True)


def summary_rows(report: dict) -> list[list[str]]:
    """The report as table rows; a skipped or failed measurement shows why."""

    def row(key, name, fmt, target=""):
        if key not in report:
            return []
        entry = report[key]
        problem = entry.get("skipped") or entry.get("failed")
        return [[name, f"skipped: {entry['skipped']}" if "skipped" in entry else f"failed: {problem}", target]
                if problem else [name, fmt(entry), target]]

    rows = row("data_path", "data path (samples/s)", lambda d: f"{d['project_samples_per_s']:,.0f} vs per-file "
               f"{d['reference_samples_per_s']:,.0f} = {d['speedup']:,.0f}x", ">= 100x")
    for name, r in report.get("training", {}).items():
        rows.append([f"training {name} (samples/s)", f"loop {r['loop_samples_per_s']:,.1f} / ceiling "
                     f"{r['ceiling_samples_per_s']:,.1f} = {r['loop_vs_ceiling']:.0%} ({r['memory_format']})"
                     + (f"; cuda_graph loop {r['loop_cuda_graph_samples_per_s']:,.1f}"
                        if "loop_cuda_graph_samples_per_s" in r else ""), ">= 90%"])
    rows += row("degradation", "degradation on the fly (samples/s)", lambda d: ", ".join(
        f"{k} {v:,.0f}" for k, v in d["samples_per_s"].items()), "")
    rows += row("patches", "T91 patches", lambda d: f"cold {d['cold_s']:.2f} s, warm {d['warm_s']:.2f} s",
                "< 10 s, < 1 s")
    rows += row("inference", "Set14 whole images", lambda d: f"{d['images_per_s']:.2f} images/s, peak RSS "
                f"{d['peak_rss_mib']:,.0f} MiB" + (f", GPU {d['peak_gpu_mib']:,.0f} MiB" if "peak_gpu_mib" in d
                                                   else ""))
    rows += row("scoring", "Set14 evaluation (degrade + restore + PSNR/SSIM)", lambda d: f"{d['images_per_s']:.2f} "
                f"images/s with torch SSIM vs {d['skimage_images_per_s']:.2f} with scikit-image = {d['speedup']:.2f}x"
                + (f"; PSNR/SSIM alone {d['scoring_only_images_per_s']:.2f} vs "
                   f"{d['skimage_scoring_only_images_per_s']:.2f}" if "scoring_only_images_per_s" in d else ""),
                "GPU >= 20 images/s; CPU no slower")
    rows += row("large_image", "4000x3000, tiled",
                lambda d: f"{d['seconds']:.1f} s, peak RSS {d['peak_rss_mib']:,.0f} MiB", "< 2 GiB")
    rows += row("contention", "training beside one busy process per core (samples/s)", contention_verdict,
                "goal >= 50% of quiet")
    rows += row("seed_sweep", "experiment=seed sweep, the models in parallel", sweep_verdict, SWEEP_GOAL)
    return rows


def contention_verdict(d: dict) -> str:
    """The busy-CPU section in words: quiet, then beside the busy processes in each arrangement."""
    busy = "; ".join(f"{prefix.removeprefix('busy').strip('_').replace('_', ' ') or 'own sessions'}: default "
                     f"{d[f'{prefix}_default_samples_per_s']:.1f} "
                     f"({threads_text(d[f'{prefix}_default_threads'])}) = "
                     f"{d[f'{prefix}_default_vs_quiet']:.0%}, fixed at {d['cores']} {d[f'{prefix}_fixed_vs_quiet']:.0%}"
                     for prefix in ARRANGEMENTS if f"{prefix}_default_samples_per_s" in d)
    return (f"{d['model']}, quiet {d['quiet_samples_per_s']:.1f} ({threads_text(d['quiet_threads'])}); beside "
            f"{d['busy_processes']} busy processes in {busy}")


SWEEP_GOAL = "goal: at most 8 min on one H100/H200, measured"


def sweep_verdict(sweep: dict) -> str:
    """The sweep section in words: measured at full length, or a projection that says it is one."""
    if "measured_minutes" in sweep:
        return f"measured {sweep['full_epochs']} epochs: {sweep['measured_minutes']:.1f} min"
    return (f"{sweep['wall_s']:.0f} s for {sweep['epochs']} epochs; projected {sweep['full_epochs']} epochs: "
            f"{sweep['projected_minutes']:.1f} min (a projection, not a measurement; on record: "
            f"{sweep['projection_record']}; measure with --sweep-epochs {sweep['full_epochs']})")


def project_sweep(training: dict) -> dict:
    """Minutes for experiment=seed per model: 202 epochs of train samples at the loop's rate, plus validation
    (forward only, counted at a third of a training step's cost)."""
    per_model = {name: SEED_EPOCHS * (SEED_TRAIN + SEED_VAL / 3) / r["loop_samples_per_s"] / 60
                 for name, r in training.items()}
    return {"per_model_minutes": per_model, "total_minutes": sum(per_model.values())}


if __name__ == "__main__":
    run_cli(main)
