"""The synthetic gallery (itr_lib.efficiency.synthetic): sampled items have the real data's nearest-neighbour
distances (two-sample KS statistic on held-out data) where the tiled gallery's do not, galleries are prefixes of
larger ones, and bad input is refused with a clear message."""
import io

import faiss
import numpy as np
import pandas as pd
import pytest

from itr_lib import efficiency as eff
from itr_lib.efficiency import synthetic as syn


def mixture_data(n: int = 3000, d: int = 32, k: int = 8, seed: int = 0) -> np.ndarray:
    """Unit vectors from k anisotropic Gaussian clusters (each with its own random covariance)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d))
    mix = [np.random.default_rng(100 + c).standard_normal((d, d)) * 0.25 for c in range(k)]
    comp = rng.integers(k, size=n)
    x = centers[comp] + np.einsum("nij,nj->ni", np.asarray(mix)[comp], rng.standard_normal((n, d)))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_nn_distances_match_a_naive_reference():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((40, 5)).astype(np.float32), rng.standard_normal((30, 5)).astype(np.float32)
    full = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    np.testing.assert_allclose(syn.nn_distances(a, b), full.min(1), rtol=1e-4, atol=1e-5)
    self_d = np.linalg.norm(a[:, None, :] - a[None, :, :], axis=2) + np.eye(40) * 1e9
    np.testing.assert_allclose(syn.nn_distances(a, a, exclude_self=True), self_d.min(1), rtol=1e-4, atol=1e-4)


def test_synthetic_sample_has_the_real_nearest_neighbour_distances_and_tiling_does_not():
    dist, stats = syn.nn_distance_check(mixture_data(), heldout_frac=0.2, seed=0)
    s = stats.set_index(["sample", "kind"])
    assert s.loc[("synthetic", "to_real"), "ks_statistic"] < 0.1           # measured 0.05 on this data
    assert s.loc[("tiled", "to_real"), "ks_statistic"] > 0.5               # noisy copies sit next to a real item
    assert s.loc[("synthetic", "to_real"), "ks_statistic"] < s.loc[("tiled", "to_real"), "ks_statistic"]
    med = dist[dist.kind == "to_real"].groupby("sample").distance.median()
    assert med["synthetic"] == pytest.approx(med["real (held out)"], rel=0.1)
    assert med["tiled"] < 0.5 * med["real (held out)"]
    assert set(dist["sample"]) == {"real (held out)", "synthetic", "tiled"} and (dist.distance >= 0).all()


def test_mixture_sample_keeps_norms_and_cluster_shares():
    x = mixture_data(n=2000, d=16) * 3.0
    m = syn.EmbeddingMixture(x, n_clusters=8, seed=0)
    s = m.sample(4000, seed=1)
    assert s.shape == (4000, 16) and s.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(s, axis=1), 3.0, rtol=1e-4)
    assert np.array_equal(s, m.sample(4000, seed=1)) and not np.array_equal(s, m.sample(4000, seed=2))
    # two well-separated clusters holding 80 % and 20 % of the real items: the sample keeps the shares
    rng = np.random.default_rng(0)
    a, b = np.zeros(16), np.zeros(16)
    a[0], b[1] = 10.0, 10.0
    two = np.concatenate([a + rng.standard_normal((800, 16)), b + rng.standard_normal((200, 16))])
    s2 = syn.EmbeddingMixture(two, n_clusters=4, seed=0).sample(5000, seed=0)
    near_a = np.linalg.norm(s2 - a, axis=1) < np.linalg.norm(s2 - b, axis=1)
    assert near_a.mean() == pytest.approx(0.8, abs=0.03)
    with pytest.raises(ValueError, match="NaN"):
        syn.EmbeddingMixture(np.full((10, 4), np.nan))
    with pytest.raises(ValueError, match="N >= 4"):
        syn.EmbeddingMixture(np.ones(5))


def test_synthetic_gallery_is_real_then_sampled_and_prefix_stable():
    x = mixture_data(n=600, d=16)
    m = syn.EmbeddingMixture(x[100:], seed=0)
    g = syn.SyntheticGallery(x[:100], m, seed=0, block=128)
    small = g.get(300).copy()
    big = g.get(1000)
    assert big.shape == (1000, 16)
    np.testing.assert_array_equal(big[:100], x[:100])
    np.testing.assert_array_equal(big[:300], small)        # a smaller gallery is a prefix of a larger one
    fresh = syn.SyntheticGallery(x[:100], m, seed=0, block=128).get(1000)
    np.testing.assert_array_equal(fresh, big)               # whatever order the sizes were asked in
    assert syn.nn_distances(big[100:], big[:100]).min() > 1e-3  # no sampled row is a copy of a real one
    with pytest.raises(ValueError, match="same model"):
        syn.SyntheticGallery(x[:10, :8], m)


def vector_entry(n_images: int, n_texts: int = 50, d: int = 16):
    """A scaling study's vector-model entry ``(label, model, (img, txt))`` whose vectors are random unit vectors."""
    from itr_lib.config import TrainConfig
    from itr_lib.models import build_model
    import torch
    torch.manual_seed(0)
    model = build_model(TrainConfig(method="baseline", dim=d)).eval()
    g = torch.Generator().manual_seed(0)
    img = {"vec": torch.nn.functional.normalize(torch.randn(n_images, d, generator=g), dim=1)}
    txt = {"vec": torch.nn.functional.normalize(torch.randn(n_texts, d, generator=g), dim=1)}
    model.image_vectors = lambda v: v["vec"]
    model.text_vectors = lambda v: v["vec"]
    return "baseline", model, (img, txt)


def test_scaling_study_grows_a_synthetic_gallery_and_labels_the_tiled_comparison():
    entry = vector_entry(200)
    hw = {"gemm_flops_per_s": 1e12, "read_bandwidth": [{"bytes": 1, "bw_1t": 1e10, "bw_mt": 1e10}]}
    s = eff.scaling_study(entry, {}, hw=hw, min_items=200, max_items=2000, per_decade=1,
                          kinds=("flat", "ivf"), budget_s=60, repeats=2, warmup=0, n_queries=10,
                          galleries=("synthetic", "tiled"), fit_vectors=mixture_data(n=400, d=16))
    assert list(s.columns[:6]) == ["index", "n_items", "ms_per_query", "recall_at_10", "floor_ms", "extrapolated"]
    assert set(zip(s.gallery_kind, s["index"])) == {(g, k) for g in ("synthetic", "tiled") for k in ("flat", "ivf")}
    assert s[s.gallery_kind == "synthetic"].gallery.str.startswith("synthetic").all()
    assert s[s.gallery_kind == "tiled"].gallery.str.startswith("tiled").all()
    assert len(eff.primary_gallery(s)) == len(s) // 2 and set(eff.primary_gallery(s).gallery_kind) == {"synthetic"}
    with pytest.raises(ValueError, match="galleries"):
        eff.scaling_study(None, {}, hw=hw, galleries=("copies",))


# ----------------------------------------------------------------------------------------------- tuning sweep
def _naive_topk(q: np.ndarray, x: np.ndarray, k: int = 10) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_sweep_picks_the_smallest_parameter_reaching_the_target(kind):
    from itr_lib.efficiency import indexes
    x = mixture_data(n=6000, d=32, k=20)
    q = mixture_data(n=60, d=32, k=20, seed=5)
    gt = _naive_topk(q, x)
    index = eff.build_faiss(kind, x, nlist=64, hnsw_m=8, ef_construction=20, pq_m=16)
    chosen, curve = eff.tune_search_param(kind, index, q, gt, target=0.9)
    left = faiss.extract_index_ivf(index).nprobe if kind != "hnsw" else index.hnsw.efSearch
    assert left == chosen                                  # the index is left at the chosen value
    # naive reference: recall of every value, computed independently of the sweep
    values = indexes.default_sweep(kind, index)
    ref = {}
    for v in values:
        indexes.set_search_param(kind, index, v)
        ids = index.search(q, 10)[1]
        ref[v] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, gt)])
    reaching = [v for v in values if ref[v] >= 0.9]
    if reaching:
        assert chosen == reaching[0]
        assert curve.value.max() == chosen                 # the sweep stops at the first value reaching it
    else:
        assert chosen == max(ref, key=ref.get)
    for _, r in curve.iterrows():
        assert r.recall_at_10 == pytest.approx(ref[int(r.value)])


def test_index_series_tunes_and_reports_floor_work_and_bytes():
    from itr_lib.efficiency import indexes
    x = mixture_data(n=300, d=32, k=10)
    gal = eff.GrowingGallery(x, noise=0.3)
    q = mixture_data(n=30, d=32, k=10, seed=3)
    hw = {"gemm_flops_per_s": 1e12, "read_bandwidth": [{"bytes": 1, "bw_1t": 1e10, "bw_mt": 1e10}]}
    gt = {}
    rows = {kind: eff.index_series_measure(kind, gal, q, repeats=2, warmup=0, gt_cache=gt, target_recall=0.95,
                                           index_params={"nlist": 32, "pq_m": 8})(4000)
            for kind in ("flat", "ivf", "ivfpq", "hnsw")}
    assert rows["flat"]["dist_per_query"] == 4000 and rows["flat"]["floor_bytes"] == 4000 * 32 * 4
    assert rows["flat"]["bytes_per_item"] == 128 and rows["ivfpq"]["bytes_per_item"] < 128 / 4 + 8 + 1
    assert rows["hnsw"]["bytes_per_item"] > 128
    for kind in ("ivf", "ivfpq", "hnsw"):
        r = rows[kind]
        curve = pd.read_json(io.StringIO(r["sweep"]))
        if curve.recall_at_10.max() >= 0.95:
            assert r["tuned_value"] == curve.value.iloc[-1] and r["recall_at_10"] >= 0.95 - 1e-9
        else:
            assert r["tuned_value"] == curve.value[curve.recall_at_10.idxmax()]
        assert 0 < r["dist_per_query"] < 4000 + 32 + 1
        floor = indexes.index_floor_ms({"index": kind, **r, "n_items": 4000}, hw)
        assert floor == pytest.approx(1e3 * max(r["floor_bytes"] / 1e10, r["floor_flops"] / 1e12))


def test_atscale_measures_every_kind_at_or_above_its_floor(tmp_path):
    from itr_lib.efficiency import atscale
    code = atscale.main(["--n", "20000", "--dim", "32", "--kinds", "flat", "ivf", "--nlist", "64",
                         "--repeats", "5", "--out", str(tmp_path / "s.csv")])
    assert code == 0
    df = pd.read_csv(tmp_path / "s.csv")
    assert list(df.columns[:6]) == ["index", "n_items", "ms_per_query", "recall_at_10", "floor_ms", "extrapolated"]
    assert list(df["index"]) == ["flat", "ivf"] and (df.n_items == 20000).all() and not df.extrapolated.any()
    assert df.set_index("index").recall_at_10["flat"] == 1.0
    assert (df.floor_ms > 0).all() and (df.bytes_per_item > 0).all()
    assert (tmp_path / "s.hardware.json").is_file()


def test_query_side_table_says_which_part_dominates(tmp_path):
    from itr_lib.efficiency.query_cost import minilm_ms_per_caption, query_side_table
    f = tmp_path / "feature_extraction.csv"
    pd.DataFrame({"kind": ["text", "image", "text"], "items": [1000, 10, 3000], "seconds": [1.0, 5.0, 3.0]}).to_csv(f)
    assert minilm_ms_per_caption(f) == pytest.approx(1.0)          # 4 s / 4000 captions
    assert np.isnan(minilm_ms_per_caption(tmp_path / "missing.csv"))
    table = pd.DataFrame({"method": ["baseline", "MrSw exhaustive"], "mode": ["vector", "exhaustive"],
                          "encode_ms_t2i": [0.5, 2.0]})
    scaling = pd.DataFrame({"index": ["flat"] * 3 + ["MrSw exhaustive"] * 2,
                            "n_items": [1000, 100_000, 1_000_000, 1000, 100_000],
                            "ms_per_query": [0.1, 10.0, 100.0, 50.0, 5000.0],
                            "extrapolated": [False, False, False, False, True]})
    q = query_side_table(table, scaling, minilm_ms=1.0).set_index(["method", "search", "n_items"])
    assert q.loc[("baseline", "flat", 1000)].dominant == "encode"      # 1.5 ms encode vs 0.1 ms search
    assert q.loc[("baseline", "flat", 1000)].total_ms == pytest.approx(1.6)
    assert q.loc[("baseline", "flat", 100_000)].dominant == "search"
    assert q.loc[("MrSw exhaustive", "MrSw exhaustive", 1_000_000)].n_items_used == 100_000  # nearest measured
    assert q.loc[("MrSw exhaustive", "MrSw exhaustive", 1_000_000)].extrapolated
    assert ("MrSw exhaustive", "flat", 1000) not in q.index             # a fine-grained method keeps its own search
    huge = pd.concat([scaling, pd.DataFrame({"index": ["ivfpq_sq8"], "n_items": [10_000_000], "ms_per_query": [20.0],
                                             "extrapolated": [False]})], ignore_index=True)
    q = query_side_table(table, huge, minilm_ms=1.0).set_index(["method", "search", "n_items"])
    assert q.loc[("baseline", "ivfpq_sq8", 1_000_000)].n_items_used == 10_000_000  # one decade away: shown, labelled
    assert ("baseline", "ivfpq_sq8", 100_000) not in q.index           # two decades away: not a stand-in


def test_available_memory_counts_reclaimable_cache(tmp_path):
    """MemAvailable (free + reclaimable page cache) is what a new gallery can take; free pages alone understate it
    once feature caches have been read (which once stopped every 1M-item series as 'does not fit')."""
    from itr_lib.efficiency.hardware import available_memory
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       24684768 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n")
    assert available_memory(str(info)) == 20000000 * 1024
    assert available_memory(str(tmp_path / "missing")) > 0  # falls back to sysconf on a system without the file


def test_scaling_figure_gives_each_index_its_own_colour_and_its_tiled_line_the_same():
    import matplotlib
    matplotlib.use("Agg")
    from itr_lib.plots.efficiency import scaling_figure
    names = ["flat", "ivf", "ivfpq", "hnsw", "ivfpq_sq8", "TGDT two-stage", "MrSw exhaustive", "SCAN (cross-attention)"]
    rows = [{"index": k, "n_items": n, "ms_per_query": 1.0 + j, "recall_at_10": 0.9, "floor_ms": 0.5,
             "extrapolated": False, "gallery_kind": g}
            for j, k in enumerate(names) for n in (1000, 10_000)
            for g in (["synthetic", "tiled"] if k in ("flat", "ivf") else ["synthetic"])]
    fig = scaling_figure(pd.DataFrame(rows))
    colour = {ln.get_label(): ln.get_color() for ln in fig.axes[0].lines if not ln.get_label().startswith("_")}
    assert len({colour[k] for k in names}) == len(names)  # 13 lines once wrapped tab10: flat and MrSw shared blue
    assert colour["ivf (tiled)"] == colour["ivf"] and colour["flat (tiled)"] == colour["flat"]
