"""faiss inner-product search over (by default l2-normalised) embeddings, i.e. cosine similarity.

Inputs (numpy or torch, any dtype, possibly non-contiguous) are always COPIED into C-contiguous float32
before normalisation, so the caller's arrays are never modified.

Kinds: ``"flat"`` (exact), ``"ivf"`` (IndexIVFFlat, trained on the first ``add``), ``"hnsw"``
(IndexHNSWFlat). All use ``faiss.METRIC_INNER_PRODUCT``.
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)

KINDS = ("flat", "ivf", "hnsw")


def _to_float32_copy(x: Any, normalize: bool) -> np.ndarray:
    """A fresh C-contiguous float32 2-D copy of ``x`` (1-D becomes one row), l2-normalised if asked."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor
        x = x.detach().cpu()
        if not x.dtype.is_floating_point or str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    if out.ndim == 1:
        out = out[None, :]
    if out.ndim != 2:
        raise ValueError(f"expected a 2-D (n, dim) array, got shape {out.shape}")
    if normalize and out.shape[0]:
        faiss.normalize_L2(out)
    return out


@contextlib.contextmanager
def _omp_threads(threads: int | None) -> Iterator[None]:
    """Temporarily set faiss's OpenMP thread count (no change when ``threads`` is None)."""
    if threads is None:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def default_nlist(n: int) -> int:
    """IVF list count: ~4*sqrt(n), capped so each centroid gets >= 39 training points (faiss's minimum)."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


class EmbeddingIndex:
    """Inner-product kNN index over embeddings (cosine similarity when ``normalize=True``)."""

    def __init__(self, dim: int, kind: str = "flat", nlist: int | None = None, nprobe: int = 16,
                 hnsw_m: int = 32, ef_search: int = 128, normalize: bool = True,
                 threads: int | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.dim, self.kind, self.nlist, self.nprobe = int(dim), kind, nlist, nprobe
        self.hnsw_m, self.ef_search, self.normalize, self.threads = hnsw_m, ef_search, normalize, threads
        self.index: faiss.Index | None = None
        if kind == "flat":
            self.index = faiss.IndexFlatIP(self.dim)
        elif kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(self.dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efSearch = ef_search
        # ivf: built on the first add, when n (and thus the default nlist) is known

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def _prepare(self, x: Any) -> np.ndarray:
        arr = _to_float32_copy(x, self.normalize)
        if arr.shape[1] != self.dim:
            raise ValueError(f"expected vectors of dim {self.dim}, got {arr.shape[1]}")
        return arr

    def add(self, x: Any) -> "EmbeddingIndex":
        """Add vectors (ids continue from ``ntotal``); an untrained IVF index is trained on them first."""
        arr = self._prepare(x)
        with _omp_threads(self.threads):
            if self.kind == "ivf" and self.index is None:
                nlist = self.nlist or default_nlist(len(arr))
                if len(arr) < nlist:
                    raise ValueError(f"IVF needs at least nlist={nlist} vectors to train, got {len(arr)}")
                quantizer = faiss.IndexFlatIP(self.dim)
                index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
                index.train(arr)
                index.nprobe = min(self.nprobe, nlist)
                self._quantizer, self.index, self.nlist = quantizer, index, nlist  # keep quantizer alive
                log.debug("trained IVF index: nlist=%d nprobe=%d on %d vectors", nlist, index.nprobe, len(arr))
            self.index.add(arr)
        return self

    def search(self, q: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores float32 (nq, k), ids int64 (nq, k))``, best first; ``k`` is capped at ``ntotal``."""
        if self.ntotal == 0:
            raise ValueError("search on an empty index: add vectors first")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        arr = self._prepare(q)
        with _omp_threads(self.threads):
            scores, ids = self.index.search(arr, min(int(k), self.ntotal))
        return scores, ids


def knn_search(gallery: Any, queries: Any, k: int, kind: str = "flat", normalize: bool = True,
               **index_kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Build an index over ``gallery`` and return the top-``k`` ``(scores, ids)`` for ``queries``."""
    dim = np.shape(gallery)[-1]
    index = EmbeddingIndex(dim, kind=kind, normalize=normalize, **index_kwargs)
    return index.add(gallery).search(queries, k)


def brute_force_topk(gallery: Any, queries: Any, k: int, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Numpy reference: exact top-``k`` inner products (float64 math), ties broken by smaller id."""
    g = _to_float32_copy(gallery, normalize).astype(np.float64)
    q = _to_float32_copy(queries, normalize).astype(np.float64)
    k = min(int(k), len(g))
    scores = q @ g.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1).astype(np.float32), ids.astype(np.int64)
