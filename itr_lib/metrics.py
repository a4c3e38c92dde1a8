"""Image-text retrieval metrics: one evaluation protocol for every method.

Why one module of ~400 lines: ranks, tie rules, recall / mR and the paired bootstrap over those ranks are one
evaluation protocol; every method is scored by exactly this code.

``sims`` is an ``(n_images, n_texts)`` similarity matrix (numpy or torch), higher = more similar.

* i2t: each image ranks all captions; its rank is the best (smallest) rank among its own captions
  ``img2txt[i]`` (any number per image, never assumed to be 5).
* t2i: each caption ranks all images; its rank is that of its own image ``txt2img[j]``.

Tie rules. Identical caption strings get identical scores (evaluation encodes each distinct caption input
once), so an image query often ties its own caption with another image's copy of the same text, and the
rank depends on how ties are broken. Every rank is therefore kept as three counts per query (:class:`Ties`):
``above`` (candidates scoring strictly above the best positive), ``tied`` (non-positive candidates scoring
exactly as it does) and ``tpos`` (positives at that score, >= 1). The rules read from them:

* ``"expected"`` (the study's rule, :data:`STUDY_TIE_RULE`): ties broken uniformly at random, and every
  number is its expectation: R@K = P(rank0 < K) = 1 - C(tied, K-above) / C(tied+tpos, K-above) for
  0 <= K-above <= tied; expected rank0 = above + tied / (tpos + 1) (medr / meanr read these).
* ``"optimistic"`` (ties broken for the query: rank0 = above) and ``"pessimistic"`` (against it:
  rank0 = above + tied), the bounds any tie rule falls between.
* ``"index"``: the rank a stable descending sort gives (ties broken by candidate index, as a deterministic
  ``argsort`` in the reference code does; :func:`rank_arrays`). The rule of the records made before the
  tie rule was stated (their ``tie_rule`` field is absent).

Ranks are counted tile by tile over ``chunk_size x chunk_size`` blocks of ``sims`` (no argsort, no
full-size temporaries): each block updates the i2t counts of its images and the t2i counts of its
captions, so a 5,000 x 25,000 matrix needs only ``chunk_size**2`` booleans of extra memory.

Reported numbers: R@1/5/10 in percent per direction, ``medr = floor(median(rank0)) + 1``,
``meanr = mean(rank0) + 1`` (1-based, VSE convention), ``rsum`` = sum of the six recalls, ``mr = rsum/6``.

Duplicate-aware protocol (:func:`retrieval_metrics_dup`): a caption counts as a hit for every image that
carries the same text, and vice versa. It returns the same keys as the standard protocol; results MUST be
labelled ``"duplicate-aware"`` (:data:`PROTOCOL_DUP`) wherever they are shown or stored.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

log = logging.getLogger(__name__)

PROTOCOL_STANDARD = "standard"
PROTOCOL_DUP = "duplicate-aware"
RECALL_KS = (1, 5, 10)
METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "i2t_meanr",
               "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr", "t2i_meanr", "rsum", "mr")

TIE_RULES = ("expected", "optimistic", "pessimistic", "index")
STUDY_TIE_RULE = "expected"

ArrayLike = Any  # numpy array or torch tensor
PosSets = Sequence[Any]  # per query: an int or a sequence of ints (the correct candidates)


# ----------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------
def _as_numpy_sims(sims: ArrayLike) -> np.ndarray:
    """2-D numpy view of ``sims`` (torch tensors are detached/moved to CPU; bfloat16 becomes float32)."""
    if hasattr(sims, "detach") and hasattr(sims, "cpu"):  # torch tensor, without importing torch
        t = sims.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        sims = t.numpy()
    arr = np.asarray(sims)
    if arr.ndim != 2:
        raise ValueError(f"sims must be 2-D (n_images, n_texts), got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"sims must be numeric, got dtype {arr.dtype}")
    return arr


def _to_csr(pos: PosSets, n_queries: int, n_candidates: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-query positive sets -> (offsets[n_queries+1], flat candidate indices); each set non-empty."""
    if len(pos) != n_queries:
        raise ValueError(f"{what}: expected {n_queries} entries (one per query), got {len(pos)}")
    if isinstance(pos, np.ndarray) and pos.dtype.kind in "iu" and pos.ndim in (1, 2):  # fixed-size sets
        flat = pos.astype(np.int64).ravel()
        lengths = np.full(n_queries, 1 if pos.ndim == 1 else pos.shape[1], dtype=np.int64)
    else:
        items = [np.atleast_1d(np.asarray(p, dtype=np.int64)).ravel() for p in pos]
        lengths = np.fromiter((len(p) for p in items), dtype=np.int64, count=n_queries)
        flat = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
    if n_queries and lengths.min() < 1:
        bad = int(np.argmin(lengths))
        raise ValueError(f"{what}: query {bad} has no correct candidate")
    if flat.size and (flat.min() < 0 or flat.max() >= n_candidates):
        raise ValueError(f"{what}: candidate index out of range [0, {n_candidates})")
    offsets = np.zeros(n_queries + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, flat


def _best_positive_scores(sims: np.ndarray, offsets: np.ndarray, flat: np.ndarray,
                          rows: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Max score over each query's positives, the lowest candidate index reaching it and how many positives
    reach it (queries = rows of sims if ``rows`` else columns)."""
    n_q = len(offsets) - 1
    if n_q == 0:
        return np.zeros(0, dtype=sims.dtype), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    q = np.repeat(np.arange(n_q), np.diff(offsets))
    scores = sims[q, flat] if rows else sims[flat, q]
    best = np.maximum.reduceat(scores, offsets[:-1])
    if best.dtype.kind == "f" and np.isnan(best).any():
        raise ValueError("sims has NaN at a positive (query, candidate) pair")
    at_best = scores == best[q]
    cand = np.where(at_best, flat, np.iinfo(np.int64).max)
    first = np.minimum.reduceat(cand, offsets[:-1])
    n_best = np.add.reduceat(at_best.astype(np.int64), offsets[:-1])
    return best, first, n_best


# ----------------------------------------------------------------------------------------------------
# ranks
# ----------------------------------------------------------------------------------------------------
class Ties(NamedTuple):
    """Per-query rank counts of one direction (numpy int64 arrays of the same length); see the tie rules."""

    above: np.ndarray  # candidates scoring strictly above the best positive
    tied: np.ndarray   # non-positive candidates scoring exactly as the best positive
    tpos: np.ndarray   # positives at the best positive's score (>= 1)

    def ranks(self, rule: str = STUDY_TIE_RULE) -> np.ndarray:
        """0-based rank per query under ``rule`` (float for "expected": the expectation)."""
        if rule == "optimistic":
            return self.above
        if rule == "pessimistic":
            return self.above + self.tied
        if rule == "expected":
            return self.above + self.tied / (self.tpos + 1.0)
        raise ValueError(f"unknown tie rule {rule!r}; choose one of {TIE_RULES[:3]} (or 'index' from sims)")

    def hits(self, ks: Sequence[int] = RECALL_KS, rule: str = STUDY_TIE_RULE) -> np.ndarray:
        """(n_queries, len(ks)) float: P(rank0 < K) under ``rule`` (0/1 for the optimistic / pessimistic ones)."""
        if rule != "expected":
            r = self.ranks(rule)
            return np.stack([r < k for k in ks], axis=1).astype(np.float64)
        above, tied, n = self.above, self.tied, self.tied + self.tpos
        out = np.empty((len(above), len(ks)), dtype=np.float64)
        for col, k in enumerate(ks):
            j = k - above  # tie slots that fall inside the top K
            # P(the first j drawn of the tie group are all negatives) = prod_{i<j} (tied - i) / (n - i)
            miss = np.ones(len(above), dtype=np.float64)
            for i in range(int(max(0, min(k, int(j.max()) if len(j) else 0)))):
                step = np.where(i < j, np.clip(tied - i, 0, None) / np.maximum(n - i, 1), 1.0)
                miss *= step
            out[:, col] = np.where(j <= 0, 0.0, 1.0 - miss)
        return out

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_{f}": np.asarray(getattr(self, f), dtype=np.int64) for f in self._fields}

    @classmethod
    def from_arrays(cls, z, prefix: str) -> "Ties":
        return cls(*(np.asarray(z[f"{prefix}_{f}"], dtype=np.int64) for f in cls._fields))


def _tie_counts_sets(sims: ArrayLike, img_pos: PosSets, txt_pos: PosSets,
                     chunk_size: int = 1024) -> tuple[Ties, Ties, np.ndarray, np.ndarray]:
    """Tie counts of both directions and the index-rule ranks (``above`` + the ties with a lower candidate index
    than the first best positive), for positive sets in both directions, in one pass over ``sims``."""
    s = _as_numpy_sims(sims)
    n_img, n_txt = s.shape
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    i_off, i_flat = _to_csr(img_pos, n_img, n_txt, "img2txt")
    t_off, t_flat = _to_csr(txt_pos, n_txt, n_img, "txt2img")
    thr_i, first_i, tpos_i = _best_positive_scores(s, i_off, i_flat, rows=True)   # (n_img,)
    thr_t, first_t, tpos_t = _best_positive_scores(s, t_off, t_flat, rows=False)  # (n_txt,)
    above_i, eq_i, before_i = (np.zeros(n_img, dtype=np.int64) for _ in range(3))
    above_t, eq_t, before_t = (np.zeros(n_txt, dtype=np.int64) for _ in range(3))
    for a in range(0, n_img, chunk_size):
        b = min(a + chunk_size, n_img)
        ti, fi = thr_i[a:b, None], first_i[a:b, None]
        rows_idx = np.arange(a, b)[:, None]
        for c in range(0, n_txt, chunk_size):
            d = min(c + chunk_size, n_txt)
            block = s[a:b, c:d]
            tt, ft = thr_t[None, c:d], first_t[None, c:d]
            cols_idx = np.arange(c, d)[None, :]
            gt, eq = block > ti, block == ti
            above_i[a:b] += np.count_nonzero(gt, axis=1)
            eq_i[a:b] += np.count_nonzero(eq, axis=1)
            before_i[a:b] += np.count_nonzero(eq & (cols_idx < fi), axis=1)
            gt, eq = block > tt, block == tt
            above_t[c:d] += np.count_nonzero(gt, axis=0)
            eq_t[c:d] += np.count_nonzero(eq, axis=0)
            before_t[c:d] += np.count_nonzero(eq & (rows_idx < ft), axis=0)
    ties_i = Ties(above_i, eq_i - tpos_i, tpos_i)
    ties_t = Ties(above_t, eq_t - tpos_t, tpos_t)
    return ties_i, ties_t, above_i + before_i, above_t + before_t


def _rank_arrays_sets(sims: ArrayLike, img_pos: PosSets, txt_pos: PosSets,
                      chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """0-based index-rule ranks for i2t (per image) and t2i (per caption) given positive sets in both directions."""
    return _tie_counts_sets(sims, img_pos, txt_pos, chunk_size)[2:]


def tie_counts(sims: ArrayLike, img2txt: Sequence[Sequence[int]], txt2img: Sequence[int],
               chunk_size: int = 1024) -> tuple[Ties, Ties]:
    """``(i2t Ties, t2i Ties)`` under the standard protocol (see the tie rules)."""
    return _tie_counts_sets(sims, img2txt, np.asarray(txt2img, dtype=np.int64), chunk_size)[:2]


def metrics_from_ties(i2t: Ties, t2i: Ties, rule: str = STUDY_TIE_RULE) -> dict[str, float]:
    """The metrics of :func:`metrics_from_ranks` under a tie rule ("expected": recalls are expectations)."""
    if rule != "expected":
        return metrics_from_ranks(i2t.ranks(rule), t2i.ranks(rule))
    out = metrics_from_ranks(i2t.ranks(rule), t2i.ranks(rule))  # medr / meanr of the expected ranks
    for name, t in (("i2t", i2t), ("t2i", t2i)):
        h = t.hits(RECALL_KS, rule)
        for k, v in zip(RECALL_KS, h.sum(0)):
            out[f"{name}_r{k}"] = float(100.0 * v / len(h))  # as metrics_from_ranks: exact for 0/1 hits
    out["rsum"] = float(sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in RECALL_KS))
    out["mr"] = out["rsum"] / 6
    return {k: float(out[k]) for k in METRIC_KEYS}


def rank_arrays(sims: ArrayLike, img2txt: Sequence[Sequence[int]], txt2img: Sequence[int],
                chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks ``(i2t_ranks[n_images], t2i_ranks[n_texts])`` under the standard protocol."""
    return _rank_arrays_sets(sims, img2txt, np.asarray(txt2img, dtype=np.int64), chunk_size)


def metrics_from_ranks(i2t_ranks: ArrayLike, t2i_ranks: ArrayLike) -> dict[str, float]:
    """R@1/5/10 (percent), medr, meanr per direction, rsum and mr from 0-based rank arrays."""
    out: dict[str, float] = {}
    rsum = 0.0
    for name, ranks in (("i2t", i2t_ranks), ("t2i", t2i_ranks)):
        r = np.asarray(ranks).ravel()
        if r.size == 0:
            raise ValueError(f"{name}: no queries")
        for k in RECALL_KS:
            out[f"{name}_r{k}"] = 100.0 * int(np.count_nonzero(r < k)) / r.size
        out[f"{name}_medr"] = float(np.floor(np.median(r)) + 1)
        out[f"{name}_meanr"] = float(r.mean() + 1)
    for name in ("i2t", "t2i"):
        for k in RECALL_KS:
            rsum += out[f"{name}_r{k}"]
    out["rsum"] = rsum
    out["mr"] = rsum / 6
    return {k: float(out[k]) for k in METRIC_KEYS}


def retrieval_metrics(sims: ArrayLike, img2txt: Sequence[Sequence[int]], txt2img: Sequence[int],
                      chunk_size: int = 1024, tie_rule: str = STUDY_TIE_RULE) -> dict[str, float]:
    """Standard-protocol metrics (keys :data:`METRIC_KEYS`, python floats) for a similarity matrix, ties
    resolved by ``tie_rule`` (see the module docstring; the study's rule by default)."""
    return _metrics_sets(sims, img2txt, np.asarray(txt2img, dtype=np.int64), chunk_size, tie_rule)


def retrieval_metrics_dup(sims: ArrayLike, img2txt_dup: Sequence[Sequence[int]],
                          txt2imgs: Sequence[Sequence[int]], chunk_size: int = 1024,
                          tie_rule: str = STUDY_TIE_RULE) -> dict[str, float]:
    """Duplicate-aware metrics: ``img2txt_dup[i]`` = all captions whose text equals one of image i's
    captions, ``txt2imgs[j]`` = all images carrying caption j's text; the best-ranked of them counts.

    Same keys as :func:`retrieval_metrics`; label the result ``"duplicate-aware"`` wherever shown.
    """
    return _metrics_sets(sims, img2txt_dup, txt2imgs, chunk_size, tie_rule)


def _metrics_sets(sims, img_pos, txt_pos, chunk_size: int, tie_rule: str) -> dict[str, float]:
    if tie_rule not in TIE_RULES:
        raise ValueError(f"unknown tie rule {tie_rule!r}; choose one of {TIE_RULES}")
    i2t, t2i, idx_i2t, idx_t2i = _tie_counts_sets(sims, img_pos, txt_pos, chunk_size)
    if tie_rule == "index":
        return metrics_from_ranks(idx_i2t, idx_t2i)
    return metrics_from_ties(i2t, t2i, tie_rule)


# ----------------------------------------------------------------------------------------------------
# COCO 5-fold 1K
# ----------------------------------------------------------------------------------------------------
def coco_5fold_1k(sims: ArrayLike, img2txt: Sequence[Sequence[int]], txt2img: Sequence[int],
                  chunk_size: int = 1024, *, fold_size: int = 1000, n_folds: int = 5,
                  tie_rule: str = STUDY_TIE_RULE) -> dict[str, float]:
    """Metrics averaged over ``n_folds`` folds of ``fold_size`` consecutive images and their captions.

    A fold's captions are those whose image (``txt2img``) is in the fold, re-indexed in order; every key
    (medr/meanr/rsum included) is the mean of the per-fold values, as in the VSE++/SCAN code.
    """
    s = _as_numpy_sims(sims)
    n_img, n_txt = s.shape
    if n_img != fold_size * n_folds:
        raise ValueError(f"{n_folds}-fold x {fold_size} needs {fold_size * n_folds} images, got {n_img}")
    t2i = np.asarray(txt2img, dtype=np.int64)
    if t2i.shape != (n_txt,):
        raise ValueError(f"txt2img must have one entry per caption ({n_txt}), got shape {t2i.shape}")
    per_fold = []
    for f in range(n_folds):
        lo, hi = f * fold_size, (f + 1) * fold_size
        caps = np.flatnonzero((t2i >= lo) & (t2i < hi))
        remap = np.full(n_txt, -1, dtype=np.int64)
        remap[caps] = np.arange(len(caps))
        f_img2txt = []
        for i in range(lo, hi):
            new = remap[np.asarray(img2txt[i], dtype=np.int64)]
            if (new < 0).any():
                raise ValueError(f"img2txt[{i}] lists a caption whose txt2img is not in fold {f}")
            f_img2txt.append(new)
        f_sims = s[lo:hi][:, caps]
        per_fold.append(retrieval_metrics(f_sims, f_img2txt, t2i[caps] - lo, chunk_size, tie_rule))
    return {k: float(np.mean([m[k] for m in per_fold])) for k in METRIC_KEYS}


def protocol_metrics(i2t: Ties, t2i: Ties) -> dict[str, dict[str, float]]:
    """``{"standard": the study's tie rule, "standard_optimistic": ..., "standard_pessimistic": ...}``."""
    out = {PROTOCOL_STANDARD: metrics_from_ties(i2t, t2i, STUDY_TIE_RULE)}
    for rule in ("optimistic", "pessimistic"):
        out[f"{PROTOCOL_STANDARD}_{rule}"] = metrics_from_ties(i2t, t2i, rule)
    return out


def evaluate_split(sims: ArrayLike, img2txt: Sequence[Sequence[int]], txt2img: Sequence[int],
                   chunk_size: int = 1024, *, img2txt_dup: Sequence[Sequence[int]] | None = None,
                   txt2imgs: Sequence[Sequence[int]] | None = None,
                   return_ties: bool = False):
    """``{"standard": ..., "standard_optimistic": ..., "standard_pessimistic": ...}`` (:func:`protocol_metrics`),
    plus ``"coco_1k_5fold"`` when there are 5,000 images, plus ``"duplicate-aware"`` when both ``img2txt_dup``
    and ``txt2imgs`` are given. ``return_ties``: also the standard protocol's ``(i2t Ties, t2i Ties)``."""
    s = _as_numpy_sims(sims)
    ties = tie_counts(s, img2txt, txt2img, chunk_size)
    out = protocol_metrics(*ties)
    if s.shape[0] == 5000:
        out["coco_1k_5fold"] = coco_5fold_1k(s, img2txt, txt2img, chunk_size)
    if (img2txt_dup is None) != (txt2imgs is None):
        raise ValueError("pass both img2txt_dup and txt2imgs for the duplicate-aware protocol, or neither")
    if img2txt_dup is not None:
        out[PROTOCOL_DUP] = retrieval_metrics_dup(s, img2txt_dup, txt2imgs, chunk_size)
    return (out, ties) if return_ties else out


def caption_groups(captions: Sequence[str]) -> np.ndarray:
    """Per caption, the index of its distinct text (lower-cased, whitespace-normalised): identical strings become
    identical model inputs and so score identically under every model."""
    keys: dict[str, int] = {}
    return np.array([keys.setdefault(" ".join(c.lower().split()), len(keys)) for c in captions], dtype=np.int64)


def duplicate_ceiling(img2txt: Sequence[Sequence[int]], txt2img: Sequence[int], groups: Sequence[int],
                      rule: str = STUDY_TIE_RULE) -> dict[str, float]:
    """The best scores any model can reach on a split when captions with the same text (``groups``, e.g. from
    :func:`caption_groups`) score identically: the standard metrics, under ``rule``, of an oracle similarity
    ``S[i, j] = c(i, g) / n(g)`` (``c``: copies of caption j's text among image i's captions, ``n``: copies in
    the split). Text -> image: identical queries share one ranking, and ranking images by ``c`` hits the most of
    them (exact). Image -> text: an image's own strings are ranked by their share of own copies, the rest tie
    below; the ties are scored by ``rule`` (the greedy order is optimal at K = 1, a close bound at K = 5, 10)."""
    groups = np.asarray(groups, dtype=np.int64)
    n_img, n_grp = len(img2txt), int(groups.max()) + 1
    counts = np.zeros((n_img, n_grp), dtype=np.float64)
    np.add.at(counts, (np.asarray(txt2img, dtype=np.int64), groups), 1.0)
    size = np.bincount(groups, minlength=n_grp).astype(np.float64)
    sims = (counts / size[None, :])[:, groups]
    i2t, t2i = tie_counts(sims, img2txt, txt2img)
    return metrics_from_ties(i2t, t2i, rule)


# ----------------------------------------------------------------------------------------------------
# paired bootstrap
# ----------------------------------------------------------------------------------------------------
def paired_bootstrap(hits_a: Sequence[tuple[np.ndarray, np.ndarray]], hits_b: Sequence[tuple[np.ndarray, np.ndarray]],
                     n_boot: int = 2000, seed: int = 0) -> dict:
    """rsum(B) - rsum(A) with a 95% paired bootstrap interval over seeds and test queries: the study's ONE interval
    (the claims, the ablations, the recipe's levers and its SelfAlign gain all call this).

    Each system is a list, one entry per seed (seed-matched between A and B), of per-query hits
    ``(i2t (n_images, 3), t2i (n_texts, 3))`` at K = 1, 5, 10: 0/1 indicators or, under the study's tie rule,
    probabilities (:meth:`Ties.hits`). Each draw resamples the seed pairs with replacement and the image queries
    and caption queries with replacement (the same draws for A and B; a two-level bootstrap, so run-to-run noise
    widens the interval); the per-query differences of the drawn seeds are averaged. With one seed only the
    queries are resampled. Compare only hits scored under one tie rule (:func:`require_same_tie_rule`).
    Returns ``{"delta_rsum", "ci_lo", "ci_hi" (2.5 / 97.5 percentiles), "n_boot", "n_seeds"}``."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if len(hits_a) != len(hits_b) or not hits_a:
        raise ValueError(f"A and B need the same non-zero number of seeds, got {len(hits_a)} and {len(hits_b)}")
    rng = np.random.default_rng(seed)
    diffs = []
    for d in range(2):
        shapes = {np.shape(h[d]) for h in (*hits_a, *hits_b)}
        if len(shapes) != 1 or 0 in next(iter(shapes)):
            raise ValueError(f"direction {d}: every seed of A and B must score the same non-empty queries, got "
                             f"shapes {sorted(shapes)}")
        diffs.append(np.stack([np.asarray(b[d], dtype=np.float64) - np.asarray(a[d], dtype=np.float64)
                               for a, b in zip(hits_a, hits_b)]).sum(2))  # (n_seeds, n_queries)
    d_i, d_t = diffs
    point = 100 * (d_i.mean() + d_t.mean())
    n_s = len(hits_a)
    ii = rng.integers(0, d_i.shape[1], size=(n_boot, d_i.shape[1]))
    tt = rng.integers(0, d_t.shape[1], size=(n_boot, d_t.shape[1]))
    if n_s > 1:
        ss = rng.integers(0, n_s, size=(n_boot, n_s))
        per_i = np.stack([d_i[:, ii[b]].mean(1) for b in range(n_boot)])  # (n_boot, n_seeds)
        per_t = np.stack([d_t[:, tt[b]].mean(1) for b in range(n_boot)])
        boots = 100 * (np.take_along_axis(per_i, ss, 1).mean(1) + np.take_along_axis(per_t, ss, 1).mean(1))
    else:
        m_i, m_t = d_i.mean(0), d_t.mean(0)
        boots = 100 * (m_i[ii].mean(1) + m_t[tt].mean(1))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"delta_rsum": float(point), "ci_lo": float(lo), "ci_hi": float(hi), "n_boot": int(n_boot),
            "n_seeds": n_s}


def require_same_tie_rule(rules: dict[str, str | None], what: str = "a paired comparison") -> str:
    """The one tie rule of the records ``{run: tie_rule}`` compared in ``what``; a record without the field was
    scored before the tie rule (index-rule ranks, ``"index"``). Records scored under different rules are never
    compared (an index-rule mR is not an expected-rule mR): ValueError naming one run of each rule."""
    norm = {run: (rule if isinstance(rule, str) and rule else "index") for run, rule in rules.items()}
    by_rule: dict[str, str] = {}
    for run, rule in norm.items():
        by_rule.setdefault(rule, run)
    if len(by_rule) > 1:
        (r1, a), (r2, b) = list(by_rule.items())[:2]
        raise ValueError(f"{what} compares {a} (tie rule {r1!r}) with {b} (tie rule {r2!r}): records scored under "
                         f"different tie rules are never compared. Fix: re-score or retrain the older run under the "
                         f"study's rule {STUDY_TIE_RULE!r} (python -m itr_lib.study --retrain '<run>', then publish "
                         f"its runs/<run>/metrics.json), or compare runs of one rule.")
    return next(iter(by_rule), STUDY_TIE_RULE)
