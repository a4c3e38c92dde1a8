"""faiss indexes of the scaling study: building them (flat, IVF-Flat, IVF-PQ, IVF-PQ re-ranked with 8-bit scalar
quantised vectors, HNSW), what one search reads and computes (from faiss's own statistics, for the floor), the bytes
each stores per item, and the tuning sweep that picks the smallest ``nprobe`` / ``efSearch`` reaching a recall@k
target against exact search.

``ivfpq_sq8`` answers the recall ceiling of PQ codes at 10M items (issue 18: recall@10 0.553 at nprobe 256 with
``d / 4``-byte codes): the IVF-PQ index proposes ``refine_k_factor * k`` candidates, which are re-scored with an
8-bit scalar-quantised copy of every vector (``d`` bytes per item, 4x smaller than float32; faiss ``IndexRefine``)
and the best ``k`` returned."""
from __future__ import annotations

import time
from collections.abc import Sequence

import faiss
import numpy as np
import pandas as pd

from .hardware import flat_floor_ms, roofline_ms

KINDS = ("flat", "ivf", "ivfpq", "ivfpq_sq8", "hnsw")
IVF_KINDS = ("ivf", "ivfpq", "ivfpq_sq8")
PQ_KINDS = ("ivfpq", "ivfpq_sq8")
SEARCH_PARAM = {"ivf": "nprobe", "ivfpq": "nprobe", "ivfpq_sq8": "nprobe", "hnsw": "efSearch"}


def _pq_index(index):
    """The IndexIVFPQ of an ``ivfpq`` or ``ivfpq_sq8`` index."""
    return faiss.downcast_index(faiss.extract_index_ivf(index))


def build_faiss(kind: str, x: np.ndarray, *, nlist: int | None = None, nprobe: int = 16, hnsw_m: int = 32,
                ef_search: int = 128, ef_construction: int = 40, ivf_train_per_list: int = 40, ivf_niter: int = 10,
                pq_m: int | None = None, pq_bits: int = 8, refine_k_factor: int = 16, seed: int = 0) -> faiss.Index:
    """A faiss inner-product index over ``x`` (float32, used as is): ``flat``, ``ivf`` (IndexIVFFlat with
    :func:`itr_lib.index.default_nlist` lists, ``ivf_niter`` k-means iterations on at most
    ``ivf_train_per_list * nlist`` sampled points), ``ivfpq`` (IndexIVFPQ, the same lists, ``pq_m`` sub-quantizers
    of ``pq_bits`` bits: default ``d / 4`` bytes per item, 16x smaller than float32), ``ivfpq_sq8`` (that IVF-PQ
    proposing ``refine_k_factor * k`` candidates, re-scored with 8-bit scalar-quantised vectors) or ``hnsw``
    (IndexHNSWFlat, ``hnsw_m`` links, ``ef_construction``). The index is :func:`make_index`'s, trained on ``x`` and filled with it
    (the streamed 10M-item path, :mod:`.streamed`, builds the same index chunk by chunk)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    index = make_index(kind, d, n, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, ef_search=ef_search,
                       ef_construction=ef_construction, ivf_train_per_list=ivf_train_per_list, ivf_niter=ivf_niter,
                       pq_m=pq_m, pq_bits=pq_bits, refine_k_factor=refine_k_factor, seed=seed)
    if kind in IVF_KINDS:
        index.train(x)
    index.add(x)
    return index


def make_index(kind: str, d: int, n: int, *, nlist: int | None = None, nprobe: int = 16, hnsw_m: int = 32,
               ef_search: int = 128, ef_construction: int = 40, ivf_train_per_list: int = 40, ivf_niter: int = 10,
               pq_m: int | None = None, pq_bits: int = 8, refine_k_factor: int = 16, seed: int = 0) -> faiss.Index:
    """The empty (untrained) index :func:`build_faiss` fills, for ``n`` items of dimension ``d`` (``n`` sets IVF's
    default list count); the parameters are :func:`build_faiss`'s."""
    from ..index import default_nlist
    if kind == "ivfpq_sq8":
        if int(refine_k_factor) < 1:
            raise ValueError(f"refine_k_factor must be >= 1, got {refine_k_factor!r} (index_params)")
        base = make_index("ivfpq", d, n, nlist=nlist, nprobe=nprobe, ivf_train_per_list=ivf_train_per_list,
                          ivf_niter=ivf_niter, pq_m=pq_m, pq_bits=pq_bits, seed=seed)
        refine = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index = faiss.IndexRefine(base, refine)  # (faiss's wrapper keeps both referenced)
        index.k_factor = float(refine_k_factor)
        return index
    if kind == "flat":
        return faiss.IndexFlatIP(d)
    if kind in ("ivf", "ivfpq"):
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
            # a gallery smaller than faiss's 39 points per PQ centroid (39 x 256 = 9984 at 8 bits) trains on what it
            # has; faiss uses min_points_per_centroid only to print "please provide at least N training points"
            # (once per sub-quantizer and build: hundreds of lines in a smoke run), so it is set to what is there
            # (the index and its recall are the same; the measured recall says how good the codebooks are)
            index.pq.cp.min_points_per_centroid = max(1, min(index.pq.cp.min_points_per_centroid,
                                                             n // (1 << pq_bits)))
        index.cp.max_points_per_centroid = ivf_train_per_list
        index.cp.niter = ivf_niter
        index.cp.seed = seed
        index.nprobe = min(nprobe, nlist)  # (faiss's constructor wrapper keeps the quantizer referenced)
        return index
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        return index
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def train_items(index) -> int:
    """How many points training an IVF / IVF-PQ index of :func:`make_index` uses at most: the coarse k-means'
    ``max_points_per_centroid * nlist`` and the PQ k-means' ``max_points_per_centroid * 2 ** nbits`` (faiss samples
    down to these); the streamed path trains on that many prefix rows."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))  # (an ivfpq_sq8's SQ8 trains on the same rows)
    n = ivf.cp.max_points_per_centroid * ivf.nlist
    if isinstance(ivf, faiss.IndexIVFPQ):
        n = max(n, ivf.pq.cp.max_points_per_centroid * (1 << ivf.pq.nbits))
    return int(n)


def reset_stats() -> None:
    faiss.cvar.indexIVF_stats.reset()
    faiss.cvar.hnsw_stats.reset()


def search_work(kind: str, index, n: int, nq: int, k: int = 10) -> dict:
    """What a search read and computed per query, from faiss's statistics after a search of ``nq`` queries
    (:func:`reset_stats` before it): ``dist_per_query`` (gallery items compared: all ``n`` for flat, the probed
    lists' items plus the ``nlist`` centroids for IVF, the visited nodes for HNSW), ``floor_bytes`` (float32
    vectors, or ``code_size`` bytes per item for IVF-PQ, plus the centroids; ``ivfpq_sq8`` adds ``d`` bytes and
    ``2 d`` flops for each of its ``refine_k_factor * k`` re-scored candidates) and ``floor_flops``."""
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
        pq = kind in PQ_KINDS
        per = ivf.code_size if pq else 4.0 * d
        per_flops = ivf.code_size if pq else 2.0 * d  # PQ: one table lookup + add per sub-code
        nbytes = scanned * per + 4.0 * ivf.nlist * d
        flops = scanned * per_flops + 2.0 * ivf.nlist * d
        if kind == "ivfpq_sq8":
            cand = min(float(n), index.k_factor * k)
            items += cand
            nbytes += cand * d
            flops += cand * 2.0 * d
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
    return ivf.code_size + 8.0 + 4.0 * ivf.nlist * d / n + (d if kind == "ivfpq_sq8" else 0.0)


def set_search_param(kind: str, index, value: int) -> None:
    if kind in IVF_KINDS:
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
    if kind in IVF_KINDS:
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


def time_index(kind: str, index, queries: np.ndarray, n: int, gt: np.ndarray | None, *, k: int = 10,
               repeats: int = 20, warmup: int = 3, max_seconds: float | None = 30.0,
               target_recall: float | None = None,
               sweep_values: Sequence[int] | None = None) -> tuple[dict, np.ndarray]:
    """Measure a built ``kind`` index of ``n`` items (the scaling series' and the streamed path's common part):
    tune it to ``target_recall`` against ``gt`` (exact ids; :func:`tune_search_param`, curve kept as JSON in
    ``sweep``), time batch-1 searches (median, :func:`~itr_lib.efficiency.timing._median_ms`) and one batched search
    of every query (per query), recall@k of the batched result, what a search read and computed
    (:func:`search_work`), bytes per item and the parameters. Returns (row, the batched search's ids)."""
    from .timing import _median_ms
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    nq = len(queries)
    tuned = {}
    if target_recall is not None and kind != "flat":
        value, curve = tune_search_param(kind, index, queries, gt, k=k, target=target_recall, values=sweep_values)
        tuned = {"tuned_param": curve.param.iloc[0], "tuned_value": value,
                 "sweep": curve[["value", "recall_at_10", "ms_per_query_batched"]].to_json(orient="records")}
    ms, reps = _median_ms(lambda r: index.search(queries[r % nq:r % nq + 1], k), repeats, warmup, max_seconds)
    reset_stats()
    t0 = time.perf_counter()
    _, ids = index.search(queries, k)
    batched_ms = 1e3 * (time.perf_counter() - t0) / nq
    work = search_work(kind, index, n, nq, k)
    recall = 1.0 if kind == "flat" else recall_at_k(ids, gt, k)
    out = {"ms_per_query": ms, "ms_per_query_batched": batched_ms, "recall_at_10": recall,
           "n_repeats": reps, "dim": index.d, "n_queries_batched": nq, **work,
           "bytes_per_item": index_bytes_per_item(kind, index, n), **tuned}
    if kind in IVF_KINDS:
        ivf = faiss.extract_index_ivf(index)
        out["params"] = f"nlist={ivf.nlist} nprobe={ivf.nprobe}" + (
            f" pq_m={_pq_index(index).pq.M} bits={_pq_index(index).pq.nbits}" if kind in PQ_KINDS else "") + (
            f" refine=SQ8 k_factor={index.k_factor:g}" if kind == "ivfpq_sq8" else "")
    elif kind == "hnsw":
        out["params"] = (f"M={index.hnsw.nb_neighbors(1)} efSearch={index.hnsw.efSearch} "
                         f"efConstruction={index.hnsw.efConstruction}")  # M: the links per node above level 0
    else:
        out["params"] = "exact"
    return out, ids
