"""The batch split across one-thread processes, as measured for results/busy_machine (not part of the package).

Each process holds a replica of the model and optimizer, trains its shard of every batch, and all add up the
weighted gradients in the same order before the same optimizer step (bitwise-equal replicas). Measures the
training step's samples/s (deblurcnn_res, batch 4, bf16, channels_last, random patches) quiet and beside one busy
process per core, one thread vs the split:

    python results/busy_machine/split_probe.py [--steps 150]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from deblur_exp.models import build_model
from deblur_exp.runtime import autocast_for
from deblur_exp.training.losses import LOSSES


class SplitStep:
    """The training step with each batch split across this process and helper processes of one thread each.

    Every process holds a replica of the model and of the optimizer. Each step, every process trains its shard of
    the batch and writes its gradient, weighted by the shard's share of the batch, to shared memory; once all are
    written every process adds them up in the same order and steps its optimizer with this process's
    hyperparameters (a scheduler may have changed them): the replicas take bitwise the same step and stay equal.
    A replica that missed steps (the run trained without the split meanwhile) is sent this process's weights and
    optimizer state first. Helpers start at the first step (a few seconds: each imports torch) and end with
    ``close()`` or with this process.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: str, precision: str,
                 workers: int, seed: int):
        self.model, self.optimizer, self.loss_name, self.precision = model, optimizer, loss, precision
        self.workers, self.seed = workers, seed
        self.loss_fn, self.autocast = LOSSES[loss], autocast_for(precision, torch.device("cpu"))
        self.helpers: list[Helper] = []
        # (2 step parities, workers, parameters), shared: helper r writes row r - 1, this process the last; a step
        # writes one parity while a helper still adding up the previous step reads the other
        self.gradients: torch.Tensor | None = None
        self.steps = 0
        self.synced = False  # the helpers' replicas equal this process's model and optimizer

    def __call__(self, degraded: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
        if not self.helpers:
            self.start(math.ceil(len(sharp) / self.workers), degraded, sharp)
        if not self.synced:
            self.sync()
        shards = list(zip(degraded.tensor_split(self.workers), sharp.tensor_split(self.workers)))
        parity, total = self.steps % 2, len(sharp)
        self.steps += 1
        hyper = [{key: value for key, value in group.items() if key != "params"}
                 for group in self.optimizer.param_groups]
        # tensor_split makes the first shards the larger: this process, which also cuts the batches, takes the last
        for helper, (shard_degraded, shard_sharp) in zip(self.helpers, shards[:-1]):
            helper.degraded[:len(shard_degraded)].copy_(shard_degraded)
            helper.sharp[:len(shard_sharp)].copy_(shard_sharp)
            helper.conn.send(("step", len(shard_sharp), len(shard_sharp) / total, parity, hyper))
        own_degraded, own_sharp = shards[-1]
        loss = train_shard(self.model, self.loss_fn, self.autocast, own_degraded, own_sharp,
                           len(own_sharp) / total, self.gradients[parity, -1])
        for helper in self.helpers:
            loss += helper.reply()
        for helper in self.helpers:  # every shard's gradient is written: each process adds them up
            helper.conn.send(("ready",))
        take_step(self.model, self.optimizer, self.gradients[parity])
        return torch.tensor(loss)

    def unsynced(self) -> None:
        """This process's model or optimizer changed without the helpers (a step without the split)."""
        self.synced = False

    def sync(self) -> None:
        buffer = io.BytesIO()
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}, buffer)
        for helper in self.helpers:
            helper.conn.send(("sync", buffer.getvalue()))
        self.synced = True

    def start(self, shard_size: int, degraded: torch.Tensor, sharp: torch.Tensor) -> None:
        """Spawn the helpers, each with a replica of the model and the optimizer's class and settings, buffers for
        a shard's patches and the shared gradients."""
        context = mp.get_context("spawn")  # fork would copy torch's OpenMP state, which a forked child cannot use
        numel = sum(param.numel() for param in self.model.parameters())
        self.gradients = torch.zeros(2, self.workers, numel).share_memory_()
        optimizer = (type(self.optimizer), self.optimizer.defaults)
        for rank in range(1, self.workers):
            parent, child = context.Pipe()
            helper = Helper(None, parent, shared_like(degraded, shard_size), shared_like(sharp, shard_size))
            helper.process = context.Process(
                target=serve, daemon=True, name=f"deblur_exp split step {rank}",
                args=(child, copy.deepcopy(self.model), optimizer, self.loss_name, self.precision, helper.degraded,
                      helper.sharp, self.gradients, rank, self.seed + rank))
            helper.process.start()
            child.close()
            self.helpers.append(helper)

    def close(self) -> None:
        for helper in self.helpers:
            helper.stop()
        self.helpers = []
        self.synced = False


@dataclass
class Helper:
    """This process's end of one helper process: its pipe and the buffers it reads its shard from."""

    process: mp.Process | None
    conn: object
    degraded: torch.Tensor
    sharp: torch.Tensor

    def reply(self) -> float:
        """The helper's weighted shard loss, once its gradient is written."""
        try:
            reply = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"a training helper process (pid {self.process.pid}) ended with exit code "
                               f"{self.process.exitcode}") from None
        if isinstance(reply, str):
            raise RuntimeError(f"a training helper process failed: {reply}")
        return reply

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()


def train_shard(model, loss_fn, autocast, degraded, sharp, weight: float, gradient: torch.Tensor) -> float:
    """Forward and backward on one shard; its weighted gradient goes to ``gradient`` (flat). Returns its weighted
    loss."""
    if not len(sharp):  # a batch smaller than the split
        gradient.zero_()
        return 0.0
    with autocast():
        loss = loss_fn(model(degraded), sharp) * weight
    model.zero_grad(set_to_none=True)
    loss.backward()
    offset = 0
    for param in model.parameters():
        size = param.numel()
        target = gradient[offset:offset + size]
        target.copy_(param.grad.reshape(-1)) if param.grad is not None else target.zero_()
        offset += size
    return float(loss.detach())


def take_step(model, optimizer, gradients: torch.Tensor) -> None:
    """The optimizer step on the sum of every process's gradient (``gradients``: workers x parameters), added in
    rank order so that every replica gets bitwise the same sum."""
    total = gradients[0].clone()
    for rank in range(1, len(gradients)):
        total += gradients[rank]
    offset = 0
    for param in model.parameters():
        size = param.numel()
        if param.grad is None:
            param.grad = torch.empty_like(param)  # the parameter's memory format, as backward makes it
        param.grad.copy_(total[offset:offset + size].view(param.shape))
        offset += size
    optimizer.step()


def shared_like(batch: torch.Tensor, size: int) -> torch.Tensor:
    """A shared-memory buffer for ``size`` samples shaped, typed and laid out like ``batch``'s."""
    channels_last = batch.dim() == 4 and batch.is_contiguous(memory_format=torch.channels_last)
    buffer = torch.empty((size, *batch.shape[1:]), dtype=batch.dtype)
    if channels_last:
        buffer = buffer.contiguous(memory_format=torch.channels_last)
    return buffer.share_memory_()


def serve(conn, model: torch.nn.Module, optimizer_kind: tuple, loss: str, precision: str, degraded: torch.Tensor,
          sharp: torch.Tensor, gradients: torch.Tensor, rank: int, seed: int) -> None:
    """A helper process: trains the shards it is sent, in step with its parent, until told to stop (None) or its
    parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent saves and stops; a helper just follows
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)
    torch.manual_seed(seed)  # dropout masks
    loss_fn, autocast = LOSSES[loss], autocast_for(precision, torch.device("cpu"))
    kind, defaults = optimizer_kind
    optimizer = kind(model.parameters(), **defaults)
    model.train()
    try:
        while (task := conn.recv()) is not None:
            if task[0] == "sync":
                state = torch.load(io.BytesIO(task[1]), weights_only=True)
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                continue
            _, size, weight, parity, hyper = task
            try:
                loss = train_shard(model, loss_fn, autocast, degraded[:size], sharp[:size], weight,
                                   gradients[parity, rank - 1])
            except Exception as exc:  # noqa: BLE001 - the parent raises it with its own context
                conn.send(f"{type(exc).__name__}: {exc}")
                return
            conn.send(loss)
            conn.recv()  # ("ready",): every gradient of this step is written
            for group, settings in zip(optimizer.param_groups, hyper):
                group.update(settings)
            take_step(model, optimizer, gradients[parity])
    except (EOFError, KeyboardInterrupt):
        return


BUSY_LOOP = "while True: pass"


@contextlib.contextmanager
def busy_processes(own_sessions: bool, count: int = 2):
    """``count`` busy processes, each in a session of its own or in this process's, stopped on leaving."""
    busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], start_new_session=own_sessions)
            for _ in range(count)]
    try:
        time.sleep(1.0)
        yield
    finally:
        for process in busy:
            process.kill()
            process.wait()


def random_batches(count: int, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` (degraded, sharp) batches of ``size`` random 35x35 patches, channels_last like training's."""
    return [tuple(torch.rand(size, 3, 35, 35).contiguous(memory_format=torch.channels_last) for _ in range(2))
            for _ in range(count)]


def probe_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The probes' model and optimizer: deblurcnn_res, channels_last, Adam 3e-4, seeded."""
    torch.manual_seed(0)
    model = build_model("deblurcnn_res", dropout=0.0).to(memory_format=torch.channels_last)
    return model, torch.optim.Adam(model.parameters(), lr=3e-4)


def plain_step(forward, optimizer: torch.optim.Optimizer):
    """One bf16 MSE training step through ``forward`` (the model, or its DDP wrapper)."""
    autocast = autocast_for("bf16", torch.device("cpu"))

    def step(degraded, sharp):
        with autocast():
            loss = F.mse_loss(forward(degraded), sharp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def timed(step, batches: list[tuple[torch.Tensor, torch.Tensor]], warm_up: int = 3) -> float:
    """Samples/s of ``step`` over ``batches``, the first ``warm_up`` of them untimed."""
    for degraded, sharp in batches[:warm_up]:
        step(degraded, sharp)
    started = time.perf_counter()
    for degraded, sharp in batches[warm_up:]:
        step(degraded, sharp)
    return sum(len(sharp) for _, sharp in batches[warm_up:]) / (time.perf_counter() - started)


def samples_per_s(split: int, steps: int) -> float:
    """One thread (``split`` 1) or the batch split over ``split`` one-thread processes."""
    torch.set_num_threads(1)
    model, optimizer = probe_model()
    batches = random_batches(steps + 3, 4)
    step = SplitStep(model, optimizer, "mse", "bf16", split, 0) if split > 1 else plain_step(model, optimizer)
    try:
        return timed(step, batches)
    finally:
        if split > 1:
            step.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    steps = parser.parse_args().steps
    print(f"quiet: one thread {samples_per_s(1, steps):.1f}, split over 2 {samples_per_s(2, steps):.1f}", flush=True)
    for own_sessions in (True, False):
        with busy_processes(own_sessions):
            print(f"beside 2 busy processes {'in own sessions' if own_sessions else 'of this session'}: one thread "
                  f"{samples_per_s(1, steps):.1f}, split over 2 {samples_per_s(2, steps):.1f}", flush=True)


if __name__ == "__main__":
    main()
