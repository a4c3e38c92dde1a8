"""04 with some METHODS: their rows merged into the recorded efficiency tables, the other rows kept byte for byte."""
import numpy as np
import pandas as pd
import pytest

from itr_lib import efficiency as eff
from itr_lib.params import range_errors
from itr_lib.tables import write_table


def _table(methods, ms, seed):
    rng = np.random.default_rng(seed)
    n = len(methods)
    return pd.DataFrame({"method": methods, "ms_per_query_t2i": ms * 0.7, "ms_per_query_i2t": ms * 1.3,
                         "ms_per_query": ms, "speedup_vs_interactive": np.nan, "mr": rng.uniform(15, 25, n) / 3,
                         "mr_std": [np.nan] + list(rng.uniform(0, 1, n - 1)), "n_seeds": np.arange(n) + 1,
                         "variant": [f"{m} | infonce, FN-mask | 6 ep" for m in methods],   # a comma: quoted
                         "weights": ["trained"] * n, "speedup_vs_interactive_t2i": np.nan,
                         "speedup_vs_interactive_i2t": np.nan})


def _detail(methods, seed):
    rows = [{"method": m, "direction": d, "batch": b, "total_ms": np.random.default_rng(seed + i).uniform(0, 9) / 7,
             "extrapolated_from": np.nan, "k_shortlist": None}
            for i, m in enumerate(methods) for d in ("t2i", "i2t") for b in (1, 128)]
    return pd.DataFrame(rows)


def test_a_subset_replaces_and_inserts_its_rows_and_keeps_the_others_byte_for_byte(tmp_path):
    old_methods = ["baseline", "SelfAlign", "TGDT two-stage", "SCAN (cross-attention)"]
    old = _table(old_methods, np.array([1.1, 2.3, 12.2, 368.1]) + 1 / 3, 0)
    old["speedup_vs_interactive"] = old.ms_per_query.iloc[-1] / old.ms_per_query
    write_table(old, "efficiency_rsicd", tmp_path, floatfmt=".4g")
    write_table(_detail(old_methods, 0), "efficiency_rsicd_detail", tmp_path, floatfmt=".4g")
    before = (tmp_path / "efficiency_rsicd.csv").read_text().splitlines()
    before_detail = (tmp_path / "efficiency_rsicd_detail.csv").read_text().splitlines()

    # re-timed: SelfAlign (replaced), SelfAlign LCA and SelfAlign CRA (new; timed in METHODS order)
    new_methods = ["SelfAlign", "SelfAlign CRA", "SelfAlign LCA"]
    new = _table(new_methods, np.array([2.5, 2.0, 2.2]), 1)
    table, detail = eff.merge_efficiency(tmp_path, "rsicd", new, _detail(new_methods, 1))

    after = (tmp_path / "efficiency_rsicd.csv").read_text().splitlines()
    assert after[0] == before[0]                                                 # same columns
    assert list(table.method) == ["baseline", "SelfAlign", "SelfAlign CRA", "SelfAlign LCA", "TGDT two-stage",
                                  "SCAN (cross-attention)"]
    assert [after[1], after[5], after[6]] == [before[1], before[3], before[4]]   # untouched rows, byte for byte
    assert after[2] != before[2]                                                 # SelfAlign replaced
    np.testing.assert_allclose(table.ms_per_query[1:4], [2.5, 2.0, 2.2], atol=1e-4)
    # the new rows' speed-ups against the table's reference row (not re-timed)
    np.testing.assert_allclose(table.speedup_vs_interactive[1:4], (368.1 + 1 / 3) / np.array([2.5, 2.0, 2.2]),
                               rtol=1e-3)
    np.testing.assert_allclose(table.speedup_vs_interactive_t2i[2], (368.1 + 1 / 3) * 0.7 / 1.4, rtol=1e-3)

    after_detail = (tmp_path / "efficiency_rsicd_detail.csv").read_text().splitlines()
    assert after_detail[0] == before_detail[0]
    kept = [ln for ln in before_detail[1:] if not ln.startswith("SelfAlign,")]
    assert [ln for ln in after_detail[1:] if not ln.startswith("SelfAlign")] == kept    # in their order, unchanged
    assert list(dict.fromkeys(detail.method)) == list(table.method) and len(detail) == 6 * 4
    md = (tmp_path / "efficiency_rsicd.md").read_text().splitlines()
    assert sum(ln.startswith("| SelfAlign") for ln in md) == 3 and len(md) == 2 + 6   # the reader's copy re-rendered


def test_a_merge_into_a_folder_without_tables_writes_the_timed_rows(tmp_path):
    new = _table(["SelfAlign LCA", "SelfAlign CRA"], np.array([2.0, 2.2]), 2)
    table, _ = eff.merge_efficiency(tmp_path, "ucm", new, _detail(["SelfAlign LCA", "SelfAlign CRA"], 2))
    assert list(table.method) == ["SelfAlign CRA", "SelfAlign LCA"]   # in METHODS order
    assert (tmp_path / "efficiency_ucm_detail.csv").is_file()


def test_merge_rows_places_a_new_method_in_specs_order():
    old = pd.DataFrame({"method": ["baseline", "TGDT global", "MrSw exhaustive"], "x": ["a", "b", "c"]})
    new = pd.DataFrame({"method": ["SCAN (cross-attention)", "SelfAlign LCA"], "x": ["s", "l"], "y": ["1", "2"]})
    out = eff.merge_rows(old, new)
    assert list(out.method) == ["baseline", "SelfAlign LCA", "TGDT global", "MrSw exhaustive",
                                "SCAN (cross-attention)"]
    assert list(out.columns) == ["method", "x", "y"] and out.y.isna().sum() == 3


def test_methods_parameter_is_checked_before_anything_is_timed():
    assert eff.select_methods([]) == eff.METHODS
    assert [s.label for s in eff.select_methods(["SelfAlign LCA", "SelfAlign CRA"])] == ["SelfAlign CRA",
                                                                                         "SelfAlign LCA"]
    with pytest.raises(ValueError, match=r"METHODS: unknown method label\(s\) \['CRA'\].*'SelfAlign CRA'"):
        eff.select_methods(["CRA"])
    with pytest.raises(ValueError, match="interactive reference"):      # every row's denominator
        eff.select_methods(["SCAN (cross-attention)"])
    # the study runner refuses a value that is not a list of labels before it starts a kernel
    assert range_errors({"METHODS": "SelfAlign CRA"}) == [
        "METHODS = 'SelfAlign CRA': must be a list of method labels of itr_lib/efficiency/specs.py METHODS "
        "([] for every method)"]
    assert range_errors({"METHODS": ["SelfAlign CRA"]}) == [] == range_errors({"METHODS": []})


def test_rows_timed_on_another_cpu_say_so_and_the_frontier_marks_them(tmp_path):
    from itr_lib.io import write_json
    from itr_lib.plots import efficiency as eff_plots
    old = _table(["baseline", "SCAN (cross-attention)"], np.array([1.2, 368.0]), 3)
    old["device"], old["mode"] = "cpu", "vector"
    write_table(old, "efficiency_rsicd", tmp_path)
    write_json(tmp_path / "efficiency_hardware.json", {"cpu": "AMD EPYC"})
    new = _table(["SelfAlign CRA"], np.array([2.0]), 4)
    new["device"], new["mode"] = "cpu", "vector"
    same, _ = eff.merge_efficiency(tmp_path, "rsicd", new, _detail(["SelfAlign CRA"], 4), hw={"cpu": "AMD EPYC"})
    assert list(same.device) == ["cpu"] * 3                                     # the recorded machine: nothing said
    table, detail = eff.merge_efficiency(tmp_path, "rsicd", new, _detail(["SelfAlign CRA"], 4),
                                         hw={"cpu": "Intel Xeon"})
    assert list(table.device) == ["cpu", "cpu (Intel Xeon)", "cpu"]
    ax = eff_plots.frontier_figure(table, "rsicd").axes[0]
    assert [a.get_text() for a in ax.texts] == ["baseline", "SelfAlign CRA \u2020", "SCAN (cross-attention)"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "\u2020 timed later, on another machine:\ncpu (Intel Xeon)" in legend
    assert "Pareto front (without \u2020)" in legend
    front = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"][0]
    np.testing.assert_allclose(sorted(front.get_xdata()), [1.2, 368.0])         # not through the other machine's row
    assert ax.get_xlabel().endswith("; cpu)")                                    # the x axis names the others'
