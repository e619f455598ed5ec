"""A one-node SLURM cluster on this machine for the SLURM tests: installed when missing (root and apt), its
config written from tests/cluster/slurm.conf.in into a temporary folder (never /etc), munged, slurmctld and slurmd
started in the foreground as our own child processes, and exactly those stopped at the end."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

TEMPLATE = Path(__file__).with_name("cluster") / "slurm.conf.in"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scancel", "scontrol")


def missing_tools() -> list[str]:
    return [tool for tool in (*DAEMONS, *CLIENTS) if shutil.which(tool) is None]


def install() -> str | None:
    """Install Debian's slurm-wlm and munge when they are missing and we may; None when ready, else why not."""
    if not missing_tools():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"SLURM is not installed ({', '.join(missing_tools())} missing) and this is not root with apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install_cmd = ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]
    if subprocess.run(install_cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        result = subprocess.run(install_cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            return f"apt-get install slurm-wlm munge failed: {result.stderr.strip().splitlines()[-1:]}"
    return f"still missing after the install: {', '.join(missing_tools())}" if missing_tools() else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """The running cluster: ``env`` (SLURM_CONF) is what clients such as sbatch and submitit need."""

    def __init__(self, root: Path):
        self.root, self.processes = root, []
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        for folder in ("munge", "state", "spool", "log"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
        self.conf.write_text(TEMPLATE.read_text().format(
            host=self.host, ctld_port=free_port(), slurmd_port=free_port(), user="root", root=self.root,
            cpus=os.cpu_count() or 1, memory_mb=memory_mb))

    def start(self, timeout: float = 60) -> None:
        self.write_config()
        munge = self.root / "munge"
        env = {**os.environ, **self.env}
        log = open(self.root / "log" / "daemons.log", "ab")
        self.processes.append(subprocess.Popen(
            ["munged", "-F", "-f", f"--socket={munge / 'munge.socket'}", f"--pid-file={munge / 'munged.pid'}",
             f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"],
            stdout=log, stderr=log))
        self.wait(lambda: (munge / "munge.socket").exists(), timeout, "munged did not create its socket")
        for daemon in ("slurmctld", "slurmd"):
            self.processes.append(subprocess.Popen([daemon, "-D", "-f", str(self.conf)], env=env, stdout=log,
                                                   stderr=log))
        self.wait(self.idle, timeout, "the node did not become idle")

    def idle(self) -> bool:
        result = subprocess.run(["sinfo", "-h", "-o", "%T"], env={**os.environ, **self.env}, capture_output=True,
                                text=True)
        return result.returncode == 0 and result.stdout.strip() == "idle"

    def wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p.args[0] for p in self.processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f.read_text()[-2000:] for f in (self.root / "log").glob("*.log"))
                raise RuntimeError(f"test cluster: {what} ({', '.join(dead) or 'timeout'} ); logs:\n{logs}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel the jobs still on the cluster (their steps are slurmd's children, not ours), then stop exactly
        the daemons this cluster started, newest first."""
        env = {**os.environ, **self.env}
        jobs = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True).stdout.split()
        if jobs:
            subprocess.run(["scancel", *jobs], env=env, capture_output=True)
            self.wait(lambda: not subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
                      .stdout.strip(), 30, "the jobs did not end after scancel")
        for process in reversed(self.processes):
            process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
