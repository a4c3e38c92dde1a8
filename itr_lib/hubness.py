"""Hubness-aware scoring at inference: inverted softmax, querybank normalisation, dual softmax (transductive).

A *hub* is a gallery item that is close to many queries and so crowds the top of many rankings. The corrections
below rescale each gallery item's scores by how much of a hub it is. Score matrices are laid out
``(n_queries, n_gallery)`` (one direction at a time); ``beta`` is an inverse temperature everywhere.

- :func:`inverted_softmax` (Smith et al., "Offline bilingual word vectors, orthogonal transformations and the
  inverted softmax", ICLR 2017): ``s'(q, g) = exp(beta s(q, g)) / Z_g``, ``Z_g = sum_{b in B} exp(beta s(b, g))``
  over a *querybank* ``B`` of queries that are not test data (here the training split). ``Z_g`` is computed once
  offline (:func:`log_normaliser`). Ranking by ``s'`` equals ranking by ``s(q, g) - log Z_g / beta``, an inner
  product of ``[q, 1]`` with ``[g, -log Z_g / beta]`` (:func:`augment_gallery`), so the corrected search stays ONE
  faiss inner-product search (:func:`corrected_search`).
- :func:`querybank_normalise` (Bogolin et al., "Cross Modal Retrieval with Querybank Normalisation", CVPR 2022,
  dynamic inverted softmax; reference code github.com/ioanacroi/qb-norm): the inverted softmax is applied to a
  query only when its raw top-1 gallery item is in the *activation set* (gallery items that are top-1 for some
  bank query, :func:`activation_set`); other queries keep their raw scores.
- :func:`dual_softmax_transductive` (Cheng et al., "Improving Video-Text Retrieval by Multi-Stream Corpus
  Alignment and Dual Softmax Loss", arXiv 2109.04290, 2021, its inference form): ``s' = s * prior`` with ``prior`` the
  softmax over the **test queries** of ``beta * s`` (their code: ``sims * softmax(sims * 100, dim=0)``). It reads
  the whole test query set at once, so it is TRANSDUCTIVE: it is labelled so in its name, here and in every result.

:func:`evaluate_hubness` scores a model on a split with one of them (bank = the training split, never test) and
returns the metrics bundle of :func:`itr_lib.scoring.evaluate` plus the cost; :func:`choose_beta` picks ``beta``
on a val split. The functions accept numpy arrays or torch tensors and compute in float64 (a float32 result of
``beta * s - log Z`` would merge distinct scores into spurious ties, which the study's tie rule would then count).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from scipy.special import logsumexp

from .querybank import Prepared, bank_sample, check_bank, model_vectors, prepare  # noqa: F401  (the bank path)

log = logging.getLogger(__name__)

#: method name -> whether it reads the whole test query set (transductive)
METHODS = {"none": False, "inverted_softmax": False, "qb_norm": False, "dual_softmax_transductive": True}
#: the methods that need a querybank
BANK_METHODS = ("inverted_softmax", "qb_norm")


# ----------------------------------------------------------------------------------------------------
# pure functions on score matrices
# ----------------------------------------------------------------------------------------------------
def _f64(x: Any, what: str, ndim: int = 2) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{what} must be {ndim}-D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} holds NaN or inf; the scores of the model are broken (check the encoders)")
    return arr


def _weights(w: Any, n: int, what: str) -> np.ndarray | None:
    if w is None:
        return None
    w = np.asarray(w, dtype=np.float64).ravel()
    if w.shape != (n,) or (w < 0).any() or not w.sum() > 0:
        raise ValueError(f"{what} must be {n} non-negative counts with a positive sum, got shape {w.shape}")
    return w


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not beta > 0 or not np.isfinite(beta):
        raise ValueError(f"beta (inverse temperature) must be a positive finite number, got {beta}")
    return beta


def log_normaliser(bank_scores: Any, beta: float, bank_weights: Any = None) -> np.ndarray:
    """``log Z_g = log sum_b w_b exp(beta s(b, g))`` per gallery item (float64, log-sum-exp, so no overflow):
    the inverted softmax's offline normaliser (Smith et al., ICLR 2017). ``bank_scores``: ``(n_bank, n_gallery)``
    scores of the querybank queries; ``bank_weights``: optional per-bank-query counts (the copies of a distinct
    caption, when only distinct captions were scored), default 1 each."""
    beta = _check_beta(beta)
    s = _f64(bank_scores, "bank_scores")
    if s.shape[0] == 0:
        raise ValueError("bank_scores has no bank queries; the querybank is empty")
    w = _weights(bank_weights, s.shape[0], "bank_weights")
    return logsumexp(beta * s, axis=0, b=None if w is None else w[:, None])


def inverted_softmax(scores: Any, log_z: Any, beta: float) -> np.ndarray:
    """The log of the inverted softmax (Smith et al., ICLR 2017): ``log s'(q, g) = beta s(q, g) - log Z_g`` for
    ``scores`` ``(n_queries, n_gallery)`` and ``log_z`` from :func:`log_normaliser` (float64; ``exp`` of it is the
    paper's ``s'``, the ranking is the same)."""
    beta = _check_beta(beta)
    s = _f64(scores, "scores")
    lz = _f64(log_z, "log_z", ndim=1)
    if lz.shape[0] != s.shape[1]:
        raise ValueError(f"log_z has {lz.shape[0]} entries but scores has {s.shape[1]} gallery items")
    return beta * s - lz[None, :]


def activation_set(bank_scores: Any, k: int = 1) -> np.ndarray:
    """QB-Norm's activation set (Bogolin et al., CVPR 2022): a boolean mask over the gallery, True for items in
    the top-``k`` of at least one bank query (``bank_scores`` ``(n_bank, n_gallery)``; the paper uses k = 1)."""
    s = _f64(bank_scores, "bank_scores")
    if not 1 <= k <= s.shape[1]:
        raise ValueError(f"k must be in [1, {s.shape[1]}], got {k}")
    top = np.argmax(s, axis=1)[:, None] if k == 1 else np.argpartition(-s, k - 1, axis=1)[:, :k]
    active = np.zeros(s.shape[1], dtype=bool)
    active[top.ravel()] = True
    return active


def querybank_normalise(scores: Any, log_z: Any, active: Any, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic inverted softmax (QB-Norm; Bogolin et al., CVPR 2022): a query whose raw top-1 gallery item is in
    the activation set ``active`` (:func:`activation_set`) gets the inverted softmax (here its log,
    ``beta s - log Z_g``, the same ranking as the paper's ``exp(beta s) / Z_g``); any other query keeps its raw
    scores. Returns ``(scores', normalised)``: the float64 matrix and the boolean per-query mask of the queries
    that were normalised. Each row is one query's ranking; rows of the two kinds are not comparable."""
    s = _f64(scores, "scores")
    active = np.asarray(active, dtype=bool).ravel()
    if active.shape[0] != s.shape[1]:
        raise ValueError(f"active has {active.shape[0]} entries but scores has {s.shape[1]} gallery items")
    normalised = active[np.argmax(s, axis=1)] if s.shape[1] else np.zeros(s.shape[0], dtype=bool)
    out = s.copy()
    out[normalised] = inverted_softmax(s[normalised], log_z, beta)
    return out, normalised


def dual_softmax_transductive(scores: Any, beta: float, query_weights: Any = None) -> np.ndarray:
    """TRANSDUCTIVE dual softmax at inference (Cheng et al. 2021, arXiv 2109.04290): ``s'(q, g) = s(q, g) *
    prior(q, g)``, ``prior(q, g) = exp(beta s(q, g)) / sum_{q' in test queries} w_q' exp(beta s(q', g))``, the
    softmax over the *test queries* (rows of ``scores``). It needs every test query at once, so it is not a
    deployable per-query score; report it apart, labelled transductive. ``query_weights``: optional per-row counts
    (the copies of a distinct caption when only distinct captions are rows), default 1 each. Float64."""
    beta = _check_beta(beta)
    s = _f64(scores, "scores")
    w = _weights(query_weights, s.shape[0], "query_weights")
    lse = logsumexp(beta * s, axis=0, b=None if w is None else w[:, None])
    return s * np.exp(beta * s - lse[None, :])


def augment_gallery(vectors: Any, log_z: Any, beta: float) -> np.ndarray:
    """``[g, -log Z_g / beta]`` (float32, C-contiguous): with :func:`augment_queries` (``[q, 1]``) one inner
    product gives ``s(q, g) - log Z_g / beta``, whose ranking is the inverted softmax's. Search it with
    ``normalize=False`` (an l2 normalisation would change the scores)."""
    beta = _check_beta(beta)
    g = _f64(vectors, "vectors")
    lz = _f64(log_z, "log_z", ndim=1)
    if lz.shape[0] != g.shape[0]:
        raise ValueError(f"log_z has {lz.shape[0]} entries but there are {g.shape[0]} gallery vectors")
    return np.ascontiguousarray(np.concatenate([g, -lz[:, None] / beta], axis=1), dtype=np.float32)


def augment_queries(vectors: Any) -> np.ndarray:
    """``[q, 1]`` (float32, C-contiguous), the query side of :func:`augment_gallery`."""
    q = _f64(vectors, "vectors")
    return np.ascontiguousarray(np.concatenate([q, np.ones((q.shape[0], 1))], axis=1), dtype=np.float32)


def corrected_search(queries: Any, gallery: Any, log_z: Any, beta: float, k: int, kind: str = "flat",
                     **index_kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` ``(scores, ids)`` under the inverted softmax with ONE faiss inner-product search over the
    augmented gallery (:mod:`itr_lib.index`, ``normalize=False``); scores are ``s - log Z_g / beta``."""
    from .index import knn_search
    return knn_search(augment_gallery(gallery, log_z, beta), augment_queries(queries), k, kind=kind,
                      normalize=False, **index_kwargs)


def qb_norm_search(queries: Any, gallery: Any, log_z: Any, active: Any, beta: float, k: int, kind: str = "flat",
                   **index_kwargs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """QB-Norm's top-``k`` as deployed: a raw faiss search and a :func:`corrected_search`; a query whose raw top-1
    is in ``active`` takes the corrected result, any other the raw one (two searches per query, the second over
    D + 1 dimensions). Returns ``(scores, ids, normalised)``; corrected scores are ``s - log Z_g / beta``."""
    from .index import knn_search
    raw_s, raw_i = knn_search(gallery, queries, k, kind=kind, normalize=False, **index_kwargs)
    cor_s, cor_i = corrected_search(queries, gallery, log_z, beta, k, kind=kind, **index_kwargs)
    normalised = np.asarray(active, dtype=bool)[raw_i[:, 0]]
    return (np.where(normalised[:, None], cor_s, raw_s), np.where(normalised[:, None], cor_i, raw_i), normalised)


def top1_counts(scores: Any, query_weights: Any = None) -> np.ndarray:
    """Per gallery item, how many queries rank it first (``argmax``; each row counted ``query_weights`` times,
    default once): the hub statistic ``N_1``."""
    s = _f64(scores, "scores")
    w = _weights(query_weights, s.shape[0], "query_weights")
    return np.bincount(np.argmax(s, axis=1), weights=w, minlength=s.shape[1])


def correct(method: str, scores: Any, beta: float, bank_scores: Any = None, bank_weights: Any = None,
            query_weights: Any = None, log_z: Any = None, active: Any = None) -> tuple[np.ndarray, dict]:
    """Apply ``method`` (a key of :data:`METHODS`) to one direction's ``scores`` ``(n_queries, n_gallery)``;
    ``log_z`` / ``active`` may be passed precomputed (else computed from ``bank_scores``). Returns the float64
    matrix and a dict of facts (the fraction of queries normalised, of gallery items active)."""
    if method not in METHODS:
        raise ValueError(f"unknown hubness method {method!r}; choose one of {sorted(METHODS)}")
    if method == "none":
        return _f64(scores, "scores"), {}
    if method == "dual_softmax_transductive":
        return dual_softmax_transductive(scores, beta, query_weights), {"transductive": True}
    if log_z is None:
        if bank_scores is None:
            raise ValueError(f"method {method!r} needs bank_scores (a querybank of non-test queries) or log_z")
        log_z = log_normaliser(bank_scores, beta, bank_weights)
    if method == "inverted_softmax":
        return inverted_softmax(scores, log_z, beta), {}
    if active is None:
        if bank_scores is None:
            raise ValueError("method 'qb_norm' needs bank_scores or the activation set 'active'")
        active = activation_set(bank_scores)
    out, normalised = querybank_normalise(scores, log_z, active, beta)
    return out, {"normalised_query_fraction": float(normalised.mean()) if len(normalised) else 0.0,
                 "active_gallery_fraction": float(np.mean(active))}


# ----------------------------------------------------------------------------------------------------
# evaluation with a querybank (:mod:`itr_lib.querybank`: checked, sampled, encoded and scored in one path)
# ----------------------------------------------------------------------------------------------------
def _merge(m_i2t: dict, m_t2i: dict) -> dict:
    """i2t keys from one metrics dict, t2i keys from the other; rsum and mr recomputed."""
    out = {k: (m_i2t[k] if k.startswith("i2t") else m_t2i[k]) for k in m_i2t}
    out["rsum"] = float(sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))
    out["mr"] = out["rsum"] / 6
    return out


def score_prepared(prep: Prepared, test, method: str, beta: float | None = None,
                   with_ranks: bool = False) -> dict:
    """The metrics bundle of :func:`itr_lib.scoring.evaluate` (through :func:`itr_lib.metrics.evaluate_split`,
    the study's tie rule) for ``prep``'s scores corrected by ``method`` per direction, with ``"_hubness"``: the
    method, beta, whether it is transductive, the bank and the cost."""
    from .metrics import evaluate_split, retrieval_metrics_dup
    if method not in METHODS:
        raise ValueError(f"unknown hubness method {method!r}; choose one of {sorted(METHODS)}")
    if method in BANK_METHODS and prep.bank_t2i is None:
        raise ValueError(f"method {method!r} needs a querybank: prepare(model, test, bank=<training split>)")
    if method != "none" and beta is None:
        raise ValueError(f"method {method!r} needs beta (choose it on val with choose_beta)")
    facts: dict = {}
    t0 = time.perf_counter()
    lz_t = lz_i = act_t = act_i = None
    if method in BANK_METHODS:
        lz_t = log_normaliser(prep.bank_t2i, beta, prep.bank_t2i_w)
        lz_i = log_normaliser(prep.bank_i2t, beta)
        if method == "qb_norm":
            act_t, act_i = activation_set(prep.bank_t2i), activation_set(prep.bank_i2t)
    normaliser_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    c_i2t, facts["i2t"] = correct(method, prep.sims, beta, log_z=lz_i, active=act_i)
    i2t_us = 1e6 * (time.perf_counter() - t0) / prep.sims.shape[0]
    t0 = time.perf_counter()
    c_t2i, facts["t2i"] = correct(method, prep.sims.T, beta, log_z=lz_t, active=act_t,
                                  query_weights=prep.text_counts)
    t2i_us = 1e6 * (time.perf_counter() - t0) / prep.sims.shape[1]
    for d, raw, cor, w in (("i2t", prep.sims, c_i2t, None), ("t2i", prep.sims.T, c_t2i, prep.text_counts)):
        n_q = raw.shape[0] if w is None else w.sum()  # the hub statistic: the largest share of top-1s one item takes
        facts[d].update(top1_max_share_raw=float(top1_counts(raw, w).max() / n_q),
                        top1_max_share=float(top1_counts(cor, w).max() / n_q))
    s_i2t, s_t2i = c_i2t[:, prep.inverse], c_t2i.T[:, prep.inverse]  # (n_images, n_texts) each
    out_i, ties_i = evaluate_split(s_i2t, test.img2txt, test.txt2img, return_ties=True)
    out_t, ties_t = evaluate_split(s_t2i, test.img2txt, test.txt2img, return_ties=True)
    out = {k: _merge(out_i[k], out_t[k]) for k in out_i}
    dup_i, dup_t = test.split.duplicate_aware_maps()
    out["duplicate_aware"] = _merge(retrieval_metrics_dup(s_i2t, dup_i, dup_t),
                                    retrieval_metrics_dup(s_t2i, dup_i, dup_t))
    if with_ranks:
        out["_ties"] = (ties_i[0], ties_t[1])
    uses_bank = method in BANK_METHODS  # a bank prepared for other methods costs this one nothing
    out["_hubness"] = {
        "method": method, "beta": beta, "transductive": METHODS[method],
        "label": f"{method} (transductive: uses the whole test query set)" if METHODS[method] else method,
        **{k: v for k, v in prep.info.items() if k not in ("bank_encode_seconds", "bank_score_seconds")},
        "bank": prep.info.get("bank") if uses_bank else None,
        "facts": facts,
        "cost": {"bank_encode_seconds": prep.info.get("bank_encode_seconds", 0.0) if uses_bank else 0.0,
                 "bank_score_seconds": prep.info.get("bank_score_seconds", 0.0) if uses_bank else 0.0,
                 "normaliser_seconds": normaliser_s,
                 "extra_us_per_query_i2t": i2t_us, "extra_us_per_query_t2i": t2i_us,
                 "note": "extra per-query cost = the correction applied to the test score matrix (numpy float64, "
                         "per distinct query); for inverted_softmax a faiss search over augment_gallery adds one "
                         "dimension instead"},
    }
    return out


def evaluate_hubness(model, test, bank=None, method: str = "qb_norm", beta: float | None = None,
                     device: str = "cpu", batch_size: int = 256, bank_size: int | None = None, seed: int = 0,
                     with_ranks: bool = False) -> dict:
    """Metrics of ``model`` on ``test`` (a :class:`~itr_lib.splits.SplitTensors`) with the hubness correction
    ``method`` (:data:`METHODS`) at inverse temperature ``beta``, per direction: text->image queries against a
    bank of the *training* captions, image->text queries against a bank of the training images (``bank``, a
    SplitTensors of the training split; never the test split: :func:`check_bank` raises). ``bank_size``: a
    seeded (``seed``) sample of that many captions and images instead of the whole bank, stated in the result.
    ``dual_softmax_transductive`` needs no bank (it reads the test queries: transductive).

    Returns the bundle of :func:`itr_lib.scoring.evaluate` (``standard`` under the study's tie rule, the
    optimistic / pessimistic bounds, ``duplicate_aware``) plus ``"_hubness"`` (method, beta, transductive, bank,
    cost: seconds to encode and score the bank, seconds for the offline normaliser, extra microseconds per query).
    Models whose score is not one inner product (``exact_vectors = False``: TGDT, SCAN, exhaustive MrSw) get the
    correction applied to their exhaustive score matrix (``model.similarity``), labelled so in ``"score"``."""
    if method not in METHODS:
        raise ValueError(f"unknown hubness method {method!r}; choose one of {sorted(METHODS)}")
    if bank is not None:
        check_bank(test, bank)
    if method in BANK_METHODS and bank is None:
        raise ValueError(f"method {method!r} needs a querybank: pass bank=<the training split's SplitTensors>")
    prep = prepare(model, test, bank if method in BANK_METHODS else None, device, batch_size, bank_size, seed)
    return score_prepared(prep, test, method, beta, with_ranks)


#: how many times a beta grid is extended past an edge its val optimum sits on (one grid step each time)
MAX_EXTEND = 4


def search_beta(score, betas, key: str = "mr", max_extend: int = MAX_EXTEND):
    """Choose ``beta`` on val from ``score(beta) -> metrics dict`` (val metrics) among ``betas``, extending the grid
    when the best value sits on its edge: one step past it (the ratio of the two outermost candidates on that side,
    so 10, 20, ... extends to 5, then 2.5) and again, at most ``max_extend`` times, until the best is inside the
    grid. Ties go to the smaller beta. Returns ``(beta, table)``: one row per beta tried, ascending, with its
    metrics, ``chosen``, ``added_at_edge`` (the row was added by an extension) and ``at_grid_edge`` (the chosen
    beta is still the smallest or largest tried: the extensions ran out; a warning is logged)."""
    import pandas as pd
    grid = sorted({float(b) for b in betas})
    if not grid or min(grid) <= 0:
        raise ValueError(f"betas must be positive inverse temperatures, got {list(betas)}; e.g. [5, 10, 20, 50]")
    rows = {b: dict(score(b)) for b in grid}
    added: list[float] = []

    def best() -> float:
        return max(sorted(rows), key=lambda b: rows[b][key])  # max keeps the first (smallest) of equal values

    for _ in range(max_extend if len(grid) > 1 else 0):
        tried, b = sorted(rows), best()
        if b == tried[0]:
            new = tried[0] * tried[0] / tried[1]
        elif b == tried[-1]:
            new = tried[-1] * tried[-1] / tried[-2]
        else:
            break
        rows[new] = dict(score(new))
        added.append(new)
    chosen, tried = best(), sorted(rows)
    edge = len(tried) > 1 and chosen in (tried[0], tried[-1])
    table = pd.DataFrame([{"beta": b, **rows[b]} for b in tried])
    table["chosen"] = table.beta == chosen
    table["added_at_edge"] = table.beta.isin(added)
    table["at_grid_edge"] = edge
    if added:
        log.info("beta grid %s extended to %s on val (the best sat on its edge): beta %s", grid, added, chosen)
    if edge:
        log.warning("beta %s is still at the edge of the candidates %s after %d extensions; extend the grid past it "
                    "(the useful beta depends on the spread of the model's scores)", chosen, tried, len(added))
    return chosen, table


def choose_beta(model, val, bank, method: str, betas, device: str = "cpu", batch_size: int = 256,
                bank_size: int | None = None, seed: int = 0, key: str = "mr"):
    """Pick ``beta`` for ``method`` on a val split (:func:`search_beta`: the grid extended past an edge the best
    value sits on): each candidate's val metrics (standard protocol, the study's tie rule) with the uncorrected
    score (``method`` ``none``) as the first row. Returns ``(beta, table)`` (a pandas DataFrame, columns
    ``chosen``, ``added_at_edge`` and ``at_grid_edge``, see :func:`search_beta`)."""
    import pandas as pd
    if method == "none" or method not in METHODS:
        raise ValueError(f"method must be one of {sorted(set(METHODS) - {'none'})}, got {method!r}")
    if not list(betas):
        raise ValueError("betas is empty; pass candidate inverse temperatures, e.g. [5, 10, 20, 50]")
    if val.split.name == "test":
        raise ValueError("choose_beta reads the split it is given to choose: pass the val split, not test")
    prep = prepare(model, val, bank if method in BANK_METHODS else None, device, batch_size, bank_size, seed)
    chosen, grid = search_beta(lambda b: score_prepared(prep, val, method, b)["standard"], betas, key)
    none = {"method": "none", "beta": np.nan, **score_prepared(prep, val, "none")["standard"], "chosen": False,
            "added_at_edge": False, "at_grid_edge": bool(grid.at_grid_edge.iloc[0])}
    table = pd.concat([pd.DataFrame([none]), grid.assign(method=method)], ignore_index=True)
    table["split"] = val.split.name
    table["transductive"] = METHODS[method]
    log.info("choose_beta %s on %s: beta %s (%s %.2f; uncorrected %.2f)", method, val.split.name, chosen,
             key, table.loc[table.chosen, key].item(), table.loc[0, key])
    return chosen, table
