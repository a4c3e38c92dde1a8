"""Galleries grown beyond the real test set for the scaling study.

:func:`grow_gallery` (the tiled gallery): the first ``n0`` rows are the real vectors, every further row a copy of
real row ``j % n0`` plus Gaussian noise of norm about ``noise`` times the vector's norm, rescaled to that norm.
"""
from __future__ import annotations

import math

import numpy as np

SCALING_GALLERY_METHOD = ("tiled real test vectors: rows < n0 are the real vectors, row j >= n0 is real row j % n0 "
                          "+ Gaussian noise of relative norm {noise}, rescaled to the real row's norm (seed {seed})")
FINE_GALLERY_METHOD = "the real test gallery repeated (every copy scored); text-to-image, search + re-ranking only"


def grow_gallery(base: np.ndarray, n: int, noise: float = 0.25, seed: int = 0, block: int | None = None) -> np.ndarray:
    """``n`` float32 rows grown from the ``n0`` real rows of ``base``: rows < n0 are the real vectors; row j >= n0 is
    real row ``j % n0`` plus isotropic Gaussian noise of expected norm ``noise`` times that row's norm, rescaled to
    the row's norm. Deterministic per block of n0 rows, so a smaller gallery is a prefix of a larger one."""
    base = np.ascontiguousarray(base, dtype=np.float32)
    n0, d = base.shape
    block = block or n0
    if n <= n0:
        return base[:n].copy()
    norms = np.linalg.norm(base, axis=1, keepdims=True).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    out[:n0] = base
    for a in range(n0, n, block):
        b = min(a + block, n)
        rng = np.random.default_rng([seed, a])
        src = np.arange(a, b) % n0
        x = base[src] + rng.standard_normal((b - a, d), dtype=np.float32) * (noise / math.sqrt(d)) * norms[src]
        x *= norms[src] / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        out[a:b] = x
    return out


class GrowingGallery:
    """Prefixes of one grown gallery (:func:`grow_gallery`), generated once up to the largest size asked."""

    def __init__(self, base: np.ndarray, noise: float = 0.25, seed: int = 0):
        self.base, self.noise, self.seed = np.ascontiguousarray(base, dtype=np.float32), noise, seed
        self._arr = self.base.copy()

    def get(self, n: int) -> np.ndarray:
        if n > len(self._arr):
            self._arr = grow_gallery(self.base, n, self.noise, self.seed)
        return self._arr[:n]


