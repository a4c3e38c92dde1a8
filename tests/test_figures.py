"""The figures a reader meets first (README and RESULTS.md): every published line labelled, every README-table
method on its figure, one measure per panel, a legend for every colour, titles of their own."""
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from itr_lib import tables
from itr_lib.plots import charts, efficiency as eff_plots
from itr_lib.plots.style import FAMILY_COLOURS, split_shared

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT / "results" / "full" / "tables"


def readme_rows(dataset: str) -> list[str]:
    """The ``variant`` column of the README's results table of ``dataset`` (the generated block)."""
    text = (ROOT / "README.md").read_text()
    block = text.split(f"### {dataset.upper()}: every method under one protocol", 1)[1].split("###", 1)[0]
    rows = [ln for ln in block.splitlines() if ln.startswith("| ") and not ln.startswith("| variant")]
    return [ln.split("|")[1].strip() for ln in rows]


def test_split_shared_keeps_the_method_and_its_mode():
    short, shared = split_shared(["CRA | infonce +FN-mask | 6 ep | val 1000",
                                  "tgdt | infonce +FN-mask | 6 ep | val 1000 [two_stage]",
                                  "LCA K=16 | infonce +FN-mask | 3 ep | val 1000"])
    assert short == ["CRA | 6 ep", "tgdt | 6 ep [two_stage]", "LCA K=16 | 3 ep"]
    assert shared == "infonce +FN-mask | val 1000"


@pytest.mark.parametrize("dataset", ["rsicd", "ucm"])
def test_comparison_figure_rows_are_the_readme_table_and_every_published_line_is_labelled(dataset):
    if not (FULL / f"comparison_{dataset}.csv").is_file():
        pytest.skip("results/full has no comparison table")
    t = pd.read_csv(FULL / f"comparison_{dataset}.csv")
    pub = tables.published_rows(dataset)
    fig = charts.comparison_bars(t, dataset, pub)
    ax = fig.axes[0]
    labels = [tl.get_text() for tl in ax.get_yticklabels()]
    assert sorted(labels) == sorted(readme_rows(dataset))                  # the README's rows, named alike
    assert not any("infonce" in lab for lab in labels)                     # the shared protocol is said once ...
    val = {"rsicd": "val 1000", "ucm": "val 210"}[dataset]  # the val images each dataset scores (its record)
    assert any(f"Every row: infonce +FN-mask | 6 ep | {val}" in t_.get_text() for t_ in fig.texts)  # ... here
    texts = [t_.get_text() for t_ in ax.texts]
    for name, mr in zip(pub.method, pub.mr):                               # each dashed line named at its end
        assert f"{name.replace(' (published)', '')} {mr:.2f}" in texts
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == len(pub) == len(texts)
    # colours: one per family, each in the legend
    bar_colours = {tuple(np.round(p.get_facecolor()[:3], 3)) for p in ax.patches}
    import matplotlib.colors as mc
    legend_names = [t_.get_text() for leg in ax.findobj(lambda a: a.__class__.__name__ == "Legend")
                    for t_ in leg.get_texts()]
    fams = {f for f in FAMILY_COLOURS if tuple(np.round(mc.to_rgb(FAMILY_COLOURS[f]), 3)) in bar_colours}
    assert len(fams) == len(bar_colours) >= 3 and fams <= set(legend_names)
    assert "tie bounds (pessimistic, optimistic)" in legend_names and "mean over seeds" in ax.get_xlabel()


def test_recipe_levers_one_measure_a_colour_legend_and_whole_labels():
    t = pd.DataFrame({"stage": ["reference", "training (alone)", "training (alone)", "inference (alone)",
                                "transductive (reported, never chosen)"],
                      "lever": ["reference", "10 epochs", "InfoNCE temperature 0.03", "test-time rotations + flips",
                                "dual softmax (transductive: whole test query set)"],
                      "val_gain": [0, 0.85, 0.4, 1.83, 1.5], "delta_rsum": [np.nan, -1.8, -8.8, 13.6, 11.6],
                      "ci_lo": [np.nan, -5.6, -12.6, 9.4, 6.5], "ci_hi": [np.nan, 1.9, -5.2, 17.7, 16.8],
                      "chosen": [False, True, False, True, False]})
    fig = charts.recipe_levers(t, "rsicd", {"RemoteCLIP ViT-B/32 (published)": 35.26})
    left, right = fig.axes[:2]
    assert "mR gain" in left.get_xlabel() and "mR gain" in right.get_xlabel()   # one measure on both panels
    widths = sorted(p.get_width() for p in right.patches)
    np.testing.assert_allclose(widths, sorted([-1.8 / 6, -8.8 / 6, 13.6 / 6, 11.6 / 6]), atol=1e-9)
    assert fig._suptitle is None or "published" not in fig._suptitle.get_text()  # no stray suptitle
    assert "colour" not in right.get_title() and "green" not in right.get_title()
    legend = [t_.get_text() for t_ in fig.legends[0].get_texts()]
    assert legend == ["chosen (kept by the greedy rule on val)", "tried, not chosen",
                      "transductive (reported, never chosen)"]
    ticks = " ".join(tl.get_text() for tl in left.get_yticklabels())
    assert "[...]" not in ticks and "query set" in ticks                        # wrapped, not clipped


def test_every_readme_method_is_timed_for_the_frontier():
    """04 times every method of the README's table (CRA, its top row, was missing)."""
    from itr_lib.efficiency.specs import METHODS
    rows = readme_rows("rsicd") or ["CRA", "LCA+CRA K=1024", "LCA K=1024", "baseline", "tgdt [two_stage]",
                                    "aladin [global]", "scan", "mrsw [exhaustive]"]
    for row in rows:
        head = re.sub(r"\s*\[.*\]$", "", row).split(" K=")[0]
        if head in ("CRA", "LCA", "LCA+CRA"):
            want = {"lca": "LCA" in head, "cra": "CRA" in head}
            assert any(s.method == "selfalign" and all(s.prefer.get(k) == v for k, v in want.items())
                       for s in METHODS), row
        else:
            assert any(s.method == head for s in METHODS), row


def frontier_rows_missing(dataset: str, tables_dir: Path = FULL) -> list[str]:
    """The README-table rows of ``dataset`` without a point on its efficiency frontier (drawn from
    ``<tables_dir>/efficiency_<dataset>.csv``): a SelfAlign variant needs its own row (CRA, LCA, LCA+CRA), another
    method any row of its ``MethodSpec.method``."""
    from itr_lib.efficiency.specs import METHODS
    method_of = {s.label: s.method for s in METHODS}
    t = pd.read_csv(tables_dir / f"efficiency_{dataset}.csv")
    texts = {a.get_text().removesuffix(f" {eff_plots.OTHER_MACHINE}")  # (timed on another machine)
             for a in eff_plots.frontier_figure(t, dataset).axes[0].texts}
    missing = []
    for row in readme_rows(dataset):
        head = re.sub(r"\s*\[.*\]$", "", row).split(" K=")[0]
        if head in ("CRA", "LCA", "LCA+CRA"):
            mine = t[t.method.map(method_of).eq("selfalign")
                     & t.variant.astype(str).str.split(" |", regex=False).str[0].str.split(" K=").str[0].eq(head)]
        else:
            mine = t[t.method.map(method_of).eq(head)]
        if not any(eff_plots._point_label(r) in texts for _, r in mine.iterrows()):
            missing.append(row)
    return missing


@pytest.mark.parametrize("dataset", ["rsicd", "ucm"])
def test_every_readme_method_is_a_labelled_point_of_the_committed_frontier(dataset):
    """The figure the README shows under its table: CRA (the README's top RSICD row) and LCA were missing."""
    if not (FULL / f"efficiency_{dataset}.csv").is_file() or not readme_rows(dataset):
        pytest.skip("results/full has no efficiency table or the README no results table")
    assert frontier_rows_missing(dataset) == []


def test_a_selfalign_variant_row_never_times_another_variants_run():
    from itr_lib.efficiency.specs import spec_by_label
    from itr_lib.runs import select_runs
    runs = pd.DataFrame({"run": ["a", "b"], "method": ["selfalign"] * 2, "dataset": ["rsicd"] * 2, "seed": [0, 0],
                         "group": ["g1", "g2"], "lca": [True, True], "cra": [True, False], "setting": ["study loss"] * 2,
                         "checkpoint": ["x", "y"], "epochs_run": [6, 6], "text_encoder": ["minilm"] * 2,
                         "variant": ["LCA+CRA", "LCA"]})
    cra = spec_by_label("SelfAlign CRA")
    assert cra.mismatch(select_runs(runs, "selfalign", "rsicd", cra.prefer)[1]) == ["lca"]   # no CRA-only run
    lca = spec_by_label("SelfAlign LCA")
    assert lca.mismatch(select_runs(runs, "selfalign", "rsicd", lca.prefer)[1]) == []        # run b is its own
    # the adapted operating point's rows time only adapted runs: none recorded -> the row is skipped
    ad = spec_by_label("SelfAlign, adapted top")
    assert ad.mismatch(select_runs(runs, "selfalign", "rsicd", ad.prefer)[1]) == ["setting"]
    runs2 = pd.concat([runs, runs.assign(run=["c", "d"], group=["g3", "g4"], setting="study loss, adapted top")])
    timed, group = select_runs(runs2, "selfalign", "rsicd", ad.prefer)
    assert ad.mismatch(group) == [] and timed.run == "c"        # the adapted LCA+CRA run
    frozen = spec_by_label("SelfAlign")
    assert select_runs(runs2, "selfalign", "rsicd", frozen.prefer)[0].run == "a"   # the frozen row is unchanged


def test_frontier_names_every_row_has_legends_and_the_recipe_its_own_title():
    from itr_lib.recipe import frontier_rows
    eff = pd.DataFrame({"method": ["baseline", "SelfAlign", "SelfAlign CRA", "TGDT two-stage", "SCAN (cross-attention)"],
                        "variant": ["baseline | x", "LCA+CRA K=1024 | x", "CRA | x", "tgdt | x", "scan | x"],
                        "mode": ["vector", "vector", "vector", "two_stage", "exhaustive"],
                        "ms_per_query": [1.2, 2.4, 2.0, 12.0, 368.0], "mr": [19.5, 20.7, 20.7, 19.6, 18.5],
                        "mr_std": [0.1] * 5, "family": ["independent"] * 5, "bytes_per_item": [2048] * 5,
                        "device": ["cpu"] * 5})
    fig = eff_plots.frontier_figure(eff, "rsicd")
    ax = fig.axes[0]
    assert [a.get_text() for a in ax.texts] == ["baseline", "SelfAlign LCA+CRA", "SelfAlign CRA", "TGDT two-stage",
                                                "SCAN (cross-attention)"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"independent embeddings", "SelfAlign", "two-stage / distilled", "interactive references"} <= set(legend)
    assert {"one vector per item (faiss)", "two-stage (shortlist re-scored)"} <= set(legend)
    final = pd.DataFrame({"dataset": ["rsicd"], "variant": ["baseline"], "scoring": ["recipe"], "test_mr": [25.4],
                          "test_mr_std": [0.4], "ms_per_query": [17.0], "bytes_per_item": [2048]})
    rec = eff_plots.frontier_figure(frontier_rows(final, eff), "rsicd")
    assert rec.axes[0].get_title() != ax.get_title() and "recipe" in rec.axes[0].get_title()
    assert "baseline (recipe)" in [a.get_text() for a in rec.axes[0].texts]


def test_ablation_figure_names_its_colours_seeds_and_zero_line():

    t = pd.DataFrame({"method": ["baseline", "selfalign"], "variant": ["baseline | 6 ep", "CRA | 6 ep"],
                      "n_seeds": [3, 1], "mr": [19.5, 20.6], "mr_std": [0.1, np.nan],
                      "delta_rsum": [np.nan, 6.9], "ci_lo": [np.nan, 2.4], "ci_hi": [np.nan, 11.4]})
    fig = charts.ablation_bars(t, "rsicd")
    left, right = fig.axes[:2]
    assert [tl.get_text() for tl in left.get_yticklabels()] == ["baseline | 6 ep (3 seeds)", "CRA | 6 ep (1 seed)"]
    assert {x.get_text() for x in left.get_legend().get_texts()} == {"independent embeddings", "SelfAlign"}
    assert {x.get_text() for x in right.get_legend().get_texts()} == {"no difference", "gain, 95% paired bootstrap CI"}


def test_operating_point_figure_has_a_labelled_point_per_method_and_point():
    """Frozen vs adapted (issue 28): each method at each point it ran is one marker at its mean mR, the two points
    are named in the legend; without adapted rows there is no figure."""
    from itr_lib.experiments import ADAPTED_SETTING
    rows = [dict(setting="study loss", key=k, method=m, variant=v, mr=mr, mr_std=0.5, n_seeds=3)
            for k, m, v, mr in (("baseline", "baseline", "baseline | 6 ep", 46.0),
                                ("tgdt", "tgdt", "tgdt | 6 ep [two_stage]", 47.0),
                                ("tgdt", "tgdt", "tgdt | 6 ep [global]", 45.0),
                                ("scan", "scan", "scan | 6 ep", 48.0))]
    t = pd.DataFrame(rows)
    assert charts.operating_point_shift(t, "ucm") is None
    ad = t[t.key.isin(["baseline", "tgdt"])].assign(setting=ADAPTED_SETTING, mr=lambda d: d.mr + 4,
                                                     variant=lambda d: d.variant.str.replace("| 6 ep", "| top | 6 ep"))
    fig = charts.operating_point_shift(pd.concat([t, ad]), "ucm")
    ax = fig.axes[0]
    labels = [lab.get_text() for lab in ax.get_yticklabels()]
    assert sorted(labels) == ["baseline", "scan", "tgdt [two_stage]"]  # the deployed mode only, one row per method
    got = {}
    for c in ax.containers:  # errorbar containers: one per operating point
        xs = c.lines[0].get_xdata()
        got[c.get_label()] = sorted(np.round(np.asarray(xs, dtype=float), 2).tolist())
    frozen = next(k for k in got if k.startswith("frozen"))
    adapted = next(k for k in got if k.startswith("adapted"))
    assert got[frozen] == [46.0, 47.0, 48.0] and got[adapted] == [50.0, 51.0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [frozen, adapted] or sorted(legend) == sorted([frozen, adapted])
    charts.plt.close(fig)


@pytest.mark.parametrize("dataset", ["rsicd", "ucm"])
def test_results_overview_has_a_bar_per_run_a_heading_per_setting_and_whole_labels(dataset):
    """RESULTS.md's every-run figure: one bar per row of main_<ds>.csv that is ours, one bold heading per setting,
    no label cut with an ellipsis, the recipe's 8 views named, every published number a labelled dashed line."""
    if not (FULL / f"main_{dataset}.csv").is_file():
        pytest.skip("results/full has no main table")
    t = pd.read_csv(FULL / f"main_{dataset}.csv")
    ours, pub = t[~t.published.astype(bool)], t[t.published.astype(bool)]
    fig = charts.results_overview(t, dataset)
    ax = fig.axes[0]
    ticks = ax.get_yticklabels()
    heads = [tl.get_text() for tl in ticks if tl.get_fontweight() == "bold"]
    assert sorted(h.split(" (all rows")[0] for h in heads) == sorted(set(ours.setting.fillna("other")))
    bars = [p for p in ax.patches if p.get_width() > 0]
    assert len(bars) == len(ours)
    assert sorted(round(p.get_width(), 6) for p in bars) == sorted(round(v, 6) for v in ours.mr)
    labels = [tl.get_text() for tl in ticks]
    assert not any("[...]" in lab or "…" in lab for lab in labels)
    if ours.variant.str.contains("tta-r0-r90").any():
        assert any("8-view TTA" in lab for lab in labels)
    texts = [t_.get_text() for t_ in ax.texts]
    assert all(any(t_.startswith(str(m).replace(" (published)", "")) for t_ in texts) for m in pub.method)


def test_published_labels_never_start_closer_than_the_gap():
    """Close published numbers (SCAN 14.23 and CLIP zero-shot 15.04 on RSICD) get labels at least LABEL_GAP of the
    x range apart, in mR order, each at or right of its own line; far ones sit on their line."""
    from itr_lib.plots.backend import plt
    pub = pd.DataFrame({"method": ["A (published)", "B (published)", "C (published)", "D (published)"],
                        "mr": [14.23, 15.04, 15.3, 30.39]})
    fig, ax = plt.subplots()
    ax.set_xlim(0, 40)
    texts = charts._published_lines(ax, pub)
    xs = [t.get_position()[0] for t in texts]
    assert [t.get_text() for t in texts] == ["A 14.23", "B 15.04", "C 15.30", "D 30.39"]
    assert all(b - a >= charts.LABEL_GAP * 40 - 1e-9 for a, b in zip(xs, xs[1:]))
    assert xs[0] == 14.23 and xs[3] == 30.39 and all(x >= m for x, m in zip(xs, pub.mr))
    plt.close(fig)


def test_a_long_overview_label_gets_a_taller_slot_and_short_ones_keep_one_unit():
    """Rows of up to three label lines sit one unit apart (the figure as before); a four-line label's slot grows by
    a third, so the gap to each neighbour's centre covers both half-slots."""
    from itr_lib.plots import charts
    y = charts.row_positions([1, 3, 4, 2])
    assert list(y[:2]) == [0.0, 1.0]
    assert y[2] - y[1] == pytest.approx(0.5 + 4 / 3 / 2) and y[3] - y[2] == pytest.approx(4 / 3 / 2 + 0.5)
    assert list(charts.row_positions([2] * 5)) == [0.0, 1.0, 2.0, 3.0, 4.0]
