"""The training step under torchrun, one thread per process, as measured for results/busy_machine.

    torchrun --nproc_per_node 2 results/busy_machine/ddp_probe.py [steps]

deblurcnn_res, batch 4 in all (2 per process), bf16, channels_last, random patches; DDP over Gloo. Prints the
samples/s of all processes together.
"""

import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from split_probe import random_batches  # this folder's

from deblur_exp.models import build_model
from deblur_exp.runtime import autocast_for


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    steps, per_process = int(sys.argv[1]) if len(sys.argv) > 1 else 150, 4 // dist.get_world_size()
    torch.manual_seed(0)
    model = build_model("deblurcnn_res", dropout=0.0).to(memory_format=torch.channels_last)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    autocast = autocast_for("bf16", torch.device("cpu"))
    batches = random_batches(steps + 3, per_process)

    def step(degraded, sharp):
        with autocast():
            loss = F.mse_loss(ddp(degraded), sharp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for degraded, sharp in batches[:3]:
        step(degraded, sharp)
    dist.barrier()
    started = time.perf_counter()
    for degraded, sharp in batches[3:]:
        step(degraded, sharp)
    dist.barrier()
    if dist.get_rank() == 0:
        print(f"torchrun, {dist.get_world_size()} processes: {4 * steps / (time.perf_counter() - started):.1f} "
              "samples/s")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
