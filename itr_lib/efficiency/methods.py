"""Per-query cost of one trained method (``measure_method``): query encoding, search and re-ranking, timed per
query at batch 1 and batched, with its floor (see the package docstring for what each phase contains)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .hardware import roofline_ms
from .memory import _local_stats, bytes_per_item
from .specs import DIRECTIONS, MODES
from .timing import _sync, time_phases


def _to(d: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in d.items()}


def _take(d: dict, idx: torch.Tensor) -> dict:
    return {k: v.index_select(0, idx) for k, v in d.items()}


def _score_fn(model) -> Callable[[dict, dict], torch.Tensor]:
    """The exhaustive score: the re-scoring function when the model has one (ALADIN's teacher), else similarity."""
    return getattr(model, "rescore_similarity", None) or model.similarity


def _rescore_topk(model, q: dict, gal: dict, ids: torch.Tensor, direction: str) -> torch.Tensor:
    """Re-score each query's shortlist ``ids`` (B, k) and return the ids re-ordered, best first."""
    b, k = ids.shape
    flat = ids.reshape(-1)
    sub = _take(gal, flat)
    if hasattr(model, "rescore_pairs"):
        rep = _take(q, torch.arange(b, device=flat.device).repeat_interleave(k))
        img, txt = (sub, rep) if direction == "t2i" else (rep, sub)
        scores = model.rescore_pairs(img, txt).view(b, k)
    else:
        fn, rows = _score_fn(model), []
        for i in range(b):
            qi = _take(q, torch.tensor([i], device=flat.device))
            si = _take(sub, torch.arange(i * k, (i + 1) * k, device=flat.device))
            s = fn(si, qi)[:, 0] if direction == "t2i" else fn(qi, si)[0]
            rows.append(s)
        scores = torch.stack(rows)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    return torch.gather(ids, 1, order)


@torch.no_grad()
def encode_gallery(model, data, device: str = "cpu", batch_size: int = 256) -> tuple[dict, dict]:
    """Every tensor output of the model on all images and captions of a split (CPU), for any mode."""
    from ..scoring import encode_split
    return encode_split(model, data, device, batch_size, outputs="all")


@torch.no_grad()
def measure_method(model, data, mode: str, *, label: str | None = None, device: str = "cpu", repeats: int = 20,
                   warmup: int = 3, batch_size: int = 64, k: int = 10, k_i2t: int | None = None,
                   k_t2i: int | None = None, directions: Sequence[str] = DIRECTIONS,
                   batches: Sequence[int] | None = None,
                   exhaustive_subset: int | None = None, stored: Sequence[str] | None = None, hw: dict | None = None,
                   max_seconds: float | None = 60.0, seed: int = 0, encoded: tuple[dict, dict] | None = None,
                   encode_batch: int = 256) -> pd.DataFrame:
    """Per-query cost of one trained model on one split (``SplitTensors``), see the module docstring.

    ``mode``: ``vector`` (faiss flat over ``image_vectors`` / ``text_vectors``), ``two_stage`` (that search for a
    shortlist of ``k_t2i`` / ``k_i2t`` items, default the model's ``hp`` or 100 / 50, re-scored with
    ``rescore_pairs``), ``exhaustive`` (the query scored against every gallery item). ``batches``: query batch
    sizes (default ``(1, batch_size)``). ``exhaustive_subset``: time exhaustive search against only that many
    gallery items and scale it by ``N / subset`` (column ``extrapolated_from``). ``stored``: the gallery tensors a
    deployment keeps (default: the retrieval vector in ``vector`` mode, every floating output otherwise).
    ``hw`` (from :func:`measure_hardware`) adds the floor columns. ``encoded``: a precomputed
    :func:`encode_gallery` result (the gallery encoding is offline and never timed).

    Returns one row per (direction, batch): milliseconds per query (medians) of ``encode_ms``, ``search_ms``,
    ``rerank_ms`` and ``total_ms`` (median of the per-run sums), ``bytes_per_item`` of that direction's gallery,
    ``floor_ms`` and ``search_vs_floor`` ((search + rerank) / floor)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    bad = set(directions) - set(DIRECTIONS)
    if bad:
        raise ValueError(f"unknown direction(s) {sorted(bad)}; choose from {DIRECTIONS}")
    model.eval()
    model.to(device)
    sync = _sync(device)
    img, txt = encoded if encoded is not None else encode_gallery(model, data, device, encode_batch)
    hp = getattr(model, "hp", {}) or {}
    k_short = {"t2i": int(k_t2i or hp.get("k_t2i", 100)), "i2t": int(k_i2t or hp.get("k_i2t", 50))}
    batches = tuple(batches) if batches is not None else (1, batch_size)
    rng = np.random.default_rng(seed)
    rows = []
    for direction in directions:
        gal_all, n_query = (img, data.n_texts) if direction == "t2i" else (txt, data.n_images)
        n = next(iter(gal_all.values())).shape[0]
        vec_fn = model.image_vectors if direction == "t2i" else model.text_vectors
        qvec_fn = model.text_vectors if direction == "t2i" else model.image_vectors
        needs_vec = mode in ("vector", "two_stage")
        index, gvec = None, None
        if needs_vec:
            from ..index import EmbeddingIndex
            gvec = vec_fn(gal_all).float().contiguous()
            index = EmbeddingIndex(gvec.shape[1], kind="flat", normalize=False).add(gvec.numpy())
        if mode == "vector":
            store_keys = None
            mem = bytes_per_item(gvec)
        else:
            store_keys = list(stored) if stored is not None else \
                [kk for kk, v in gal_all.items() if torch.is_tensor(v) and v.is_floating_point()]
            mem = bytes_per_item(gal_all, store_keys)
        gal = _to(gal_all, device) if mode != "vector" else None
        m = n
        if mode == "exhaustive" and exhaustive_subset and exhaustive_subset < n:
            m = int(exhaustive_subset)
            gal = _take(gal, torch.arange(m, device=device))
        scale = n / m
        kk_short = min(k_short[direction], n)
        score = _score_fn(model)

        def encode(batch):
            if direction == "t2i":
                out = model.encode_texts(*batch)
            else:
                out = model.encode_images(*batch)
            return out, (qvec_fn(out) if needs_vec else None)

        def search(state):
            out, qv = state
            if mode == "exhaustive":
                s = score(gal, out).t() if direction == "t2i" else score(out, gal)   # (B, m)
                return out, torch.topk(s, min(k, m), dim=1).indices
            ids = index.search(qv.float().cpu().numpy(), kk_short if mode == "two_stage" else k)[1]
            return out, torch.from_numpy(ids)

        def rerank(state):
            out, ids = state
            if mode != "two_stage":
                return ids
            return _rescore_topk(model, out, gal, ids.to(device), direction)

        for b in batches:
            b = int(min(b, n_query))
            picks = [np.sort(rng.choice(n_query, size=b, replace=False)) for _ in range(warmup + repeats)]

            def prepare(r, picks=picks):
                idx = torch.from_numpy(picks[r])
                if direction == "t2i":
                    return tuple(t.to(device) for t in data.text_batch(idx))
                return tuple(t.to(device) for t in data.image_batch(idx))
            t = time_phases(prepare, [encode, search, rerank], repeats, warmup, max_seconds, sync)
            t[:, 1] *= scale if mode == "exhaustive" else 1.0
            ms = 1e3 * np.median(t, axis=0) / b
            total = 1e3 * float(np.median(t.sum(1))) / b
            row = {"method": label or getattr(model, "__class__").__name__, "mode": mode, "direction": direction,
                   "batch": b, "n_gallery": n, "n_repeats": len(t), "encode_ms": ms[0], "search_ms": ms[1],
                   "rerank_ms": ms[2] if mode == "two_stage" else 0.0, "total_ms": total, "k": k,
                   "k_shortlist": kk_short if mode == "two_stage" else np.nan,
                   "extrapolated_from": m if m < n else np.nan, "bytes_per_item": mem, "device": device,
                   "threads": torch.get_num_threads()}
            if hw is not None:
                row.update(_search_floor(mode, gal_all, txt if direction == "t2i" else img, gvec, store_keys, n,
                                         kk_short, hw, b))
                row["search_vs_floor"] = (row["search_ms"] + row["rerank_ms"]) / row["floor_ms"]
            rows.append(row)
    return pd.DataFrame(rows)


def _search_floor(mode: str, gal_all: dict, qry_all: dict, gvec, store_keys, n: int, k_short: int, hw: dict,
                  batch: int) -> dict:
    """Bytes and FLOPs a search must at least touch per query (see the module docstring), and its floor.

    vector: the gallery's vectors (4 N d bytes, 2 N d FLOPs). exhaustive: every stored byte of the gallery and one
    product per (gallery position, query position) pair (2 R L D FLOPs per item: the least any region-word score
    does; SCAN does more). two_stage: the global search plus the shortlist's stored bytes and products."""
    if mode == "vector":
        d = gvec.shape[1]
        b, f = n * d * 4.0, 2.0 * n * d
    else:
        per_item = bytes_per_item(gal_all, store_keys)
        positions, dim = _local_stats(gal_all, store_keys)
        q_positions, _ = _local_stats(qry_all, store_keys)  # words of a caption (t2i) / regions of an image (i2t)
        pair_flops = 2.0 * positions * q_positions * dim    # every region-word product, the least any fine score does
        if mode == "exhaustive":
            b, f = n * per_item, n * pair_flops
        else:
            d = gvec.shape[1]
            b, f = n * d * 4.0 + k_short * per_item, 2.0 * n * d + k_short * pair_flops
    return {"floor_bytes": b, "floor_flops": f, "floor_ms": roofline_ms(b, f, hw, batch)}


