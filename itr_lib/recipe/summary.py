"""The recipe's section of RESULTS.md and the README block (``itr_lib.report`` calls :func:`recipe_summary`), built
from 07's tables only: the greedy steps, the final rows with latency and SelfAlign's paired gain, the published rows
around the recipe's baseline."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..tables import fmt_ci as _ci
from ..tables import to_markdown


def _verdict(lo, hi) -> str:
    if pd.isna(lo) or pd.isna(hi):
        return ""
    return "holds" if lo > 0 else ("does not hold" if hi < 0 else "inconclusive")


def _published_neighbours(ds: str, mr: float) -> str:
    """The published rows just below and just above ``mr`` (labelled published; their backbones)."""
    from ..tables import published_rows
    pub = published_rows(ds).sort_values("mr")
    if pub.empty or pd.isna(mr):
        return ""
    below, above = pub[pub.mr <= mr], pub[pub.mr > mr]
    parts = []
    if len(below):
        b = below.iloc[-1]
        parts.append(f"above {b.method} ({b.variant}) {b.mr:.2f} by {mr - b.mr:.2f}")
    if len(above):
        a = above.iloc[0]
        parts.append(f"below {a.method} ({a.variant}) {a.mr:.2f} by {a.mr - mr:.2f}")
    return "; ".join(parts)


def recipe_summary(results_dir: Path, rel, full: bool = True) -> list[str]:
    """The strongest frozen-feature recipe (07_recipe), from its tables: the greedy steps on val (how far each lever
    carried), the chosen recipe over seeds with its latency and SelfAlign's paired gain, the published neighbours of
    its best single-model number; ``full`` (RESULTS.md) adds every lever alone and the figures."""
    tables, figs = results_dir / "tables", results_dir / "figures"
    lines = []
    for lev in sorted(tables.glob("recipe_*.csv")):
        ds = lev.stem[len("recipe_"):]
        if ds.startswith(("trace_", "final")):
            continue
        t = pd.read_csv(lev)
        ref = t[t.stage == "reference"]
        lines += [f"### The strongest frozen-feature recipe (`07_recipe`; levers measured on {ds.upper()} val, seed 0; "
                  f"test shown, never used to choose)", ""]
        tr_path = tables / f"recipe_trace_{ds}.csv"
        tr = pd.read_csv(tr_path) if tr_path.is_file() else pd.DataFrame()
        if len(ref) and len(tr):
            r0 = ref.iloc[0]
            steps = [{"stage": "reference", "levers": "the probe's D 1024 + MLP baseline", "val_mr": r0.val_mr,
                      "test_mr": r0.test_mr, "kept": "-"}]
            steps += tr[["stage", "levers", "val_mr", "test_mr", "kept"]].to_dict("records")
            lines += ["How far each lever carried (the greedy steps: each adds one lever to the recipe so far and is "
                      "kept only when val mR rises; inference steps score the chosen training recipe's seed-0 model):",
                      "", to_markdown(pd.DataFrame(steps), index=False, compact=not full, floatfmt=".2f"), ""]
        if full:
            cols = [c for c in ("stage", "lever", "change", "val_mr", "val_gain", "test_mr", "ref_test_mr", "delta_rsum",
                                "ci_lo", "ci_hi", "extra_query_ms", "chosen", "train_min") if c in t]
            lines += [f"Every lever alone against its reference (`{rel}/tables/recipe_{ds}.csv`; delta_rsum: paired "
                      "bootstrap of the test rsum gain, reported, never used to choose):", "",
                      to_markdown(t[cols], index=False, floatfmt=".2f"), ""]
    fin_path = tables / "recipe_final.csv"
    if fin_path.is_file():
        f = pd.read_csv(fin_path)
        show = pd.DataFrame({
            "dataset": f.dataset, "variant": f.variant, "scoring": f.scoring, "spec": f.spec, "n_seeds": f.n_seeds,
            "val mR": f.val_mr.map("{:.2f}".format),
            "test mR": [f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}" for m, s, n in zip(f.test_mr, f.test_mr_std,
                                                                                         f.n_seeds)],
            "ms/query": f.ms_per_query.map(lambda v: "" if pd.isna(v) else f"{v:.2f}") if "ms_per_query" in f else "",
            "bytes/item": f.bytes_per_item.map(lambda v: "" if pd.isna(v) else f"{v:.0f}") if "bytes_per_item" in f else "",
            "SelfAlign - baseline, rsum [95% CI]": [
                "" if pd.isna(d) else f"{_ci(d, lo, hi)} {_verdict(lo, hi)}"
                for d, lo, hi in zip(f.delta_rsum_vs_baseline, f.ci_lo, f.ci_hi)]})
        lines += ["The chosen recipe over seeds (`recipe_final.csv`; `plain`: the recipe's training alone; latency: "
                  "04's protocol, batch 1, one thread, mean of t2i and i2t, on the first seed's model; SelfAlign's gain: "
                  "paired bootstrap over seeds and test queries against the baseline of the same recipe):", "",
                  to_markdown(show, index=False, compact=not full), ""]
        single = f[(f.variant == "baseline") & ~f.scoring.str.contains("ensemble")]
        for ds, g in single.groupby("dataset", sort=False):
            best = g.sort_values("val_mr").iloc[-1]  # the scoring chosen on val
            near = _published_neighbours(ds, best.test_mr)
            if near:
                lines.append(f"- {ds.upper()}: the recipe's baseline ({best.scoring}, {int(best.n_seeds)} seeds) "
                             f"scores {best.test_mr:.2f} ± {best.test_mr_std:.2f}: {near}.")
        lines.append("")
    if full:
        for p in sorted(figs.glob("recipe_levers_*.png")) + sorted(figs.glob("recipe_frontier_*.png")):
            lines += [f"![{p.stem}]({rel}/figures/{p.name})", ""]
    else:
        pics = sorted(figs.glob("recipe_frontier_*.png"))
        if pics:
            lines += ["The recipe on 04's accuracy / latency frontier:", ""]
            lines += [f"![{p.stem}]({rel}/figures/{p.name})" for p in pics] + [""]
    return lines
