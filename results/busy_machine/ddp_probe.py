"""The training step under torchrun, one thread per process, as measured for results/busy_machine.

    torchrun --nproc_per_node 2 results/busy_machine/ddp_probe.py [steps]

deblurcnn_res, batch 4 in all (2 per process), bf16, channels_last, random patches; DDP over Gloo. Prints the
samples/s of all processes together.
"""

import sys
import time

import torch
import torch.distributed as dist
from split_probe import plain_step, probe_model, random_batches  # this folder's


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    steps, per_process = int(sys.argv[1]) if len(sys.argv) > 1 else 150, 4 // dist.get_world_size()
    model, optimizer = probe_model()
    step = plain_step(torch.nn.parallel.DistributedDataParallel(model), optimizer)
    batches = random_batches(steps + 3, per_process)

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
