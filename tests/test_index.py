"""faiss index vs numpy brute force; approximate-index recall; inputs never mutated."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from itr_lib.index import EmbeddingIndex, brute_force_topk, default_nlist, knn_search


def clustered(n, dim, n_clusters, seed, spread=0.3):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, dim))
    labels = rng.integers(0, n_clusters, n)
    return (centers[labels] + spread * rng.standard_normal((n, dim))).astype(np.float32)


def test_flat_equals_brute_force():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((1000, 24))
    q = rng.standard_normal((50, 24))
    for normalize in (True, False):
        scores, ids = knn_search(g, q, 10, normalize=normalize)
        ref_scores, ref_ids = brute_force_topk(g, q, 10, normalize=normalize)
        assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (50, 10)
        assert np.array_equal(ids, ref_ids)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    # normalised scores are cosines
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    np.testing.assert_allclose(knn_search(g, q, 1)[0][:, 0], (qn @ gn.T).max(1), atol=1e-5)


def test_brute_force_reference_by_hand():
    g = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    s, i = brute_force_topk(g, np.array([[1.0, 0.1]]), 3, normalize=False)
    assert i.tolist() == [[2, 0, 1]]
    np.testing.assert_allclose(s, [[1.1, 1.0, 0.1]], rtol=1e-6)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall(kind):
    x = clustered(5000, 32, 50, seed=1)
    q = clustered(200, 32, 50, seed=1)[:200] + 0.05
    _, exact = knn_search(x, q, 10, kind="flat")
    idx = EmbeddingIndex(32, kind=kind)
    _, approx = idx.add(x).search(q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9, recall
    if kind == "ivf":
        assert idx.nlist == default_nlist(5000) and idx.index.nprobe == min(16, idx.nlist)


def test_inputs_not_mutated():
    rng = np.random.default_rng(2)
    big = rng.standard_normal((600, 40)) * 5.0          # float64, not normalised
    g = big[::2, ::2]                                   # non-contiguous view
    q = big[1::7, ::2]
    g_before, q_before, big_before = g.copy(), q.copy(), big.copy()
    for kind in ("flat", "ivf", "hnsw"):
        idx = EmbeddingIndex(20, kind=kind, nlist=4)
        idx.add(g)
        idx.search(q, 5)
    brute_force_topk(g, q, 5)
    assert np.array_equal(g, g_before) and np.array_equal(q, q_before) and np.array_equal(big, big_before)
    assert g.dtype == np.float64 and not g.flags["C_CONTIGUOUS"]


def test_torch_input():
    rng = np.random.default_rng(3)
    g = rng.standard_normal((300, 16)).astype(np.float32)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    tg, tq = torch.from_numpy(g.copy()) * 3, torch.from_numpy(q.copy())
    tg_before = tg.clone()
    s_np, i_np = knn_search(g, q, 7)
    s_t, i_t = knn_search(tg, tq.double(), 7)                 # scaled + float64: same after normalisation
    assert np.array_equal(i_np, i_t)
    np.testing.assert_allclose(s_np, s_t, atol=1e-5)
    assert torch.equal(tg, tg_before)


def test_incremental_add_and_k_cap():
    rng = np.random.default_rng(4)
    g = rng.standard_normal((30, 8))
    idx = EmbeddingIndex(8).add(g[:10]).add(g[10:])
    assert len(idx) == 30
    s, i = idx.search(g[3], 100)                              # 1-D query, k > ntotal
    assert i.shape == (1, 30) and i[0, 0] == 3 and s[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert sorted(i[0].tolist()) == list(range(30))
    with pytest.raises(ValueError):
        EmbeddingIndex(8).search(g, 1)
    with pytest.raises(ValueError):
        idx.add(rng.standard_normal((3, 9)))
    with pytest.raises(ValueError):
        EmbeddingIndex(8, kind="lsh")


def test_threads_restored():
    import faiss
    before = faiss.omp_get_max_threads()
    rng = np.random.default_rng(5)
    knn_search(rng.standard_normal((50, 4)), rng.standard_normal((3, 4)), 2, threads=1)
    assert faiss.omp_get_max_threads() == before
