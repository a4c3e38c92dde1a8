"""The recipe search (itr_lib.recipe): the greedy rule on val, lever conflicts, reuse of recorded runs, the tables."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from itr_lib import recipe
from recorded_runs import record_run


_record = record_run


def test_combine_refuses_two_levers_of_one_group():
    assert recipe.combine([{"epochs": 10}, {"region_drop": 0.1}]) == {"epochs": 10, "region_drop": 0.1}
    with pytest.raises(ValueError, match="infonce_temperature"):
        recipe.combine([{"infonce_temperature": 0.03}, {"infonce_temperature": 0.07}])


def test_best_per_group_keeps_positive_gains_best_first_one_per_group():
    gains = [("a", "g1", 0.5), ("b", "g1", 0.9), ("c", "g2", 0.7), ("d", "g3", -0.2), ("e", "g4", 0.0),
             ("f", "g5", float("nan"))]
    assert recipe.best_per_group(gains) == ["b", "c"]


def test_greedy_keeps_a_lever_only_when_the_combination_beats_the_recipe_so_far():
    # val mR of a combination: additive gains, except that "c" hurts once "a" is in
    gain = {"a": 1.0, "b": 0.5, "c": 0.4}

    def fake(change):
        names = change["levers"]
        v = 20 + sum(gain[n] for n in names) - (2.0 if {"a", "c"} <= set(names) else 0)
        return {"val": {"standard": {"rsum": 6 * v}}, "test": {"standard": {"mr": v - 1}}, "run": "+".join(names)}
    changes = {n: {"levers": [n]} for n in gain}

    def train_fn(change):  # combine() would refuse the shared key: merge the lists here
        return fake(change)
    ref = {"val": {"standard": {"rsum": 6 * 20.0}}, "test": {"standard": {"mr": 19.0}}}
    from itr_lib.recipe import levers as levers_mod
    orig = levers_mod.combine
    try:
        levers_mod.combine = lambda chs: {"levers": [n for ch in chs for n in ch["levers"]]}
        trace = recipe.greedy_train(["a", "b", "c"], ref, train_fn, changes)
    finally:
        levers_mod.combine = orig
    assert trace.chosen == ["a", "b"]
    assert [s["kept"] for s in trace.steps] == [True, True, False]
    assert [s["levers"] for s in trace.steps] == ["a", "a + b", "a + b + c"]
    assert trace.steps[1]["val_mr"] == 21.5


def test_reference_is_the_probes_d1024_mlp_baseline():
    from itr_lib.experiments import probe_confirm_configs
    ref = recipe.lever_config({}, "rsicd", 1)
    probe_base = [c for c in probe_confirm_configs("rsicd", [1], "lca+cra", "D = 1024 + residual MLP")
                  if c.method == "baseline"][0]
    assert ref.run_name() == probe_base.run_name()  # its records are reused, never retrained


def test_training_levers_reuse_the_probe_reference_and_choose_on_val(tmp_path, monkeypatch):
    levers = [("10 epochs", "schedule", {"epochs": 10}),
              ("temperature 0.03", "temperature", {"infonce_temperature": 0.03}),
              ("temperature 0.07", "temperature", {"infonce_temperature": 0.07}),
              ("drop 0.3", "dropout", {"region_drop": 0.3, "token_drop": 0.3})]
    single_val = {(): 21.0, ("epochs",): 21.6, ("t0.03",): 20.5, ("t0.07",): 21.3, ("drop",): 20.9}
    ref_cfg = recipe.lever_config({}, "rsicd", 0)
    _record(tmp_path / "probe" / "confirm-d-1024-residual-mlp", ref_cfg, 21.0, 0)
    trained = []

    def key(cfg):
        k = []
        if cfg.epochs == 10:
            k.append("epochs")
        if cfg.infonce_temperature == 0.03:
            k.append("t0.03")
        if cfg.infonce_temperature == 0.07:
            k.append("t0.07")
        if cfg.region_drop == 0.3:
            k.append("drop")
        return tuple(k)

    def fake_run_grid(cfgs, rdir, workers=1, threads=1):
        out = []
        for i, c in enumerate(cfgs):
            path = rdir / "metrics" / f"{c.run_name()}.json"
            if path.is_file():
                out.append(json.loads(path.read_text()))
                continue
            trained.append(key(c))
            v = single_val.get(key(c), 21.0 + 0.6 + 0.3 - (0.5 if "drop" in key(c) else 0))
            out.append(_record(rdir, c, v, len(trained)))
        return out
    monkeypatch.setattr("itr_lib.runs.run_grid", fake_run_grid)
    table, trace, change = recipe.training_levers("rsicd", tmp_path, levers=levers, n_boot=100)
    assert () not in trained  # the reference came from the probe's record
    assert list(table.lever) == ["reference"] + [n for n, _, _ in levers]
    assert table.val_gain.tolist() == [0.0, 0.6, -0.5, 0.3, -0.1]
    # greedy: 10 epochs (+0.6), then temperature 0.07 (+0.3, the better of its group); dropout never tried
    assert trace.chosen == ["10 epochs", "temperature 0.07"]
    assert change == {"epochs": 10, "infonce_temperature": 0.07}
    assert table.chosen.tolist() == [False, True, False, True, False]
    assert table.delta_rsum.notna().tolist() == [False, True, True, True, True]


def test_inference_spec_merge_and_slug():
    a = recipe.InferenceSpec(tta=recipe.ROT4)
    b = recipe.InferenceSpec(hubness="qb_norm", beta=20.0)
    m = a.merged(b)
    assert m == recipe.InferenceSpec(tta=recipe.ROT4, ensemble=1, hubness="qb_norm", beta=20.0)
    assert m.slug() == "tta-r0-r90-r180-r270+qb_norm-b20"
    assert recipe.InferenceSpec().slug() == "plain" and not m.transductive
    assert recipe.InferenceSpec(hubness="dual_softmax_transductive").transductive


@pytest.mark.slow
def test_recipe_runs_end_to_end_on_the_fixture(tmp_path, mini_cache, fixture_root, monkeypatch):
    """Every stage on the 12-image fixture: rotation caches, training levers, inference levers (TTA, QB-Norm with the
    training bank, the 2-seed ensemble, the transductive dual softmax), the final grid, the main-table rows."""
    root, _ = mini_cache
    base = dict(data_root=str(fixture_root), cache_dir=str(root), dim=32, batch_size=8, epochs=1, lr=2e-3,
                codebook_size=16)
    train_levers = recipe.lever_names(recipe.TRAIN_LEVERS, ["rotations (train)", "InfoNCE temperature 0.07"])
    inf = recipe.lever_names(recipe.INFERENCE_LEVERS, ["test-time rotations", "querybank normalisation (training bank)",
                                                       "seed ensemble (all seeds)"])
    needs = recipe.needed_transforms(train_levers, [s for _, _, s in inf + recipe.TRANSDUCTIVE_LEVERS])
    assert needs == {"train": list(recipe.ROT4), "val": list(recipe.ROT4), "test": list(recipe.ROT4)}
    recipe.ensure_caches("mini", needs, str(fixture_root), str(root), progress=False)
    t1, trace1, change = recipe.training_levers("mini", tmp_path, levers=train_levers, base=base, n_boot=50)
    assert len(t1) == 3 and t1.val_mr.between(0, 100).all()
    assert (tmp_path / "recipe" / "metrics").is_dir()
    t2, trace2, spec = recipe.inference_levers(change, "mini", tmp_path, seeds=[0, 1], levers=inf, base=base,
                                               betas=[5.0, 20.0], n_boot=50)
    assert t2.lever.tolist()[0] == "plain score (reference)"
    assert t2.lever.str.contains("transductive").sum() == 1 and not t2[t2.lever.str.contains("transductive")].chosen.any()
    ens = t2[t2.lever == "seed ensemble (all seeds)"].iloc[0]
    assert ens.image_encodes_per_image == 2  # two models, one grid each
    qb = t2[t2.lever.str.startswith("querybank")].iloc[0]
    assert "beta" in qb.change  # chosen on val among the candidates
    # the records are reused: a second call trains and scores nothing new
    before = sorted(p.stat().st_mtime for p in (tmp_path / "recipe" / "inference").glob("*.json"))
    recipe.inference_levers(change, "mini", tmp_path, seeds=[0, 1], levers=inf, base=base, betas=[5.0, 20.0], n_boot=50)
    assert sorted(p.stat().st_mtime for p in (tmp_path / "recipe" / "inference").glob("*.json")) == before
    final = recipe.final_runs(change, recipe.InferenceSpec(tta=recipe.ROT4, ensemble=2, hubness="qb_norm"), ["mini"],
                              tmp_path, seeds=[0, 1], base=base, betas=[5.0], n_boot=50)
    assert set(final.scoring) == {"plain", "recipe", "recipe + 2-seed ensemble"}
    # every row's per-query latency was timed (04's protocol); the ensemble stores two models' vectors per item
    assert (final.ms_per_query > 0).all() and np.isfinite(final.ms_per_query).all()
    one = final[(final.variant == "baseline") & (final.scoring == "recipe")].iloc[0]
    ens2 = final[(final.variant == "baseline") & (final.scoring == "recipe + 2-seed ensemble")].iloc[0]
    assert ens2.bytes_per_item == 2 * one.bytes_per_item == 2 * 4 * 32
    lat = sorted((tmp_path / "recipe" / "latency").glob("*.json"))
    assert len(lat) == 6  # 2 variants x (plain, recipe, ensemble)
    stamps = [p.stat().st_mtime for p in lat]
    again = recipe.final_runs(change, recipe.InferenceSpec(tta=recipe.ROT4, ensemble=2, hubness="qb_norm"), ["mini"],
                              tmp_path, seeds=[0, 1], base=base, betas=[5.0], n_boot=50)
    assert [p.stat().st_mtime for p in lat] == stamps  # latency records reused, so the table rebuilds exactly
    assert again.ms_per_query.tolist() == final.ms_per_query.tolist()
    # a rebuild from the records needs no checkpoint (a fresh clone has none): nothing is loaded or retrained
    import shutil
    for ck in (recipe.recipe_dir(tmp_path) / "runs").glob("*/best.pt"):
        shutil.copy(ck, ck.with_suffix(".keep"))
        ck.unlink()
    monkeypatch.setattr(recipe.inference, "checkpoints", lambda *a, **k: pytest.fail("a checkpoint was asked for"))
    rebuilt = recipe.final_runs(change, recipe.InferenceSpec(tta=recipe.ROT4, ensemble=2, hubness="qb_norm"), ["mini"],
                                tmp_path, seeds=[0, 1], base=base, betas=[5.0], n_boot=50)
    assert rebuilt.ms_per_query.tolist() == final.ms_per_query.tolist()
    monkeypatch.undo()
    for keep in (recipe.recipe_dir(tmp_path) / "runs").glob("*/best.keep"):
        keep.rename(keep.with_suffix(".pt"))
    sa = final[(final.variant == "lca+cra") & (final.scoring == "recipe")].iloc[0]
    assert np.isfinite(sa.delta_rsum_vs_baseline) and sa.ci_lo <= sa.delta_rsum_vs_baseline <= sa.ci_hi
    # a recorded run whose checkpoint is gone (checkpoints are not committed) is retrained from its record
    cfg1 = recipe.lever_config(change, "mini", 1, base=base)
    ck = recipe.recipe_dir(tmp_path) / "runs" / cfg1.run_name() / "best.pt"
    ck.unlink()
    assert recipe.checkpoints([cfg1], tmp_path) == [ck] and ck.is_file()
    (tmp_path / "tables").mkdir()
    final.to_csv(tmp_path / "tables" / "recipe_final.csv", index=False)
    rows = recipe.main_rows(tmp_path)
    assert len(rows) == 4 and (rows.setting == "recipe").all() and rows.variant.str.startswith("recipe: ").all()
    assert (rows.ms_per_query > 0).all()  # the main table's recipe rows carry their latency
    assert (rows.tie_rule == "expected").all()  # ... and their tie bracket, written by final_runs itself
    assert ((rows.mr_pessimistic <= rows.mr) & (rows.mr <= rows.mr_optimistic)).all()
    assert {"test_mr_optimistic", "test_mr_pessimistic", "beta_grid"} <= set(final.columns)


def test_recipe_cost_adds_a_view_per_extra_image_encode_and_the_hubness_extra():
    """Hand-computed: 8 views add 7 image encodes to the i2t query; the hubness extra (us) enters only with a
    hubness spec; ms_per_query is the mean of the two directions (04's frontier column)."""
    det = pd.DataFrame([{"direction": "t2i", "batch": 1, "encode_ms": 0.4, "search_ms": 0.1, "total_ms": 0.52,
                         "bytes_per_item": 4096.0},
                        {"direction": "i2t", "batch": 1, "encode_ms": 0.3, "search_ms": 0.2, "total_ms": 0.51,
                         "bytes_per_item": 4096.0}])
    hub = {"extra_us_per_query_t2i": 250.0, "extra_us_per_query_i2t": 100.0}
    c = recipe.combine_cost(det, recipe.InferenceSpec(tta=recipe.D4, hubness="qb_norm"), hub)
    assert c["ms_per_query_t2i"] == pytest.approx(0.52 + 0.25)
    assert c["ms_per_query_i2t"] == pytest.approx(0.51 + 7 * 0.3 + 0.1)
    assert c["ms_per_query"] == pytest.approx((0.77 + 2.71) / 2)
    plain = recipe.combine_cost(det, recipe.InferenceSpec(), hub)  # no hubness, one view: 04's own numbers
    assert (plain["ms_per_query_t2i"], plain["ms_per_query_i2t"]) == (0.52, 0.51)
    with pytest.raises(ValueError, match="batch-1 t2i"):
        recipe.combine_cost(det[det.direction == "i2t"], recipe.InferenceSpec(), None)


def test_frontier_rows_put_the_recipe_beside_04s_methods():
    eff = pd.DataFrame({"method": ["baseline", "SCAN"], "mr": [19.5, 18.0], "mr_std": [0.2, 0.3],
                        "ms_per_query": [1.2, 80.0], "family": ["independent", "cross-attention"],
                        "bytes_per_item": [2048.0, 1e5], "device": ["cpu", "cpu"], "extra": [1, 2]})
    final = pd.DataFrame({"variant": ["baseline", "lca+cra"], "scoring": ["recipe", "recipe"], "test_mr": [23.0, 22.5],
                          "test_mr_std": [0.2, 0.4], "ms_per_query": [3.1, np.nan], "bytes_per_item": [4096.0, np.nan]})
    fr = recipe.frontier_rows(final, eff)
    assert fr.method.tolist() == ["baseline", "SCAN", "recipe: baseline (recipe)"]  # an untimed row is left out
    assert fr.iloc[-1].mr == 23.0 and fr.iloc[-1].family == "recipe (07)"
    assert recipe.frontier_rows(final, None).method.tolist() == ["recipe: baseline (recipe)"]


def test_training_levers_alone_train_no_combination_and_choose_nothing(tmp_path, monkeypatch):
    levers = [("10 epochs", "schedule", {"epochs": 10}), ("drop 0.3", "dropout", {"region_drop": 0.3, "token_drop": 0.3})]
    _record(tmp_path / "probe" / "confirm-d-1024-residual-mlp", recipe.lever_config({}, "rsicd", 0), 21.0, 0)
    trained = []

    def fake_run_grid(cfgs, rdir, workers=1, threads=1):
        out = []
        for c in cfgs:
            path = rdir / "metrics" / f"{c.run_name()}.json"
            if path.is_file():
                out.append(json.loads(path.read_text()))
                continue
            trained.append(c.run_name())
            out.append(_record(rdir, c, 21.6 if c.epochs == 10 else 21.2, len(trained)))
        return out
    monkeypatch.setattr("itr_lib.runs.run_grid", fake_run_grid)
    table, trace, change = recipe.training_levers("rsicd", tmp_path, levers=levers, n_boot=100, greedy=False)
    assert len(trained) == 2  # the two levers alone; greedy would also train 10 epochs + drop 0.3
    assert table.val_gain.round(2).tolist() == [0.0, 0.6, 0.2]
    assert trace.steps == [] and change == {} and not table.chosen.any()


def test_unrecorded_levers_are_the_ones_whose_caches_a_lever_table_rerun_needs(tmp_path):
    """A recorded lever's run is reused, so its transform caches are not needed (the rotation grids cost ~40 min to
    build on a fresh machine); an unrecorded one still needs them."""
    levers = recipe.lever_names(recipe.TRAIN_LEVERS, ["rotations (train)", "10 epochs"])
    assert recipe.needed_transforms(recipe.unrecorded(levers, "rsicd", tmp_path), []) == {
        "train": ["r0", "r90", "r180", "r270"]}
    rot = [lv for lv in levers if lv[0] == "rotations (train)"][0]
    record_run(recipe.recipe_dir(tmp_path), recipe.lever_config(rot[2], "rsicd", 0), 16.0, 1)
    left = recipe.unrecorded(levers, "rsicd", tmp_path)
    assert [n for n, _, _ in left] == ["10 epochs"] and recipe.needed_transforms(left, []) == {}
    # another seed, or another base, is another run: not recorded
    assert len(recipe.unrecorded(levers, "rsicd", tmp_path, seed=1)) == 2
    assert len(recipe.unrecorded(levers, "rsicd", tmp_path, base={"epochs": 2})) == 2


def test_training_levers_refuse_a_reference_scored_under_another_tie_rule(tmp_path, monkeypatch):
    """The probe's reference recorded index-rule ranks only (no ``tie_rule``): its val mR is never subtracted from
    expected-rule levers'; the error names both runs."""
    ref_cfg = recipe.lever_config({}, "rsicd", 0)
    _record(tmp_path / "probe" / "confirm-d-1024-residual-mlp", ref_cfg, 21.0, 0)

    def record_expected(rdir, c, i):  # a lever trained now: scored under the study's tie rule
        rec = {**_record(rdir, c, 21.5, i), "tie_rule": "expected"}
        (rdir / "metrics" / f"{c.run_name()}.json").write_text(json.dumps(rec))
        return rec
    monkeypatch.setattr("itr_lib.runs.run_grid", lambda cfgs, rdir, workers=1, threads=1: [
        json.loads(p.read_text()) if (p := rdir / "metrics" / f"{c.run_name()}.json").is_file()
        else record_expected(rdir, c, i) for i, c in enumerate(cfgs)])
    lever = recipe.lever_config({"epochs": 10}, "rsicd", 0)
    with pytest.raises(ValueError, match=rf"{ref_cfg.run_name()} \(tie rule 'index'\) with {lever.run_name()} "
                                         r"\(tie rule 'expected'\)"):
        recipe.training_levers("rsicd", tmp_path, levers=[("10 epochs", "schedule", {"epochs": 10})], n_boot=10)


def _spec_record(folder, spec, run, mr, beta_table=None, beta=None):
    from itr_lib.recipe.records import write_record
    bundle = lambda m: {"mr": m, "rsum": 6 * m}  # noqa: E731
    write_record(folder / f"{spec}--{run}", {
        "key": {"runs": [run], "spec": spec}, "spec": {"slug": spec, "beta": beta, "tta": [], "ensemble": 1},
        "val": {"standard": bundle(mr)}, "beta_table": beta_table,
        "test": {"standard": bundle(mr), "standard_optimistic": bundle(mr + 1), "standard_pessimistic": bundle(mr - 2)}})


def test_recipe_rows_carry_the_tie_bracket_and_the_beta_edge(tmp_path):
    """Every recipe row of the main tables carries tie_rule and the bracket; a final table written before them
    gets both from its inference records, and a beta chosen on the edge of an unextended grid is flagged (and its
    record re-scored by the next 07)."""
    from itr_lib.recipe.records import beta_note, beta_stale
    inf = recipe.recipe_dir(tmp_path) / "inference"
    edge = [{"beta": 10.0, "val_mr": 5.0, "chosen": True}, {"beta": 20.0, "val_mr": 4.0, "chosen": False}]
    for s, mr in ((0, 20.0), (1, 22.0)):
        _spec_record(inf, "qb_norm", f"ucm-b-s{s}", mr, edge, 10.0)
    (tmp_path / "tables").mkdir()
    pd.DataFrame([{"dataset": "ucm", "variant": "baseline", "scoring": "recipe", "spec": "qb_norm", "betas": "10",
                   "n_seeds": 2, "val_mr": 21.0, "test_mr": 21.0, "test_mr_std": 1.41, "runs": "ucm-b-s0,ucm-b-s1",
                   **{k: 1.0 for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")}}]
                 ).to_csv(tmp_path / "tables" / "recipe_final.csv", index=False)
    rows = recipe.main_rows(tmp_path)
    assert rows.tie_rule.tolist() == ["expected"]
    assert (rows.mr_pessimistic.item(), rows.mr.item(), rows.mr_optimistic.item()) == (19.0, 21.0, 22.0)
    rec = json.loads((inf / "qb_norm--ucm-b-s0.json").read_text())
    assert beta_stale(rec) and beta_note(rec) == "at the grid's edge; chosen before the extension rule, not re-chosen"
    ext = [{**r, "added_at_edge": False, "at_grid_edge": False} for r in edge] + \
        [{"beta": 5.0, "val_mr": 4.5, "chosen": False, "added_at_edge": True, "at_grid_edge": False}]
    assert not beta_stale({**rec, "beta_table": ext}) and beta_note({**rec, "beta_table": ext}) == "grid extended to 5"
    from itr_lib.recipe.stages import with_record_columns
    assert with_record_columns(tmp_path, pd.read_csv(tmp_path / "tables" / "recipe_final.csv")).beta_grid.item() == \
        "at the grid's edge; chosen before the extension rule, not re-chosen"


def _evaluator_with_records(tmp_path, beta_table, stale_beta=None):
    """An evaluator of one UCM run with the records of the plain score and of QB-Norm (``beta_table``) written."""
    from itr_lib.recipe.inference import _Evaluator, _record_key
    from itr_lib.recipe.records import write_record
    cfg = recipe.lever_config({}, "ucm", 0)
    ev = _Evaluator([cfg], tmp_path, list(recipe.ROT4), "cpu", [10.0, 20.0], None, 1,
                    **({} if stale_beta is None else {"stale_beta": stale_beta}))
    for spec, beta in ((recipe.InferenceSpec(), None), (recipe.InferenceSpec(hubness="qb_norm"), 10.0)):
        key = _record_key([cfg], spec, [10.0, 20.0], None)
        write_record(ev.dir / f"{key['spec']}--{cfg.run_name()}", {
            "key": key, "spec": {"slug": spec.slug(), "beta": beta, "tta": [], "ensemble": 1},
            "val": {"standard": {"mr": 5.0}}, "test": {"standard": {"mr": 6.0}},
            "beta_table": beta_table if spec.hubness else None})
    return ev


def test_an_evaluator_whose_records_exist_loads_no_split_and_builds_no_cache(tmp_path, monkeypatch):
    """A rebuild from the records (a fresh clone: no checkpoints, no view caches) never loads a split's tensors."""
    def refuse(*a, **k):
        raise AssertionError("split tensors / caches loaded although the record exists")
    monkeypatch.setattr("itr_lib.splits.load_split_tensors", refuse)
    monkeypatch.setattr("itr_lib.recipe.levers.ensure_caches", refuse)
    monkeypatch.setattr(recipe.inference, "checkpoints", refuse)
    fresh = [{"beta": b, "val_mr": m, "chosen": b == 20.0, "added_at_edge": False, "at_grid_edge": False}
             for b, m in ((10.0, 4.0), (20.0, 5.0), (50.0, 4.5))]
    ev = _evaluator_with_records(tmp_path, fresh)
    assert ev(recipe.InferenceSpec())[0]["test"]["standard"]["mr"] == 6.0
    assert ev(recipe.InferenceSpec(hubness="qb_norm"))[0]["spec"]["beta"] == 10.0


@pytest.mark.parametrize("stale_beta", ["rescore", "keep"])
def test_stale_beta_rescores_or_keeps_a_beta_chosen_on_an_unextended_edge(tmp_path, monkeypatch, stale_beta):
    """STALE_BETA "rescore" (the rule) re-chooses a beta chosen on the edge of a grid that was not extended;
    "keep" reuses the record as it is, and its tables say "at the grid's edge"."""
    from itr_lib.recipe.inference import _Evaluator
    from itr_lib.recipe.records import beta_note, beta_stale
    calls = []

    class Rescored(Exception):
        pass

    def evaluate(*a, **k):
        calls.append(a[4])
        raise Rescored
    monkeypatch.setattr(recipe.inference, "evaluate_spec", evaluate)
    monkeypatch.setattr(_Evaluator, "models", lambda self, n: ["model"] * n)
    monkeypatch.setattr(_Evaluator, "split", lambda self, name: name)
    monkeypatch.setattr(_Evaluator, "bank", lambda self: "bank")  # no feature cache needed (a fresh machine has none)
    edge = [{"beta": 10.0, "val_mr": 5.0, "chosen": True}, {"beta": 20.0, "val_mr": 4.0, "chosen": False}]
    ev = _evaluator_with_records(tmp_path, edge, stale_beta)
    spec = recipe.InferenceSpec(hubness="qb_norm")
    if stale_beta == "rescore":
        with pytest.raises(Rescored):
            ev(spec)
        assert calls == [spec]
    else:
        rec, _ = ev(spec)
        assert calls == [] and rec["spec"]["beta"] == 10.0
        assert beta_stale(rec) and beta_note(rec) == "at the grid's edge; chosen before the extension rule, not re-chosen"
    assert ev(recipe.InferenceSpec())[0]["test"]["standard"]["mr"] == 6.0  # a fresh record is reused either way
    assert len(calls) == (stale_beta == "rescore")


def test_an_unknown_stale_beta_is_refused(tmp_path):
    from itr_lib.params import range_errors
    from itr_lib.recipe.inference import _Evaluator
    with pytest.raises(ValueError, match="STALE_BETA must be one of"):
        _Evaluator([recipe.lever_config({}, "ucm", 0)], tmp_path, [], "cpu", [10.0], None, 1, stale_beta="refresh")
    with pytest.raises(ValueError, match="'refresh'"):
        recipe.check_stale_beta("refresh")
    assert range_errors({"STALE_BETA": "refresh"}) == ['STALE_BETA = \'refresh\': must be "rescore" or "keep"']
    assert range_errors({"STALE_BETA": "keep"}) == []
