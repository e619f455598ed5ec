"""The 8 dihedral views of an image batch (quarter turns, flips): training's data.augment and the x8
self-ensemble at restoration both take them from here."""

from __future__ import annotations

import torch

# The 8 dihedral views as (quarter turns k, flipped) and their transforms: the x8 self-ensemble here, and
# training's data.augment (which draws an index into DIHEDRAL_VIEWS, so this order is part of a seeded run).
DIHEDRAL_VIEWS = tuple((k, flip) for flip in (False, True) for k in range(4))


def dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if flip else x


def dihedral_inverse(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.flip(x, dims=(3,)) if flip else x
    return torch.rot90(x, -k, dims=(2, 3))
