"""itr_lib.hubness: each correction against a loop-based formula, the augmented-gallery faiss search against the
corrected ranking, a hub losing its top-1 counts, and the evaluation with a querybank (never the test split)."""
import math

import numpy as np
import pytest
from synthetic_split import synthetic_split, tiny_model

from itr_lib import hubness as H


def _case(seed=0, n_q=7, n_g=9, n_b=11):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (n_q, n_g)).astype(np.float32), rng.uniform(-1, 1, (n_b, n_g)).astype(np.float32),
            rng.integers(1, 4, n_b))


def _direct_inverted(s, bank, beta, w=None):
    """exp(beta s(q, g)) / sum_b w_b exp(beta s(b, g)), one entry at a time (float64)."""
    n_q, n_g = s.shape
    w = np.ones(len(bank)) if w is None else w
    out = np.zeros((n_q, n_g))
    for q in range(n_q):
        for g in range(n_g):
            z = sum(w[b] * math.exp(beta * float(bank[b, g])) for b in range(len(bank)))
            out[q, g] = math.exp(beta * float(s[q, g])) / z
    return out


def test_inverted_softmax_equals_the_direct_formula():
    s, bank, w = _case()
    for beta, weights in ((3.0, None), (7.5, w)):
        lz = H.log_normaliser(bank, beta, weights)
        got = np.exp(H.inverted_softmax(s, lz, beta))
        np.testing.assert_allclose(got, _direct_inverted(s, bank, beta, weights), rtol=1e-9)
    # stable where exp overflows float64 (beta * s = 2000): log s' = 2000 - 2000 and 1000 - 1800
    big = H.inverted_softmax(np.array([[1.0, 0.5]]), H.log_normaliser(np.array([[1.0, 0.9]]), 2000.0), 2000.0)
    assert np.isfinite(big).all() and big[0, 0] == pytest.approx(0.0) and big[0, 1] == pytest.approx(-800.0)


def test_qb_norm_equals_the_direct_rule_on_both_branches():
    s, bank, _ = _case(seed=1, n_q=12)
    beta = 4.0
    active = np.zeros(s.shape[1], dtype=bool)
    for b in range(len(bank)):  # activation set: top-1 of some bank query
        active[int(np.argmax(bank[b]))] = True
    assert not active.all()  # the case has gallery items outside the set ...
    np.testing.assert_array_equal(H.activation_set(bank), active)
    direct_norm = _direct_inverted(s, bank, beta)
    got, normalised = H.querybank_normalise(s, H.log_normaliser(bank, beta), active, beta)
    n_in = n_out = 0
    for q in range(len(s)):
        if active[int(np.argmax(s[q]))]:
            np.testing.assert_allclose(np.exp(got[q]), direct_norm[q], rtol=1e-9)
            assert normalised[q]
            n_in += 1
        else:  # outside the activation set: the raw scores, untouched
            np.testing.assert_array_equal(got[q], s[q].astype(np.float64))
            assert not normalised[q]
            n_out += 1
    assert n_in and n_out  # ... and queries of both kinds


def test_dual_softmax_transductive_equals_its_formula():
    s, _, _ = _case(seed=2)
    beta, w = 10.0, np.arange(1, s.shape[0] + 1)
    got = H.dual_softmax_transductive(s, beta, w)
    for q in range(s.shape[0]):
        for g in range(s.shape[1]):
            prior = math.exp(beta * float(s[q, g])) / sum(w[p] * math.exp(beta * float(s[p, g])) for p in range(len(s)))
            assert got[q, g] == pytest.approx(float(s[q, g]) * prior, rel=1e-9)
    assert H.METHODS["dual_softmax_transductive"] is True and "transductive" in H.dual_softmax_transductive.__name__


def test_augmented_gallery_faiss_ranking_equals_the_corrected_ranking():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((20, 6)).astype(np.float32)
    g = rng.standard_normal((50, 6)).astype(np.float32)
    bank = rng.standard_normal((30, 6)).astype(np.float32)
    beta = 2.0
    lz = H.log_normaliser(bank @ g.T, beta)
    corrected = H.inverted_softmax(q @ g.T, lz, beta)
    want = np.argsort(-corrected, axis=1, kind="stable")[:, :10]
    scores, ids = H.corrected_search(q, g, lz, beta, k=10)
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(scores, np.take_along_axis(corrected, want, 1) / beta, atol=1e-5)
    raw = np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :10]
    assert (raw != want).any()  # the correction changed some ranking, so the comparison above could fail


def test_qb_norm_search_equals_the_qb_norm_ranking():
    rng = np.random.default_rng(5)
    q, g = rng.standard_normal((40, 6)), rng.standard_normal((30, 6))
    bank = rng.standard_normal((25, 6))
    beta = 3.0
    lz, active = H.log_normaliser(bank @ g.T, beta), H.activation_set(bank @ g.T)
    want, normalised = H.querybank_normalise(q @ g.T, lz, active, beta)
    _, ids, got_norm = H.qb_norm_search(q, g, lz, active, beta, k=8)
    np.testing.assert_array_equal(got_norm, normalised)
    np.testing.assert_array_equal(ids, np.argsort(-want, axis=1, kind="stable")[:, :8])
    assert normalised.any() and not normalised.all()


def test_the_hub_loses_top1_counts_after_qb_norm():
    rng = np.random.default_rng(4)
    d, n_g = 16, 40

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)
    g = unit(rng.standard_normal((n_g, d)))
    centre = unit(rng.standard_normal(d))
    g[0] = centre  # the hub: close to every query, since every query leans towards the centre
    queries = unit(g[1:][rng.integers(0, n_g - 1, 200)] + 1.2 * centre + 0.3 * rng.standard_normal((200, d)))
    bank = unit(g[1:][rng.integers(0, n_g - 1, 400)] + 1.2 * centre + 0.3 * rng.standard_normal((400, d)))
    s, sb = queries @ g.T, bank @ g.T
    before = H.top1_counts(s)[0]
    out, facts = H.correct("qb_norm", s, 20.0, bank_scores=sb)
    after = H.top1_counts(out)[0]
    assert before > 0.3 * len(s) and after < 0.5 * before, (before, after)
    assert facts["normalised_query_fraction"] > 0


def test_bad_input_is_named():
    s, bank, _ = _case()
    with pytest.raises(ValueError, match="beta"):
        H.log_normaliser(bank, 0.0)
    with pytest.raises(ValueError, match="log_z has"):
        H.inverted_softmax(s, np.zeros(3), 1.0)
    with pytest.raises(ValueError, match="unknown hubness method"):
        H.correct("softmax", s, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        H.dual_softmax_transductive(np.full((2, 2), np.nan), 1.0)


# ---------------------------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def splits():
    return synthetic_split("train", 24, seed=1), synthetic_split("val", 10, seed=2), synthetic_split("test", 12, seed=3)


def test_the_bank_must_not_be_the_test_split(splits):
    train, _, test = splits
    model = tiny_model()
    with pytest.raises(ValueError, match="evaluated split itself"):
        H.evaluate_hubness(model, test, test, "qb_norm", 5.0)
    with pytest.raises(ValueError, match="is the evaluated split"):
        H.evaluate_hubness(model, test, synthetic_split("test", 12, seed=9), "inverted_softmax", 5.0)
    leaky = synthetic_split("train", 12, seed=3)  # another name, test's images
    leaky.split.name = "train_plus"
    with pytest.raises(ValueError, match="shares 12 image"):
        H.evaluate_hubness(model, test, leaky, "qb_norm", 5.0)
    with pytest.raises(ValueError, match="needs a querybank"):
        H.evaluate_hubness(model, test, None, "qb_norm", 5.0)


def test_evaluate_hubness_none_equals_scoring_evaluate(splits):
    from itr_lib.scoring import evaluate
    train, _, test = splits
    model = tiny_model()
    got = H.evaluate_hubness(model, test, None, "none")
    want = evaluate(model, test)
    for key in ("standard", "standard_optimistic", "standard_pessimistic", "duplicate_aware"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key
    assert got["_hubness"]["transductive"] is False


def test_evaluate_hubness_applies_each_correction_per_direction(splits):
    from itr_lib.metrics import retrieval_metrics
    from itr_lib.scoring import encode_split
    train, _, test = splits
    model = tiny_model(dim=8)
    beta = 6.0
    # the reference: full (n_images, n_texts) matrices, every bank caption counted, no distinct-text shortcut
    img, txt = encode_split(model, test, outputs="vectors")
    s = (img["vec"] @ txt["vec"].T).double().numpy()
    b_img, b_txt = encode_split(model, train, outputs="vectors")
    bank_t2i = (b_txt["vec"] @ img["vec"].T).double().numpy()   # bank captions x test images
    bank_i2t = (b_img["vec"] @ txt["vec"].T).double().numpy()   # bank images x test captions
    i2t = np.log(_direct_inverted(s, bank_i2t, beta))
    t2i = np.log(_direct_inverted(s.T, bank_t2i, beta)).T
    want_i = retrieval_metrics(i2t, test.img2txt, test.txt2img)
    want_t = retrieval_metrics(t2i, test.img2txt, test.txt2img)
    got = H.evaluate_hubness(model, test, train, "inverted_softmax", beta)
    for k in want_i:
        if k.startswith("i2t"):
            assert got["standard"][k] == pytest.approx(want_i[k]), k
        elif k.startswith("t2i"):
            assert got["standard"][k] == pytest.approx(want_t[k]), k
    ref = H.evaluate_hubness(model, test, None, "none")["standard"]
    assert got["standard"] != pytest.approx(ref)  # the correction changed something, so the check can fail
    h = got["_hubness"]
    assert h["bank"]["split"] == "train" and h["bank"]["n_texts"] == train.n_texts
    assert h["bank"]["n_distinct_texts"] < train.n_texts  # the bank's repeated captions were encoded once, weighted
    assert set(h["cost"]) >= {"bank_encode_seconds", "normaliser_seconds", "extra_us_per_query_t2i"}
    raw_top1 = np.bincount(np.argmax(s, axis=1), minlength=s.shape[1]).max() / s.shape[0]
    assert h["facts"]["i2t"]["top1_max_share_raw"] == pytest.approx(raw_top1)
    assert h["facts"]["t2i"]["top1_max_share"] == pytest.approx(
        np.bincount(np.argmax(t2i.T, axis=1), minlength=s.shape[0]).max() / s.shape[1])
    # the transductive one: softmax over all test captions (copies included) for t2i, over test images for i2t
    dual = H.evaluate_hubness(model, test, None, "dual_softmax_transductive", beta)
    d_i = retrieval_metrics(H.dual_softmax_transductive(s, beta), test.img2txt, test.txt2img)
    d_t = retrieval_metrics(H.dual_softmax_transductive(s.T, beta).T, test.img2txt, test.txt2img)
    assert dual["standard"]["i2t_r1"] == pytest.approx(d_i["i2t_r1"])
    assert dual["standard"]["t2i_r5"] == pytest.approx(d_t["t2i_r5"])
    assert dual["standard"]["mr"] == pytest.approx((sum(d_i[f"i2t_r{k}"] + d_t[f"t2i_r{k}"] for k in (1, 5, 10))) / 6)
    assert dual["_hubness"]["transductive"] is True and "transductive" in dual["_hubness"]["label"]
    prep = H.prepare(model, test, train)  # one prepared bank serves every method; dual softmax is not charged for it
    assert H.score_prepared(prep, test, "dual_softmax_transductive", beta)["_hubness"]["bank"] is None
    assert H.score_prepared(prep, test, "dual_softmax_transductive", beta)["_hubness"]["cost"]["bank_encode_seconds"] == 0
    assert H.score_prepared(prep, test, "qb_norm", beta)["_hubness"]["cost"]["bank_encode_seconds"] > 0
    # a seeded sub-bank is stated
    sub = H.evaluate_hubness(model, test, train, "qb_norm", beta, bank_size=10, seed=3)
    assert sub["_hubness"]["bank"] == {"split": "train", "n_texts": 10, "n_distinct_texts":
                                       sub["_hubness"]["bank"]["n_distinct_texts"], "n_images": 10,
                                       "bank_size": 10, "seed": 3}


def test_choose_beta_reads_val_and_returns_the_table(splits):
    train, val, test = splits
    model = tiny_model()
    beta, table = H.choose_beta(model, val, train, "qb_norm", [1.0, 5.0, 20.0])
    tried = table.beta.iloc[1:]
    assert beta in set(tried) and table["chosen"].sum() == 1 and {1.0, 5.0, 20.0} <= set(tried)
    assert table.loc[table["chosen"], "mr"].item() == table["mr"].iloc[1:].max()
    assert table["method"].iloc[0] == "none"
    assert set(tried[table.added_at_edge.iloc[1:]]) == set(tried) - {1.0, 5.0, 20.0}
    assert table["at_grid_edge"].all() == (beta in (tried.min(), tried.max()))
    with pytest.raises(ValueError, match="not test"):
        H.choose_beta(model, test, train, "qb_norm", [1.0])


def test_a_model_without_exact_vectors_is_corrected_on_its_own_score(splits):
    """exact_vectors = False (TGDT, SCAN): the correction acts on model.similarity, here a cubed inner product (same
    raw ranking as the vectors, different corrected one), on the test scores and the bank scores alike."""
    import torch

    from itr_lib.metrics import retrieval_metrics
    from itr_lib.models import RetrievalModel
    train, _, test = splits
    base = tiny_model(seed=5)

    class Cubed(RetrievalModel):
        exact_vectors = False

        def __init__(self):
            super().__init__()
            self.base = base

        def encode_images(self, regions, mask):
            return {"emb": self.base.image_vectors(self.base.encode_images(regions, mask))}

        def encode_texts(self, text, mask, word):
            return {"emb": self.base.text_vectors(self.base.encode_texts(text, mask, word))}

        def image_vectors(self, img):
            return img["emb"]

        def text_vectors(self, txt):
            return txt["emb"]

        def similarity(self, img, txt):
            return (img["emb"] @ txt["emb"].T) ** 3
    model, beta = Cubed().eval(), 8.0
    with torch.no_grad():
        iv = base.image_vectors(base.encode_images(*test.image_batch(torch.arange(test.n_images)))).double()
        tv = base.text_vectors(base.encode_texts(*test.text_batch(torch.arange(test.n_texts)))).double()
        bi = base.image_vectors(base.encode_images(*train.image_batch(torch.arange(train.n_images)))).double()
        bt = base.text_vectors(base.encode_texts(*train.text_batch(torch.arange(train.n_texts)))).double()
    s = ((iv @ tv.T) ** 3).numpy()
    i2t = np.log(_direct_inverted(s, ((bi @ tv.T) ** 3).numpy(), beta))
    t2i = np.log(_direct_inverted(s.T, ((bt @ iv.T) ** 3).numpy(), beta)).T
    got = H.evaluate_hubness(model, test, train, "inverted_softmax", beta)
    assert got["_hubness"]["score"] == "model.similarity (exhaustive)"
    assert got["standard"]["i2t_r1"] == pytest.approx(retrieval_metrics(i2t, test.img2txt, test.txt2img)["i2t_r1"])
    assert got["standard"]["t2i_r5"] == pytest.approx(retrieval_metrics(t2i, test.img2txt, test.txt2img)["t2i_r5"])
    lin = np.log(_direct_inverted(np.cbrt(s), (bi @ tv.T).numpy(), beta))  # the vectors' correction differs
    assert not np.array_equal(np.argsort(-lin, 1), np.argsort(-i2t, 1))


def test_search_beta_extends_the_grid_past_the_edge_its_val_optimum_sits_on():
    """A val curve best at the smallest candidate (val mR falling as beta rises, as RSICD LCA+CRA's and most UCM
    runs' were): the grid is extended downwards one grid step at a time (10, 20 -> 5 -> 2.5) until the best is
    inside it, and the added rows are flagged; a curve that keeps rising runs out of extensions and says so."""
    import math
    calls = []

    def val(beta):  # peaks at beta 3: below the grid's smallest candidate
        calls.append(beta)
        return {"mr": 20.0 - abs(math.log(beta / 3.0))}
    beta, table = H.search_beta(val, [10.0, 20.0, 50.0])
    assert beta == 2.5 and list(table.beta) == [1.25, 2.5, 5.0, 10.0, 20.0, 50.0]
    assert list(table.added_at_edge) == [True, True, True, False, False, False]
    assert table.loc[table.chosen, "beta"].item() == 2.5 and not table.at_grid_edge.any()
    assert calls == [10.0, 20.0, 50.0, 5.0, 2.5, 1.25]  # only val is read, each beta once
    beta, table = H.search_beta(lambda b: {"mr": b}, [10.0, 20.0], max_extend=2)  # best at the top, keeps rising
    assert beta == 80.0 and list(table.beta) == [10.0, 20.0, 40.0, 80.0] and table.at_grid_edge.all()
    beta, table = H.search_beta(lambda b: {"mr": -abs(b - 20)}, [10.0, 20.0, 50.0])  # inside: nothing added
    assert beta == 20.0 and len(table) == 3 and not table.added_at_edge.any()
    with pytest.raises(ValueError, match="positive"):
        H.search_beta(lambda b: {"mr": 0.0}, [0.0, 10.0])


def test_the_recipe_and_a_model_share_one_bank_path(splits, monkeypatch):
    """recipe.inference.prepare_vectors goes through querybank.prepare (hubness.prepare) with its own vector function (no second bank
    sampling), and for one model without views gives the scores of the model's own path."""
    from itr_lib.recipe import inference
    train, val, _ = splits
    model = tiny_model(seed=2)
    own = H.prepare(model, val, train, bank_size=10, seed=3)
    calls = []
    from itr_lib import querybank
    real = querybank.prepare
    monkeypatch.setattr(querybank, "prepare", lambda *a, **k: calls.append(k.get("vectors")) or real(*a, **k))
    rec = inference.prepare_vectors([model], val, train, bank_size=10, seed=3)
    assert len(calls) == 1 and callable(calls[0])
    for name in ("sims", "bank_t2i", "bank_i2t", "bank_t2i_w"):
        np.testing.assert_allclose(getattr(rec, name), getattr(own, name), rtol=1e-5, atol=1e-6)
    assert (rec.inverse == own.inverse).all() and rec.info["bank"]["n_texts"] == own.info["bank"]["n_texts"] == 10
    iv, tv = calls[0](val, np.arange(3), None)  # the vector function itself: the model's retrieval vectors
    from itr_lib.scoring import encode_items
    np.testing.assert_allclose(iv, encode_items(model, val, np.arange(val.n_images), "images")["vec"].numpy(),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tv, encode_items(model, val, np.arange(3), "texts")["vec"].numpy(), rtol=1e-6, atol=1e-6)
