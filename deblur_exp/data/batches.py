"""Training data as tensors: the run's patches cut, degraded and split once, then served as float batches on the
training device (``PatchTensors``)."""

from __future__ import annotations

import logging
import math
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from deblur_exp.data.degrade import pipeline_of
from deblur_exp.data.dihedral import DIHEDRAL_VIEWS, dihedral
from deblur_exp.data.patches import PatchSet, load_patches, split_indices
from deblur_exp.data.pipeline import Pipeline
from deblur_exp.runtime import Distributed

log = logging.getLogger("deblur_exp")


class PatchTensors:
    """Aligned uint8 patches, N x P x P x 3 (as cut), served as float batches on the training device.

    Batches come from chunks: a chunk of (shuffled) patches is gathered and converted to float in a few large
    tensor ops into buffers that are reused from chunk to chunk, and batches are slices (views) of them. Per
    step that is a couple of pointer bumps instead of several small gathers, conversions and fresh allocations,
    which matters on a CPU (Python overhead, page faults) and on a GPU (kernel launches). A batch stays valid
    until the next one is requested, which is how the training and validation loops use them.

    The patches live on the device when they fit (``resident``); otherwise they stay in host memory and each
    chunk is gathered on the host into a pinned staging buffer, copied asynchronously and converted on the device.
    """

    # Float buffer size per role. Small enough that the copy_ + div_ pair runs in cache instead of streaming
    # through RAM twice: 4 MiB gave 2.5x the samples/s of 30 MiB chunks on the 2-core EPYC VM (0.5 to 8 MiB tried,
    # 35 and 64 px patches); big enough that a chunk is still many batches, so per-chunk overhead is negligible.
    CHUNK_BYTES = 4 * 2**20
    # Patches go to the GPU when they take at most this share of its free memory; the rest is left for the
    # model, activations, optimizer state and (in a parallel sweep) the other jobs.
    GPU_SHARE = 0.25

    def __init__(self, sharp: torch.Tensor, degraded: torch.Tensor | None, device: torch.device | None = None,
                 pipeline: Pipeline | None = None):
        # degraded None: ``sharp`` holds each patch with the pipeline's margin, degraded batch by batch
        self.sharp, self.degraded, self.pipeline = sharp, degraded, pipeline
        self.device = device or sharp.device
        self.resident = sharp.device.type == self.device.type  # False: in host memory, staged chunk by chunk
        self._buffers: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._staging: dict[tuple[str, int], tuple[torch.Tensor, Any]] = {}  # host buffer, its last copy's event

    @classmethod
    def from_patches(cls, patches: PatchSet, indices: np.ndarray, device: torch.device,
                     on_device: bool | None = None, pipeline: Pipeline | None = None) -> "PatchTensors":
        """``on_device``: True/False force where the patches live; None puts them on a GPU when they fit."""
        sharp, degraded = (None if images is None else torch.from_numpy(np.ascontiguousarray(images[indices]))
                           for images in (patches.sharp, patches.degraded))
        if device.type != "cuda":
            return cls(sharp, degraded, device, pipeline)
        if on_device is None:
            on_device = 2 * sharp.nbytes <= cls.GPU_SHARE * torch.cuda.mem_get_info(device)[0]
        if not on_device:
            return cls(sharp, degraded, device, pipeline)
        moved = (None if t is None else t.pin_memory().to(device, non_blocking=True) for t in (sharp, degraded))
        return cls(*moved, device, pipeline)

    def subset(self, picks: torch.Tensor) -> "PatchTensors":
        """The patches at ``picks`` (indices on the patches' device), degraded the same way."""
        return PatchTensors(self.sharp[picks], None if self.degraded is None else self.degraded[picks], self.device,
                            self.pipeline)

    def __len__(self) -> int:
        return len(self.sharp)

    def _gather(self, images: torch.Tensor, index, out: torch.Tensor) -> None:
        if isinstance(index, slice):
            out.copy_(images[index])
        else:  # index_select, not images[index]: advanced indexing is ~20x slower for this gather on CPU
            torch.index_select(images, 0, index, out=out)

    def _stage(self, key: tuple[str, int], images: torch.Tensor, index, raw: torch.Tensor) -> None:
        """Host-resident patches: gather on the host into a (pinned) buffer, then one async copy to the device."""
        cuda = self.device.type == "cuda"
        if key not in self._staging:
            buffer = torch.empty((key[1], *images.shape[1:]), dtype=torch.uint8, pin_memory=cuda)
            self._staging[key] = (buffer, None)
        buffer, copied = self._staging[key]
        if copied is not None:
            copied.synchronize()  # the previous chunk's copy must have read the buffer before we overwrite it
        staged = buffer[:len(raw)]
        self._gather(images, index, staged)
        raw.copy_(staged, non_blocking=cuda)
        if cuda:
            copied = torch.cuda.Event()
            copied.record()
        self._staging[key] = (buffer, copied)

    def _chunk(self, role: str, index, size: int, capacity: int, channels_last: bool) -> torch.Tensor:
        images = getattr(self, role)
        key = (role, capacity)
        if key not in self._buffers:
            shape = (capacity, *images.shape[1:])
            self._buffers[key] = (torch.empty(shape, dtype=torch.uint8, device=self.device),
                                  torch.empty(shape, dtype=torch.float32, device=self.device))
        raw, scaled = (b[:size] for b in self._buffers[key])
        if self.resident:
            self._gather(images, index, raw)
        else:
            self._stage(key, images, index, raw)
        # div_(255) gives exactly torchvision's ToTensor values; mul_(1 / 255) differs in the last bit for some.
        chunk = scaled.copy_(raw).div_(255).permute(0, 3, 1, 2)  # NHWC memory = a channels_last NCHW view
        return chunk if channels_last else chunk.contiguous()

    def batches(self, batch_size: int, order: torch.Tensor | None = None, limit: int | None = None,
                channels_last: bool = False, augment: torch.Generator | None = None, draws: tuple[int, ...] = (0,)
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(degraded, sharp) float NCHW batches in [0, 1], in ``order`` (a permutation) or sequentially; with an
        ``augment`` generator, each batch in one of the 8 dihedral views drawn from it (see ``augmented``). Patches
        degraded on the fly get batch i's degradations from the seed of (*draws, i): the caller passes what makes
        a batch's draws its own (run seed, epoch, rank), so a resumed epoch redraws exactly what it drew."""
        available = len(self) if order is None else len(order)
        n_samples = min(available, math.ceil(available / batch_size) * batch_size if limit is None
                        else limit * batch_size)
        chunk_samples = self.CHUNK_BYTES // (self.sharp[0].numel() * 4)
        capacity = min(max(1, chunk_samples // batch_size) * batch_size, n_samples)
        for start in range(0, n_samples, capacity):
            stop = min(start + capacity, n_samples)
            index = slice(start, stop) if order is None else order[start:stop]
            sharp = self._chunk("sharp", index, stop - start, capacity, channels_last)
            degraded = None if self.degraded is None else self._chunk("degraded", index, stop - start, capacity,
                                                                      channels_last)
            for b in range(0, stop - start, batch_size):
                if degraded is None:
                    pair = self._degrade(sharp[b:b + batch_size], batch_seed(*draws, (start + b) // batch_size),
                                         channels_last)
                else:
                    pair = degraded[b:b + batch_size], sharp[b:b + batch_size]
                yield pair if augment is None else augmented(pair, augment, channels_last)

    def _degrade(self, windows: torch.Tensor, seed: int, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        degraded, sharp, _ = self.pipeline.degrade_windows(windows, seed)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        return degraded.contiguous(memory_format=layout), sharp.contiguous(memory_format=layout)


def batch_seed(*key: int) -> int:
    """A 63-bit seed that depends on every number of ``key`` (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def augmented(pair: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator,
              channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both tensors of a (degraded, sharp) batch in the same random dihedral view: 0-3 quarter turns, flipped or
    not (data.augment, the SR toolboxes' use_rot + use_hflip). One draw per batch keeps the cost to one copy."""
    k, flip = DIHEDRAL_VIEWS[int(torch.randint(len(DIHEDRAL_VIEWS), (1,), generator=generator))]
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return tuple(dihedral(x, k, flip).contiguous(memory_format=layout) for x in pair)


def how_degraded(apply_to: str, pipeline: Pipeline | None) -> str:
    """How the training patches get their degradation, for the data log line."""
    if pipeline is None:
        return f"applied per {apply_to}"
    when = "drawn per sample, every epoch" if pipeline.random else "applied per sample, alike every epoch"
    return f"{when}: {pipeline.describe()}"


def prepare_data(cfg: DictConfig, data_cfg, device: torch.device, dist: Distributed):
    """(train, val, this rank's val share, names of held-out images) as device tensors, cut and split once."""
    degradation = OmegaConf.to_object(cfg.degradation)
    pipeline = pipeline_of(degradation)
    patches = load_patches(data_cfg, degradation, cfg.paths.cache_dir)
    train_idx, val_idx = split_indices(patches, data_cfg, cfg.trainer.seed)
    held_out = sorted({patches.image_names[i] for i in patches.image_index[val_idx]})
    on_device = cfg.trainer.patches_on_device
    train_set = PatchTensors.from_patches(patches, train_idx, device, on_device, pipeline)
    val_set = PatchTensors.from_patches(patches, val_idx, device, on_device, pipeline)
    val_shard = val_set if dist.world == 1 else PatchTensors.from_patches(
        patches, val_idx[dist.rank::dist.world], device, on_device, pipeline)
    log.info("data %s: %d train / %d val patches of %dx%d (split=%s, degradation=%s %s)",
             data_cfg.name, len(train_set), len(val_set), data_cfg.patch_size, data_cfg.patch_size,
             data_cfg.split, degradation.name, how_degraded(degradation.apply_to, pipeline))
    if device.type == "cuda":
        stored = patches.sharp.nbytes + (0 if patches.degraded is None else patches.degraded.nbytes)
        log.info("patches (%.0f MiB as uint8) %s", stored / 2**20,
                 "live on the GPU" if train_set.resident else
                 "stay in host memory; chunks are copied to the GPU as they are needed (trainer.patches_on_device)")
    return train_set, val_set, val_shard, held_out if data_cfg.split == "image" else []
