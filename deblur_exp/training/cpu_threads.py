"""How many CPU threads a run trains with on a machine that other processes keep busy (trainer.num_threads=null).

OpenMP threads meet at a barrier after every parallel region, so a thread the scheduler takes off its core stalls
the others: a run uses the cores that other runnable tasks leave free, weighing each task by the CPU share Linux
gives it against this process (docs/performance.md, "On a shared machine").
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import torch


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask: taskset, a SLURM or container cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def runnable_elsewhere(samples: int = 10, interval_s: float = 0.02) -> float | None:
    """How many other tasks want a CPU right now, as competitors of this process: the kernel's count of runnable
    tasks (/proc/stat procs_running), averaged over a few samples, less this process's own thread asking (called
    between epochs, when only it runs). When that says busy, the runnable tasks are looked at one by one
    (``niced_discount``), so that jobs started with ``nice`` count for what they take. None where /proc/stat is
    missing."""
    try:
        others = max(0.0, sampled(procs_running, samples, interval_s) - 1)
    except (OSError, StopIteration):
        return None
    if others < 0.5:
        return others
    return max(0.0, others - sampled(niced_discount, samples // 2, interval_s))


def sampled(read: Callable[[], float], samples: int, interval_s: float) -> float:
    """The mean of ``samples`` readings ``interval_s`` apart (runnable tasks come and go between readings)."""
    readings = []
    for _ in range(samples):
        readings.append(read())
        time.sleep(interval_s)
    return sum(readings) / len(readings)


def procs_running() -> int:
    """The kernel's count of runnable tasks, this process's asking thread included."""
    with open("/proc/stat") as stat:
        return next(int(line.split()[1]) for line in stat if line.startswith("procs_running"))


# The kernel's CPU weight of a task by its nice value, -20..19 (kernel/sched/core.c, sched_prio_to_weight).
NICE_WEIGHTS = [88761, 71755, 56483, 46273, 36291, 29154, 23254, 18705, 14949, 11916, 9548, 7620, 6100, 4904, 3906,
                3121, 2501, 1991, 1586, 1277, 1024, 820, 655, 526, 423, 335, 272, 215, 172, 137, 110, 87, 70, 56, 45,
                36, 29, 23, 18, 15]


def niced_discount(proc: Path = Path("/proc")) -> float:
    """How much less than one task each the runnable tasks of other processes take from this process's thread,
    summed: a task of this process's scheduling group (its autogroup, i.e. its session, where Linux groups them;
    every task where it does not) gets CPU by its nice weight, so a ``nice -n 19`` job started from the same shell
    takes 0.015 of what an equal one would, and is discounted by 0.985. A task of another group is not discounted:
    its group's share does not depend on the nice values inside it. Tasks that cannot be read (another user's,
    under hidepid) are not discounted either."""
    grouped = autogroup_enabled(proc)
    own_group = autogroup(proc, "self") if grouped else ""
    own_weight = NICE_WEIGHTS[os.getpriority(os.PRIO_PROCESS, 0) + 20]
    discount, own = 0.0, str(os.getpid())
    for process in proc.iterdir():
        if not process.name.isdigit() or process.name == own:
            continue
        if grouped and autogroup(proc, process.name) != own_group:
            continue
        try:
            states = [task_state(task) for task in (process / "task").iterdir()]
        except OSError:  # gone meanwhile, or hidden
            continue
        discount += sum(1 - NICE_WEIGHTS[nice + 20] / own_weight for state, nice in states if state == "R")
    return discount


def task_state(task: Path) -> tuple[str, int]:
    """A task's scheduling state (R: runnable) and nice value, from /proc/PID/task/TID/stat."""
    stat = (task / "stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # the command name, in parentheses, may hold spaces
    return fields[0], int(fields[16])


def autogroup_enabled(proc: Path = Path("/proc")) -> bool | None:
    """Whether the kernel schedules each session as one group (CONFIG_SCHED_AUTOGROUP, switched on); None where
    it cannot tell."""
    try:
        return (proc / "sys" / "kernel" / "sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return None


def autogroup(proc: Path, pid: str) -> str:
    """The scheduling group Linux's autogroup put a process in ("/autogroup-12"); "" where it cannot be read."""
    try:
        return (proc / pid / "autogroup").read_text().split()[0]
    except (OSError, IndexError):
        return ""


def threads_for_load(cores: int, others: float) -> int:
    """Torch threads for a machine where ``others`` tasks compete for ``cores``. OpenMP threads meet at a barrier
    after every parallel region, so when a busy process deschedules one of them the others wait for it: on the
    2-core machine, with two busy processes, 2 threads train deblurcnn_res at 31% of the quiet speed and 1 thread
    at 44% (edsr: 20% and 39%). So use only the cores the others leave free, and at least one."""
    return max(1, min(cores, round(cores - others)))


def fit_threads_to_load() -> str | None:
    """Sets torch's CPU thread count for the machine's current load (trainer.num_threads=null on a CPU); returns a
    line to log when the count changed, else None."""
    others = runnable_elsewhere()
    if others is None:
        return None
    cores, threads = cpu_cores(), torch.get_num_threads()
    wanted = threads_for_load(cores, others)
    if wanted == threads:
        return None
    torch.set_num_threads(wanted)
    state = "busy" if wanted < cores else "free again"
    return (f"CPU {state} ({others:.1f} other runnable tasks on {cores} cores): training with {wanted} thread(s), "
            f"was {threads}; trainer.num_threads=N fixes the count")
