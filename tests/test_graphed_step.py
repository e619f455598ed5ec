"""trainer.cuda_graph's mechanics on the CPU: static buffers, warm-up, eager odd batches, the tensor learning rate
and checkpoints that resume with or without graphs. The capture itself needs CUDA (scripts/cuda_check.sh)."""

import pytest
import torch

from deblur_exp.errors import DeblurError
from deblur_exp.runs.checkpoint import load_checkpoint
from deblur_exp.runtime import TrainingInterrupted
from deblur_exp.training.config import check_config
from deblur_exp.training.loop import train
from deblur_exp.training.step import WARMUP_STEPS, GraphedStep, eager_step, portable_optimizer_state, use_tensor_lr
from tests.conftest import TINY, interrupt_after_epoch

# deblurcnn with dropout (the run's own generator), cosine (the rate changes every step), an odd last batch
GRAPHED = [*TINY, "model=deblurcnn", "trainer.dropout=0.2", "trainer.epochs=3", "trainer.limit_train_batches=null",
           "data.stride=48", "trainer.batch_size=7", "scheduler=cosine"]


def same_weights(run_a, run_b) -> bool:
    a = load_checkpoint(run_a / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(run_b / "checkpoints" / "last.pt")["model"]
    return all(torch.equal(a[k], b[k]) for k in a)


def test_full_batches_go_through_the_static_buffers_after_the_warm_up():
    seen = []

    def step(degraded, sharp):
        seen.append(degraded.data_ptr())
        return (degraded - sharp).abs().mean()

    graphed = GraphedStep(step, torch.device("cpu"), batch_size=4)
    odd = torch.rand(2, 3, 8, 8)
    graphed(odd, odd)  # e.g. a run resumed just before an epoch's last batch: not a full one
    full = [torch.rand(4, 3, 8, 8) for _ in range(WARMUP_STEPS + 3)]
    losses = [graphed(x, x * 0.5) for x in full]
    graphed(odd, odd)

    assert seen[0] == odd.data_ptr() and graphed.shape == (4, 3, 8, 8)
    seen = seen[1:]
    assert seen[:WARMUP_STEPS] == [x.data_ptr() for x in full[:WARMUP_STEPS]]  # eager warm-up on the batch itself
    static = graphed.inputs[0].data_ptr()
    assert seen[WARMUP_STEPS:-1] == [static] * 3 and static not in [x.data_ptr() for x in full]
    assert seen[-1] == odd.data_ptr()  # another shape: eager, the static buffers untouched
    for x, loss in zip(full, losses):  # every batch's own loss, though the buffers are reused
        assert float(loss) == pytest.approx(float((x * 0.5).abs().mean()))


def test_the_cuda_graph_path_trains_bitwise_like_the_eager_one(make_cfg, tmp_path):
    eager, graphed = tmp_path / "eager", tmp_path / "graphed"
    train(make_cfg(GRAPHED, eager))
    train(make_cfg([*GRAPHED, "trainer.cuda_graph=true"], graphed))
    assert same_weights(eager, graphed)
    assert "trainer.cuda_graph on cpu: nothing to capture" in (graphed / "train.log").read_text()
    group = load_checkpoint(graphed / "checkpoints" / "last.pt")["optimizer"]["param_groups"][0]
    assert isinstance(group["lr"], float) and group["capturable"] is False  # loadable by any run


@pytest.mark.parametrize("first, then", [("true", "false"), ("false", "true")])
def test_a_run_resumes_with_or_without_graphs_like_an_uninterrupted_run(make_cfg, tmp_path, monkeypatch, first,
                                                                         then):
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(make_cfg(GRAPHED, whole))
    interrupt_after_epoch(monkeypatch, 1)
    with pytest.raises(TrainingInterrupted):
        train(make_cfg([*GRAPHED, f"trainer.cuda_graph={first}"], split))
    train(make_cfg([*GRAPHED, f"trainer.cuda_graph={then}", f"resume={split}"], tmp_path / "ignored"))
    assert same_weights(whole, split)


def test_schedulers_change_the_tensor_learning_rate_in_place():
    # a captured step reads the rate from the tensor's address: a scheduler that assigned a new float instead
    # would leave the graph training at the old rate
    from deblur_exp.training.schedules import WarmupCosine

    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([weight], lr=1e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
    cosine = WarmupCosine(optimizer, warmup=0.0, eta_min=0.0)
    use_tensor_lr(optimizer, torch.device("cpu"))
    lr = optimizer.param_groups[0]["lr"]
    cosine.set_progress(0.5)
    assert optimizer.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(5e-4)
    for loss in (1.0, 2.0, 3.0):
        plateau.step(loss)
    assert optimizer.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(1.25e-4)  # halved twice
    assert portable_optimizer_state(optimizer)["param_groups"][0]["lr"] == pytest.approx(1.25e-4)


@pytest.mark.parametrize("override, message", [
    ("trainer.compile=true", "trainer.compile: must be false with trainer.cuda_graph=true"),
    ("trainer.precision=fp16", "trainer.precision: cannot be fp16 with trainer.cuda_graph=true"),
    ("optimizer=sgd", "optimizer._target_: cannot step inside a CUDA graph .* use optimizer=adam"),
])
def test_what_a_graph_cannot_hold_is_refused_by_name(make_cfg, override, message):
    with pytest.raises(DeblurError, match=message):
        check_config(make_cfg([override, "trainer.cuda_graph=true"]))


def test_compiled_cuda_graphs_get_the_autotuned_kernels_of_the_first_step(monkeypatch):
    from deblur_exp.training.step import autotune_then_freeze

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    during = []
    step = autotune_then_freeze(lambda degraded, sharp: during.append(torch.backends.cudnn.benchmark) or degraded)
    for _ in range(3):
        step(torch.zeros(1), torch.zeros(1))
    assert during == [True, False, False] and torch.backends.cudnn.benchmark is False


@pytest.mark.parametrize("model_name", ["deblurcnn", "dncnn"])  # dropout from the run's generator; batch norm
def test_graphed_steps_follow_eager_steps_on_this_machines_device(model_name):
    """On a CUDA machine (scripts/gpu_sweep_check.sh runs this first) the capture itself: replays must see each new
    batch, the learning rate the schedule sets and fresh dropout masks. On a CPU the uncaptured path, bitwise."""
    import contextlib

    import torch.nn.functional as F

    from deblur_exp.models import build_model
    from deblur_exp.training.state import Compute

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def train_steps(graphed: bool) -> dict:
        torch.manual_seed(0)
        model = build_model(model_name).to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        numerics = Compute(contextlib.nullcontext, torch.amp.GradScaler(device.type, enabled=False), False)
        step = eager_step(model, optimizer, F.mse_loss, numerics)
        if graphed:
            use_tensor_lr(optimizer, device)
            step = GraphedStep(step, device, batch_size=4)
        data = torch.Generator().manual_seed(2)
        for index in range(10):
            lr = 0.0 if index % 3 == 2 else 1e-3 * (index + 1)  # a graph stuck at its capture-time rate shows
            if graphed:
                optimizer.param_groups[0]["lr"].fill_(lr)  # in place, as the schedulers do (schedules.py)
            else:
                optimizer.param_groups[0]["lr"] = lr
            size = 3 if index == 6 else 4  # one odd batch, eager in the graphed run
            sharp = torch.rand(size, 3, 16, 16, generator=data).to(device)
            step(sharp * 0.8, sharp)
        return model.state_dict()

    eager, graphed = train_steps(False), train_steps(True)
    if device.type == "cpu":
        assert all(torch.equal(eager[k], graphed[k]) for k in eager)
    else:  # cuDNN may pick other kernels inside a graph: float rounding, not a different trajectory
        for key in eager:
            torch.testing.assert_close(graphed[key], eager[key], rtol=1e-3, atol=1e-4, msg=key)
