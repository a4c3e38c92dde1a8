"""faiss indexes of the scaling study: building them (flat, IVF-Flat, IVF-PQ, HNSW), what one search reads and
computes (from faiss's own statistics, for the floor), the bytes each stores per item, and the tuning sweep that
picks the smallest ``nprobe`` / ``efSearch`` reaching a recall@k target against exact search."""
from __future__ import annotations

import time
from collections.abc import Sequence

import faiss
import numpy as np
import pandas as pd

from .hardware import flat_floor_ms, roofline_ms

KINDS = ("flat", "ivf", "ivfpq", "hnsw")
SEARCH_PARAM = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "efSearch"}


def build_faiss(kind: str, x: np.ndarray, *, nlist: int | None = None, nprobe: int = 16, hnsw_m: int = 32,
                ef_search: int = 128, ef_construction: int = 40, ivf_train_per_list: int = 40, ivf_niter: int = 10,
                pq_m: int | None = None, pq_bits: int = 8, seed: int = 0) -> faiss.Index:
    """A faiss inner-product index over ``x`` (float32, used as is): ``flat``, ``ivf`` (IndexIVFFlat with
    :func:`itr_lib.index.default_nlist` lists, ``ivf_niter`` k-means iterations on at most
    ``ivf_train_per_list * nlist`` sampled points), ``ivfpq`` (IndexIVFPQ, the same lists, ``pq_m`` sub-quantizers
    of ``pq_bits`` bits: default ``d / 4`` bytes per item, 16x smaller than float32) or ``hnsw`` (IndexHNSWFlat,
    ``hnsw_m`` links, ``ef_construction``)."""
    from ..index import default_nlist
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind in ("ivf", "ivfpq"):
        nlist = nlist or default_nlist(n)
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            m = pq_m or max(1, d // 4)
            if d % m:
                raise ValueError(f"pq_m={m} must divide the dimension {d} (index_params['pq_m'])")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, m, pq_bits, faiss.METRIC_INNER_PRODUCT)
            index.pq.cp.max_points_per_centroid = ivf_train_per_list * 8
            index.pq.cp.niter = ivf_niter
        index.cp.max_points_per_centroid = ivf_train_per_list
        index.cp.niter = ivf_niter
        index.cp.seed = seed
        index.train(x)
        index.nprobe = min(nprobe, nlist)  # (faiss's constructor wrapper keeps the quantizer referenced)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    index.add(x)
    return index


def reset_stats() -> None:
    faiss.cvar.indexIVF_stats.reset()
    faiss.cvar.hnsw_stats.reset()


def search_work(kind: str, index, n: int, nq: int) -> dict:
    """What a search read and computed per query, from faiss's statistics after a search of ``nq`` queries
    (:func:`reset_stats` before it): ``dist_per_query`` (gallery items compared: all ``n`` for flat, the probed
    lists' items plus the ``nlist`` centroids for IVF, the visited nodes for HNSW), ``floor_bytes`` (float32
    vectors, or ``code_size`` bytes per item for IVF-PQ, plus the centroids) and ``floor_flops``."""
    d = index.d
    if kind == "flat":
        items, nbytes, flops = float(n), 4.0 * n * d, 2.0 * n * d
    elif kind == "hnsw":
        items = faiss.cvar.hnsw_stats.ndis / nq
        nbytes, flops = 4.0 * items * d, 2.0 * items * d
    else:
        ivf = faiss.extract_index_ivf(index)
        scanned = faiss.cvar.indexIVF_stats.ndis / nq
        items = scanned + ivf.nlist
        per = ivf.code_size if kind == "ivfpq" else 4.0 * d
        per_flops = ivf.code_size if kind == "ivfpq" else 2.0 * d  # PQ: one table lookup + add per sub-code
        nbytes = scanned * per + 4.0 * ivf.nlist * d
        flops = scanned * per_flops + 2.0 * ivf.nlist * d
    return {"dist_per_query": items, "floor_bytes": nbytes, "floor_flops": flops}


def index_floor_ms(row, hw: dict, batch: int = 1) -> float:
    """Floor of one row of an index series: its ``floor_bytes`` read at the read bandwidth of that many bytes and
    its ``floor_flops`` (:func:`~itr_lib.efficiency.hardware.roofline_ms`); extrapolated flat rows use the flat
    floor of ``n_items``, extrapolated approximate rows have none (NaN)."""
    nbytes = row.get("floor_bytes", np.nan)
    if not np.isfinite(nbytes):
        return flat_floor_ms(row["n_items"], int(row["dim"]), hw, batch) if row["index"] == "flat" else np.nan
    return roofline_ms(nbytes, row["floor_flops"], hw, batch)


def index_bytes_per_item(kind: str, index, n: int) -> float:
    """Bytes the index keeps per gallery item: float32 vectors (flat, HNSW), plus HNSW's links (4 bytes each) and
    levels; IVF's codes (4 d or the PQ code) and 8-byte ids, plus the centroids spread over the items."""
    d = index.d
    if kind == "flat":
        return 4.0 * d
    if kind == "hnsw":
        return 4.0 * d + 4.0 * index.hnsw.neighbors.size() / n + 4.0 + 8.0
    ivf = faiss.extract_index_ivf(index)
    return ivf.code_size + 8.0 + 4.0 * ivf.nlist * d / n


def set_search_param(kind: str, index, value: int) -> None:
    if kind in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(index).nprobe = int(value)
    elif kind == "hnsw":
        index.hnsw.efSearch = int(value)
    else:
        raise ValueError(f"{kind!r} has no search parameter to tune")


def recall_at_k(ids: np.ndarray, gt: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each query's exact top ``k`` found in its returned top ``k``."""
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(ids, gt)]))


def default_sweep(kind: str, index, k: int = 10) -> list[int]:
    """Powers of two: nprobe 1 .. nlist; efSearch k .. 2048."""
    if kind in ("ivf", "ivfpq"):
        nlist = faiss.extract_index_ivf(index).nlist
        return sorted({min(2 ** i, nlist) for i in range(0, int(np.ceil(np.log2(max(nlist, 1)))) + 1)})
    return sorted({max(k, 2 ** i) for i in range(4, 12)})


def tune_search_param(kind: str, index, queries: np.ndarray, gt: np.ndarray, *, k: int = 10, target: float = 0.95,
                      values: Sequence[int] | None = None) -> tuple[int, pd.DataFrame]:
    """Sweep ``nprobe`` (IVF) / ``efSearch`` (HNSW) over ``values`` (default :func:`default_sweep`), increasing,
    and pick the smallest value whose batched recall@k against ``gt`` (exact ids) is >= ``target`` (the sweep
    stops there); when none reaches it, the value with the best recall. Returns (chosen value, the curve: one row
    per value with ``recall_at_10`` and ``ms_per_query_batched``). The index is left set to the chosen value."""
    values = sorted(int(v) for v in (values if values is not None else default_sweep(kind, index, k)))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    rows = []
    for v in values:
        set_search_param(kind, index, v)
        t0 = time.perf_counter()
        ids = index.search(queries, k)[1]
        ms = 1e3 * (time.perf_counter() - t0) / len(queries)
        rows.append({"param": SEARCH_PARAM[kind], "value": v, "recall_at_10": recall_at_k(ids, gt, k),
                     "ms_per_query_batched": ms})
        if rows[-1]["recall_at_10"] >= target:
            break
    curve = pd.DataFrame(rows)
    ok = curve[curve.recall_at_10 >= target]
    chosen = int(ok.value.iloc[0]) if not ok.empty else int(curve.loc[curve.recall_at_10.idxmax(), "value"])
    set_search_param(kind, index, chosen)
    return chosen, curve


def sweep_table(scaling: pd.DataFrame) -> pd.DataFrame:
    """The tuning curves kept in a scaling table's ``sweep`` column (JSON), one row per (index, gallery, size,
    value): ``recall_at_10`` and ``ms_per_query_batched`` at each ``nprobe`` / ``efSearch`` tried."""
    import io
    if "sweep" not in scaling:
        return pd.DataFrame(columns=["index", "gallery_kind", "n_items", "param", "value", "recall_at_10",
                                     "ms_per_query_batched"])
    parts = []
    for _, r in scaling[scaling.sweep.notna()].iterrows():
        c = pd.read_json(io.StringIO(r.sweep))
        c.insert(0, "param", r.get("tuned_param"))
        c.insert(0, "n_items", int(r.n_items))
        c.insert(0, "gallery_kind", r.get("gallery_kind"))
        c.insert(0, "index", r["index"])
        parts.append(c)
    return pd.concat(parts, ignore_index=True) if parts else sweep_table(pd.DataFrame())
