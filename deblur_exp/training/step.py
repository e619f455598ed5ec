"""One training step (forward, loss, backward, optimizer step) as a callable, and ``trainer.cuda_graph``: that step
recorded once as a CUDA graph and replayed for every full batch. (For torch.compile's own CUDA graphs,
``autotune_then_freeze`` lets cuDNN autotune before they are recorded.)

Why graphs: a batch of 30 patches of 35x35 keeps each kernel busy for microseconds, so an eager step is bound by
the CPU launching its few hundred kernels, not by the GPU (dncnn alone: 5,400 samples/s on an H200,
results/h200_cuda_fp32.json). A replay is one launch.

What stays the same: the graph is the eager step (same ops in the same order, the dropout masks drawn from
torch's CUDA generator, which the graph advances on every replay), so the weights follow an eager run's up to
cuDNN's choice of kernels. The first
``WARMUP_STEPS`` full batches of each process run eagerly: they create the optimizer's state and let cuDNN's
autotuner time its kernels, which it cannot do inside a capture; the capture then finds them in cuDNN's cache.
A batch of another shape (an epoch's last) runs eagerly too. Checkpoints hold plain float learning rates
(``portable_optimizer_state``), so a run saved with graphs resumes without them and the other way round.

What a graph needs from the optimizer: ``capturable`` mode (its step count lives on the GPU) and the learning rate
as a tensor that schedulers update in place (``fill_``), since a captured kernel reads its arguments from fixed
addresses; ``use_tensor_lr`` sets both up. No gradient scaler (fp16) and no torchrun: config.py and training.py
refuse those, and optimizers without capturable mode.

On a CPU there is nothing to capture: the same path (static buffers, warm-up, eager odd batches, tensor learning
rate) runs uncaptured, which is what the CPU tests check. The capture itself runs on CUDA only.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger("deblur_exp")

WARMUP_STEPS = 2  # eager full batches before the capture: optimizer state created, cuDNN autotuned

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (degraded, sharp) -> the batch's mean loss


def eager_step(model, optimizer, loss_fn, numerics) -> Step:
    """The training step as torch runs it op by op; returns the batch loss (detached)."""

    def step(degraded: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        with numerics.autocast():
            loss = loss_fn(model(degraded), sharp)
        optimizer.zero_grad(set_to_none=True)  # in a capture: the gradients come from the graph's own memory
        numerics.scaler.scale(loss).backward()
        numerics.scaler.step(optimizer)
        numerics.scaler.update()
        return loss.detach()

    return step


def autotune_then_freeze(step: Step) -> Step:
    """For torch.compile's own CUDA graphs (compile_mode reduce-overhead or max-autotune): cuDNN's autotuner times its
    kernels during the first step, which CUDA Graph Trees run without recording, and is then switched off, so that
    the recording in the next step finds the tuned kernels in cuDNN's cache. Autotuning inside a recording fails
    ("FIND was unable to find an engine")."""

    def step_then_freeze(degraded: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        loss = step(degraded, sharp)
        torch.backends.cudnn.benchmark = False  # after the first step; a no-op after the others
        return loss

    return step_then_freeze


class GraphedStep:
    """``step`` replayed from a CUDA graph for every full batch (``batch_size`` patches); eager otherwise."""

    def __init__(self, step: Step, device: torch.device, batch_size: int):
        self.step, self.batch_size = step, batch_size
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None  # warm-up and capture run here
        self.shape: tuple | None = None  # the full batch's shape, from the first full batch
        self.eager_steps = 0
        self.inputs: tuple[torch.Tensor, torch.Tensor] | None = None  # the graph's static (degraded, sharp)
        self.graph = None
        self.loss: torch.Tensor | None = None  # the graph's static output
        self.failed = False

    def __call__(self, degraded: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        if self.shape is None and len(degraded) == self.batch_size:
            self.shape = tuple(degraded.shape)
        if tuple(degraded.shape) != self.shape or self.failed:
            return self.step(degraded, sharp)
        if self.inputs is None and self.eager_steps < WARMUP_STEPS:
            self.eager_steps += 1  # cuDNN tunes these steps' kernels and caches its choice
            return self._on_own_stream(degraded, sharp)
        if self.inputs is None and not self._capture(degraded, sharp):
            return self._on_own_stream(degraded, sharp)  # torch refused the capture: eager from now on
        self.inputs[0].copy_(degraded)
        self.inputs[1].copy_(sharp)
        if self.graph is not None:
            self.graph.replay()
        else:  # CPU: the same buffers, uncaptured
            self.loss = self.step(*self.inputs)
        return self.loss

    def _on_own_stream(self, degraded: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        """An eager step on the capture stream, so that its lazily made per-stream state (cuBLAS workspaces, cuDNN
        plans) exists before the capture, as torch's CUDA-graph notes ask."""
        if not self.cuda:
            return self.step(degraded, sharp)
        current = torch.cuda.current_stream()
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            loss = self.step(degraded, sharp)
        current.wait_stream(self.stream)
        return loss

    def _capture(self, degraded: torch.Tensor, sharp: torch.Tensor) -> bool:
        """Make the static inputs and record ``step`` on them (recording runs nothing); False if torch refuses."""
        inputs = (degraded.clone(), sharp.clone())  # clone keeps the memory format (channels_last)
        if self.cuda:
            self.graph = self._record(*inputs)
            if self.graph is None:
                return False
        self.inputs = inputs
        log.info("trainer.cuda_graph: training step %s after %d eager steps; batches of shape %s go through it",
                 "captured" if self.cuda else "set up (uncaptured on a CPU)", self.eager_steps, list(self.shape))
        return True

    def _record(self, degraded: torch.Tensor, sharp: torch.Tensor):
        graph = torch.cuda.CUDAGraph()  # registers torch's default CUDA generator: dropout advances per replay
        autotune = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False  # the warm-up's tuned kernels are cached; a miss takes heuristics
        try:
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.graph(graph, stream=self.stream):
                self.loss = self.step(degraded, sharp)
            torch.cuda.current_stream().wait_stream(self.stream)
            return graph
        except RuntimeError as exc:
            self.failed = True
            log.warning("trainer.cuda_graph: the capture failed (%s); this run goes on with eager steps",
                        str(exc).splitlines()[0])
            return None
        finally:
            torch.backends.cudnn.benchmark = autotune


def graphed(step: Step, optimizer, device: torch.device, batch_size: int) -> GraphedStep:
    """``step`` as a GraphedStep, with ``optimizer`` made ready for the capture (``use_tensor_lr``)."""
    use_tensor_lr(optimizer, device)
    return GraphedStep(step, device, batch_size)


def use_tensor_lr(optimizer, device: torch.device) -> None:
    """Ready ``optimizer`` for capture: capturable mode on CUDA (CPUs have none) with its step counts on the device,
    and each group's learning rate a 0-d tensor there that schedulers change in place. Idempotent; call it again
    after ``load_state_dict``."""
    capturable = device.type == "cuda"
    for group in optimizer.param_groups:
        group["capturable"] = capturable  # config.check_config made sure the optimizer has the mode
        if not torch.is_tensor(group["lr"]):
            # float32 as torch's capturable kernels take it (a rounding of 6e-8 at most); float64 on a CPU, where
            # Adam reads it back as a Python float, so the uncaptured path is bitwise the eager one
            dtype = torch.float32 if capturable else torch.float64
            group["lr"] = torch.tensor(float(group["lr"]), dtype=dtype, device=device)
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if capturable and torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(device=param.device, dtype=torch.float32)


def portable_optimizer_state(optimizer) -> dict:
    """``optimizer.state_dict()`` with float learning rates and capturable off: what any run, with or without
    graphs, on any device, can load (``use_tensor_lr`` turns them back on after loading)."""
    state = optimizer.state_dict()
    state["param_groups"] = [dict(group, lr=float(group["lr"])) for group in state["param_groups"]]
    for group in state["param_groups"]:
        if "capturable" in group:
            group["capturable"] = False
    return state
