"""Retrieval metrics vs a naive per-query reference, hand-computed cases, COCO folds, bootstrap."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from itr_lib.metrics import (METRIC_KEYS, coco_5fold_1k, evaluate_split, metrics_from_ranks, paired_bootstrap,
                             rank_arrays, retrieval_metrics, retrieval_metrics_dup)


# ---------------------------------------------------------------------------------------------------- naive
def naive_ranks_sorted(sims, img2txt, txt2img):
    """Per image: stable sort of captions by score descending, best position of its captions; per caption:
    position of its image. Exactly the tie rule of itr_lib.metrics (ties broken by candidate index)."""
    sims = np.asarray(sims)
    i2t = []
    for i in range(sims.shape[0]):
        order = list(np.argsort(-sims[i], kind="stable"))
        i2t.append(min(order.index(c) for c in img2txt[i]))
    t2i = []
    for j in range(sims.shape[1]):
        order = list(np.argsort(-sims[:, j], kind="stable"))
        t2i.append(order.index(txt2img[j]))
    return i2t, t2i


def naive_ranks_count(sims, img_pos, txt_pos):
    """Tie rule by definition: rank0 = min over positives of #candidates with score strictly greater."""
    sims = np.asarray(sims)
    i2t = [min(sum(1 for c in range(sims.shape[1]) if sims[i, c] > sims[i, p]) for p in img_pos[i])
           for i in range(sims.shape[0])]
    t2i = [min(sum(1 for r in range(sims.shape[0]) if sims[r, j] > sims[p, j]) for p in np.atleast_1d(txt_pos[j]))
           for j in range(sims.shape[1])]
    return i2t, t2i


def naive_metrics(i2t, t2i):
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        n = len(ranks)
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * sum(1 for r in ranks if r < k) / n
        out[f"{name}_medr"] = float(math.floor(statistics.median(ranks)) + 1)
        out[f"{name}_meanr"] = sum(ranks) / n + 1
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    out["mr"] = out["rsum"] / 6
    return out


def random_problem(n_img, seed, max_caps=7, signal=1.0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_caps + 1, size=n_img)
    txt2img = np.repeat(np.arange(n_img), counts)
    perm = rng.permutation(len(txt2img))  # captions not grouped by image
    txt2img = txt2img[perm]
    img2txt = [list(np.flatnonzero(txt2img == i)) for i in range(n_img)]
    sims = rng.standard_normal((n_img, len(txt2img))).astype(np.float32)
    sims[txt2img, np.arange(len(txt2img))] += signal  # some signal so recalls are not all ~0
    return sims, img2txt, txt2img


# ---------------------------------------------------------------------------------------------------- vs naive
@pytest.mark.parametrize("n_img,seed,chunk", [(1, 0, 7), (13, 1, 7), (40, 2, 7), (57, 3, 5), (30, 4, 1024),
                                               (25, 5, 1)])
def test_matches_naive_reference(n_img, seed, chunk):
    sims, img2txt, txt2img = random_problem(n_img, seed)
    ref_i2t, ref_t2i = naive_ranks_sorted(sims, img2txt, txt2img)
    i2t, t2i = rank_arrays(sims, img2txt, txt2img, chunk_size=chunk)
    assert i2t.tolist() == ref_i2t and t2i.tolist() == ref_t2i
    got = retrieval_metrics(sims, img2txt, txt2img, chunk_size=chunk)
    ref = naive_metrics(ref_i2t, ref_t2i)
    assert list(got) == list(METRIC_KEYS)
    assert all(type(v) is float for v in got.values())
    assert got == ref  # exact equality, every key


def test_tie_rule_matches_count_reference():
    sims, img2txt, txt2img = random_problem(20, 8)
    sims = np.round(sims).astype(np.float32)  # many ties
    ref = naive_ranks_sorted(sims, img2txt, txt2img)
    got = rank_arrays(sims, img2txt, txt2img, chunk_size=3)
    assert got[0].tolist() == ref[0] and got[1].tolist() == ref[1]
    # ties never favour the query: strictly-greater counting alone would be more optimistic here
    optimistic = naive_ranks_count(sims, img2txt, txt2img)
    assert sum(got[0]) + sum(got[1]) > sum(optimistic[0]) + sum(optimistic[1])
    # constant matrix (a collapsed model): each rank is the index of the first positive, not 0
    const = np.ones((4, 6), dtype=np.float32)
    i2t, t2i = rank_arrays(const, [[0], [1, 2], [3], [4, 5]], [0, 1, 1, 2, 3, 3])
    assert i2t.tolist() == [0, 1, 3, 4] and t2i.tolist() == [0, 1, 1, 2, 3, 3]
    assert retrieval_metrics(const, [[0], [1, 2], [3], [4, 5]], [0, 1, 1, 2, 3, 3])["rsum"] < 600.0


def _enumerated_tie_reference(sims, img_pos, txt_pos):
    """Expected R@1/5/10 and rank0 per query by enumerating every order of the tie group at the best positive's
    score (ties broken uniformly at random), with the optimistic and pessimistic ranks."""
    import itertools
    sims = np.asarray(sims)

    def one(scores, pos):
        best = max(scores[p] for p in pos)
        above = int((scores > best).sum())
        group = [c for c in range(len(scores)) if scores[c] == best]
        perms = list(itertools.permutations(group))
        ranks = [above + min(order.index(p) for p in pos if p in group) for order in perms]
        hits = [np.mean([r < k for r in ranks]) for k in (1, 5, 10)]
        n_neg = sum(1 for c in group if c not in pos)
        return hits, float(np.mean(ranks)), above, above + n_neg

    i2t = [one(sims[i], set(img_pos[i])) for i in range(sims.shape[0])]
    t2i = [one(sims[:, j], {int(txt_pos[j])}) for j in range(sims.shape[1])]
    return i2t, t2i


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tie_rules_match_enumeration(seed):
    from itr_lib.metrics import tie_counts
    rng = np.random.default_rng(seed)
    sims, img2txt, txt2img = random_problem(5, seed, max_caps=3)
    sims = rng.integers(0, 3, size=sims.shape).astype(np.float32)  # tie groups of several candidates
    ti, tt = tie_counts(sims, img2txt, txt2img, chunk_size=2)
    ref_i, ref_t = _enumerated_tie_reference(sims, img2txt, txt2img)
    for ties, ref in ((ti, ref_i), (tt, ref_t)):
        np.testing.assert_allclose(ties.hits(), [r[0] for r in ref], atol=1e-12)
        np.testing.assert_allclose(ties.ranks("expected"), [r[1] for r in ref], atol=1e-12)
        assert ties.ranks("optimistic").tolist() == [r[2] for r in ref]
        assert ties.ranks("pessimistic").tolist() == [r[3] for r in ref]
    m = retrieval_metrics(sims, img2txt, txt2img)
    assert m["i2t_r5"] == pytest.approx(100 * np.mean([r[0][1] for r in ref_i]))
    assert m["t2i_meanr"] == pytest.approx(np.mean([r[1] for r in ref_t]) + 1)
    lo = retrieval_metrics(sims, img2txt, txt2img, tie_rule="pessimistic")["rsum"]
    hi = retrieval_metrics(sims, img2txt, txt2img, tie_rule="optimistic")["rsum"]
    assert lo <= m["rsum"] <= hi and lo < hi  # the bounds differ on this tie-heavy matrix


# ---------------------------------------------------------------------------------------------------- hand-made
def test_hand_made_ranks():
    # 3 images, 5 captions. img2txt: 0 -> {0, 1}, 1 -> {2}, 2 -> {3, 4}.
    sims = np.array([
        # c0   c1   c2   c3   c4
        [0.9, 0.1, 0.5, 0.3, 0.2],   # img0: best own caption c0 at position 0             -> rank0 = 0
        [0.8, 0.7, 0.6, 0.1, 0.0],   # img1: own c2 beaten by c0, c1                        -> rank0 = 2
        [0.9, 0.8, 0.7, 0.6, 0.1],   # img2: own c3 (0.6) beaten by c0, c1, c2; c4 worse   -> rank0 = 3
    ], dtype=np.float32)
    img2txt = [[0, 1], [2], [3, 4]]
    txt2img = [0, 0, 1, 2, 2]
    # t2i columns: c0 -> img0 0.9 ties img2 0.9 (not strictly greater) -> 0; c1 -> img0 0.1 < 0.7, 0.8 -> 2;
    # c2 -> img1 0.6 < 0.7 (img2) -> 1; c3 -> img2 0.6 highest -> 0; c4 -> img2 0.1 < 0.2 (img0) -> 1
    i2t, t2i = rank_arrays(sims, img2txt, txt2img, chunk_size=2)
    assert i2t.tolist() == [0, 2, 3]
    assert t2i.tolist() == [0, 2, 1, 0, 1]
    m = retrieval_metrics(sims, img2txt, txt2img, chunk_size=2, tie_rule="index")
    # c0 ties img0 with img2: under the study's rule (random tie-breaking) its R@1 is 1/2, so t2i R@1 = 1.5 / 5;
    # the optimistic and pessimistic bounds count it as a hit / a miss
    assert retrieval_metrics(sims, img2txt, txt2img, chunk_size=2)["t2i_r1"] == pytest.approx(30.0)
    assert retrieval_metrics(sims, img2txt, txt2img, tie_rule="optimistic")["t2i_r1"] == pytest.approx(40.0)
    assert retrieval_metrics(sims, img2txt, txt2img, tie_rule="pessimistic")["t2i_r1"] == pytest.approx(20.0)
    assert m["i2t_r1"] == pytest.approx(100 / 3)
    assert m["i2t_r5"] == 100.0 and m["i2t_r10"] == 100.0
    assert m["i2t_medr"] == 3.0          # median(0, 2, 3) = 2 -> 3
    assert m["i2t_meanr"] == pytest.approx(5 / 3 + 1)
    assert m["t2i_r1"] == 40.0           # 2 of 5
    assert m["t2i_medr"] == 2.0          # median(0, 0, 1, 1, 2) = 1 -> 2
    assert m["t2i_meanr"] == pytest.approx(4 / 5 + 1)
    assert m["rsum"] == pytest.approx(100 / 3 + 200 + 40 + 200)
    assert m["mr"] == pytest.approx(m["rsum"] / 6)


def test_even_median_is_floored():
    # ranks 0 and 3 -> median 1.5 -> floor 1 -> medr 2
    m = metrics_from_ranks(np.array([0, 3]), np.array([0, 0]))
    assert m["i2t_medr"] == 2.0 and m["i2t_meanr"] == 2.5 and m["t2i_medr"] == 1.0


def test_perfect_and_reversed():
    n = 30
    txt2img = np.repeat(np.arange(n), 2)
    img2txt = [[2 * i, 2 * i + 1] for i in range(n)]
    perfect = np.full((n, 2 * n), -1.0, dtype=np.float32)
    perfect[txt2img, np.arange(2 * n)] = 1.0
    m = retrieval_metrics(perfect, img2txt, txt2img, chunk_size=7)
    assert m["rsum"] == 600.0 and m["mr"] == 100.0
    assert m["i2t_medr"] == m["t2i_medr"] == 1.0 and m["i2t_meanr"] == m["t2i_meanr"] == 1.0
    worst = retrieval_metrics(-perfect, img2txt, txt2img, chunk_size=7)
    # i2t: 2n-2 other captions beat both own captions; t2i: n-1 other images beat the own one
    assert worst["rsum"] == 0.0
    assert worst["i2t_medr"] == 2 * n - 1 and worst["t2i_medr"] == n
    assert worst["i2t_meanr"] == 2 * n - 1 and worst["t2i_meanr"] == n


def test_torch_and_numpy_agree():
    sims, img2txt, txt2img = random_problem(23, 11)
    a = retrieval_metrics(sims, img2txt, txt2img, chunk_size=7)
    b = retrieval_metrics(torch.from_numpy(sims), img2txt, torch.from_numpy(txt2img), chunk_size=7)
    c = retrieval_metrics(torch.from_numpy(sims).T.contiguous().T, img2txt, list(txt2img), chunk_size=4)
    assert a == b == c
    ra = rank_arrays(sims, img2txt, txt2img)
    rb = rank_arrays(torch.from_numpy(sims).requires_grad_(), img2txt, txt2img)
    assert np.array_equal(ra[0], rb[0]) and np.array_equal(ra[1], rb[1])


def test_input_validation():
    sims = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError):
        retrieval_metrics(sims, [[0], []], [0, 0, 1])        # image without captions
    with pytest.raises(ValueError):
        retrieval_metrics(sims, [[0], [5]], [0, 0, 1])       # caption index out of range
    with pytest.raises(ValueError):
        retrieval_metrics(sims, [[0]], [0, 0, 1])            # wrong number of images
    bad = sims.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        retrieval_metrics(bad, [[0], [1, 2]], [0, 1, 1])


# ---------------------------------------------------------------------------------------------------- duplicates
def test_duplicate_aware():
    # 3 images x 6 captions; caption 3 (of image 1) has the same text as caption 0 (of image 0).
    img2txt = [[0, 1], [2, 3], [4, 5]]
    txt2img = [0, 0, 1, 1, 2, 2]
    sims = np.array([
        [0.9, 0.1, 0.2, 0.8, 0.3, 0.0],
        [0.5, 0.2, 0.1, 0.4, 0.3, 0.0],
        [0.2, 0.3, 0.6, 0.1, 0.7, 0.6],
    ], dtype=np.float32)
    std_i2t, std_t2i = rank_arrays(sims, img2txt, txt2img)
    # caption 3's own image 1 scores 0.4, beaten by image 0 (0.8) -> standard rank0 1
    assert std_t2i[3] == 1
    # image 1: own best caption c3 (0.4) beaten by c0 (0.5) -> rank0 1
    assert std_i2t[1] == 1
    img2txt_dup = [[0, 1, 3], [2, 3, 0], [4, 5]]
    txt2imgs = [[0, 1], [0], [1], [1, 0], [2], [2]]
    m_std = retrieval_metrics(sims, img2txt, txt2img)
    m_dup = retrieval_metrics_dup(sims, img2txt_dup, txt2imgs)
    # Standard t2i by column: c0 img0 0.9 top -> 0; c1 img0 0.1 < 0.2, 0.3 -> 2; c2 img1 0.1 < 0.2, 0.6 -> 2;
    # c3 img1 0.4 < 0.8 -> 1; c4 img2 0.7 top -> 0; c5 img2 0.6 top -> 0.
    # Dup-aware: caption 3 accepts {0, 1} and image 0 is top -> 0 (the only t2i change; c0 was already 0).
    # Image 1 may now retrieve c0 (0.5, top of its row) -> i2t rank0 0.
    from itr_lib.metrics import _rank_arrays_sets
    dup_i2t, dup_t2i = _rank_arrays_sets(sims, img2txt_dup, txt2imgs, chunk_size=2)
    assert std_t2i.tolist() == [0, 2, 2, 1, 0, 0]
    assert dup_t2i.tolist() == [0, 2, 2, 0, 0, 0]
    assert dup_i2t.tolist() == [0, 0, 0] and std_i2t.tolist() == [0, 1, 0]
    assert m_std["t2i_r1"] == 50.0 and m_dup["t2i_r1"] == pytest.approx(400 / 6)
    assert m_std["i2t_r1"] == pytest.approx(200 / 3) and m_dup["i2t_r1"] == 100.0
    assert set(m_dup) == set(METRIC_KEYS)
    ref = naive_metrics(*naive_ranks_count(sims, img2txt_dup, txt2imgs))
    assert m_dup == ref
    out = evaluate_split(sims, img2txt, txt2img, img2txt_dup=img2txt_dup, txt2imgs=txt2imgs)
    assert out["standard"] == m_std and out["duplicate-aware"] == m_dup and "coco_1k_5fold" not in out


def test_dup_without_duplicates_equals_standard():
    sims, img2txt, txt2img = random_problem(15, 21)
    assert retrieval_metrics_dup(sims, img2txt, [[t] for t in txt2img], chunk_size=4) == \
        retrieval_metrics(sims, img2txt, txt2img, chunk_size=4)


# ---------------------------------------------------------------------------------------------------- COCO folds
def test_coco_folds_equal_mean_of_manual_folds():
    fold, n_folds = 12, 5
    sims, img2txt, txt2img = random_problem(fold * n_folds, 31, signal=2.0)
    got = coco_5fold_1k(sims, img2txt, txt2img, chunk_size=7, fold_size=fold, n_folds=n_folds)
    per = []
    for f in range(n_folds):
        imgs = list(range(f * fold, (f + 1) * fold))
        caps = [j for j in range(len(txt2img)) if txt2img[j] in imgs]
        sub = sims[np.ix_(imgs, caps)]
        sub_img2txt = [[caps.index(c) for c in img2txt[i]] for i in imgs]
        sub_txt2img = [txt2img[j] - f * fold for j in caps]
        per.append(naive_metrics(*naive_ranks_sorted(sub, sub_img2txt, sub_txt2img)))
    for k in METRIC_KEYS:
        assert got[k] == pytest.approx(np.mean([p[k] for p in per]), abs=1e-9), k
    # a fold restricts the candidates, so it is not the full-set result
    assert got != retrieval_metrics(sims, img2txt, txt2img)
    with pytest.raises(ValueError):
        coco_5fold_1k(sims[:-1], img2txt[:-1], txt2img, fold_size=fold)


def test_evaluate_split_5000_images_has_1k_folds():
    n = 5000
    txt2img = np.arange(n)  # one caption per image keeps it small (5000 x 5000 float32)
    rng = np.random.default_rng(0)
    sims = rng.standard_normal((n, n)).astype(np.float32)
    sims[txt2img, txt2img] += 3.0
    img2txt = [[i] for i in range(n)]
    out = evaluate_split(sims, img2txt, txt2img)
    assert set(out) == {"standard", "standard_optimistic", "standard_pessimistic", "coco_1k_5fold"}
    assert out["coco_1k_5fold"] == coco_5fold_1k(sims, img2txt, txt2img)
    assert out["coco_1k_5fold"]["rsum"] > out["standard"]["rsum"]  # 1K candidates is easier than 5K


# ---------------------------------------------------------------------------------------------------- bootstrap
def _hits(ranks):
    return np.stack([ranks < k for k in (1, 5, 10)], axis=1).astype(np.float64)


def test_paired_bootstrap():
    rng = np.random.default_rng(3)
    a = (rng.integers(0, 30, 200), rng.integers(0, 30, 900))
    ha = [(_hits(a[0]), _hits(a[1]))]
    same = paired_bootstrap(ha, [(ha[0][0].copy(), ha[0][1].copy())], n_boot=500, seed=1)
    assert same == {"delta_rsum": 0.0, "ci_lo": 0.0, "ci_hi": 0.0, "n_boot": 500, "n_seeds": 1}
    b = (a[0] // 3, a[1] // 3)  # every rank at least as good, many strictly better
    hb = [(_hits(b[0]), _hits(b[1]))]
    res = paired_bootstrap(ha, hb, n_boot=500, seed=1)
    expected = metrics_from_ranks(*b)["rsum"] - metrics_from_ranks(*a)["rsum"]
    assert res["delta_rsum"] == pytest.approx(expected) and res["delta_rsum"] > 0
    assert 0 < res["ci_lo"] <= res["delta_rsum"] <= res["ci_hi"]
    assert paired_bootstrap(ha, hb, n_boot=500, seed=1) == res      # seeded
    rev = paired_bootstrap(hb, ha, n_boot=500, seed=1)
    assert rev["delta_rsum"] == pytest.approx(-res["delta_rsum"]) and rev["ci_hi"] < 0
    with pytest.raises(ValueError, match="same non-zero number of seeds"):
        paired_bootstrap(ha, hb + hb)
    with pytest.raises(ValueError, match="same non-empty queries"):
        paired_bootstrap(ha, [(hb[0][0][:-1], hb[0][1])])


def test_paired_bootstrap_averages_seeds_and_takes_probabilities():
    """The point difference averages the seeds (two seeds that cancel give zero; resampling them spreads the
    interval around it); fractional hits (the expected-rank tie rule) enter as they are."""
    rng = np.random.default_rng(5)
    a = (rng.integers(0, 12, 150), rng.integers(0, 12, 400))
    b = (np.maximum(a[0] - 3, 0), np.maximum(a[1] - 3, 0))
    ha, hb = (_hits(a[0]), _hits(a[1])), (_hits(b[0]), _hits(b[1]))
    cancel = paired_bootstrap([ha, hb], [hb, ha], n_boot=200)
    assert cancel["delta_rsum"] == 0.0 and cancel["ci_lo"] < 0.0 < cancel["ci_hi"]
    half = (0.5 * (ha[0] + hb[0]), 0.5 * (ha[1] + hb[1]))
    res = paired_bootstrap([ha], [half], n_boot=200)
    full = paired_bootstrap([ha], [hb], n_boot=200)
    assert res["delta_rsum"] == pytest.approx(full["delta_rsum"] / 2)
    # the interval matches resampling query indices by hand with the same generator draws
    boots = []
    r = np.random.default_rng(0)
    ii = r.integers(0, 150, size=(200, 150))
    tt = r.integers(0, 400, size=(200, 400))
    d_i, d_t = (hb[0] - ha[0]).sum(1), (hb[1] - ha[1]).sum(1)
    boots = 100 * (d_i[ii].mean(1) + d_t[tt].mean(1))
    assert full["ci_lo"] == pytest.approx(np.percentile(boots, 2.5))
    assert full["ci_hi"] == pytest.approx(np.percentile(boots, 97.5))


def test_duplicate_ceiling_hand_computed():
    from itr_lib.metrics import caption_groups, duplicate_ceiling
    # image 0: "a", "b"; image 1: "a", "c"; image 2: "a", "A " (the same text twice)
    caps = ["a", "b", "a", "c", "a", "A "]
    img2txt, txt2img = [[0, 1], [2, 3], [4, 5]], [0, 0, 1, 1, 2, 2]
    groups = caption_groups(caps)
    assert list(groups) == [0, 1, 0, 2, 0, 0]
    m = duplicate_ceiling(img2txt, txt2img, groups)
    # t2i: the four "a" queries share one ranking: image 2 first hits 2 of them; "b" and "c" hit -> 4/6
    assert m["t2i_r1"] == pytest.approx(100 * 4 / 6)
    # i2t: images 0 and 1 put their unique string first; image 2's two own "a" tie with two foreign ones -> 1/2
    assert m["i2t_r1"] == pytest.approx(100 * 2.5 / 3)
    assert m["i2t_r5"] == pytest.approx(100.0) and m["t2i_r5"] == pytest.approx(100.0)
    # without duplicates the ceiling is perfect
    m = duplicate_ceiling([[0], [1]], [0, 1], caption_groups(["x", "y"]))
    assert m["rsum"] == pytest.approx(600.0)


def test_paired_bootstrap_resamples_seeds_so_seed_noise_widens_it():
    from itr_lib.metrics import paired_bootstrap
    rng = np.random.default_rng(0)
    n_i, n_t = 200, 1000
    a = [(rng.random((n_i, 3)) < 0.3, rng.random((n_t, 3)) < 0.3) for _ in range(3)]
    # B: seed 0 far better, seeds 1-2 equal to A -> large seed-to-seed spread of the difference
    b = [(np.ones((n_i, 3)), np.ones((n_t, 3))), a[1], a[2]]
    mean = lambda h: (np.mean([x[0] for x in h], 0), np.mean([x[1] for x in h], 0))  # noqa: E731
    q = paired_bootstrap([mean(a)], [mean(b)], n_boot=300)  # the seeds averaged first: queries resampled only
    s = paired_bootstrap(a, b, n_boot=300)                    # the study's interval: seeds and queries
    assert s["delta_rsum"] == pytest.approx(q["delta_rsum"])
    assert (s["ci_hi"] - s["ci_lo"]) > 3 * (q["ci_hi"] - q["ci_lo"])
    assert s["ci_lo"] == pytest.approx(0.0, abs=1e-9)  # draws of seeds 1-2 only give exactly no difference


def test_markdown_tables_are_short_and_pool_std():
    import pandas as pd
    from itr_lib.tables import MD_MAX_COLUMNS, reader_view
    df = pd.DataFrame({"dataset": ["ucm", "ucm"], "variant": ["a", "b"], "n_seeds": [3, 1], "run": ["r1", "r2"],
                       "mr": [20.0, 21.0], "mr_std": [0.5, 0.0], "empty": [float("nan")] * 2,
                       **{f"x{i}": [1.0, 2.0] for i in range(20)}})
    v = reader_view(df)
    assert "run" not in v and "dataset" not in v and "empty" not in v and "mr_std" not in v
    assert list(v.mr) == ["20.00 ± 0.50", "21.00"]  # no ± beside a single seed
    assert len(v.columns) == MD_MAX_COLUMNS


def test_records_of_different_tie_rules_are_never_compared():
    from itr_lib.metrics import require_same_tie_rule
    assert require_same_tie_rule({"a": "expected", "b": "expected"}) == "expected"
    assert require_same_tie_rule({"a": None, "b": "index"}) == "index"  # no field: an index-rule record
    with pytest.raises(ValueError, match=r"old-run \(tie rule 'index'\) with new-run \(tie rule 'expected'\)"):
        require_same_tie_rule({"old-run": None, "new-run": "expected"}, "the levers")
