"""Memory per gallery item: what a deployment stores for each item (float32 as stored)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def bytes_per_item(tensors: dict | torch.Tensor, keys: Sequence[str] | None = None, mask_key: str = "mask") -> float:
    """Mean bytes a deployment stores per gallery item.

    ``tensors``: one (N, d) tensor (a retrieval vector per item: ``d * element_size``) or a dict of a model's
    outputs with ``keys`` the stored ones: a 2-D entry costs ``d * element_size`` per item, a 3-D entry (N, T, d)
    costs the item's VALID positions (``tensors[mask_key]``, (N, T) bool, when its shape matches) times
    ``d * element_size`` (padding is not stored). So a float32 vector model is ``4 * dim`` and a float32 model
    keeping 49 region features is ``4 * 49 * dim``."""
    if torch.is_tensor(tensors) or isinstance(tensors, np.ndarray):
        tensors, keys = {"vec": tensors}, ["vec"]
    keys = list(keys) if keys is not None else [k for k in tensors if k != mask_key]
    mask = tensors.get(mask_key)
    total = 0.0
    for k in keys:
        t = tensors[k]
        esize = t.element_size() if torch.is_tensor(t) else np.asarray(t).itemsize
        shape = tuple(t.shape)
        if len(shape) == 2:
            total += shape[1] * esize
        elif len(shape) == 3:
            if mask is not None and tuple(mask.shape) == shape[:2]:
                valid = float(torch.as_tensor(mask).float().sum(1).mean())
            else:
                valid = float(shape[1])
            total += valid * shape[2] * esize
        else:
            raise ValueError(f"stored tensor {k!r} has shape {shape}; expected (N, d) or (N, T, d)")
    return total


def _local_stats(tensors: dict, keys: Sequence[str] | None, mask_key: str = "mask") -> tuple[float, int]:
    """(mean valid positions per item, feature dim) of the first 3-D stored tensor; (1, d) for vectors only."""
    for k in (keys or tensors.keys()):
        t = tensors[k]
        if t.dim() == 3:
            mask = tensors.get(mask_key)
            valid = float(mask.float().sum(1).mean()) if mask is not None and mask.shape == t.shape[:2] \
                else float(t.shape[1])
            return valid, int(t.shape[2])
    t = next(v for v in tensors.values() if torch.is_tensor(v) and v.dim() == 2 and v.is_floating_point())
    return 1.0, int(t.shape[1])


