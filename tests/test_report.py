"""itr_lib.report: the README headline block and RESULTS.md."""
import re

import pandas as pd

from itr_lib.report import _drop_shared_parts


def test_shared_label_parts_are_said_once_and_modes_kept():
    labels = pd.Series(["aladin | infonce +FN-mask | 6 ep | val 1000 [two_stage]",
                        "LCA+CRA K=1024 | infonce +FN-mask | 6 ep | val 1000",
                        "baseline | infonce +FN-mask | 3 ep | val 1000"])
    short, shared = _drop_shared_parts(labels)
    assert shared == ["infonce +FN-mask", "val 1000"]
    assert list(short) == ["aladin | 6 ep [two_stage]", "LCA+CRA K=1024 | 6 ep", "baseline | 3 ep"]


def test_compact_markdown_escapes_pipes_aligns_numbers_and_leaves_nan_blank():
    from itr_lib.tables import to_markdown
    df = pd.DataFrame({"variant": ["a | b", "c"], "mr": [19.534, float("nan")], "n": [3, 1]})
    assert to_markdown(df, compact=True, floatfmt=".2f", index=False).splitlines() == [
        "| variant | mr | n |", "|:---|---:|---:|", "| a \\| b | 19.53 | 3 |", "| c |  | 1 |"]


def test_readme_block_shows_each_method_once_in_its_deployed_mode_and_results_md_every_mode(tmp_path):
    from itr_lib.report import comparison_sections
    rows = []
    for key, method, mode, mr in [("baseline", "baseline", "", 19.5), ("tgdt", "tgdt", "global", 19.0),
                                  ("tgdt", "tgdt", "two_stage", 19.8), ("tgdt", "tgdt", "exhaustive", 19.9),
                                  ("aladin", "aladin", "global", 20.3), ("aladin", "aladin", "exhaustive", 20.1)]:
        label = f"{method} | infonce | 6 ep" + (f" [{mode}]" if mode else "")
        for setting in ("study loss", "authors' loss"):
            rows.append(dict(dataset="rsicd", setting=setting, key=key, mode=mode or None, method=method,
                             variant=label, n_seeds=1, seeds="0", i2t_r1=1.0, t2i_r1=1.0, rsum=100.0, mr=mr,
                             mr_std=0.0, mr_optimistic=mr + 1, mr_pessimistic=mr - 1, train_min=1.0))
    (tmp_path / "tables").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "tables" / "comparison_rsicd.csv", index=False)
    short = "\n".join(comparison_sections(tmp_path, "r", full=False))
    table = [ln for ln in short.splitlines() if ln.startswith("| ") and "variant" not in ln]
    assert sorted(ln.split(" | ")[0] for ln in table) == ["| aladin [global]", "| baseline", "| tgdt [two_stage]"]
    full = "\n".join(comparison_sections(tmp_path, "r", full=True))
    assert sum(ln.startswith("| ") and "variant" not in ln for ln in full.splitlines()) == 12


def test_claims_become_one_row_per_claim_with_a_column_per_dataset():
    from itr_lib.claims import claims_by_dataset
    c = pd.DataFrame({"dataset": ["rsicd", "rsicd", "ucm", "ucm"],
                      "claim": ["x_vs_baseline", "strongest", "x_vs_baseline", "strongest"],
                      "statement": ["X beats the baseline", "CRA | 6 ep is the strongest model (vs runner-up B)",
                                    "X beats the baseline", "scan | 6 ep is the strongest model (vs runner-up CRA)"],
                      "a": ["baseline | 6 ep", "B | 6 ep", "baseline | 6 ep", "CRA | 6 ep"],
                      "b": ["X | 6 ep", "CRA | 6 ep", "X | 6 ep", "scan | 6 ep"],
                      "n_seeds": [3, 3, 2, 3], "verdict": ["holds", "inconclusive", "inconclusive", "holds"],
                      "B - A mR [95% CI]": ["+1.00 [+0.10, +2.00]", "+0.03 [-0.5, +0.6]", "+0.50 [-1.00, +2.00]",
                                            "+2.00 [+1.00, +3.00]"]})
    w = claims_by_dataset(c)
    assert list(w.columns) == ["statement", "bar", "RSICD", "UCM"]
    assert w.statement.tolist() == ["X beats the baseline", "The top model beats the runner-up"]
    assert w.RSICD.tolist() == ["+1.00 [+0.10, +2.00] (3) holds", "CRA vs B: +0.03 [-0.5, +0.6] (3) inconclusive"]
    assert w.UCM.tolist() == ["+0.50 [-1.00, +2.00] (2) inconclusive", "scan vs CRA: +2.00 [+1.00, +3.00] (3) holds"]


def test_scale_summary_shows_the_largest_sizes_the_targets_and_what_dominates(tmp_path):
    from itr_lib.report import scale_summary
    rows = []
    for kind, ms in (("flat", 70.0), ("ivf", 1.0), ("hnsw", 0.4)):
        for n in (1000, 100_000, 1_000_000):
            rows.append(dict(index=kind, n_items=n, ms_per_query=ms * n / 1e6, recall_at_10=1.0 if kind == "flat" else 0.96,
                             floor_ms=0.5 * ms * n / 1e6, extrapolated=False, gallery_kind="synthetic", dim=512))
            rows.append(dict(rows[-1], gallery_kind="tiled", ms_per_query=123.0))  # the comparison gallery: not shown
    rows.append(dict(index="ivfpq", n_items=10_000_000, ms_per_query=2.0, recall_at_10=0.9, floor_ms=0.1,
                     extrapolated=False, gallery_kind="synthetic", dim=512))
    rows.append(dict(index="flat", n_items=10_000_000, ms_per_query=700.0, extrapolated=True,
                     gallery_kind="synthetic", dim=512))
    rows.append(dict(index="SCAN (cross-attention)", n_items=1000, ms_per_query=250.0, extrapolated=False))
    (tmp_path / "tables").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "tables" / "scaling.csv", index=False)
    pd.DataFrame({"target": ["a", "b", "c"], "holds": [True, False, None], "detail": ["x", "y", "z"]}).to_csv(
        tmp_path / "tables" / "efficiency_targets.csv", index=False)
    pd.DataFrame({"method": ["baseline", "baseline", "SCAN"], "search": ["flat", "flat", "SCAN"],
                  "n_items": [1000, 1_000_000, 1000], "encode_ms": [5.0, 5.0, 5.0], "search_ms": [0.1, 70.0, 250.0],
                  "dominant": ["encode", "search", "search"]}).to_csv(tmp_path / "tables" / "query_side.csv", index=False)
    readme = "\n".join(scale_summary(tmp_path, "r", full=False))
    text = "\n".join(scale_summary(tmp_path, "r", full=True)) + "\n" + readme
    assert "| index" not in readme and "RESULTS.md" in readme  # the README keeps the verdicts, RESULTS.md the tables
    table = [[c.strip() for c in ln.strip("|").split("|")] for ln in text.splitlines()
             if ln.startswith("|") and not ln.startswith("|:") and not ln.startswith("| index")]
    assert [(r[0], int(float(r[1]))) for r in table[:5]] == [("hnsw", 10 ** 6), ("ivf", 10 ** 6), ("flat", 10 ** 6),
                                                              ("ivfpq", 10 ** 7), ("flat", 10 ** 7)]
    assert "123" not in text  # the tiled comparison rows stay in scaling.csv
    assert "- a: **holds**" in readme and "- b: **does not hold**" in readme and "- c: **n/a**" in readme
    assert "(x)" not in readme  # the numbers compared stay in RESULTS.md's targets table
    assert ["baseline", "flat", "encode", "search"] in table and ["SCAN", "SCAN", "search", ""] in table


def test_comparison_table_names_the_seeds_trained_with_length_buckets_and_the_readme_says_so():
    import numpy as np
    from itr_lib.report import _bucketed_note
    from itr_lib.tables import comparison_table
    rows = []
    for method, seed, lb, secs in [("aladin", 0, None, 9000.0), ("aladin", 1, 8, 3600.0), ("aladin", 2, 8, 3700.0),
                                   ("baseline", 0, None, 300.0), ("baseline", 1, None, 320.0)]:
        rows.append({"dataset": "rsicd", "setting": "study loss", "key": method, "mode": "", "method": method,
                     "variant": f"{method} | 6 ep", "seed": seed, "length_buckets": lb, "train_seconds": secs,
                     **{k: 10.0 + seed for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")},
                     "rsum": 60.0 + 6 * seed, "mr": 10.0 + seed})
    t = comparison_table(pd.DataFrame(rows), "rsicd").set_index("method")
    assert t.loc["aladin", "bucketed_seeds"] == "1,2" and t.loc["baseline", "bucketed_seeds"] == ""
    assert t.loc["aladin", "train_min"] == np.mean([9000, 3600, 3700]) / 60
    note = _bucketed_note(t.reset_index())
    assert len(note) == 2 and "aladin | 6 ep seeds 1,2" in note[0] and "baseline" not in note[0]
    assert _bucketed_note(t.reset_index().assign(bucketed_seeds=np.nan)) == []


def test_recipe_summary_shows_the_steps_the_final_rows_the_verdict_and_the_published_neighbours(tmp_path):
    from itr_lib.recipe.summary import recipe_summary
    t = tmp_path / "tables"
    t.mkdir()
    pd.DataFrame([{"stage": "reference", "lever": "reference", "change": "-", "val_mr": 15.37, "val_gain": 0.0,
                   "test_mr": 21.77, "ref_test_mr": 21.77, "chosen": False},
                  {"stage": "training (alone)", "lever": "10 epochs", "change": "epochs=10", "val_mr": 16.22,
                   "val_gain": 0.85, "test_mr": 21.46, "ref_test_mr": 21.77, "chosen": True}]).to_csv(t / "recipe_rsicd.csv", index=False)
    pd.DataFrame([{"step": 1, "levers": "10 epochs", "val_mr": 16.22, "test_mr": 21.46, "kept": True, "run": "x",
                   "stage": "training"}]).to_csv(t / "recipe_trace_rsicd.csv", index=False)
    pd.DataFrame([{"dataset": "rsicd", "variant": "baseline", "scoring": "recipe", "spec": "tta4", "n_seeds": 3,
                   "val_mr": 18.9, "test_mr": 23.0, "test_mr_std": 0.2, "ms_per_query": 2.5, "bytes_per_item": 4096,
                   "delta_rsum_vs_baseline": None, "ci_lo": None, "ci_hi": None, "tie_rule": "expected",
                   "test_mr_pessimistic": 22.4, "test_mr_optimistic": 23.7, "betas": "10", "beta_grid": "grid extended to 5"},
                  {"dataset": "rsicd", "variant": "lca+cra", "scoring": "recipe", "spec": "tta4", "n_seeds": 3,
                   "val_mr": 18.7, "test_mr": 22.6, "test_mr_std": 0.3, "ms_per_query": 4.0, "bytes_per_item": 12288,
                   "delta_rsum_vs_baseline": -2.4, "ci_lo": -4.0, "ci_hi": -0.5, "tie_rule": "expected",
                   "test_mr_pessimistic": 22.0, "test_mr_optimistic": 23.3, "betas": "20", "beta_grid": ""}]
                 ).to_csv(t / "recipe_final.csv", index=False)
    text = "\n".join(recipe_summary(tmp_path, "res", full=False))
    assert "reference 15.37 (21.77) → + 10 epochs 16.22 (21.46)." in text   # the kept steps in one line
    assert "-2.40 [-4.00, -0.50] does not hold" in text            # the CI excludes zero on the negative side
    assert "| rsicd | frozen | baseline |  | 23.00 ± 0.20 | [22.40, 23.70] |  | 2.5 |" in text  # a row per variant
    assert "Every lever alone" not in text and "4096" not in text and "RESULTS.md" in text  # the detail is there
    assert "above GaLR" not in text  # the published neighbours: RESULTS.md only (the README stays a front door)
    full = re.sub(" +", " ", "\n".join(recipe_summary(tmp_path, "res", full=True)))  # padded tables, one space
    # the published rows just below and above (configs/published.yaml: GaLR 18.96, PIR 24.46)
    assert "above GaLR (published)" in full and "by 4.04" in full and "below PIR (published)" in full and "by 1.46" in full
    assert "Every lever alone" in full and "the probe's D 1024 + MLP baseline | 15.37 | 21.77 | - |" in full
    assert "4096" in full and "23.00 ± 0.20" in full and "| [22.00, 23.30] |" in full
    assert "| 10 (grid extended to 5) |" in full  # the beta flagged where the grid was extended on val
    assert "both operating points" not in full  # one operating point: no side-by-side
    # the same recipe at the adapted operating point: its own rows, and SelfAlign's gain at both points side by side
    fin = pd.read_csv(t / "recipe_final.csv")
    pd.concat([fin, fin.assign(operating_point="adapted: cut 14", test_mr=[27.5, 28.0], delta_rsum_vs_baseline=
                               [None, 3.0], ci_lo=[None, 1.0], ci_hi=[None, 5.0]),
               fin.assign(dataset="ucm")]).to_csv(t / "recipe_final.csv", index=False)
    text = re.sub(" +", " ", "\n".join(recipe_summary(tmp_path, "res", full=False)))
    assert "| rsicd | adapted top | baseline | | 27.50 ± 0.20 |" in text
    # the side-by-side gain table: RESULTS.md (the README points there)
    assert "The study's question at both operating points" not in text and "at both operating points: [RESULTS.md](res/RESULTS.md)" in text
    full = re.sub(" +", " ", "\n".join(recipe_summary(tmp_path, "res", full=True)))
    assert "| rsicd | lca+cra | recipe | 3 / 3 | -2.40 [-4.00, -0.50] does not hold | +3.00 [+1.00, +5.00] holds |" in full
    assert "| ucm | lca+cra | recipe | 3 / - | -2.40 [-4.00, -0.50] does not hold | |" in full  # not at that point


def test_the_schedule_caption_says_what_val_preferred_and_what_the_study_trains():
    """RSICD's val mR rose to 10 epochs while the study trains 6: the caption calls 6 a cost cap, never "chosen on
    val" (the numbers read from the table)."""
    from itr_lib.report import schedule_caption
    sched = pd.DataFrame({"epochs": [3, 6, 10], "val_mr": [12.01, 13.55, 13.91], "test_mr": [18.2, 19.41, 19.8]})
    cap = schedule_caption("rsicd", sched)
    assert "12.01 / 13.55 / 13.91 at 3 / 6 / 10 epochs: val prefers 10" in cap and "a cost cap" in cap
    assert "chosen on val" not in cap
    assert "the val choice" in schedule_caption("ucm", sched.iloc[:2]) and "cost cap" not in schedule_caption(
        "ucm", sched.iloc[:2])


def test_schedule_note_counts_runs_that_chose_the_last_epoch_once_per_run():
    """TGDT's three modes are one run per seed: counted once; "6 of 6" is a run whose val still rose at the end."""
    from itr_lib.report import _schedule_note
    t = pd.DataFrame({"setting": ["study loss"] * 3 + ["study loss, adapted top"] * 2,
                      "key": ["tgdt", "tgdt", "baseline", "baseline", "tgdt"],
                      "mode": ["two_stage", "global", "", "", "two_stage"],
                      "variant": ["t [two_stage]", "t [global]", "b", "b | top", "t | top [two_stage]"],
                      "best_epochs": ["6,5,6 of 6", "6,5,6 of 6", "4,4,4 of 6", "6,6,5 of 6", "6 of 6"]})
    note = " ".join(_schedule_note(t))
    assert "study loss: 2 of 6 runs chose the last epoch" in note
    assert "study loss, adapted top: 3 of 4 runs chose the last epoch" in note and "cost cap" in note
