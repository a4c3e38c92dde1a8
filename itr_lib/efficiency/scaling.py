"""The scaling study (``scaling.csv``): faiss flat / IVF / HNSW latency and recall@10 against the gallery size on
grown galleries (:mod:`~itr_lib.efficiency.gallery`), and fine-grained two-stage / exhaustive scoring on galleries
that repeat the real test gallery (every copy is scored, none skipped). Queries are real caption vectors
(text-to-image). Each series stops when the next size is predicted to exceed its time budget
(:func:`~itr_lib.efficiency.series.run_series`). One further size past memory (``huge_items``: IVF-PQ at 10M) is
streamed (:mod:`~itr_lib.efficiency.streamed`, rows ``streamed=True``)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence

import faiss
import numpy as np
import pandas as pd
import torch

from .gallery import FINE_GALLERY_METHOD, SCALING_GALLERY_METHOD, GrowingGallery
from .hardware import available_memory, ensure_read_bandwidth, flat_floor_ms, read_bandwidth, roofline_ms
from .indexes import build_faiss, index_floor_ms, time_index
from .memory import _local_stats, bytes_per_item
from .methods import _rescore_topk, _score_fn, _take, _to
from .series import run_series, scaling_sizes
from .specs import spec_by_label
from .streamed import STREAMABLE, flat_extrapolated, streamed_index_measure, streamed_pq_pair
from .synthetic import EmbeddingMixture, SyntheticGallery
from .timing import _median_ms, _sync

log = logging.getLogger(__name__)


def index_series_measure(kind: str, gallery, queries: np.ndarray, *, k: int = 10, repeats: int = 20,
                         warmup: int = 3, max_seconds: float | None = 30.0, hw: dict | None = None,
                         index_params: dict | None = None, gt_cache: dict | None = None,
                         target_recall: float | None = None,
                         sweep_values: dict | None = None) -> Callable[[int], dict]:
    """``measure(n)`` for :func:`run_series`: build a ``kind`` index over ``n`` grown items, time batch-1 searches
    (median) and one batched search of every query (per query), recall@k of the batched result against exact
    search (faiss.knn, cached per n in ``gt_cache``).

    ``target_recall``: before timing, tune ``nprobe`` / ``efSearch`` at this size to the smallest value with
    recall@k >= the target (:func:`~itr_lib.efficiency.indexes.tune_search_param`, values from ``sweep_values[kind]``
    or the default powers of two); the curve is kept as JSON in column ``sweep``. Also recorded: build time, bytes
    per item, and what one search read and computed (``floor_bytes``, ``floor_flops``, from faiss's statistics)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    params = dict(index_params or {})
    gt_cache = {} if gt_cache is None else gt_cache
    sweep_values = sweep_values or {}

    def measure(n: int) -> dict:
        x = gallery.get(n)
        t0 = time.perf_counter()
        index = build_faiss(kind, x, **params)
        build_s = time.perf_counter() - t0
        if kind != "flat" and n not in gt_cache:
            gt_cache[n] = faiss.knn(queries, x, k, metric=faiss.METRIC_INNER_PRODUCT)[1]
        out, ids = time_index(kind, index, queries, n, gt_cache.get(n), k=k, repeats=repeats, warmup=warmup,
                              max_seconds=max_seconds, target_recall=target_recall,
                              sweep_values=sweep_values.get(kind))
        if kind == "flat":
            gt_cache.setdefault(n, ids)
        del index
        return {**out, "build_s": build_s}
    return measure


@torch.no_grad()
def fine_series_measure(model, mode: str, img: dict, txt: dict, *, device: str = "cpu", k: int = 10,
                        k_shortlist: int | None = None, repeats: int = 20, warmup: int = 1,
                        max_seconds: float | None = 30.0, noise: float = 0.25, seed: int = 0,
                        n_queries: int = 64, chunk_items: int = 2048) -> Callable[[int], dict]:
    """``measure(n)`` for fine-grained scoring (text-to-image) over an n-image gallery grown from the real one.

    ``two_stage``: faiss flat over the grown global image vectors (:func:`grow_gallery`), the shortlist's ids map
    to real items (``id % n0``) whose stored features are re-scored. ``exhaustive``: the query scored against the
    real gallery repeated to n items (streamed in chunks of ``chunk_items`` = the real gallery tiled), top-k merged.
    Times are search + re-ranking per query (query encoding excluded: constant in n)."""
    model.eval()
    sync = _sync(device)
    n0 = next(iter(img.values())).shape[0]
    gal = _to(img, device)
    nq = min(n_queries, next(iter(txt.values())).shape[0])
    qs = [_to(_take(txt, torch.tensor([i])), device) for i in range(nq)]
    score = _score_fn(model)
    hp = getattr(model, "hp", {}) or {}
    k_short = int(k_shortlist or hp.get("k_t2i", 100))
    grower = GrowingGallery(model.image_vectors(img).float().numpy(), noise, seed) if mode == "two_stage" else None

    @torch.no_grad()
    def measure(n: int) -> dict:
        if mode == "two_stage":
            index = build_faiss("flat", grower.get(n))
            qv = [model.text_vectors(q).float().cpu().numpy() for q in qs]

            def one(r):
                ids = index.search(qv[r % nq], min(k_short, n))[1]
                ids = torch.from_numpy(ids % n0).to(device)
                return _rescore_topk(model, qs[r % nq], gal, ids, "t2i")
        elif mode == "exhaustive":
            # stream the gallery in chunks of the real gallery tiled to >= chunk_items (so per-call overhead does not
            # dominate when the real gallery is small), plus a prefix of the chunk
            c = min(n, max(n0, chunk_items))
            chunk = _take(gal, torch.arange(c, device=device) % n0)
            full, part = divmod(n, c)
            prefix = _take(chunk, torch.arange(part, device=device)) if part else None

            def one(r):
                q = qs[r % nq]
                best = []
                for _ in range(full):
                    best.append(torch.topk(score(chunk, q)[:, 0], min(k, c)).values)
                if prefix is not None:
                    best.append(torch.topk(score(prefix, q)[:, 0], min(k, part)).values)
                return torch.topk(torch.cat(best), min(k, n)).values
        else:
            raise ValueError(f"mode must be two_stage or exhaustive, got {mode!r}")
        ms, reps = _median_ms(one, repeats, warmup, max_seconds, sync)
        return {"ms_per_query": ms, "ms_per_query_batched": np.nan, "recall_at_10": np.nan, "build_s": np.nan,
                "n_repeats": reps, "params": f"k_shortlist={k_short}" if mode == "two_stage" else "exhaustive"}
    return measure


@torch.no_grad()
def scaling_study(vec_model_entry: tuple | None, fine_entries: dict[str, tuple], *, hw: dict,
                  min_items: int = 1000, max_items: int = 100_000, per_decade: int = 2,
                  kinds: Sequence[str] = ("flat", "ivf", "ivfpq", "hnsw"), budget_s: float = 60.0, repeats: int = 20,
                  warmup: int = 3, max_seconds: float | None = 30.0, noise: float = 0.25, seed: int = 0,
                  n_queries: int = 100, index_params: dict | None = None, device: str = "cpu",
                  max_memory_gb: float | None = None, k: int = 10, galleries: Sequence[str] = ("synthetic",),
                  fit_vectors: np.ndarray | None = None, fit_source: str = "the seed vectors",
                  mixture_kw: dict | None = None, target_recall: float | None = 0.95,
                  sweep_values: dict | None = None, huge_items: int = 0,
                  huge_kinds: Sequence[str] = ("ivfpq",), huge_chunk: int = 65536, huge_nlist: int = 0,
                  fine_budget_s: float | None = None) -> pd.DataFrame:
    """The scaling table (``scaling.csv``): latency (and recall@10 of approximate indexes) against gallery size.

    ``vec_model_entry``: ``(label, model, (img, txt))`` of a vector model whose image vectors seed the grown
    galleries and whose caption vectors are the queries; ``fine_entries``: ``{series name: (mode, model,
    (img, txt), stored keys)}`` for fine-grained two-stage / exhaustive series (:func:`fine_entries_from`).
    Each series has ``budget_s`` seconds (the fine-grained ones ``fine_budget_s`` when given: their cost is linear
    in n, so their extrapolation is safe, and a long budget there only lengthens the notebook).

    ``galleries``: how the vector galleries grow past the real items, each a labelled set of series (column
    ``gallery_kind``; the first is the one the targets read): ``"synthetic"`` samples a mixture fitted to
    ``fit_vectors`` (default: the seed vectors; :class:`~itr_lib.efficiency.synthetic.SyntheticGallery`),
    ``"tiled"`` adds noisy copies of the seed vectors (:func:`~itr_lib.efficiency.gallery.grow_gallery`, the
    pre-issue-18 gallery, kept as a comparison). ``target_recall``: approximate indexes are tuned at every size
    to the smallest ``nprobe`` / ``efSearch`` reaching it (None: the fixed ``index_params``).

    ``huge_items`` (0: none): one further size, past what memory holds, for the compressed indexes ``huge_kinds``
    on the first (synthetic) gallery, streamed in chunks of ``huge_chunk`` rows (:mod:`~.streamed`; rows marked
    ``streamed=True``), with flat's floor at that size in ``flat_floor_ms`` and the flat series extrapolated
    linearly to it (``extrapolated=True``). ``huge_nlist`` (0: ``default_nlist(huge_items)``) sets its IVF list
    count: assigning 10M vectors to default_nlist's 12,649 lists alone is ~1e14 FLOPs, about 20 min on one core."""
    bad = set(galleries) - {"synthetic", "tiled"}
    if bad or not galleries:
        raise ValueError(f"galleries must name 'synthetic' and/or 'tiled', got {list(galleries)}")
    if huge_items:
        if set(huge_kinds) - set(STREAMABLE) or galleries[0] != "synthetic" or huge_items <= max_items:
            raise ValueError(f"HUGE_GALLERY={huge_items:,} with HUGE_KINDS={list(huge_kinds)}: the streamed size "
                             f"takes kinds among {list(STREAMABLE)}, the synthetic gallery first in "
                             f"SCALING_GALLERIES (got {list(galleries)}) and more items than MAX_GALLERY "
                             f"({max_items:,}). Fix: those parameters of 04_efficiency (HUGE_GALLERY 0: none).")
    sizes = scaling_sizes(min_items, max_items, per_decade)
    mem_limit = (max_memory_gb * 2 ** 30) if max_memory_gb else available_memory() * 0.6
    parts, grown = [], {}
    if vec_model_entry is not None:
        label, model, (img, txt) = vec_model_entry
        base = model.image_vectors(img).float().numpy()
        queries = model.text_vectors(txt).float().numpy()
        rng = np.random.default_rng(seed)
        queries = queries[np.sort(rng.choice(len(queries), size=min(n_queries, len(queries)), replace=False))]
        d = base.shape[1]
        copies = {"flat": 3, "ivf": 3, "ivfpq": 2.5, "ivfpq_sq8": 2.75, "hnsw": 3.5}  # gallery + index (+ graph) +
        # growth temporaries
        for gkind in galleries:
            grown.clear()  # one grown gallery in memory at a time
            if gkind == "synthetic":
                mix = EmbeddingMixture(base if fit_vectors is None else fit_vectors, seed=seed, **(mixture_kw or {}))
                grown[gkind] = (SyntheticGallery(base, mix, seed), mix.describe(fit_source), {})
            else:
                grown[gkind] = (GrowingGallery(base, noise, seed),
                                SCALING_GALLERY_METHOD.format(noise=noise, seed=seed), {})
            gallery, described, gt = grown[gkind]
            series = []
            for kind in kinds:
                meas = index_series_measure(kind, gallery, queries, k=k, repeats=repeats, warmup=warmup,
                                            max_seconds=max_seconds, hw=hw, index_params=index_params, gt_cache=gt,
                                            target_recall=target_recall, sweep_values=sweep_values)
                s = run_series(kind, sizes, meas, budget_s=budget_s,
                               fits=lambda n, kind=kind: n * d * 4 * copies[kind] < mem_limit)
                if not s.empty:
                    series.append(s)
            if huge_items and gkind == galleries[0]:
                series += _huge_rows(gallery, queries, huge_items, huge_kinds, series, k=k, repeats=repeats,
                                     warmup=warmup, max_seconds=max_seconds,
                                     index_params={**(index_params or {}), **({"nlist": huge_nlist} if huge_nlist else {})},
                                     chunk=huge_chunk, target_recall=target_recall, sweep_values=sweep_values,
                                     mem_limit=(max_memory_gb * 2 ** 30) if max_memory_gb else None)
            for s in series:
                s["dim"] = d
                measured = s[~s.extrapolated.astype(bool)]
                ensure_read_bandwidth(hw, [n * d * 4 for n in measured.n_items]
                                      + list(measured.get("floor_bytes", pd.Series(dtype=float)).dropna()),
                                      refresh=True)  # after each series too: the best figure of a shared machine
                s["floor_ms"] = [index_floor_ms(r, hw, 1) for _, r in s.iterrows()]
                s["floor_ms_batched"] = [index_floor_ms(r, hw, len(queries)) for _, r in s.iterrows()]
                s["flat_floor_ms"] = [flat_floor_ms(n, d, hw, 1) for n in s.n_items]
                s["read_gb_s"] = [read_bandwidth(hw, n * d * 4, 1) / 1e9 for n in s.n_items]
                s["embeddings"] = label
                s["gallery_kind"] = gkind
                s["gallery"] = described
                if "streamed" not in s:
                    s["streamed"] = False
                parts.append(s)
    for name, (mode, model, (img, txt), stored) in fine_entries.items():
        meas = fine_series_measure(model, mode, img, txt, device=device, k=k, repeats=repeats, warmup=min(warmup, 1),
                                   max_seconds=max_seconds, noise=noise, seed=seed)
        s = run_series(name, sizes, meas, budget_s=budget_s if fine_budget_s is None else fine_budget_s)
        if s.empty:
            continue
        positions, dim = _local_stats(img, stored)
        words, _ = _local_stats(txt, stored)
        per_item = bytes_per_item(img, stored)
        ensure_read_bandwidth(hw, [n * per_item for n in s.n_items[~s.extrapolated.astype(bool)]])
        if mode == "exhaustive":
            s["floor_ms"] = [roofline_ms(n * per_item, n * 2.0 * positions * words * dim, hw) for n in s.n_items]
        else:
            gd = model.image_vectors(img).shape[1]
            ks = int((getattr(model, "hp", {}) or {}).get("k_t2i", 100))
            s["floor_ms"] = [roofline_ms(n * gd * 4.0 + ks * per_item,
                                         2.0 * n * gd + ks * 2.0 * positions * words * dim, hw) for n in s.n_items]
        s["dim"] = dim
        s["embeddings"] = name
        s["gallery"] = FINE_GALLERY_METHOD + ("" if mode == "exhaustive" else
                                               "; global vectors grown as " +
                                               SCALING_GALLERY_METHOD.format(noise=noise, seed=seed))
        parts.append(s)
    if not parts:
        return pd.DataFrame(columns=["index", "n_items", "ms_per_query", "recall_at_10", "floor_ms", "extrapolated"])
    out = pd.concat(parts, ignore_index=True)
    out["vs_floor"] = out.ms_per_query / out.floor_ms
    first = ["index", "n_items", "ms_per_query", "recall_at_10", "floor_ms", "extrapolated"]
    return out[first + [c for c in out.columns if c not in first]]


def _huge_rows(gallery, queries: np.ndarray, n: int, kinds: Sequence[str], series: list[pd.DataFrame], *,
               chunk: int, sweep_values: dict | None, **kw) -> list[pd.DataFrame]:
    """The streamed rows at ``n`` items (one per kind of ``kinds``, :func:`~.streamed.streamed_index_measure`) and
    the flat series of ``series`` extrapolated linearly to ``n`` (flat cannot be held there)."""
    out, gt = [], {}
    pair = "ivfpq" in kinds and "ivfpq_sq8" in kinds  # one build serves both (streamed_pq_pair)
    for kind in kinds:
        if pair and kind == "ivfpq_sq8":
            continue
        t0 = time.perf_counter()
        if pair and kind == "ivfpq":
            got = streamed_pq_pair(gallery, n, queries, chunk=chunk, sweep_values=sweep_values, gt_cache=gt, **kw)
            names = ("ivfpq", "ivfpq_sq8")
        else:
            got = (streamed_index_measure(kind, gallery, n, queries, chunk=chunk,
                                          sweep_values=(sweep_values or {}).get(kind), gt_cache=gt, **kw),)
            names = (kind,)
        cost = (time.perf_counter() - t0) / len(got)  # a shared build's cost split evenly between its rows
        for name, r in zip(names, got):
            r = {"index": name, "n_items": int(n), **r, "extrapolated": False, "cost_s": cost, "stop_reason": ""}
            log.info("scaling %s n=%d (streamed): %.4g ms/query, recall@10 %.3f (%.0fs)", name, n, r["ms_per_query"],
                     r["recall_at_10"], r["cost_s"])
            out.append(pd.DataFrame([r]))
    flat = next((s for s in series if (s["index"] == "flat").all()), None)
    ext = flat_extrapolated(flat, n) if flat is not None else None
    if ext is not None:
        out.append(pd.DataFrame([{**ext, "streamed": False, "stop_reason": "flat cannot be held at this size: "
                                  "linear extrapolation (compare flat_floor_ms)"}]))
    return out


VECTOR_SEED_ORDER = ("baseline", "SelfAlign", "ALADIN matching", "TGDT global")
FINE_SERIES = ("TGDT two-stage", "MrSw exhaustive", "SCAN (cross-attention)")


def scaling_entries(models: dict, fine: Sequence[str] = FINE_SERIES,
                    vector_order: Sequence[str] = VECTOR_SEED_ORDER,
                    untrained: Collection[str] = ()) -> tuple[tuple | None, dict]:
    """From :attr:`DatasetResult.models` (label -> (model, cfg, data, encoded)): the vector model seeding the
    grown galleries (first of ``vector_order`` that was measured with trained weights) and the fine-grained series
    of ``fine`` (labels of :data:`METHODS` in two_stage or exhaustive mode) that have a model.

    ``untrained`` (:attr:`DatasetResult.untrained`): labels timed with fresh weights. They never seed the galleries
    (their embeddings are noise: the synthetic gallery, the queries and recall@10 would describe nothing); each one
    passed over is logged, and with none trained the vector series are skipped (None). The fine-grained series may
    use them (their latency does not depend on the weights)."""
    vec = None
    for lab in vector_order:
        if lab not in models:
            continue
        if lab in untrained:
            log.warning("scaling: %r is untrained (no checkpoint; timed with fresh weights), so it does not seed the "
                        "scaling galleries. Fix: retrain it (python -m itr_lib.study --retrain RUN)", lab)
            continue
        vec = (lab, models[lab][0], models[lab][3])
        break
    if vec is None and any(lab in models for lab in vector_order):
        log.warning("scaling: no trained vector model among %s: the vector-index series are skipped",
                    [lab for lab in vector_order if lab in models])
    fine_entries = {}
    for lab in fine:
        spec = spec_by_label(lab)
        if spec.mode == "vector":
            raise ValueError(f"{lab!r} is a vector method; the fine-grained series take two_stage/exhaustive ones")
        if lab in models:
            model, _, _, enc = models[lab][:4]
            fine_entries[lab] = (spec.mode, model, enc, spec.stored)
    return vec, fine_entries
