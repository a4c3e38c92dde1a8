"""Two-stage retrieval: a global dot-product search builds a shortlist per query, only the shortlist is re-scored.

TGDT (authors: top 50 captions per image query, top 100 images per caption query, re-scored by s_global + s_local)
and ALADIN (the student's kNN shortlist re-scored by the alignment teacher) both use it.

Ranks (0-based, the convention of :mod:`itr_lib.metrics`, whose tie rule is reused: ties never favour the query):

- a query whose ground truth (best of its positives) is IN its shortlist gets its rank within the re-scored
  shortlist (rank among the k shortlisted candidates by re-score, ties by candidate index);
- a query whose ground truth MISSES the shortlist gets ``k + (its rank among the non-shortlisted candidates by
  global score)``: beyond the shortlist, never a hit at R@k or below. (The released TGDT evaluation counts such a
  query as an R@1 hit; ``miss_as_hit=True`` reproduces that bug, for quantifying it only.)

So re-ranking only permutes the shortlist: everything outside it keeps its global order. When the shortlist
is selected with the metrics' tie rule (the score-matrix input below) and the re-score equals the global score,
two-stage ranks equal global-only ranks; with ``k`` = the gallery size they equal exhaustive re-scoring.

Inputs: either the global score matrix (n_images, n_texts) (shortlists by a stable sort: ties -> lower index
first, exactly the metrics' rule), or a pair ``(image_vectors, text_vectors)``: shortlists by a faiss flat
inner-product search (:class:`itr_lib.index.EmbeddingIndex`, not re-normalised), the beyond-shortlist ranks from
one matmul (ties at the shortlist boundary may then be cut differently from the metrics' rule).

``rescore_fn(img_idx, txt_idx) -> scores`` scores P aligned (image, caption) pairs (numpy int64 arrays of length
P -> P floats); it is called once with the pairs of both directions. :func:`matrix_rescorer` wraps a full
matrix, :func:`model_rescorer` a model's ``rescore_similarity`` (grouped by image).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .metrics import Ties

log = logging.getLogger(__name__)

RescoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
_BIG = np.iinfo(np.int64).max


# ----------------------------------------------------------------------------------------------- shortlists
def topk_stable(scores: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """Per row, the ids of the k best columns, best first; ties -> lower column index first (metrics' rule)."""
    k = min(int(k), scores.shape[1])
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for a in range(0, scores.shape[0], block):
        out[a:a + block] = np.argsort(-scores[a:a + block], axis=1, kind="stable")[:, :k]
    return out


def faiss_topk(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    from .index import EmbeddingIndex
    index = EmbeddingIndex(gallery.shape[1], kind="flat", normalize=False).add(gallery)
    return index.search(queries, k)[1]


def matrix_rescorer(scores: np.ndarray | torch.Tensor) -> RescoreFn:
    """A rescore function reading a full (n_images, n_texts) matrix (tests, cached exhaustive scores)."""
    s = scores.detach().cpu().numpy() if torch.is_tensor(scores) else np.asarray(scores)
    return lambda i, t: s[i, t]


def model_rescorer(model, img: dict, txt: dict, device: str = "cpu") -> RescoreFn:
    """Pairs scored with ``model.rescore_similarity``, grouped by image: for each image, its distinct shortlisted
    captions (from both directions) are scored in one (1 x n) call, so the work per pair is a slice of a large
    matmul (per-pair small matmuls were 10x slower per pair than the exhaustive matrix)."""
    def fn(i: np.ndarray, t: np.ndarray) -> np.ndarray:
        i, t = np.asarray(i, dtype=np.int64), np.asarray(t, dtype=np.int64)
        out = np.empty(len(i), dtype=np.float64)
        if len(i) == 0:
            return out
        order = np.argsort(i, kind="stable")
        i_s, t_s = i[order], t[order]
        cuts = np.flatnonzero(np.diff(i_s)) + 1
        bufs = {k: v.new_empty(0) for k, v in txt.items()}  # reused: no fresh (page-faulting) allocation per image
        with torch.no_grad():
            for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(i_s)]):
                uniq, inv = np.unique(t_s[a:b], return_inverse=True)
                row = int(i_s[a])
                idx = torch.from_numpy(uniq)
                sub_i = {k: v[row:row + 1].to(device) for k, v in img.items()}
                sub_t = {k: torch.index_select(v, 0, idx, out=bufs[k].resize_(0)).to(device) for k, v in txt.items()}
                scores = model.rescore_similarity(sub_i, sub_t)[0].double().cpu().numpy()
                out[order[a:b]] = scores[inv]
        return out
    return fn


# ----------------------------------------------------------------------------------------------- ranks
def _csr(pos: Sequence, n_q: int) -> tuple[np.ndarray, np.ndarray]:
    items = [np.atleast_1d(np.asarray(p, dtype=np.int64)).ravel() for p in pos]
    if len(items) != n_q or any(len(p) == 0 for p in items):
        raise ValueError(f"expected {n_q} non-empty positive sets, got {len(items)}")
    lengths = np.array([len(p) for p in items], dtype=np.int64)
    off = np.zeros(n_q + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    return off, np.concatenate(items)


def _direction_ranks(global_rows: Callable[[int, int], np.ndarray], n_q: int, n_c: int, shortlist: np.ndarray,
                     rescored: np.ndarray, positives: Sequence,
                     block: int = 1024) -> tuple[np.ndarray, np.ndarray, Ties]:
    """Index-rule ranks of one direction, the per-query 'ground truth missed the shortlist' flags, and the tie
    counts (:class:`itr_lib.metrics.Ties`) that the other tie rules read: inside the shortlist, the candidates
    re-scored above / level with the best positive; beyond it, k + the non-shortlisted ones above / level by
    global score."""
    off, flat = _csr(positives, n_q)
    k = shortlist.shape[1]
    ranks = np.zeros(n_q, dtype=np.int64)
    missed = np.zeros(n_q, dtype=bool)
    above, tied, tpos = (np.zeros(n_q, dtype=np.int64) for _ in range(3))
    cand = np.arange(n_c, dtype=np.int64)[None, :]
    for a in range(0, n_q, block):
        b = min(a + block, n_q)
        nb = b - a
        pos = np.zeros((nb, n_c), dtype=bool)
        rows = np.repeat(np.arange(nb), np.diff(off[a:b + 1]))
        pos[rows, flat[off[a]:off[b]]] = True
        sl, r = shortlist[a:b], rescored[a:b].astype(np.float64)
        sl_pos = np.take_along_axis(pos, sl, axis=1)
        hit = sl_pos.any(1)
        # in the shortlist: best positive by re-score (lowest id among equals), rank among the shortlist
        best_r = np.where(sl_pos, r, -np.inf).max(1, keepdims=True)
        best_id = np.where(sl_pos & (r == best_r), sl, _BIG).min(1, keepdims=True)
        rank_in = np.count_nonzero((r > best_r) | ((r == best_r) & (sl < best_id)), axis=1)
        level_in = r == best_r
        above_in, tpos_in = np.count_nonzero(r > best_r, axis=1), np.count_nonzero(level_in & sl_pos, axis=1)
        tied_in = np.count_nonzero(level_in & ~sl_pos, axis=1)
        # missed: k + rank among the non-shortlisted candidates by global score
        g = global_rows(a, b).astype(np.float64)
        in_sl = np.zeros((nb, n_c), dtype=bool)
        in_sl[np.arange(nb)[:, None], sl] = True
        best_g = np.where(pos, g, -np.inf).max(1, keepdims=True)
        first = np.where(pos & (g == best_g), cand, _BIG).min(1, keepdims=True)
        beats = ((g > best_g) | ((g == best_g) & (cand < first))) & ~in_sl
        rank_out = k + np.count_nonzero(beats, axis=1)
        level_out = (g == best_g) & ~in_sl
        above_out = k + np.count_nonzero((g > best_g) & ~in_sl, axis=1)
        tpos_out, tied_out = np.count_nonzero(level_out & pos, axis=1), np.count_nonzero(level_out & ~pos, axis=1)
        ranks[a:b] = np.where(hit, rank_in, rank_out)
        missed[a:b] = ~hit
        above[a:b] = np.where(hit, above_in, above_out)
        tied[a:b] = np.where(hit, tied_in, tied_out)
        tpos[a:b] = np.where(hit, tpos_in, tpos_out)
    return ranks, missed, Ties(above, tied, tpos)


def two_stage_ranks(global_sims_or_vectors, rescore_fn: RescoreFn, img2txt: Sequence[Sequence[int]],
                    txt2img: Sequence[int], k_i2t: int = 50, k_t2i: int = 100, *, miss_as_hit: bool = False,
                    return_details: bool = False):
    """0-based ``(i2t_ranks, t2i_ranks)`` of two-stage retrieval (see the module docstring), ready for
    :func:`itr_lib.metrics.metrics_from_ranks`.

    ``global_sims_or_vectors``: (n_images, n_texts) global scores (numpy/torch), or ``(img_vecs, txt_vecs)``
    (faiss shortlists). ``k_*`` are capped at the gallery size. ``return_details`` adds a dict with the
    shortlists, re-scores, 'missed' flags per query and timings."""
    t0 = time.perf_counter()
    if isinstance(global_sims_or_vectors, (tuple, list)):
        iv, tv = (np.ascontiguousarray(_np(x), dtype=np.float32) for x in global_sims_or_vectors)
        g = iv @ tv.T
        sl_i2t = faiss_topk(tv, iv, min(k_i2t, g.shape[1]))
        sl_t2i = faiss_topk(iv, tv, min(k_t2i, g.shape[0]))
    else:
        g = _np(global_sims_or_vectors)
        if g.ndim != 2:
            raise ValueError(f"global scores must be (n_images, n_texts), got shape {g.shape}")
        sl_i2t = topk_stable(g, k_i2t)
        sl_t2i = topk_stable(g.T, k_t2i)
    n_i, n_t = g.shape
    if len(img2txt) != n_i or len(txt2img) != n_t:
        raise ValueError(f"index maps ({len(img2txt)} images, {len(txt2img)} texts) do not match the scores "
                         f"{g.shape}")
    t_search = time.perf_counter() - t0
    t0 = time.perf_counter()
    k1, k2 = sl_i2t.shape[1], sl_t2i.shape[1]
    # one call for both directions (a re-scorer may group and de-duplicate the pairs)
    pairs_i = np.concatenate([np.repeat(np.arange(n_i), k1), sl_t2i.ravel()])
    pairs_t = np.concatenate([sl_i2t.ravel(), np.repeat(np.arange(n_t), k2)])
    rescored = np.asarray(rescore_fn(pairs_i, pairs_t), dtype=np.float64)
    if rescored.shape != (len(pairs_i),):
        raise ValueError(f"rescore_fn returned shape {rescored.shape}, expected ({len(pairs_i)},)")
    r_i2t, r_t2i = rescored[:n_i * k1].reshape(n_i, k1), rescored[n_i * k1:].reshape(n_t, k2)
    t_rescore = time.perf_counter() - t0
    t2i_pos = [[int(j)] for j in np.asarray(txt2img)]
    i2t, miss_i, ties_i = _direction_ranks(lambda a, b: g[a:b], n_i, n_t, sl_i2t, r_i2t, img2txt)
    t2i, miss_t, ties_t = _direction_ranks(lambda a, b: g[:, a:b].T, n_t, n_i, sl_t2i, r_t2i, t2i_pos)
    if miss_as_hit:
        i2t, t2i = np.where(miss_i, 0, i2t), np.where(miss_t, 0, t2i)
    if not return_details:
        return i2t, t2i
    details = {"shortlist_i2t": sl_i2t, "shortlist_t2i": sl_t2i, "rescored_i2t": r_i2t, "rescored_t2i": r_t2i,
               "missed_i2t": miss_i, "missed_t2i": miss_t, "ties_i2t": ties_i, "ties_t2i": ties_t,
               "search_seconds": t_search,
               "rescore_seconds": t_rescore, "pairs_rescored": int(n_i * k1 + n_t * k2)}
    return i2t, t2i, details


def _np(x) -> np.ndarray:
    if torch.is_tensor(x):
        return x.detach().cpu().float().numpy()
    return np.asarray(x)
