"""The batch split across two Python threads of one process, as measured for results/busy_machine.

    python results/busy_machine/thread_probe.py [steps]

Each thread runs torch with one intra-op thread and takes the batch's chunks (of ``chunk`` samples) from a shared
counter until none is left, so a thread that is descheduled leaves the rest of the batch to the other; the chunks'
gradients (``torch.autograd.grad``, no shared ``.grad`` written) are added in chunk order before one Adam step.
deblurcnn_res, batch 4, bf16, channels_last, random patches; prints samples/s quiet, beside one busy process per
core of this session and of sessions of their own, then quiet again: one thread, two OpenMP threads, and the split
in chunks of 1 and of 2 samples.
"""

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from split_probe import busy_processes, plain_step, probe_model, random_batches, timed  # this folder's

from deblur_exp.runtime import autocast_for


class ThreadSplitStep:
    """One training step with the batch's chunks shared out between this thread and one helper thread."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, chunk: int):
        self.model, self.optimizer, self.chunk = model, optimizer, chunk
        self.params = list(model.parameters())
        self.autocast = autocast_for("bf16", torch.device("cpu"))
        self.helper = ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(1,))

    def __call__(self, degraded: torch.Tensor, sharp: torch.Tensor) -> None:
        starts = range(0, len(sharp), self.chunk)
        gradients: list[tuple[torch.Tensor, ...] | None] = [None] * len(starts)
        taken, lock = iter(range(len(starts))), threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    k = next(taken, None)
                if k is None:
                    return
                rows = slice(starts[k], starts[k] + self.chunk)
                with self.autocast():  # this chunk's share of the batch-mean MSE
                    loss = F.mse_loss(self.model(degraded[rows]), sharp[rows], reduction="sum") / sharp.numel()
                gradients[k] = torch.autograd.grad(loss, self.params)

        helper = self.helper.submit(work)
        work()
        helper.result()
        for i, param in enumerate(self.params):
            param.grad = torch.stack([chunk[i] for chunk in gradients]).sum(0)
        self.optimizer.step()


def samples_per_s(kind: str, steps: int) -> float:
    """``kind``: "1 thread", "2 threads" (OpenMP) or "split N" (chunks of N samples over two threads)."""
    torch.set_num_threads(2 if kind == "2 threads" else 1)
    model, optimizer = probe_model()
    step = (ThreadSplitStep(model, optimizer, int(kind.split()[1])) if kind.startswith("split")
            else plain_step(model, optimizer))
    return timed(step, random_batches(steps + 3, 4))


def report(label: str, steps: int) -> None:
    rates = {kind: samples_per_s(kind, steps) for kind in ("1 thread", "2 threads", "split 1", "split 2")}
    print(f"{label}: " + ", ".join(f"{kind} {rate:.1f}" for kind, rate in rates.items()), flush=True)


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 150
    report("quiet", steps)
    for own_sessions in (False, True):
        with busy_processes(own_sessions):
            report(f"beside 2 busy processes {'in own sessions' if own_sessions else 'of this session'}", steps)
    report("quiet again", steps)


if __name__ == "__main__":
    main()
