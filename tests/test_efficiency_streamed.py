"""The streamed path of issue 18 (a gallery too large to hold: IVF-PQ at 10M items), on small sizes: the streamed
gallery equals the materialised one, the chunked exact kNN equals faiss.knn, the streamed index equals one built
from the whole array, the memory guard refuses, and the scaling study / targets / atscale CLI use it."""
import faiss
import numpy as np
import pandas as pd
import pytest

from itr_lib import efficiency as eff
from itr_lib.efficiency import streamed
from itr_lib.efficiency import synthetic as syn
from test_efficiency_gallery import mixture_data, vector_entry

HW = {"gemm_flops_per_s": 1e12, "read_bandwidth": [{"bytes": 1, "bw_1t": 1e10, "bw_mt": 1e10}]}


def _gallery(d: int = 32, n_real: int = 500, block: int = 4096) -> syn.SyntheticGallery:
    x = mixture_data(n=n_real + 1500, d=d, k=12)
    return syn.SyntheticGallery(x[:n_real], syn.EmbeddingMixture(x[n_real:], seed=0), seed=0, block=block)


def test_streamed_rows_are_the_materialised_gallery():
    g = _gallery()
    full = _gallery().get(30_000)
    for a, b in ((0, 10), (0, 500), (450, 5000), (4596, 4597), (12_000, 30_000)):
        np.testing.assert_array_equal(g.rows(a, b), full[a:b])
    parts = list(g.chunks(30_000, chunk=8192))
    assert [a for a, _ in parts] == [0, 8192, 16384, 24576]
    np.testing.assert_array_equal(np.concatenate([x for _, x in parts]), full)
    g.get(6000)                                             # rows already held are copied, the rest drawn
    np.testing.assert_array_equal(g.rows(5000, 9000), full[5000:9000])


def test_chunked_knn_equals_faiss_knn_on_the_whole_array():
    g = _gallery()
    x = g.get(50_000)
    q = mixture_data(n=40, d=32, k=12, seed=7)
    d_ref, i_ref = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    d, i = streamed.chunked_knn(q, _gallery().chunks(50_000, chunk=8192), k=10)
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_allclose(d, d_ref, rtol=1e-5)
    d, i = streamed.chunked_knn(q, ((a, x[a:a + 7]) for a in range(0, 300, 7)), k=10)  # chunks smaller than k
    np.testing.assert_array_equal(i, faiss.knn(q, x[:301], 10, metric=faiss.METRIC_INNER_PRODUCT)[1])


@pytest.mark.parametrize("params", [{"nlist": 64, "pq_m": 8},                 # trains on all 50,000 rows
                                    {"nlist": 64, "pq_m": 8, "pq_bits": 6}])  # trains on a 20,480-row prefix
def test_streamed_ivfpq_is_the_index_built_from_the_whole_array(params):
    n, q = 50_000, mixture_data(n=50, d=32, k=12, seed=3)
    knn = streamed.KnnMerge(q, 10)
    index, info = streamed.build_streamed("ivfpq", _gallery(), n, chunk=8192, index_params=params, knn=knn)
    x = _gallery().get(n)
    assert index.ntotal == n and info["train_items"] == min(n, max(40 * 64, 320 * 2 ** params.get("pq_bits", 8)))
    # the same trained quantizer and codebooks, filled with the whole array at once: the same index
    whole = faiss.clone_index(index)
    whole.reset()
    whole.add(x)
    for ix in (index, whole):
        faiss.extract_index_ivf(ix).nprobe = 8
    ids, ids_whole = index.search(q, 10)[1], whole.search(q, 10)[1]
    np.testing.assert_array_equal(ids, ids_whole)
    gt = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    np.testing.assert_array_equal(knn.I, gt)
    # and build_faiss's own index of the whole array (trained on faiss's sample of all rows): the same recall
    ref = eff.build_faiss("ivfpq", x, **params)
    faiss.extract_index_ivf(ref).nprobe = 8
    r_stream, r_ref = eff.recall_at_k(ids, gt), eff.recall_at_k(ref.search(q, 10)[1], gt)
    if info["train_items"] == n:
        np.testing.assert_array_equal(ids, ref.search(q, 10)[1])
    assert abs(r_stream - r_ref) <= 0.03, (r_stream, r_ref)


def test_streamed_measure_row_and_memory_guard():
    q = mixture_data(n=30, d=32, k=12, seed=3)
    r = streamed.streamed_index_measure("ivfpq", _gallery(), 20_000, q, repeats=2, warmup=0, chunk=4096,
                                        index_params={"nlist": 32, "pq_m": 8}, target_recall=0.9)
    assert r["streamed"] and r["chunk_items"] == 4096 and 0 <= r["recall_at_10"] <= 1 and r["ms_per_query"] > 0
    assert r["floor_bytes"] > 0 and r["bytes_per_item"] < 8 + 8 + 1 and "nprobe" in r["params"]
    with pytest.raises(ValueError, match=r"HUGE_GALLERY=20,000.*GiB"):
        streamed.build_streamed("ivfpq", _gallery(), 20_000, chunk=4096, index_params={"nlist": 32, "pq_m": 8},
                                mem_limit=1e5)
    with pytest.raises(ValueError, match="kind must be one of"):
        streamed.build_streamed("flat", _gallery(), 20_000)


def test_scaling_study_appends_streamed_rows_and_the_target_reads_the_flat_floor():
    entry = vector_entry(300)
    s = eff.scaling_study(entry, {}, hw=dict(HW), min_items=300, max_items=3000,
                          per_decade=1, kinds=("flat", "ivfpq"), budget_s=60, repeats=2, warmup=0, n_queries=20,
                          fit_vectors=mixture_data(n=400, d=16), index_params={"nlist": 16, "pq_m": 4},
                          huge_items=20_000, huge_kinds=("ivfpq",), huge_chunk=4096)
    huge = s[s.n_items == 20_000].set_index("index")
    assert bool(huge.loc["ivfpq", "streamed"]) and not bool(huge.loc["ivfpq", "extrapolated"])
    assert bool(huge.loc["flat", "extrapolated"]) and not bool(huge.loc["flat", "streamed"])
    flat_3k = s[(s["index"] == "flat") & (s.n_items == 3000)].ms_per_query.iloc[0]
    assert huge.loc["flat", "ms_per_query"] == pytest.approx(flat_3k * 20_000 / 3000)   # linear
    assert huge.loc["ivfpq", "flat_floor_ms"] == pytest.approx(eff.flat_floor_ms(20_000, 16, HW))
    assert (s[s.n_items < 20_000].streamed == False).all()  # noqa: E712
    t = eff.check_targets(None, s, at_items=2000).set_index("target")
    row = t.loc[[x for x in t.index if "compressed index" in x][0]]
    assert "flat's floor" in row.detail and "recall@10" in row.detail
    sp = huge.loc["flat", "flat_floor_ms"] / huge.loc["ivfpq", "ms_per_query"]
    assert row.value == pytest.approx(sp)
    assert row.holds == (sp >= 10 and huge.loc["ivfpq", "recall_at_10"] >= 0.95)
    with pytest.raises(ValueError, match="HUGE_GALLERY"):
        eff.scaling_study(entry, {}, hw=dict(HW), max_items=3000, huge_items=20_000,
                          huge_kinds=("hnsw",))


def test_atscale_streamed_cli(tmp_path):
    from itr_lib.efficiency import atscale
    code = atscale.main(["--n", "30000", "--dim", "32", "--kinds", "ivfpq", "--streamed", "--chunk", "8192",
                         "--nlist", "32", "--repeats", "3", "--n-real", "2000", "--out", str(tmp_path / "s.csv")])
    assert code == 0
    df = pd.read_csv(tmp_path / "s.csv")
    assert list(df["index"]) == ["ivfpq"] and df.streamed.all() and (df.n_items == 30000).all()
    assert (df.flat_floor_ms > 0).all() and (df.floor_ms > 0).all() and df.recall_at_10.between(0, 1).all()


def test_ivfpq_sq8_reranks_the_pq_shortlist_and_counts_its_bytes():
    """IVF-PQ re-ranked with 8-bit vectors: at the same nprobe its recall is at least IVF-PQ's (it re-scores IVF-PQ's
    own shortlist, 16x longer, with finer codes), and its bytes / floor add the d-byte vectors it keeps and reads."""
    from itr_lib.efficiency import indexes
    x = mixture_data(n=20_000, d=32, k=40)
    q = mixture_data(n=60, d=32, k=40, seed=5)
    gt = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    params = dict(nlist=64, pq_m=4, nprobe=16)
    pq, rr = eff.build_faiss("ivfpq", x, **params), eff.build_faiss("ivfpq_sq8", x, **params, refine_k_factor=8)
    r_pq, r_rr = eff.recall_at_k(pq.search(q, 10)[1], gt), eff.recall_at_k(rr.search(q, 10)[1], gt)
    assert r_rr >= r_pq + 0.2, (r_pq, r_rr)        # 4-byte codes alone are coarse; the re-rank recovers the order
    # the shortlist is IVF-PQ's: its top 80 (k_factor 8) re-scored; naive reference with faiss's own SQ8 decode
    cand = pq.search(q, 80)[1]
    sq = faiss.downcast_index(rr.refine_index)
    dec = sq.sa_decode(sq.sa_encode(x))
    ref = np.stack([c[np.argsort(-(dec[c] @ v), kind="stable")[:10]] for v, c in zip(q, cand)])
    got = rr.search(q, 10)[1]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, ref)]) >= 0.99
    n, d = len(x), 32
    assert indexes.index_bytes_per_item("ivfpq_sq8", rr, n) == pytest.approx(
        indexes.index_bytes_per_item("ivfpq", pq, n) + d)
    for ix in (pq, rr):
        indexes.reset_stats()
        ix.search(q, 10)
    w_rr = indexes.search_work("ivfpq_sq8", rr, n, len(q))
    indexes.reset_stats()
    pq.search(q, 10)
    w_pq = indexes.search_work("ivfpq", pq, n, len(q))
    assert w_rr["floor_bytes"] == pytest.approx(w_pq["floor_bytes"] + 80 * d)
    assert w_rr["floor_flops"] == pytest.approx(w_pq["floor_flops"] + 80 * 2 * d)
    row, _ = indexes.time_index("ivfpq_sq8", rr, q, n, gt, repeats=2, warmup=0, target_recall=0.9)
    assert "refine=SQ8 k_factor=8" in row["params"] and row["tuned_param"] == "nprobe"
    with pytest.raises(ValueError, match="refine_k_factor"):
        eff.build_faiss("ivfpq_sq8", x, **params, refine_k_factor=0)


def test_streamed_kinds_share_one_ground_truth_and_the_target_takes_the_row_reaching_recall():
    q = mixture_data(n=30, d=32, k=12, seed=3)
    gt = {}
    kw = dict(repeats=2, warmup=0, chunk=4096, index_params={"nlist": 32, "pq_m": 4}, target_recall=0.95, gt_cache=gt)
    a = streamed.streamed_index_measure("ivfpq", _gallery(), 20_000, q, **kw)
    b = streamed.streamed_index_measure("ivfpq_sq8", _gallery(), 20_000, q, **kw)
    assert a["knn_s"] > 0 and b["knn_s"] == 0 and list(gt) == [(20_000, 10)]
    np.testing.assert_array_equal(gt[(20_000, 10)], streamed.chunked_knn(q, _gallery().chunks(20_000, 4096))[1])
    assert b["index_bytes"] == pytest.approx(a["index_bytes"] + 20_000 * 32)   # the 8-bit vectors are held
    assert b["recall_at_10"] >= a["recall_at_10"]
    rows = pd.DataFrame([{"index": "ivfpq", "n_items": 20_000, "ms_per_query": 0.5, "recall_at_10": 0.6,
                          "flat_floor_ms": 20.0, "extrapolated": False, "streamed": True},
                         {"index": "ivfpq_sq8", "n_items": 20_000, "ms_per_query": 1.0, "recall_at_10": 0.97,
                          "flat_floor_ms": 20.0, "extrapolated": False, "streamed": True}])
    t = eff.check_targets(None, rows, at_items=2000).set_index("target")
    row = t.loc[[x for x in t.index if "compressed index" in x][0]]
    assert row.holds and row.value == pytest.approx(20.0) and "ivfpq_sq8 (streamed)" in row.detail
    rows.loc[1, "recall_at_10"] = 0.5                     # neither reaches it: the best recall decides
    row = eff.check_targets(None, rows, at_items=2000).set_index("target").loc[row.name]
    assert not row.holds and row.value == pytest.approx(40.0) and "ivfpq (streamed)" in row.detail


def test_one_streamed_build_serves_ivfpq_and_ivfpq_sq8():
    """The pair's IVF-PQ row is measured on ivfpq_sq8's base index: the same index a standalone streamed ivfpq build
    makes (same ids at the same nprobe), with its own bytes; the scaling study builds once when both kinds are asked."""
    q = mixture_data(n=30, d=32, k=12, seed=3)
    params = {"nlist": 32, "pq_m": 4}
    kw = dict(repeats=2, warmup=0, chunk=4096, index_params=params, target_recall=0.95)
    pq_row, rr_row = streamed.streamed_pq_pair(_gallery(), 20_000, q, **kw)
    alone = streamed.streamed_index_measure("ivfpq", _gallery(), 20_000, q, **kw)
    for key in ("recall_at_10", "tuned_value", "bytes_per_item", "index_bytes"):
        assert pq_row[key] == pytest.approx(alone[key]), key
    assert pq_row["shared_build"] == "ivfpq_sq8" and rr_row["shared_build"] == ""
    assert rr_row["index_bytes"] == pytest.approx(pq_row["index_bytes"] + 20_000 * 32)
    assert pq_row["knn_s"] > 0 and rr_row["knn_s"] == 0
    index, _ = streamed.build_streamed("ivfpq_sq8", _gallery(), 20_000, chunk=4096, index_params=params)
    solo, _ = streamed.build_streamed("ivfpq", _gallery(), 20_000, chunk=4096, index_params=params)
    base = faiss.downcast_index(index.base_index)
    for ix in (base, solo):
        ix.nprobe = 8
    np.testing.assert_array_equal(base.search(q, 10)[1], solo.search(q, 10)[1])
    calls = []
    real = streamed.build_streamed

    def counting(kind, *a, **k):
        calls.append(kind)
        return real(kind, *a, **k)
    import itr_lib.efficiency.streamed as st
    st.build_streamed = counting
    try:
        s = eff.scaling_study(vector_entry(300), {}, hw=dict(HW), min_items=300, max_items=1000, per_decade=1,
                              kinds=("flat",), budget_s=60, repeats=2, warmup=0, n_queries=20,
                              fit_vectors=mixture_data(n=400, d=16), index_params={"nlist": 16, "pq_m": 4},
                              huge_items=20_000, huge_kinds=("ivfpq", "ivfpq_sq8"), huge_chunk=4096)
    finally:
        st.build_streamed = real
    assert calls == ["ivfpq_sq8"]
    huge = s[s.n_items == 20_000].set_index("index")
    assert {"ivfpq", "ivfpq_sq8", "flat"} <= set(huge.index) and bool(huge.loc["ivfpq_sq8", "streamed"])
