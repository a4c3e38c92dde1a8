"""The study's cost from its records (itr_lib.cost) and the dry run's estimate (itr_lib.study)."""
import json

import pandas as pd
import pytest

from itr_lib.config import TrainConfig
from itr_lib.cost import HISTORY, cost_tables, execution_estimates, lever_speedups, record_costs
from itr_lib.cost import format_estimate


def _record(path, cfg: TrainConfig, train, val=10.0, test=5.0, load=5.0, threads=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    from dataclasses import asdict
    path.write_text(json.dumps({"config": asdict(cfg), "train_seconds": train, "val_eval_seconds": val,
                                "test_eval_seconds": test, "load_seconds": load, "threads": threads}))


@pytest.fixture
def results(tmp_path):
    r = tmp_path / "full"
    a = TrainConfig(method="tgdt", dataset="ucm")
    b = TrainConfig(method="selfalign", lca=True, cra=True, dataset="ucm")
    old = TrainConfig(method="scan", dataset="ucm", epochs=3)
    _record(r / "metrics" / f"{a.run_name()}.json", a, 3580.0)            # planned: 1 h
    _record(r / "metrics" / f"{old.run_name()}.json", old, 7180.0)        # not planned: history
    _record(r / "recipe" / "metrics" / f"{b.run_name()}.json", b, 1780.0, threads=2)  # 2 x 1800 s
    (r / "tables").mkdir()
    pd.DataFrame({"run": [a.run_name()]}).to_csv(r / "tables" / "comparison_plan.csv", index=False)
    (r / "study.json").write_text(json.dumps({"executions": {
        "04_efficiency.ipynb": {"notebook": "04_efficiency.ipynb", "seconds": 1800.0}}}))
    return r


def test_cost_tables_from_records(results, tmp_path):
    rec = record_costs(results).set_index("method")
    assert rec.loc["tgdt", "notebook"] == "02_ablations" and rec.loc["scan", "notebook"] == HISTORY
    assert rec.loc["lca+cra", "notebook"] == "07_recipe" and rec.loc["lca+cra", "core_seconds"] == 3600.0
    by_nb, by_m = cost_tables(results)
    nb = by_nb.set_index("notebook")
    assert nb.loc["02_ablations", "core_h"] == pytest.approx(1.0)
    assert nb.loc["07_recipe", "core_h"] == pytest.approx(1.0)
    assert nb.loc["04_efficiency", "core_h"] == pytest.approx(0.5)
    assert nb.loc[HISTORY, "core_h"] == pytest.approx(2.0)
    assert nb.loc["total (from scratch)", "core_h"] == pytest.approx(2.5)  # history left out
    assert set(by_m.method) == {"tgdt", "lca+cra"}
    # levers: training seconds divided by the method's speed-up
    nb2 = cost_tables(results, {"tgdt": 2.0})[0].set_index("notebook")
    assert nb2.loc["02_ablations", "core_h_levers"] == pytest.approx((3580 / 2 + 20) / 3600)
    csv = tmp_path / "levers.csv"
    pd.DataFrame({"method": ["tgdt", "tgdt", "scan"], "lever": ["bf16", "bf16+buckets", "bf16"],
                  "train_speedup": [1.5, 2.0, 3.0], "adopted": [True, True, False]}).to_csv(csv, index=False)
    assert lever_speedups(csv) == {"tgdt": 2.0}  # the best adopted lever
    pd.DataFrame({"dataset": ["ucm", "rsicd"], "method": ["tgdt", "tgdt"], "lever": ["bf16", "bf16"],
                  "train_speedup": [1.4, 1.6], "adopted": [True, True]}).to_csv(csv, index=False)
    assert lever_speedups(csv) == {"tgdt": pytest.approx(1.5)}  # one lever timed on two datasets: their mean
    assert lever_speedups(tmp_path / "missing.csv") == {}
    # a run at the adapted point is its own method in the tables, never credited with the frozen path's speed-up
    ad = TrainConfig(method="tgdt", dataset="ucm", image_top_blocks=6)
    _record(results / "recipe" / "metrics" / f"{ad.run_name()}.json", ad, 3580.0)  # 07_recipe
    by_m = cost_tables(results, {"tgdt": 2.0})[1].set_index("method")
    assert by_m.loc["tgdt, adapted top", "core_h_levers"] == pytest.approx(1.0)  # 3580 + 20 s: not divided
    assert by_m.loc["tgdt", "core_h_levers"] == pytest.approx((3580 / 2 + 20) / 3600)
    assert cost_tables(results, {"tgdt": 2.0, "tgdt, adapted top": 1.25})[1].set_index("method").loc[
        "tgdt, adapted top", "core_h_levers"] == pytest.approx((3580 / 1.25 + 20) / 3600)
    with pytest.raises(ValueError, match="no run records"):
        cost_tables(tmp_path / "empty")


def test_a_run_recorded_with_levers_on_is_counted_and_bounded(results):
    """A record that ran with bf16 encoders (or buckets, a bf16 / compiled kernel) is flagged: the bound credits it
    no speed-up (part of it came before the record), the estimate credits the method's full one."""
    from itr_lib.cost import trained_with_levers
    assert not trained_with_levers({"precision": "fp32", "config": {}, "score_kernel": {"matmul": "fp32"}})
    assert trained_with_levers({"precision": "bf16", "config": {}})
    assert trained_with_levers({"config": {"length_buckets": 8}})
    assert trained_with_levers({"config": {}, "score_kernel": {"compiled": True}})
    assert trained_with_levers({"config": {}, "score_kernel": {"matmul": "fp32", "loss_matmul": "bf16"}})
    a = TrainConfig(method="tgdt", dataset="ucm")
    f = results / "metrics" / f"{a.run_name()}.json"
    m = json.loads(f.read_text())
    nb = cost_tables(results, {"tgdt": 2.0})[0].set_index("notebook")
    assert nb.loc["02_ablations", "levered_runs"] == 0
    assert nb.loc["02_ablations", "core_h_bound"] == pytest.approx(nb.loc["02_ablations", "core_h_levers"])
    f.write_text(json.dumps({**m, "precision": "bf16"}))
    nb = cost_tables(results, {"tgdt": 2.0})[0].set_index("notebook")
    assert nb.loc["02_ablations", "levered_runs"] == 1 and nb.loc["02_ablations", "levered_core_h"] == 1.0
    assert nb.loc["02_ablations", "core_h_levers"] == pytest.approx((3580 / 2 + 20) / 3600)
    assert nb.loc["02_ablations", "core_h_bound"] == pytest.approx(1.0)
    assert nb.loc["total (from scratch)", "core_h_bound"] == pytest.approx(1.0 + 1.0 + 0.5)


def test_dry_run_estimate_per_execution(results, tmp_path):
    todo = [{"notebook": tmp_path / "02_ablations.ipynb", "output": tmp_path / "02_ablations.ipynb"},
            {"notebook": tmp_path / "04_efficiency.ipynb", "output": tmp_path / "04_efficiency.ipynb"},
            {"notebook": tmp_path / "06_explore.ipynb", "output": tmp_path / "06_explore-ucm.ipynb"}]
    est = execution_estimates(todo, results, {"tgdt": 2.0})
    assert [e["execution"] for e in est] == ["02_ablations", "04_efficiency", "06_explore-ucm"]
    assert est[0]["core_h"] == pytest.approx(1.0) and est[1]["core_h"] == pytest.approx(0.5)
    text = format_estimate({"estimate_from": str(results), "estimates": est})
    assert "1.50" in text and "no record of 06_explore-ucm" in text


def test_a_damaged_record_stops_the_cost_table_with_its_name(tmp_path):
    """A truncated metrics/<run>.json is never skipped (the cost table would silently lose its hours)."""
    import pytest
    from itr_lib.recordio import RunStoreError
    (tmp_path / "metrics").mkdir()
    bad = tmp_path / "metrics" / "ucm-baseline-minilm-s0-x.json"
    bad.write_text('{"config": {"method": "baseline"')
    with pytest.raises(RunStoreError, match=r"ucm-baseline-minilm-s0-x\.json cannot be read .*Fix"):
        record_costs(tmp_path)


def test_dry_run_lists_what_02_would_train_now_with_an_estimate_from_like_records(tmp_path, monkeypatch):
    """The dry run names the runs of 02's grids that are not recorded (the notebook's own plan: the adapted point
    included), each estimated from recorded runs of the same dataset, method and operating point."""
    from pathlib import Path
    from itr_lib import runs
    from itr_lib.cost import missing_runs
    from itr_lib.experiments import ADAPTED_SETTING
    nb = Path(__file__).resolve().parents[1] / "notebooks" / "02_ablations.ipynb"
    params = {"DATASETS": [], "COMPARISON_DATASETS": ["ucm"], "COMPARISON_SEEDS": [0, 1],
              "COMPARISON_METHODS": ["baseline"], "AUTHORS_SEEDS": [],
              "ADAPTED_COMPARISON": [{"dataset": "ucm", "seeds": [0, 1], "methods": ["baseline", "tgdt"]}]}
    todo = [{"notebook": nb, "output": tmp_path / "02_ablations.ipynb", "parameters": params}]
    monkeypatch.setattr(runs, "recorded", lambda cfg, d: {} if not cfg.image_top_blocks else None)
    adapted = TrainConfig(method="baseline", dataset="ucm", image_top_blocks=6, epochs=10)
    _record(tmp_path / "recipe" / "metrics" / f"{adapted.run_name()}.json", adapted, 1780.0, threads=2)  # 1 core-h
    m = missing_runs(todo, tmp_path)
    assert set(m.setting) == {ADAPTED_SETTING} and len(m) == 4   # the frozen runs are recorded
    est = m.groupby("method").est_core_h.sum(min_count=1)
    assert est["baseline"] == pytest.approx(2.0) and pd.isna(est["tgdt"])  # 2 seeds x 1 h; no adapted TGDT record
    text = format_estimate({"estimates": [{"execution": "02_ablations", "core_h": 1.0, "core_h_levers": 1.0}],
                            "estimate_from": str(tmp_path), "missing": m.to_dict("records")})
    assert "02_ablations would train 4 run(s) now" in text and "(2 with no such record: not estimated)" in text
    assert "ucm    tgdt      seeds 0,1" in text


def test_a_subset_rerun_keeps_the_full_executions_seconds(results, tmp_path, monkeypatch):
    """04 rerun with ``-p METHODS [...]`` (2 min) must not replace the full 04's seconds in the cost tables."""
    from itr_lib import study
    monkeypatch.setattr(study, "git_commit", lambda: "c0ffee")
    nb = tmp_path / "04_efficiency.ipynb"
    full = study.execution_entry({"notebook": nb, "parameters": {}, "overrides": {}}, 1800.0, None)
    assert "overrides" not in full and "full" not in full
    sub = study.execution_entry({"notebook": nb, "parameters": {"METHODS": ["a"]}, "overrides": {"METHODS": ["a"]}},
                                120.0, full)
    again = study.execution_entry({"notebook": nb, "parameters": {"METHODS": ["b"]}, "overrides": {"METHODS": ["b"]}},
                                  60.0, sub)  # a second subset run still carries the full one
    assert sub["seconds"] == 120.0 and sub["full"]["seconds"] == 1800.0 and again["full"]["seconds"] == 1800.0
    (results / "study.json").write_text(json.dumps({"executions": {"04_efficiency.ipynb": again}}))
    nb_cost = cost_tables(results)[0].set_index("notebook")
    assert nb_cost.loc["04_efficiency", "core_h"] == pytest.approx(0.5)
    # a subset run with no full run before it counts at its own seconds (nothing better is known)
    (results / "study.json").write_text(json.dumps({"executions": {"04_efficiency.ipynb": study.execution_entry(
        {"notebook": nb, "parameters": {}, "overrides": {"METHODS": ["a"]}}, 360.0, None)}}))
    assert cost_tables(results)[0].set_index("notebook").loc["04_efficiency", "core_h"] == pytest.approx(0.1)


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_02s_precision_reaches_every_planned_run_outside_its_identity(precision):
    """02's PRECISION is a runtime field of every run it plans (ablation, comparison, adapted point): recorded in
    the run's config, never in its identity, so a recorded fp32 run is reused under bf16 and vice versa."""
    from pathlib import Path
    from itr_lib.cost import notebook_defaults
    from itr_lib.experiments import notebook_grids
    nb = Path(__file__).resolve().parents[1] / "notebooks" / "02_ablations.ipynb"
    p = {**notebook_defaults(nb), "DATASETS": ["ucm"], "COMPARISON_DATASETS": ["ucm"], "COMPARISON_SEEDS": [0],
         "ADAPTED_COMPARISON": [{"dataset": "ucm", "seeds": [0], "methods": ["baseline"]}], "PRECISION": precision}
    cfgs, plan = notebook_grids(p)
    every = cfgs + [c for _, _, c in plan]
    assert every and {c.precision for c in every} == {precision}
    fp32 = notebook_grids({**p, "PRECISION": "fp32"})
    assert [c.run_name() for c in every] == [c.run_name() for c in fp32[0] + [c for _, _, c in fp32[1]]]


def test_results_md_cost_section_is_the_cost_tables(results, tmp_path):
    """RESULTS.md's cost section carries cost_tables' numbers (the dry run's), history apart, levers applied."""
    from itr_lib.cost import cost_markdown
    text = "\n".join(cost_markdown(results, tmp_path / "none.csv"))
    assert "**2.5 core-hours** (2 runs; with the adopted levers 2.5)" in text
    assert "not counted: 2.0 core-hours" in text
    rows = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "1.00" in rows["02_ablations"] and "0.50" in rows["04_efficiency"]
    csv = tmp_path / "levers.csv"
    pd.DataFrame({"method": ["tgdt"], "train_speedup": [2.0], "adopted": [True]}).to_csv(csv, index=False)
    timed = "\n".join(cost_markdown(results, csv))
    assert f"with the adopted levers {2.5 - 3580 / 2 / 3600:.1f}" in timed
    untimed = timed.split("counted at their recorded cost: ")[1].split(")")[0].split("; ")
    assert untimed and "tgdt" not in untimed and set(untimed) <= set(rows)  # rows of the per-method table
    assert cost_markdown(tmp_path / "empty") == []


def test_version_speedups_replace_the_lever_figure_where_timed(tmp_path):
    import pandas as pd
    from itr_lib.cost import lever_speedups
    pd.DataFrame([{"method": "scan", "lever": "bf16", "train_speedup": 1.1, "adopted": True},
                  {"method": "tgdt", "lever": "bf16", "train_speedup": 1.5, "adopted": True}]
                 ).to_csv(tmp_path / "speed_levers.csv", index=False)
    assert lever_speedups(tmp_path / "speed_levers.csv") == {"scan": 1.1, "tgdt": 1.5}
    pd.DataFrame([{"method": "scan", "threads": 1, "step_speedup": 2.0}, {"method": "scan", "threads": 2,
                                                                          "step_speedup": 9.0}]
                 ).to_csv(tmp_path / "versions_ucm.csv", index=False)
    pd.DataFrame([{"method": "scan", "threads": 1, "step_speedup": 3.0}]).to_csv(tmp_path / "versions_rsicd.csv",
                                                                                 index=False)
    # scan: the mean of the datasets' 1-thread figures; tgdt (not timed across versions): its lever's
    assert lever_speedups(tmp_path / "speed_levers.csv") == {"scan": 2.5, "tgdt": 1.5}
