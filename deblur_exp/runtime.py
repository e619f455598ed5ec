"""Where and how a run executes: device, torchrun ranks, seeds and RNG state, autocast, signals, the time budget.

Everything here is independent of what is trained; ``training.py`` asks it for the runtime, and the scripts that
only restore images (evaluate, deblur, report) ask it for the device.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from deblur_exp.errors import DeblurError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeblurError(f"trainer.device: '{name}' requested but no CUDA device is available; "
                          f"use trainer.device=cpu or auto")
    return torch.device(name)


@dataclass
class Distributed:
    """Where this process sits in a torchrun job; a plain run is rank 0 of 1."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes (in place); a no-op for a single process."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def any_rank(self, flag: bool) -> bool:
        """True when ``flag`` is true on any process, so that every rank takes the same decision."""
        if self.world == 1:
            return flag
        import torch.distributed as torch_distributed

        # NCCL sums CUDA tensors (on this rank's GPU), Gloo CPU ones.
        device = "cuda" if torch_distributed.get_backend() == "nccl" else "cpu"
        return bool(self.all_sum(torch.tensor([float(flag)], device=device))[0] > 0)

    def barrier(self) -> None:
        """Wait until every process gets here; a no-op for a single process."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def finish(self) -> None:
        """Leave the process group together once training is over on every rank (before rank 0 evaluates alone):
        a rank exiting with Gloo threads still alive can abort at shutdown. A no-op for a single process."""
        if self.world > 1:
            import torch.distributed as dist

            self.barrier()
            dist.destroy_process_group()

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's disjoint share of an epoch's order; equal sizes, so every rank takes as many steps."""
        usable = len(order) - len(order) % self.world
        return order[self.rank:usable:self.world]


def ranks_from_slurm() -> None:
    """A SLURM job of several tasks (srun starts one process per task) trains as torchrun would: its
    SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID become RANK / WORLD_SIZE / LOCAL_RANK, and the first node of the
    job, on a port derived from the job id, hosts the rendezvous. A no-op under torchrun or for one task."""
    tasks = int(os.environ.get("SLURM_NTASKS") or 1)
    if "WORLD_SIZE" in os.environ or tasks < 2 or "SLURM_PROCID" not in os.environ:
        return
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURMD_NODENAME") or "127.0.0.1"
    if any(c in nodes for c in "[,"):  # a compressed host list: its first host
        nodes = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True,
                               text=True).stdout.split()[0]
    os.environ.update(RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=str(tasks),
                      LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"), MASTER_ADDR=nodes,
                      MASTER_PORT=str(20000 + int(os.environ.get("SLURM_JOB_ID") or 0) % 20000))


def init_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun (or a SLURM job of several tasks) set up: NCCL on CUDA, Gloo on CPU; each
    rank gets its own GPU."""
    ranks_from_slurm()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed(), device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), world), device


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


# trainer.precision -> the autocast dtype (None: plain fp32); config takes the choices from here. "auto" is
# resolved per device by resolve_precision before anything is built.
PRECISIONS = {"auto": None, "32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``trainer.precision=auto``: bf16 on a CPU with native bf16 instructions (AVX512-BF16 or AMX), where it trains
    twice as many samples per second at the same quality per epoch (results/precision_cpu/); plain fp32 elsewhere:
    CPUs without them emulate bf16 (slower), and on CUDA these small models are launch-bound, so bf16 buys
    nothing there (results/benchmarks/)."""
    if precision != "auto":
        return precision
    if device.type == "cpu":
        capabilities = getattr(torch.cpu, "get_capabilities", dict)()  # torch >= 2.3
        if capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"):
            return "bf16"
    return "32"


def autocast_for(precision: str, device: torch.device):
    """The autocast context for ``trainer.precision``; fp16 needs CUDA (CPU has no fast fp16 kernels)."""
    dtype = PRECISIONS[resolve_precision(precision, device)]
    if dtype is None:
        return contextlib.nullcontext
    if dtype is torch.float16 and device.type != "cuda":
        raise DeblurError("trainer.precision: fp16 needs a CUDA device; use bf16 on CPU")
    return lambda: torch.autocast(device.type, dtype=dtype)


class StopFlag:
    """Set by SIGINT/SIGTERM: the loop finishes the step in flight, saves last.pt and exits.

    SIGUSR2 too, where a scheduler's integration handles it (submitit on SLURM: the warning before a time limit or
    a pre-emption, after which it requeues the job): the loop saves first, then ``hand_over`` passes the signal
    on to that handler, which requeues; the requeued job resumes from last.pt."""

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    def __call__(self, signum, frame) -> None:
        self.signum = signum

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():  # only the main thread receives signals
            yield self
            return
        signals = [signal.SIGINT, signal.SIGTERM]
        if callable(signal.getsignal(signal.SIGUSR2)):  # someone will requeue this job on it
            signals.append(signal.SIGUSR2)
        self.previous = {sig: signal.signal(sig, self) for sig in signals}
        try:
            yield self
        finally:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)

    def hand_over(self) -> None:
        """After the checkpoint is saved: pass a SIGUSR2 on to the handler it interrupted (submitit requeues the
        job and exits); other signals stop the run here (TrainingInterrupted)."""
        handler = self.previous.get(self.signum)
        if self.signum == signal.SIGUSR2 and callable(handler):
            logging.getLogger("deblur_exp").warning("SIGUSR2: checkpoint saved; handing over to the job's "
                                                    "scheduler integration (requeue)")
            handler(self.signum, None)


class TimeBudget:
    """``trainer.max_time``: wall-clock seconds for the epochs (training and validation), counted across resumes.

    The budget is checked after every step, so a run overshoots it by at most one step (plus the validation and
    checkpoint of the epoch it cuts short); data preparation and the final evaluation are not counted.
    """

    def __init__(self, seconds: float | None, spent_before: float = 0.0):
        self.seconds, self.spent_before, self.started = seconds, spent_before, time.perf_counter()
        self.paused_for = 0.0

    def spent(self) -> float:
        return self.spent_before + time.perf_counter() - self.started - self.paused_for

    @contextlib.contextmanager
    def paused(self):
        """Time inside is not counted: work that is not training (eval.every's scoring), so that a run's budget
        buys the same training with or without it."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.paused_for += time.perf_counter() - started

    def expired(self) -> bool:
        return self.seconds is not None and self.spent() >= self.seconds

    def fraction(self) -> float:
        """Share of the budget spent (0 without a budget)."""
        return self.spent() / self.seconds if self.seconds else 0.0


class TrainingInterrupted(DeblurError):
    """Raised after a clean stop on SIGINT/SIGTERM; ``exit_code`` is 130 or 143 as a shell expects."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    @classmethod
    def by(cls, stop: StopFlag, run_path, where: str) -> "TrainingInterrupted":
        """The error for a stop by ``stop``'s signal at ``where``, saying how to resume the run."""
        message = (f"stopped by {signal.Signals(stop.signum).name} at {where}; checkpoint saved. Resume with: "
                   f"python scripts/train.py resume={run_path}")
        logging.getLogger("deblur_exp").warning(message)
        return cls(message, 128 + stop.signum)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """The generators a resumed run needs: the shuffle's (``generator``) and torch's own (dropout masks)."""
    state = {"torch": torch.get_rng_state(), "shuffle": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def describe_device(device: torch.device | None) -> str:
    """What trained the run, for tables: the GPU's name, else the CPU with its thread count."""
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({threads_text(torch.get_num_threads())})"


def threads_text(count: int) -> str:
    return f"{count} thread{'s' if count != 1 else ''}"
