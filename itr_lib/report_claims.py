"""The claims part of the results report (README block and RESULTS.md): the claims with their verdicts at each
operating point, what became of each verdict once the features adapted, each method's gain from adaptation and the
frozen-vs-adapted figures (issue 28). :func:`itr_lib.report.comparison_sections` calls :func:`claims_lines`."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .claims import claim_rule, claims_by_dataset, verdict_changes, with_bar
from .tables import fmt_ci as _ci, to_markdown


def claims_lines(tables: Path, figs: Path, rel, full: bool, shared_all=()) -> list[str]:
    """The claims section from ``tables/claims.csv`` (nothing without it); ``full=False``: the README's form, one row
    per claim and a column per dataset and point, with the parts of the labels every row shares
    (``shared_all``) dropped from the statements."""
    if not (tables / "claims.csv").is_file():
        return []
    lines: list[str] = []
    c = pd.read_csv(tables / "claims.csv")
    c["B - A mR [95% CI]"] = [_ci(v, lo, hi) for v, lo, hi in zip(c.delta_mr, c.ci_lo_mr, c.ci_hi_mr)]
    if not full:
        for part in shared_all:
            c["statement"] = c.statement.str.replace(f" | {part}", "", regex=False)
    c["latency A/B"] = ["" if pd.isna(v) else f"{v:.2g}x" for v in c.latency_ratio_a_over_b]
    points = "setting" in c and c.setting.nunique() > 1
    lines += ["### Claims (study loss" + (", frozen and adapted features" if points else "")
              + "; paired bootstrap over seeds and test queries)", "", claim_rule(), ""]
    if points:
        lines += ["*frozen*: every method on the frozen ImageNet / MiniLM features; *adapted*: the same protocol "
                  "with EfficientNet-Lite2's last stage and head trained (`image_top_blocks` 6, issue 28; "
                  "setting `study loss, adapted top`). Each point's latency ratios are its own models' (04's rows "
                  "`..., adapted top` run the top in every image encode); blank where 04 has not timed them.", ""]
    if full:
        c = with_bar(c)
        cols = (["dataset", "setting"] if points else ["dataset"]) + ["statement", "bar", "n_seeds",
                                                                      "B - A mR [95% CI]", "latency A/B", "verdict"]
        lines += [to_markdown(c[cols], index=False), ""]
    else:
        lines += ["B - A test mR [95% CI] (seeds), verdict; latency ratios and the two numbers compared in "
                  "RESULTS.md.", "", to_markdown(claims_by_dataset(c), index=False, compact=True), ""]
    if points:
        ch = verdict_changes(c)
        run = ch[~ch.change.str.startswith("not run")]
        lines += ["What became of each verdict once the features adapted: " + "; ".join(
            f"{ds.upper()}: " + ", ".join(f"{k} {n}" for k, n in g.change.value_counts().items())
            for ds, g in run.groupby("dataset")) + " (claims run at both points; the top-model claim names "
            "different models, so it is left out)." if len(run) else
            "No claim has runs at both operating points yet.", ""]
        if full and len(ch):
            lines += [to_markdown(ch.drop(columns=["claim"]), index=False), ""]
        from .tables import operating_point_table
        g_path = tables / "adaptation_gains.csv"
        gains = pd.read_csv(g_path) if full and g_path.is_file() else pd.DataFrame(columns=["dataset"])
        if not full:  # the README: the figures; each method's numbers and paired gain in RESULTS.md
            lines += [f"Each method's test mR at both points and its paired gain from adaptation: "
                      f"[RESULTS.md]({rel}/RESULTS.md) (`adaptation_gains.csv`).", ""]
        for ds in ("rsicd", "ucm"):
            f = tables / f"comparison_{ds}.csv"
            op = operating_point_table(pd.read_csv(f), gains[gains.dataset == ds]) if f.is_file() and full \
                else pd.DataFrame()
            if len(op):
                lines += [f"{ds.upper()}, test mR per method at both points (mean ± std (seeds); change: adapted "
                          "- frozen, mR [95% CI] (seeds) over the seeds both points share, the claims' paired "
                          "bootstrap and rule):", "", to_markdown(op, index=False), ""]
            if (figs / f"operating_points_{ds}.png").is_file():
                lines += [f"![{ds} frozen vs adapted]({rel}/figures/operating_points_{ds}.png)", ""]
    return lines
