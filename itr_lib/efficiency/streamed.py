"""Search at a gallery size whose float32 vectors cannot be held in memory (issue 18: 10,000,000 x 512 float32 is
20 GB, this machine has 24 GB): the gallery is streamed in chunks and never materialised.

- **Exact ground truth** (:func:`chunked_knn`, :class:`KnnMerge`): ``faiss.knn`` of the queries against each chunk,
  the running top-``k`` merged with the chunk's (ids offset by the chunk's first row). Equal to ``faiss.knn`` over
  the whole array (tested).
- **Compressed index** (:func:`build_streamed`): the same empty index as :func:`~.indexes.build_faiss`
  (:func:`~.indexes.make_index`, so IVF-PQ at 10M is the same index as at 1M: ``default_nlist(n)`` lists,
  ``d / 4``-byte codes), trained on the gallery's first :func:`~.indexes.train_items` rows (faiss samples at most
  that many points for its two k-means; the synthetic gallery's rows past the real ones are i.i.d. samples, so a
  prefix is a fair sample), then filled chunk by chunk. Adding is per vector (assign a list, encode), so the index
  equals one filled with the whole array at once.
- **Measurement** (:func:`streamed_index_measure`): one pass over the chunks feeds both, then the index is tuned
  against the chunked ground truth and timed by :func:`~.indexes.time_index`, exactly as the in-memory series at
  smaller sizes. Its floor comes from the work faiss reports (``floor_bytes``, ``floor_flops``).
- **Flat at that size** cannot be held: the scaling study compares with flat's floor at that size
  (``flat_floor_ms``: gallery bytes / read bandwidth, a lower bound on any exact scan) and adds the linear
  extrapolation of the measured flat series (``extrapolated=True``, :func:`flat_extrapolated`).
- **Memory guard** (:func:`check_streamed_memory`): refuses when the compressed index plus one chunk (or the training
  sample, whichever is larger) would exceed 60% of the available memory.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import faiss
import numpy as np
import pandas as pd

from .hardware import available_memory
from .indexes import make_index, time_index, train_items

log = logging.getLogger(__name__)

STREAMABLE = ("ivf", "ivfpq", "ivfpq_sq8")  # indexes that keep codes, not the gallery (flat and HNSW hold every
                                           # float32 vector)


class KnnMerge:
    """Running exact inner-product top-``k`` of ``queries`` over gallery chunks fed in any order (:meth:`add`)."""

    def __init__(self, queries: np.ndarray, k: int = 10):
        self.q = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = int(k)
        self.D = np.full((len(self.q), self.k), -np.inf, dtype=np.float32)
        self.I = np.full((len(self.q), self.k), -1, dtype=np.int64)

    def add(self, start: int, x: np.ndarray) -> None:
        """Merge the top-``k`` of chunk ``x`` (gallery rows ``start .. start + len(x)``)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not len(x):
            return
        d, i = faiss.knn(self.q, x, min(self.k, len(x)), metric=faiss.METRIC_INNER_PRODUCT)
        D = np.concatenate([self.D, d], axis=1)
        ids = np.concatenate([self.I, np.where(i >= 0, i + start, -1)], axis=1)
        order = np.argsort(-D, axis=1, kind="stable")[:, :self.k]
        self.D, self.I = np.take_along_axis(D, order, 1), np.take_along_axis(ids, order, 1)


def chunked_knn(queries: np.ndarray, chunks: Iterable[tuple[int, np.ndarray]], k: int = 10) -> tuple[np.ndarray,
                                                                                                     np.ndarray]:
    """Exact inner-product (scores, ids) of the top ``k`` over a gallery given as ``(first row, array)`` chunks
    (e.g. :meth:`~.synthetic.SyntheticGallery.chunks`): ``faiss.knn`` per chunk, merged."""
    merge = KnnMerge(queries, k)
    for start, x in chunks:
        merge.add(start, x)
    return merge.D, merge.I


def streamed_bytes(index, n: int, chunk: int, n_train: int) -> dict:
    """Bytes the streamed build holds: the filled index (codes and 8-byte ids of ``n`` items, the centroids, and
    for ``ivfpq_sq8`` the ``d``-byte 8-bit vectors) and the larger of one chunk and the training sample (float32)."""
    ivf = faiss.extract_index_ivf(index)
    d = index.d
    refine = d if isinstance(faiss.downcast_index(index), faiss.IndexRefine) else 0
    held = float(n) * (ivf.code_size + 8 + refine) + 4.0 * ivf.nlist * d
    transient = 4.0 * d * max(chunk, n_train)
    return {"index_bytes": held, "transient_bytes": transient, "total_bytes": held + transient}


def check_streamed_memory(kind: str, index, n: int, chunk: int, n_train: int, limit_bytes: float | None = None,
                          name: str = "HUGE_GALLERY") -> dict:
    """Refuse (ValueError naming ``name`` and the bytes needed) when :func:`streamed_bytes` exceeds ``limit_bytes``
    (default 60% of the available memory); returns the byte counts otherwise."""
    need = streamed_bytes(index, n, chunk, n_train)
    limit = limit_bytes if limit_bytes is not None else 0.6 * available_memory()
    if need["total_bytes"] > limit:
        raise ValueError(f"{name}={n:,}: the streamed {kind} index needs about {need['total_bytes'] / 2 ** 30:.2f} GiB "
                         f"({need['index_bytes'] / 2 ** 30:.2f} GiB of codes, ids and centroids + "
                         f"{need['transient_bytes'] / 2 ** 30:.2f} GiB for one chunk or the training sample), more "
                         f"than the {limit / 2 ** 30:.2f} GiB allowed (60% of the available memory). Fix: lower "
                         f"{name} (04_efficiency) or --n (atscale), or free memory.")
    return need


def build_streamed(kind: str, gallery, n: int, *, chunk: int = 65536, index_params: dict | None = None,
                   knn: KnnMerge | None = None, mem_limit: float | None = None,
                   name: str = "HUGE_GALLERY") -> tuple[faiss.Index, dict]:
    """A ``kind`` index (``ivf`` / ``ivfpq`` / ``ivfpq_sq8``) over rows ``[0, n)`` of ``gallery`` (an object with ``rows(a, b)``
    and ``chunks(n, chunk)``, e.g. :class:`~.synthetic.SyntheticGallery`), never holding more than one chunk of
    float32 rows (see the module docstring); each chunk is also fed to ``knn`` when given. Returns (index, what the
    build did: ``train_items``, ``chunk_items``, ``train_s``, ``add_s``, ``stream_s`` (drawing the chunks),
    ``knn_s``, byte counts)."""
    if kind not in STREAMABLE:
        raise ValueError(f"a streamed index keeps codes, not the gallery: kind must be one of {STREAMABLE}, got "
                         f"{kind!r} (flat and HNSW hold every float32 vector; HUGE_KINDS / --kinds)")
    params = dict(index_params or {})
    d = gallery.rows(0, 1).shape[1]
    index = make_index(kind, d, n, **params)
    n_train = min(n, train_items(index))
    info = {"train_items": n_train, "chunk_items": int(chunk),
            **check_streamed_memory(kind, index, n, chunk, n_train, mem_limit, name)}
    t0 = time.perf_counter()
    sample = gallery.rows(0, n_train)
    stream_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.train(sample)
    info["train_s"] = time.perf_counter() - t0
    del sample
    add_s = knn_s = 0.0
    t_draw = time.perf_counter()
    for start, x in gallery.chunks(n, chunk):
        t1 = time.perf_counter()
        stream_s += t1 - t_draw
        index.add(x)
        t2 = time.perf_counter()
        add_s += t2 - t1
        if knn is not None:
            knn.add(start, x)
            knn_s += time.perf_counter() - t2
        log.debug("streamed %s: %d / %d rows", kind, start + len(x), n)
        t_draw = time.perf_counter()
    if index.ntotal != n:
        raise RuntimeError(f"streamed {kind}: {index.ntotal} rows added, {n} expected")
    info.update(add_s=add_s, stream_s=stream_s, knn_s=knn_s)
    return index, info


def _build_with_truth(kind: str, gallery, n: int, queries: np.ndarray, k: int, gt_cache: dict | None, **build_kw):
    """:func:`build_streamed` plus the exact top-``k`` ids of ``queries``: taken from ``gt_cache[(n, k)]`` when
    present, else merged in the build's own pass (and stored there). Returns (index, info, ids)."""
    cached = gt_cache.get((n, k)) if gt_cache is not None else None
    knn = KnnMerge(queries, k) if cached is None else None
    index, info = build_streamed(kind, gallery, n, knn=knn, **build_kw)
    gt = cached if cached is not None else knn.I
    if gt_cache is not None:
        gt_cache[(n, k)] = gt
    return index, info, gt


def streamed_index_measure(kind: str, gallery, n: int, queries: np.ndarray, *, k: int = 10, repeats: int = 20,
                           warmup: int = 3, max_seconds: float | None = 30.0, index_params: dict | None = None,
                           chunk: int = 65536, target_recall: float | None = 0.95,
                           sweep_values: Sequence[int] | None = None, mem_limit: float | None = None,
                           name: str = "HUGE_GALLERY", gt_cache: dict | None = None) -> dict:
    """One scaling row at ``n`` items for a streamed ``kind`` index (:func:`build_streamed`, exact ground truth by
    :class:`KnnMerge` in the same pass), tuned and timed by :func:`~.indexes.time_index` like
    :func:`~.scaling.index_series_measure`'s rows (``build_s`` = training + adding, the gallery's generation and the
    ground truth are reported apart: ``stream_s``, ``knn_s``); ``streamed=True``. ``gt_cache`` (a dict keyed by
    ``(n, k)``) keeps the exact ids for the next kind at the same size and the same queries, which then skips the
    ground-truth pass (``knn_s`` 0)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    index, info, gt = _build_with_truth(kind, gallery, n, queries, k, gt_cache, chunk=chunk,
                                        index_params=index_params, mem_limit=mem_limit, name=name)
    out, _ = time_index(kind, index, queries, n, gt, k=k, repeats=repeats, warmup=warmup, max_seconds=max_seconds,
                        target_recall=target_recall, sweep_values=sweep_values)
    del index
    return {**out, "build_s": info["train_s"] + info["add_s"], **info, "streamed": True}


def streamed_pq_pair(gallery, n: int, queries: np.ndarray, *, k: int = 10, repeats: int = 20, warmup: int = 3,
                     max_seconds: float | None = 30.0, index_params: dict | None = None, chunk: int = 65536,
                     target_recall: float | None = 0.95, sweep_values: dict | None = None,
                     mem_limit: float | None = None, name: str = "HUGE_GALLERY",
                     gt_cache: dict | None = None) -> tuple[dict, dict]:
    """The ``ivfpq`` and ``ivfpq_sq8`` rows at ``n`` items from ONE streamed build: ``ivfpq_sq8``'s base index is
    the IVF-PQ ``ivfpq`` would build (the same quantizer and codebooks trained on the same prefix, the same codes),
    so IVF-PQ is tuned and timed on that base and the re-ranked index on the whole (each tuned on its own). Halves
    the cost of measuring both at 10M (the coarse assignment of every vector dominates). The ``ivfpq`` row's
    ``build_s`` includes the 8-bit copy's training and encoding, its bytes do not (``shared_build`` says so).
    ``sweep_values``: per kind, as in :func:`~.scaling._huge_rows`."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    index, info, gt = _build_with_truth("ivfpq_sq8", gallery, n, queries, k, gt_cache, chunk=chunk,
                                        index_params=index_params, mem_limit=mem_limit, name=name)
    base = faiss.downcast_index(index.base_index)
    rows = []
    for kind, ix in (("ivfpq", base), ("ivfpq_sq8", index)):
        out, _ = time_index(kind, ix, queries, n, gt, k=k, repeats=repeats, warmup=warmup, max_seconds=max_seconds,
                            target_recall=target_recall, sweep_values=(sweep_values or {}).get(kind))
        held = streamed_bytes(ix, n, chunk, info["train_items"])
        rows.append({**out, "build_s": info["train_s"] + info["add_s"], **info, **held, "streamed": True,
                     "shared_build": "ivfpq_sq8" if kind == "ivfpq" else "", "knn_s": info["knn_s"] if kind ==
                     "ivfpq" else 0.0})
    del index, base
    return rows[0], rows[1]


def flat_extrapolated(flat: pd.DataFrame, n: int) -> dict | None:
    """Flat search at ``n`` items predicted linearly (time proportional to the items scanned) from the largest
    measured size of a flat series: ``ms_per_query`` and ``ms_per_query_batched``, ``extrapolated=True``,
    ``fit_slope`` 1. None when nothing was measured."""
    m = flat[~flat.extrapolated.astype(bool)].sort_values("n_items") if len(flat) else flat
    if m.empty:
        return None
    last = m.iloc[-1]
    ratio = n / float(last.n_items)
    row = {"index": "flat", "n_items": int(n), "ms_per_query": float(last.ms_per_query) * ratio,
           "recall_at_10": np.nan, "extrapolated": True, "fit_slope": 1.0,
           "fit_range": f"linear from {int(last.n_items)}", "params": "exact (linear extrapolation)"}
    if "ms_per_query_batched" in m and np.isfinite(last.get("ms_per_query_batched", np.nan)):
        row["ms_per_query_batched"] = float(last.ms_per_query_batched) * ratio
    return row
