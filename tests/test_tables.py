"""itr_lib.tables: table builders and their Markdown copies."""


def test_markdown_tables_escape_pipes_in_labels():
    import pandas as pd
    from itr_lib.tables import to_markdown
    md = to_markdown(pd.DataFrame({"variant": ["tgdt | triplet"], "mr": [1.5]}), index=False)
    row = md.splitlines()[-1]
    assert "tgdt \\| triplet" in row and row.count("|") - row.count("\\|") == 3  # 2 cells: 3 unescaped pipes


def test_schedule_table_compares_common_seeds_on_val():
    import pandas as pd
    from itr_lib.tables import schedule_table
    rows = [dict(dataset="x", method="baseline", base_loss="infonce", epochs=e, seed=s, val_rsum=v, mr=m,
                 best_epoch=b, train_seconds=t)
            for e, s, v, m, b, t in [(3, 0, 60.0, 10.0, 2, 60), (6, 0, 72.0, 11.0, 5, 120), (6, 1, 90.0, 15.0, 4, 120),
                                     (3, 1, 66.0, 12.0, 2, 60)]]
    rows.append(dict(rows[0], method="selfalign", val_rsum=600.0))  # another method: ignored
    rows.append(dict(rows[0], epochs=10, seed=2))  # a schedule no seed shares: leaves no common seed -> empty
    t = schedule_table(pd.DataFrame(rows[:5]), "x")
    assert list(t.epochs) == [3, 6] and list(t.seeds) == ["0,1", "0,1"]
    assert list(t.val_mr) == [10.5, 13.5]  # mean val rsum / 6
    assert list(t.test_mr) == [11.0, 13.0] and list(t.best_epoch) == ["3,3", "6,5"]
    assert schedule_table(pd.DataFrame(rows), "x").empty


# ----------------------------------------------------------------------------------------------- one rule per word
def _claim_records(tmp_path, rules=("expected", "expected")):
    """Three seeds of a baseline (A) and of SelfAlign (B) with seeded index-rule ranks on disk (B's seed 0 much
    better, seeds 1-2 alike: a seed spread a query-only interval would miss), as claims_table reads them."""
    import numpy as np
    import pandas as pd
    (tmp_path / "metrics").mkdir()
    rng = np.random.default_rng(7)
    rows, hits = [], {}
    for key, variant, rule in (("baseline", "baseline | 6 ep", rules[0]), ("lca+cra", "LCA+CRA | 6 ep", rules[1])):
        for seed in (0, 1, 2):
            run = f"{key}-s{seed}"
            i2t, t2i = rng.integers(0, 30, 40), rng.integers(0, 30, 200)
            if key == "lca+cra" and seed == 0:
                i2t, t2i = i2t // 4, t2i // 4
            np.savez(tmp_path / "metrics" / f"{run}.ranks.npz", i2t=i2t, t2i=t2i)
            hits[("ucm", key if key == "baseline" else "lca+cra", "recipe", seed)] = tuple(
                np.stack([r < k for k in (1, 5, 10)], 1).astype(float) for r in (i2t, t2i))
            rows.append({"dataset": "ucm", "setting": "study loss", "key": key, "mode": "", "method": key,
                         "variant": variant, "seed": seed, "run": run, "tie_rule": rule,
                         **{k: 10.0 for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mr")},
                         "rsum": 60.0})
    return pd.DataFrame(rows), hits


def test_the_recipe_and_the_claims_give_one_interval_on_one_input(tmp_path):
    """The recipe's SelfAlign gain and the claims' interval are the study's one paired bootstrap (seeds and test
    queries resampled): the same hits give the same interval (the recipe resampled queries only before)."""
    import pandas as pd
    from itr_lib.recipe.stages import selfalign_gains
    from itr_lib.claims import claims_table
    df, hits = _claim_records(tmp_path)
    claim = claims_table(df, "ucm", tmp_path, n_boot=300).set_index("claim").loc["selfalign_vs_baseline"]
    final = pd.DataFrame([{"dataset": "ucm", "variant": v, "scoring": "recipe"} for v in ("baseline", "lca+cra")])
    gain = selfalign_gains(final, hits, (0, 1, 2), n_boot=300).set_index("variant").loc["lca+cra"]
    assert gain.delta_rsum_vs_baseline == round(6 * claim.delta_mr, 2)
    assert (gain.ci_lo, gain.ci_hi) == (round(6 * claim.ci_lo_mr, 2), round(6 * claim.ci_hi_mr, 2))
    assert gain.ci_lo < 0.5 * gain.delta_rsum_vs_baseline  # the seed spread is in it


def test_claims_refuse_records_scored_under_different_tie_rules(tmp_path):
    import pytest
    from itr_lib.claims import claims_table
    df, _ = _claim_records(tmp_path, rules=(None, "expected"))
    with pytest.raises(ValueError, match=r"baseline-s0 \(tie rule 'index'\) with lca\+cra-s0 \(tie rule 'expected'\)"):
        claims_table(df, "ucm", tmp_path, n_boot=50)


def test_each_claim_shows_its_bar_and_the_verdict_rule_names_both(tmp_path):
    """A tolerance claim ("keeps ... within 1 mR") is held against -1 mR, a "beats" claim against 0: the claims
    table carries the bar, the README's and RESULTS.md's claims tables show it, and the rule sentence names both."""
    from itr_lib.claims import claim_rule as _claim_rule, claims_by_dataset
    from itr_lib.report import comparison_sections
    from itr_lib.claims import claim_bar, claims_table
    df, _ = _claim_records(tmp_path)
    c = claims_table(df, "ucm", tmp_path, n_boot=50).set_index("claim")
    assert c.loc["selfalign_vs_baseline", "bar_mr"] == 0.0
    assert c.loc["tgdt_two_stage_vs_exhaustive", "bar_mr"] == -1.0  # not run here, but its bar is stated
    assert claim_bar("not_worse", 1.0) == -1.0 and claim_bar("better", 0.0) == 0.0
    c = c.reset_index()
    c["B - A mR [95% CI]"] = "x"
    wide = claims_by_dataset(c).set_index("statement")
    assert wide.loc["TGDT two-stage keeps TGDT exhaustive's accuracy (within 1 mR)", "bar"] == "> -1.00"
    assert wide.loc["SelfAlign (LCA+CRA) beats its baseline at equal capacity", "bar"] == "> +0.00"
    assert "0 for \"B beats A\"" in _claim_rule() and "-1 mR for \"B keeps A's accuracy within 1 mR\"" in _claim_rule()
    (tmp_path / "tables").mkdir()
    c.drop(columns=["B - A mR [95% CI]"]).to_csv(tmp_path / "tables" / "claims.csv", index=False)
    full = "\n".join(comparison_sections(tmp_path, "res", full=True))
    assert "| bar " in full and "> -1.00" in full and _claim_rule() in full


def test_variant_labels_name_the_val_images_actually_scored():
    """UCM's val split has 210 images: a run asked to select on 1,000 selected on 210, and its label says so."""
    from itr_lib.runs import run_row
    cfg = {"method": "baseline", "seed": 0, "base_loss": "infonce", "false_negatives": "mask", "epochs": 6,
           "val_images_per_epoch": 1000}
    bundle = {k: 1.0 for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "mr")}
    rec = {"dataset": "ucm", "run": "r", "config": cfg, "test": {"standard": bundle}, "val": {"standard": bundle},
           "best_epoch": 1, "epochs": 6, "train_seconds": 1.0, "retrieval_vector_dim": 512, "val_images": 210}
    assert run_row(rec)["variant"] == "baseline | infonce +FN-mask | 6 ep | val 210"
    assert run_row({**rec, "val_images": 1000})["variant"].endswith("| val 1000")  # RSICD: 1,000 of its val images
    assert run_row({k: v for k, v in rec.items() if k != "val_images"})["variant"].endswith("| val 1000")  # unknown


def test_every_row_of_the_reports_run_tables_carries_its_tie_bracket_or_its_rule():
    """Main / ablation tables in RESULTS.md: a bracket where the record has one, "index rule" where it was scored
    before the tie rule (no bracket recorded), blank for a published number."""
    import numpy as np
    import pandas as pd
    from itr_lib.report import _fmt
    from itr_lib.tables import tie_cells
    df = pd.DataFrame({"method": ["a", "b", "PIR (published)"], "variant": ["x", "y", "z"], "n_seeds": [3, 3, 0],
                       "mr": [20.0, 19.0, 24.46], "mr_std": [0.1, 0.2, np.nan], "tie_rule": ["expected", "index", None],
                       "mr_pessimistic": [19.5, np.nan, np.nan], "mr_optimistic": [20.7, np.nan, np.nan]})
    assert tie_cells(df) == ["[19.50, 20.70]", "index rule", ""]
    md = _fmt(df)
    assert "ties [pess., opt.]" in md.splitlines()[0] and "[19.50, 20.70]" in md and "index rule" in md


# ------------------------------------------------------------------- the study's question at two operating points
def test_adapted_comparison_plans_the_study_protocol_with_the_top_trained():
    import dataclasses
    import pytest
    from itr_lib import experiments as e
    plan = e.comparison_plan(["ucm"], [0], ["baseline", "tgdt"],
                             adapted=[{"dataset": "ucm", "seeds": [0, 1], "methods": ["baseline", "tgdt"]}])
    frozen = {(v, c.seed): c for st, v, c in plan if st == e.STUDY_SETTING}
    adapted = {(v, c.seed): c for st, v, c in plan if st == e.ADAPTED_SETTING}
    assert sorted(adapted) == [("baseline", 0), ("baseline", 1), ("tgdt", 0), ("tgdt", 1)]
    for k, c in frozen.items():  # the same run but for the top: nothing else of the protocol moves
        assert c.image_top_blocks == 0 and adapted[k].image_top_blocks == 6
        assert dataclasses.replace(adapted[k], image_top_blocks=0, run_dir=None) == dataclasses.replace(c, run_dir=None)
        assert adapted[k].run_name() != c.run_name()
    with pytest.raises(ValueError, match=r"ADAPTED_COMPARISON\[0\]: unknown method\(s\) \['nosuch'\]"):
        e.comparison_plan([], [], [], adapted=[{"dataset": "ucm", "seeds": [0], "methods": ["nosuch"]}])
    with pytest.raises(ValueError, match=r"ADAPTED_COMPARISON\[0\] = .*each entry is \{dataset, seeds, methods\}"):
        e.comparison_plan([], [], [], adapted=[{"dataset": "ucm", "seed": [0], "methods": ["baseline"]}])


def test_claims_at_two_operating_points_get_a_column_each_and_a_verdict_change(tmp_path):
    """The same records under both settings give the same interval at both points (one rule); the reader's view
    has a column per dataset and point (frozen first) and the change table says which verdicts survive."""
    import pandas as pd
    from itr_lib.claims import claims_by_dataset, claims_tables, verdict_changes
    from itr_lib.experiments import ADAPTED_SETTING
    df, _ = _claim_records(tmp_path)
    both = pd.concat([df, df.assign(setting=ADAPTED_SETTING)], ignore_index=True)
    lat = pd.DataFrame({"method": ["baseline", "SelfAlign", "baseline, adapted top", "SelfAlign, adapted top"],
                        "ms_per_query": [1.0, 2.0, 3.0, 12.0]})
    c = claims_tables(both, "ucm", tmp_path, lat, n_boot=200)
    assert set(c.setting) == {"study loss", ADAPTED_SETTING}
    sa = c[c.claim == "selfalign_vs_baseline"].set_index("setting")
    assert sa.loc["study loss", "ci_lo_mr"] == sa.loc[ADAPTED_SETTING, "ci_lo_mr"]
    assert sa.loc["study loss", "latency_ratio_a_over_b"] == 0.5 and sa.loc[ADAPTED_SETTING, "latency_ratio_a_over_b"] == 0.25
    c["B - A mR [95% CI]"] = "x"
    wide = claims_by_dataset(c)
    assert list(wide.columns) == ["statement", "bar", "UCM frozen", "UCM adapted"]
    ch = verdict_changes(c).set_index("claim")
    assert ch.loc["selfalign_vs_baseline", "change"] == "survives"
    assert ch.loc["tgdt_vs_baseline", "change"] == "not run adapted" and "strongest" not in ch.index
    flipped = c.assign(verdict=[("does not hold" if (k == "selfalign_vs_baseline" and s == ADAPTED_SETTING
                                                      and v == "holds") else v)
                                for k, s, v in zip(c.claim, c.setting, c.verdict)])
    expect = {"holds": "flips", "inconclusive": "survives"}[sa.loc["study loss", "verdict"]]
    assert verdict_changes(flipped).set_index("claim").loc["selfalign_vs_baseline", "change"] == expect


def test_the_runner_up_is_another_model_not_another_mode_of_the_top_one():
    """TGDT's two-stage and exhaustive modes score alike; the "strongest" claim sets the top model against the best
    row of a different model."""
    import pandas as pd
    from itr_lib.claims import top_and_runner_up
    agg = pd.DataFrame({"key": ["tgdt", "tgdt", "baseline", "cra"], "mode": ["two_stage", "exhaustive", "", ""],
                        "mr": [53.1, 53.1, 51.4, 52.0]})
    top, second = top_and_runner_up(agg)
    assert (top.key, second.key, second.mr) == ("tgdt", "cra", 52.0)
    assert top_and_runner_up(agg[agg.key == "tgdt"]) is None


def test_operating_point_table_one_row_per_method_in_its_deployed_mode():
    import pandas as pd
    from itr_lib.experiments import ADAPTED_SETTING
    from itr_lib.tables import operating_point_table
    t = pd.DataFrame({"setting": ["study loss"] * 3 + [ADAPTED_SETTING] * 2,
                      "key": ["baseline", "tgdt", "tgdt", "baseline", "tgdt"],
                      "mode": ["", "two_stage", "global", "", "two_stage"],
                      "variant": ["baseline | 6 ep", "tgdt | 6 ep [two_stage]", "tgdt | 6 ep [global]",
                                  "baseline | top | 6 ep", "tgdt | top | 6 ep [two_stage]"],
                      "mr": [46.0, 47.0, 40.0, 51.5, 53.0], "mr_std": [1.0, 0.5, 0.5, 0.25, 0.0],
                      "n_seeds": [3, 3, 3, 3, 1]})
    op = operating_point_table(t).set_index("method")
    assert list(op.index) == ["tgdt [two_stage]", "baseline"]           # the global mode is not deployed
    assert op.loc["baseline"].tolist() == ["46.00 ± 1.00 (3)", "51.50 ± 0.25 (3)", "+5.50"]
    assert op.loc["tgdt [two_stage]", "adapted"] == "53.00 (1)" and op.loc["tgdt [two_stage]", "change"] == "+6.00"
    assert operating_point_table(t[t.setting == "study loss"]).empty


def test_adaptation_gains_pair_each_method_with_itself_over_shared_seeds(tmp_path):
    """The adapted runs of a method against its frozen runs of the same seeds: the claims' one interval (the same
    records at both points give exactly zero) and the gain cell of the operating-point table."""
    import pandas as pd
    from itr_lib.claims import adaptation_gains
    from itr_lib.experiments import ADAPTED_SETTING
    from itr_lib.tables import _gain_cell
    df, _ = _claim_records(tmp_path)
    both = pd.concat([df, df[df.key == "baseline"].assign(setting=ADAPTED_SETTING)], ignore_index=True)
    g = adaptation_gains(both, "ucm", tmp_path, n_boot=100).set_index("key")
    assert list(g.index) == ["baseline"] and g.loc["baseline", "n_seeds"] == 3
    assert g.loc["baseline", "delta_mr"] == 0.0 and g.loc["baseline", "verdict"] == "inconclusive"
    assert _gain_cell(g.reset_index(), "baseline") == "+0.00 [+0.00, +0.00] (3) inconclusive"
    assert adaptation_gains(df, "ucm", tmp_path).empty
    # the LCA+CRA runs standing in for the adapted baseline: the gain is the SelfAlign claim's interval
    from itr_lib.claims import claims_table
    swap = df[df.key == "lca+cra"].assign(key="baseline", setting=ADAPTED_SETTING)
    g2 = adaptation_gains(pd.concat([df[df.key == "baseline"], swap]), "ucm", tmp_path, n_boot=100).iloc[0]
    c = claims_table(df, "ucm", tmp_path, n_boot=100).set_index("claim").loc["selfalign_vs_baseline"]
    assert (g2.delta_mr, g2.ci_lo_mr, g2.ci_hi_mr) == (c.delta_mr, c.ci_lo_mr, c.ci_hi_mr) and g2.delta_mr > 0
