"""The speed levers' accuracy check (itr_lib.levers) and the query-encoder precision variants
(itr_lib.efficiency.query_encoder)."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from itr_lib.bench import study_config
from itr_lib.efficiency import query_encoder as qe
from itr_lib.levers import accuracy_check, lever_config, lever_configs


def _write(d, name, mr, i2t, t2i, seed, precision):
    (d / "metrics").mkdir(parents=True, exist_ok=True)
    (d / "metrics" / f"{name}.json").write_text(json.dumps({
        "seed": seed, "test": {"standard": {"mr": mr}}, "train_seconds": 10.0, "precision": precision}))
    np.savez(d / "metrics" / f"{name}.ranks.npz", i2t=i2t, t2i=t2i)


def test_accuracy_check_passes_equal_runs_and_fails_a_worse_lever(tmp_path):
    rng = np.random.default_rng(0)
    old, same, worse = tmp_path / "old", tmp_path / "same", tmp_path / "worse"
    for s in (0, 1, 2):
        name = study_config("baseline", "ucm", s).run_name()
        i2t, t2i = rng.integers(0, 20, 400), rng.integers(0, 20, 2000)
        _write(old, name, 40.0, i2t, t2i, s, "fp32")
        _write(same, name, 40.0, i2t, t2i, s, "bf16")
        _write(worse, name, 30.0, i2t + 15, t2i + 15, s, "bf16")  # every query 15 ranks lower
    ok = accuracy_check(old, same, "ucm", ["baseline", "tgdt"], n_boot=200)
    assert ok[0]["verdict"] == "passes" and ok[0]["delta_mr"] == 0 and ok[0]["half_width_mr"] < 1
    assert ok[0]["precision_new"] == "bf16" and ok[0]["n_seeds"] == 3
    assert ok[1]["verdict"] == "not run"  # no tgdt records
    bad = accuracy_check(old, worse, "ucm", ["baseline"], n_boot=200)[0]
    assert bad["delta_mr"] < -5 and bad["verdict"].startswith("fails")


def test_lever_configs_keep_the_run_identity():
    cfgs = lever_configs("tgdt", "ucm")
    assert set(cfgs) == {"fp32", "bf16", "bf16+buckets", "bf16+buckets+scores"}
    assert len({c.run_name() for c in cfgs.values()}) == 1  # runtime fields only
    assert cfgs["bf16+buckets"].length_buckets == 8 and cfgs["fp32"].precision == "fp32"
    both = cfgs["bf16+buckets+scores"]
    assert (both.precision, both.length_buckets, both.score_precision) == ("bf16", 8, "bf16")
    assert cfgs["bf16+buckets"].score_precision == "fp32"
    assert set(lever_configs("aladin", "ucm")) == {"fp32", "bf16", "bf16+buckets"}  # its MrSw teacher: untouched
    scan = lever_configs("scan", "ucm")
    assert set(scan) == {"fp32", "bf16", "bf16+compiled", "bf16+scores"}  # no text transformer to bucket
    assert len({c.run_name() for c in scan.values()}) == 1
    assert scan["bf16+scores"].score_precision == "bf16" and scan["bf16+compiled"].score_precision == "fp32"
    assert set(lever_configs("mrsw", "ucm")) == {"fp32", "bf16", "bf16+scores"}  # nothing to compile


def test_a_levers_reruns_are_the_seed_matched_records_with_the_lever_on():
    for lever, variant, field, value in [("bf16+buckets", "aladin", "length_buckets", 8),
                                         ("bf16+scores", "mrsw", "score_precision", "bf16"),
                                         ("bf16+buckets+scores", "tgdt", "score_precision", "bf16"),
                                         ("bf16", "baseline", "precision", "bf16")]:
        for seed in (0, 2):
            cfg, record = lever_config(lever, variant, "rsicd", seed), study_config(variant, "rsicd", seed)
            assert cfg.run_name() == record.run_name() and cfg.seed == seed  # found beside its float32 record
            assert getattr(cfg, field) == value != getattr(record, field)
    with pytest.raises(ValueError, match="checked on tgdt, aladin"):
        lever_config("bf16+buckets", "scan", "ucm", 0)  # it would change nothing: refused, not run as a no-op
    with pytest.raises(ValueError, match="unknown lever"):
        lever_config("int8", "tgdt", "ucm", 0)


def test_a_lever_of_some_methods_is_adopted_on_their_checks_only():
    import pandas as pd
    from itr_lib.levers import adoptable
    rows = [{"dataset": ds, "method": m, "lever": "bf16+scores", "verdict": "passes", "n_seeds": 3}
            for ds in ("ucm", "rsicd") for m in ("scan", "mrsw")]
    t = pd.DataFrame(rows)
    assert adoptable(t, "bf16+scores")
    assert not adoptable(t.iloc[1:], "bf16+scores")  # RSICD or UCM missing: not adopted
    t2 = t.copy()
    t2.loc[0, "verdict"] = "fails: interval excludes 0"
    assert not adoptable(t2, "bf16+scores")
    assert not adoptable(t.assign(lever="bf16"), "bf16")  # bf16 needs baseline, LCA+CRA and TGDT
    # per method: SCAN's two checks pass while MrSw's RSICD check is missing -> SCAN adopted, MrSw not
    no_mrsw_rsicd = t[~((t.dataset == "rsicd") & (t.method == "mrsw"))]
    assert adoptable(no_mrsw_rsicd, "bf16+scores", "scan") and not adoptable(no_mrsw_rsicd, "bf16+scores", "mrsw")
    assert not adoptable(no_mrsw_rsicd, "bf16+scores")  # the lever as a whole: not yet
    assert not adoptable(t, "bf16+scores", "tgdt")  # a method the lever does not change is never "adopted"
    assert not adoptable(t.assign(lever="bf16"), "bf16", "scan")  # bf16 stays all-or-nothing


def test_the_top_lever_is_checked_against_the_adapted_points_records_on_top_of_the_adopted_levers(tmp_path):
    """bf16+top's reruns are the adapted point's runs (same names as its float32 records) with the levers 02 trains
    each method with and the top's 1 x 1 convolutions in bf16; its check reads those records, its rows are named
    '<method>, adapted top', and it is adopted per method on both datasets' checks."""
    import pandas as pd
    from itr_lib.experiments import ADAPTED_CHANGE
    from itr_lib.levers import TOP_LEVER, adoptable
    from itr_lib.levers import new_default_kw
    for v in ("baseline", "lca+cra", "tgdt"):
        cfg, record = lever_config(TOP_LEVER, v, "ucm", 1), study_config(v, "ucm", 1, **ADAPTED_CHANGE)
        assert cfg.run_name() == record.run_name() != study_config(v, "ucm", 1).run_name()
        assert (cfg.top_precision, cfg.precision, cfg.image_top_blocks) == ("bf16", "bf16", 6)
        for k, val in new_default_kw(v).items():  # on top of what 02 trains the method with today
            assert getattr(cfg, k) == ("bf16" if k == "precision" else val), (v, k)
    assert lever_config(TOP_LEVER, "tgdt", "ucm", 0).length_buckets == 8
    with pytest.raises(ValueError, match="checked on baseline, lca\\+cra, tgdt"):
        lever_config(TOP_LEVER, "scan", "ucm", 0)
    rng = np.random.default_rng(0)
    old, new = tmp_path / "old", tmp_path / "new"
    for s in (0, 1, 2):
        i2t, t2i = rng.integers(0, 20, 400), rng.integers(0, 20, 2000)
        _write(old, study_config("baseline", "ucm", s).run_name(), 30.0, i2t + 9, t2i + 9, s, "fp32")  # frozen point
        name = study_config("baseline", "ucm", s, **ADAPTED_CHANGE).run_name()
        _write(old, name, 40.0, i2t, t2i, s, "fp32")
        _write(new, name, 40.0, i2t, t2i, s, "bf16")
    row = accuracy_check(old, new, "ucm", ["baseline"], lever=TOP_LEVER, n_boot=200)[0]
    assert row["method"] == "baseline, adapted top" and row["delta_mr"] == 0 and row["verdict"] == "passes"
    assert row["n_seeds"] == 3 and row["reference_seeds"] == ""
    # seeds beyond the records: the old side from the lever's float32 reference reruns (new/reference)
    from itr_lib.levers import reference_config
    for s in (3, 4):
        ref = reference_config(TOP_LEVER, "baseline", "ucm", s)
        assert (ref.precision, ref.top_precision, ref.image_top_blocks) == ("fp32", "fp32", 6)
        assert ref.run_name() == lever_config(TOP_LEVER, "baseline", "ucm", s).run_name()
        i2t, t2i = rng.integers(0, 20, 400), rng.integers(0, 20, 2000)
        _write(new / "reference", ref.run_name(), 40.0, i2t, t2i, s, "fp32")
        _write(new, ref.run_name(), 40.0, i2t + (s == 4), t2i, s, "bf16")
    row = accuracy_check(old, new, "ucm", ["baseline"], lever=TOP_LEVER, n_boot=200)[0]
    assert row["n_seeds"] == 5 and row["seeds"] == "0,1,2,3,4" and row["reference_seeds"] == "3,4"
    assert row["delta_mr"] < 0  # seed 4's reruns rank every image query one lower
    rows = [{"dataset": ds, "method": f"{m}, adapted top", "lever": TOP_LEVER, "verdict": "passes", "n_seeds": 3}
            for ds in ("ucm", "rsicd") for m in ("baseline", "lca+cra", "tgdt")]
    t = pd.DataFrame(rows)
    assert adoptable(t, TOP_LEVER) and adoptable(t, TOP_LEVER, "tgdt, adapted top")
    assert not adoptable(t.iloc[1:], TOP_LEVER, "baseline, adapted top") and adoptable(t.iloc[1:], TOP_LEVER, "tgdt, adapted top")
    assert not adoptable(t.assign(method=[r["method"].split(",")[0] for r in rows]), TOP_LEVER)  # frozen-point rows


def test_top_precision_reaches_only_the_runs_that_train_the_image_top():
    """02's and 07's TOP_PRECISION: the adapted point's configs of the variants in TOP_PRECISION_METHODS get it; the
    frozen grid's and the other variants' keep the default (the field is an error without a top); a value outside
    fp32 / bf16, or an unknown variant, is refused by the parameter check."""
    from itr_lib.cost import notebook_defaults
    from itr_lib.experiments import notebook_grids
    from itr_lib.io import REPO_ROOT as REPO
    from itr_lib.params import range_errors
    from itr_lib.recipe.levers import lever_config as recipe_config
    p = notebook_defaults(REPO / "notebooks" / "02_ablations.ipynb")
    from itr_lib.config import method_key
    from itr_lib.levers import new_default_kw
    p = notebook_defaults(REPO / "notebooks" / "02_ablations.ipynb")
    variants = ["baseline", "cra", "lca+cra", "tgdt"]
    p = {**p, "TOP_PRECISION": "bf16", "TOP_PRECISION_METHODS": ["baseline", "lca+cra"], "COMPARISON_SEEDS": [0],
         "COMPARISON_DATASETS": ["ucm"], "COMPARISON_METHODS": variants,
         "ADAPTED_COMPARISON": [{"dataset": "ucm", "seeds": [0], "methods": variants}]}
    cfgs, plan = notebook_grids(p)
    tops = {(v, bool(c.image_top_blocks)): c.top_precision for _, v, c in plan}
    assert all(method_key(vars(c)) == v for _, v, c in plan)
    assert tops == {**{(v, False): "fp32" for v in variants}, ("baseline", True): "bf16", ("cra", True): "fp32",
                    ("lca+cra", True): "bf16", ("tgdt", True): "fp32"}
    assert all(c.top_precision == "fp32" for c in cfgs)
    _, plan = notebook_grids({**p, "TOP_PRECISION_METHODS": []})
    assert all(c.top_precision == "fp32" for _, _, c in plan)
    # the bench's "new code" side of an adapted row follows the same lists
    listed = notebook_defaults(REPO / "notebooks" / "02_ablations.ipynb")["TOP_PRECISION_METHODS"]
    for v in variants:
        assert new_default_kw(v, adapted=True)["top_precision"] == ("bf16" if v in listed else "fp32"), v
    base = {"top_precision": "bf16"}
    assert recipe_config({"image_top_blocks": 6}, "ucm", 0, base=base).top_precision == "bf16"
    assert recipe_config({}, "ucm", 0, base=base).top_precision == "fp32"
    base = {"top_precision": "bf16", "top_precision_methods": ["lca+cra"]}
    assert recipe_config({"image_top_blocks": 6}, "ucm", 0, "lca+cra", base=base).top_precision == "bf16"
    assert recipe_config({"image_top_blocks": 6}, "ucm", 0, "baseline", base=base).top_precision == "fp32"
    assert range_errors({"TOP_PRECISION": "int8"}) and not range_errors({"TOP_PRECISION": "bf16"})
    assert range_errors({"TOP_PRECISION_METHODS": ["lca-cra"]})
    assert not range_errors({"TOP_PRECISION_METHODS": ["baseline", "lca+cra"]})


class _TinyEncoder(torch.nn.Module):
    """A stand-in for the HF MiniLM: ids -> embedding -> two linear layers (what int8 quantises)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(50, 384)
        self.l1, self.l2 = torch.nn.Linear(384, 384), torch.nn.Linear(384, 384)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(last_hidden_state=self.l2(torch.relu(self.l1(self.emb(input_ids)))))


def test_query_encoder_variants():
    m = _TinyEncoder().eval()
    q = qe.variant_model(m, "int8")
    assert "quantized" in type(q.l1).__module__ and isinstance(m.l1, torch.nn.Linear)  # a copy, original kept
    assert qe.variant_model(m, "bf16").l1.weight.dtype == torch.bfloat16 and m.l1.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="variant"):
        qe.variant_model(m, "fp8")
    ids, lengths = np.array([[1, 5, 7, 2, 0], [1, 9, 2, 0, 0]]), np.array([4, 3])
    models = {k: qe.variant_model(m, k) for k in ("fp32", "int8", "bf16")}  # the lean ones need a BERT (below)
    states, secs = qe.encode_queries(models, ids, lengths, warmup=1)
    assert states["fp32"].shape == (2, 5, 384) and states["fp32"].dtype == np.float16
    assert not states["fp32"][1, 3:].any() and states["fp32"][1, :3].any()  # zero padding after the query
    ref = m(torch.from_numpy(ids[:1, :4]), None).last_hidden_state[0].detach().numpy().astype(np.float16)
    np.testing.assert_array_equal(states["fp32"][0, :4], ref)
    for k in ("int8", "bf16"):  # close to float32, not equal
        d = np.abs(states[k].astype(np.float32) - states["fp32"].astype(np.float32)).max()
        assert 0 < d < 0.2, k
    assert all(s.shape == (2,) and (s > 0).all() for s in secs.values())
    assert qe.adoptable({"top10_agreement": 0.995, "delta_mr": -0.2}, noise_mr=1.0)
    assert not qe.adoptable({"top10_agreement": 0.98, "delta_mr": 0.0}, noise_mr=1.0)
    assert not qe.adoptable({"top10_agreement": 1.0, "delta_mr": -1.5}, noise_mr=1.0)


def test_a_lever_is_adopted_only_when_every_required_check_ran_on_three_seeds_and_passes():
    """The issue's bar: baseline, LCA+CRA and TGDT on UCM and RSICD, 3 seeds each; a check not run (or on fewer
    seeds) keeps the lever off by default."""
    import pandas as pd
    from itr_lib.levers import REQUIRED_CHECKS, adoptable
    full = pd.DataFrame([{"dataset": d, "method": m, "lever": "bf16", "verdict": "passes", "n_seeds": 3}
                         for d, m in REQUIRED_CHECKS])
    assert adoptable(full, "bf16")
    assert not adoptable(full[~((full.dataset == "rsicd") & (full.method == "tgdt"))], "bf16")
    partial = full.copy()
    partial.loc[(partial.dataset == "rsicd") & (partial.method == "lca+cra"), "n_seeds"] = 1
    assert not adoptable(partial, "bf16")
    failing = full.copy()
    failing.loc[0, "verdict"] = "fails"
    assert not adoptable(failing, "bf16")


def _tiny_bert():
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=32)
    cfg._attn_implementation = "eager"
    return BertModel(cfg).eval()


def test_lean_minilm_is_the_transformers_forward_for_one_query():
    from itr_lib.efficiency.query_encoder import LeanMiniLM
    bert = _tiny_bert()
    ids = torch.tensor([[2, 17, 45, 9, 88, 3]])
    with torch.inference_mode():
        ref = bert(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
        lean = LeanMiniLM(bert)
        torch.testing.assert_close(lean(ids, torch.ones_like(ids)).last_hidden_state, ref.last_hidden_state,
                                   rtol=1e-5, atol=1e-5)
        for k in range(4):  # the text top's cut: the states after k layers
            torch.testing.assert_close(lean(ids, layer=k).last_hidden_state, ref.hidden_states[k], rtol=1e-5,
                                       atol=1e-5)
        from itr_lib.lean_minilm import packed_available
        if packed_available():  # oneDNN with pre-packed weights: the same function up to summation order
            torch.testing.assert_close(LeanMiniLM(bert, packed=True)(ids, layer=2).last_hidden_state,
                                       ref.hidden_states[2], rtol=1e-5, atol=1e-5)
            packed_mixed = LeanMiniLM(bert, torch.bfloat16, packed=True)(ids).last_hidden_state
        mixed = LeanMiniLM(bert, torch.bfloat16)(ids).last_hidden_state
        if packed_available():  # the same bf16 products, packed or not
            torch.testing.assert_close(packed_mixed, mixed, rtol=1e-5, atol=1e-5)
    # bf16 matmul inputs only: float32 out, within bf16 rounding of the float32 forward, not equal to it
    assert mixed.dtype == torch.float32
    diff = (mixed - ref.last_hidden_state).abs().max().item()
    assert 0 < diff < 0.1
    with pytest.raises(ValueError, match="one query"):
        lean(torch.tensor([[2, 17, 0]]), torch.tensor([[1, 1, 0]]))


def test_text_encoder_query_path_agrees_with_the_batch_path():
    """The explorer's query path (TextEncoder.encode_query: the adopted query kernel) against the transformers
    forward the feature cache was built with, on the real MiniLM: same layout, the same states up to rounding."""
    from itr_lib.backbones import TextEncoder
    from itr_lib.lean_minilm import query_kernel
    enc = TextEncoder("cpu")
    ids, lengths = enc.tokenize(["a river passes through a green forest near some buildings"])
    for layer in (None, 4):
        a, b = enc.encode_ids(ids, lengths, layer), enc.encode_query(ids, lengths, layer)
        n = int(lengths[0])
        assert a.shape == b.shape == (1, ids.shape[1], 384) and not b[0, n:].any()
        cos = (a[0, :n] * b[0, :n]).sum(-1) / np.linalg.norm(a[0, :n], axis=-1) / np.linalg.norm(b[0, :n], axis=-1)
        assert cos.min() > 0.999, (layer, cos.min())
        assert enc.query_kernel == query_kernel()[0] and np.abs(a - b).max() < 1e-4


def test_query_kernel_falls_back_without_onednn(monkeypatch):
    """Without oneDNN the query path runs the unpacked kernel, says so, and a packed LeanMiniLM is a clear error."""
    import itr_lib.lean_minilm as lm
    monkeypatch.setattr(lm, "packed_available", lambda: False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    kernel, reason = lm.query_kernel()
    assert kernel == "lean-fp32" and "no oneDNN" in reason
    with pytest.raises(RuntimeError, match="packed=False"):
        lm.LeanMiniLM(_tiny_bert(), packed=True)


def test_versions_compare_the_old_tree_with_the_notebooks_defaults(tmp_path):
    from itr_lib.levers import new_default_kw
    from itr_lib.timings import source_tree
    # the new side trains with 02's parameter defaults (what a rerun of the study does)
    assert new_default_kw("scan") == {"precision": "auto", "compile_scores": "auto", "score_precision": "bf16"}
    assert new_default_kw("tgdt") == {"precision": "auto", "compile_scores": "auto", "score_precision": "bf16",
                                      "length_buckets": 8}  # its bf16+buckets+scores check passed
    assert new_default_kw("baseline") == {"precision": "auto", "compile_scores": "auto"}  # no score matmul to lower
    # the old side is a commit's itr_lib, unpacked on its own
    tree = source_tree("HEAD", tmp_path / "old")
    import subprocess
    from itr_lib.io import REPO_ROOT
    head = subprocess.run(["git", "show", "HEAD:itr_lib/levers.py"], capture_output=True, text=True,
                          cwd=str(REPO_ROOT), check=True).stdout
    assert (tree / "itr_lib" / "levers.py").read_text() == head
    assert (tree / "itr_lib" / "__init__.py").is_file() and not (tree / "tests").exists()


def test_process_ratios_are_paired_medians():
    from itr_lib.timings import _process_ratios
    old = [{"step": [1.0, 1.2, 1.1], "val": [2.0, 2.2], "steps_per_epoch": 14},
           {"step": [0.9, 1.3, 1.0], "val": [2.1, 2.0], "steps_per_epoch": 14}]
    new = [{"step": [1.5, 1.4, 1.6], "val": [2.5, 2.9], "steps_per_epoch": 14},
           {"step": [1.2, 1.7, 1.3], "val": [2.4, 2.6], "steps_per_epoch": 14}]
    r = _process_ratios(old, new)
    # per process: step medians old 1.1, 1.0 / new 1.5, 1.3; val medians old 2.1, 2.05 / new 2.7, 2.5
    assert r["step_s_old"] == 1.05 and r["step_s_new"] == 1.4 and r["val_s_new"] == 2.6
    assert r["step_speedup"] == pytest.approx((1.1 / 1.5 + 1.0 / 1.3) / 2)
    assert r["val_speedup"] == pytest.approx((2.1 / 2.7 + 2.05 / 2.5) / 2)
    assert r["run_speedup"] == pytest.approx(((14 * 1.1 + 2.1) / (14 * 1.5 + 2.7) + (14 * 1.0 + 2.05) / (14 * 1.3 + 2.5)) / 2)


def test_a_check_whose_reruns_are_gone_keeps_its_previous_row_marked(tmp_path):
    import pandas as pd
    from itr_lib.levers import KEPT, _keep_previous_checks
    prev = pd.DataFrame([{"dataset": "ucm", "method": "scan", "lever": "bf16+scores", "n_seeds": 3, "seeds": "0,1,2",
                          "delta_mr": -0.06, "verdict": "passes", "records": "results/benchmarks/x"},
                         {"dataset": "ucm", "method": "mrsw", "lever": "bf16+scores", "n_seeds": 0,
                          "verdict": "not run"}])
    prev.to_csv(tmp_path / "speed_levers.csv", index=False)
    acc = pd.DataFrame([{"dataset": "ucm", "method": "scan", "lever": "bf16+scores", "n_seeds": 0, "verdict": "not run"},
                        {"dataset": "ucm", "method": "mrsw", "lever": "bf16+scores", "n_seeds": 0, "verdict": "not run"},
                        {"dataset": "ucm", "method": "tgdt", "lever": "bf16", "n_seeds": 3, "delta_mr": 0.1,
                         "verdict": "passes", "records": "results/benchmarks/precision_bf16"}])
    out = _keep_previous_checks(acc, tmp_path / "speed_levers.csv").set_index("method")
    assert out.loc["scan", "verdict"] == "passes" and out.loc["scan", "delta_mr"] == -0.06
    assert out.loc["scan", "records"] == KEPT and out.loc["scan", "seeds"] == "0,1,2"  # never the old folder's name
    assert out.loc["mrsw", "verdict"] == "not run"  # nothing to keep: still not run
    assert out.loc["tgdt", "delta_mr"] == 0.1 and out.loc["tgdt", "records"] == "results/benchmarks/precision_bf16"
    assert _keep_previous_checks(acc, tmp_path / "missing.csv").equals(acc)


def test_the_notebooks_apply_a_per_method_lever_exactly_where_its_committed_check_passed():
    """01's and 02's LENGTH_BUCKETS_METHODS and SCORE_PRECISION_METHODS list the methods whose accuracy check passed
    in the committed speed_levers.csv (levers.adoptable), no more and no fewer: the stated rule is the applied one."""
    import pandas as pd
    from itr_lib.cost import notebook_defaults
    from itr_lib.io import REPO_ROOT as REPO
    from itr_lib.cost import ADAPTED
    from itr_lib.levers import TGDT_LEVER, TOP_LEVER, TOPPED, adoptable
    table = pd.read_csv(REPO / "results" / "benchmarks" / "speed_levers.csv", dtype={"seeds": str})
    tgdt = adoptable(table, TGDT_LEVER, "tgdt")
    want_buckets = {m for m in ("aladin", "tgdt") if adoptable(table, "bf16+buckets", m)} | ({"tgdt"} if tgdt else set())
    want_scores = {m for m in ("scan", "mrsw") if adoptable(table, "bf16+scores", m)} | ({"tgdt"} if tgdt else set())
    for nb in ("01_train.ipynb", "02_ablations.ipynb"):
        p = notebook_defaults(REPO / "notebooks" / nb)
        assert set(p["LENGTH_BUCKETS_METHODS"]) == want_buckets, nb
        assert set(p["SCORE_PRECISION_METHODS"]) == want_scores, nb
    # TOP_PRECISION (02, 07: the adapted runs of the variants in TOP_PRECISION_METHODS) is bf16, and a variant is
    # listed exactly when its bf16+top check passed on both datasets
    want_top = {m for m in TOPPED if adoptable(table, TOP_LEVER, m + ADAPTED)}
    for nb in ("02_ablations.ipynb", "07_recipe.ipynb"):
        p = notebook_defaults(REPO / "notebooks" / nb)
        assert set(p["TOP_PRECISION_METHODS"]) == want_top, nb
        assert p["TOP_PRECISION"] == ("bf16" if want_top else "fp32"), nb
