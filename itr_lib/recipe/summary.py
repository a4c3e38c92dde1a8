"""The recipe's section of RESULTS.md and the README block (``itr_lib.report`` calls :func:`recipe_summary`), built
from 07's tables only: the greedy steps, the final rows with latency and SelfAlign's paired gain, the published rows
around the recipe's baseline."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..claims import _verdict as claim_verdict
from ..tables import fmt_ci as _ci
from ..tables import published_rows, to_markdown


def _verdict(lo, hi) -> str:
    """The claims' rule (:func:`itr_lib.claims._verdict`: "better", seeds resampled) on a gain's CI; blank when
    not measured."""
    return "" if pd.isna(lo) or pd.isna(hi) else claim_verdict(lo, hi, "better", 0.0, 0.0)


def _published_neighbours(ds: str, mr: float) -> str:
    """The published rows just below and just above ``mr`` (labelled published; their backbones)."""
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


def _mean_std(f: pd.DataFrame) -> list[str]:
    return [f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}" for m, s, n in zip(f.test_mr, f.test_mr_std, f.n_seeds)]


def _num(f: pd.DataFrame, col: str, fmt: str) -> list[str]:
    return ["" if pd.isna(v) else fmt.format(v) for v in f[col]] if col in f else [""] * len(f)


def _ties(f: pd.DataFrame) -> list[str]:
    """``[pess., opt.]`` test mR with ties resolved against / for the query (blank where not recorded)."""
    if not {"test_mr_pessimistic", "test_mr_optimistic"} <= set(f.columns):
        return [""] * len(f)
    return ["" if pd.isna(lo) or pd.isna(hi) else f"[{lo:.2f}, {hi:.2f}]"
            for lo, hi in zip(f.test_mr_pessimistic, f.test_mr_optimistic)]


def _betas(f: pd.DataFrame) -> list[str]:
    """Each row's querybank beta(s), flagged where the val optimum sat on the grid's edge (``beta_grid``)."""
    notes = f["beta_grid"] if "beta_grid" in f else pd.Series([""] * len(f), index=f.index)
    return ["" if pd.isna(b) or b == "" else f"{b}" + (f" ({n})" if isinstance(n, str) and n else "")
            for b, n in zip(f.get("betas", pd.Series([""] * len(f), index=f.index)), notes)]


def _gain(f: pd.DataFrame) -> list[str]:
    return ["" if pd.isna(d) else f"{_ci(d, lo, hi)} {_verdict(lo, hi)}"
            for d, lo, hi in zip(f.delta_rsum_vs_baseline, f.ci_lo, f.ci_hi)]


def operating_point_lines(f: pd.DataFrame) -> list[str]:
    """SelfAlign's paired gain over the baseline of the same recipe at each operating point (frozen grid / adapted
    top), per dataset and scoring: which verdict holds, flips or stays inconclusive (nothing when only one point
    was trained)."""
    from .records import FROZEN, point_label
    g = f[(f.variant != "baseline") & f.delta_rsum_vs_baseline.notna() & ~f.scoring.str.contains("ensemble")]
    if g.operating_point.nunique() < 2:
        return []
    g = g.assign(cell=_gain(g), point=["frozen grid" if op == FROZEN else point_label(op) for op in g.operating_point],
                 seeds=g.n_seeds.astype(int).astype(str))
    points = ["frozen grid"] + [p for p in dict.fromkeys(g.point) if p != "frozen grid"]
    wide = g.pivot_table(index=["dataset", "variant", "scoring"], columns="point", values="cell", aggfunc="first")
    n = g.pivot_table(index=["dataset", "variant", "scoring"], columns="point", values="seeds", aggfunc="first")
    wide = wide.reindex(columns=points)
    wide.columns = [f"{c}: rsum gain [95% CI]" for c in wide.columns]
    n = n.reindex(columns=points).fillna("-")
    wide.insert(0, f"seeds ({' / '.join(p.replace(' grid', '') for p in points)})",
                [" / ".join(r) for r in n[points].itertuples(index=False)])
    return ["The study's question at both operating points: SelfAlign's paired gain over the baseline of the same "
            "recipe, seeds and inference (frozen grid: the chosen recipe; adapted: the same recipe without train "
            "rotations plus the adapted levers its column names; the levers val chose: the trace's `adapted top` "
            "stage):", "", to_markdown(wide.reset_index(), index=False), ""]


def recipe_summary(results_dir: Path, rel, full: bool = True) -> list[str]:
    """The strongest frozen-feature recipe (07_recipe), from its tables: the greedy steps on val (how far each lever
    carried), the chosen recipe over seeds with its latency and SelfAlign's paired gain, the published neighbours of
    its best single-model number. The README (``full`` False) gets the kept steps in one line and one row per dataset x
    variant; RESULTS.md every step, every lever alone, every final row and the figures."""
    tables, figs = results_dir / "tables", results_dir / "figures"
    lines = []
    for lev in sorted(tables.glob("recipe_*.csv")):
        ds = lev.stem[len("recipe_"):]
        if ds.startswith(("trace_", "final")) or ds == "points":  # not lever tables
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
            if full:
                lines += ["How far each lever carried (the greedy steps: each adds one lever to the recipe so far and "
                          "is kept only when val mR rises; inference steps score the chosen training recipe's seed-0 "
                          "model):", "", to_markdown(pd.DataFrame(steps), index=False, floatfmt=".2f"), ""]
            else:  # the README: the kept steps in one line (the adapted tops' steps in a line of their own: they
                # start from the recipe without rotations, not from the step before)
                def kept_chain(sts, parts):
                    prev = ""
                    for st in sts:
                        if st["kept"] is True:  # each kept step's levers are the previous kept step's plus one
                            added = st["levers"][len(prev) + 3:] if prev and st["levers"].startswith(prev + " + ") \
                                else st["levers"]
                            parts.append(f"+ {added} {st['val_mr']:.2f} ({st['test_mr']:.2f})")
                            prev = st["levers"]
                    return " → ".join(parts)
                chain = kept_chain([st for st in steps[1:] if st["stage"] != "adapted top"],
                                   [f"reference {r0.val_mr:.2f} ({r0.test_mr:.2f})"])
                lines += [f"How far each lever carried, val mR (test), seed 0, the levers kept in turn: {chain}.", ""]
                adapted = [st for st in steps[1:] if st["stage"] == "adapted top"]
                if any(st["kept"] is True for st in adapted):
                    lines += [f"The adapted tops, kept in turn on the training recipe without rotations (val mR (test), "
                              f"seed 0): {kept_chain(adapted, [])}.", ""]
        if full:
            cols = [c for c in ("stage", "lever", "change", "val_mr", "val_gain", "test_mr", "ref_test_mr", "delta_rsum",
                                "ci_lo", "ci_hi", "extra_query_ms", "chosen", "train_min") if c in t]
            lines += [f"Every lever alone against its reference (`{rel}/tables/recipe_{ds}.csv`; delta_rsum: paired "
                      "bootstrap of the test rsum gain, reported, never used to choose):", "",
                      to_markdown(t[cols], index=False, floatfmt=".2f"), ""]
    fin_path = tables / "recipe_final.csv"
    if fin_path.is_file():
        from .stages import with_record_columns
        from .records import operating_points, point_label
        f = with_record_columns(results_dir, pd.read_csv(fin_path))
        f = f.assign(operating_point=operating_points(f))
        if full:
            show = pd.DataFrame({
                "dataset": f.dataset, "backbone": f.operating_point, "variant": f.variant, "scoring": f.scoring,
                "spec": f.spec,
                "n_seeds": f.n_seeds, "val mR": f.val_mr.map("{:.2f}".format), "test mR": _mean_std(f),
                "ties [pess., opt.]": _ties(f), "beta (chosen on val)": _betas(f),
                "ms/query": _num(f, "ms_per_query", "{:.2f}"), "bytes/item": _num(f, "bytes_per_item", "{:.0f}"),
                "SelfAlign - baseline, rsum [95% CI]": _gain(f)})
            lines += ["The chosen recipe over seeds (`recipe_final.csv`; `plain`: the recipe's training alone; latency: "
                      "04's protocol, batch 1, one thread, mean of t2i and i2t, on the first seed's model; SelfAlign's "
                      "gain: paired bootstrap over seeds and test queries against the baseline of the same recipe):", "",
                      to_markdown(show, index=False), ""]
        else:  # the README: one row per dataset x variant, a column per scoring
            f = f.assign(_mr=_mean_std(f), _ties=_ties(f), _gain=_gain(f), _ms=_num(f, "ms_per_query", "{:.1f}"))
            rows = []
            for (ds, op, v), g in f.groupby(["dataset", "operating_point", "variant"], sort=False):
                plain, rec = g[g.scoring == "plain"], g[g.scoring == "recipe"]
                ens = g[g.scoring.str.contains("ensemble")]
                first = lambda d, col: d[col].iloc[0] if len(d) else ""  # noqa: E731
                rows.append({"dataset": ds, "backbone": point_label(op),
                             "variant": v, "training only": first(plain, "_mr"),
                             "recipe": first(rec, "_mr"), "ties [pess., opt.]": first(rec, "_ties"),
                             "ensemble": first(ens, "_mr"),
                             "ms/query": " → ".join(x for x in (first(d, "_ms") for d in (plain, rec, ens)) if x),
                             "SelfAlign - baseline, rsum": first(rec, "_gain")})
            lines += [f"The chosen recipe, test mR (mean ± std over seeds; backbone: frozen grids, or an adapted top "
                      f"(the same recipe without train rotations plus the image top, or the image top and MiniLM's last layers; the "
                      f"levers val chose: RESULTS.md's trace); ties: the recipe's mR with ties resolved "
                      f"against / for the query; ms/query under 04's protocol; every scoring, spec, bracket and the "
                      f"plain-scoring gain: [RESULTS.md]({rel}/RESULTS.md)):", "",
                      to_markdown(pd.DataFrame(rows), index=False, compact=True), ""]
        single = f[(f.variant == "baseline") & ~f.scoring.str.contains("ensemble")]
        if not full:  # the README: the neighbours' sentence per dataset and point lives in RESULTS.md
            single = single.iloc[:0]
            lines.append(f"Each best single-model number beside its published neighbours, and SelfAlign's gain with "
                         f"plain and recipe scoring at both operating points: [RESULTS.md]({rel}/RESULTS.md).")
        for (ds, op), g in single.groupby(["dataset", "operating_point"], sort=False):
            best = g.sort_values("val_mr").iloc[-1]  # the scoring chosen on val
            near = _published_neighbours(ds, best.test_mr)
            if near:
                lines.append(f"- {ds.upper()} ({op}): the recipe's baseline ({best.scoring}, {int(best.n_seeds)} "
                             f"seeds) scores {best.test_mr:.2f} ± {best.test_mr_std:.2f}: {near}.")
        lines.append("")
        if full:
            lines += operating_point_lines(f)
            pts_path = tables / "recipe_points.csv"
            if pts_path.is_file():
                pts = pd.read_csv(pts_path)
                show = pts.assign(point_a=[point_label(p) for p in pts.point_a],
                                  point_b=[point_label(p) for p in pts.point_b],
                                  gain=[f"{_ci(d, lo, hi)} {v}" for d, lo, hi, v in
                                        zip(pts.delta_rsum, pts.ci_lo, pts.ci_hi, pts.verdict)])
                lines += ["Two adapted points of one dataset against each other (`recipe_points.csv`; B - A, test rsum, "
                          "paired bootstrap over the seeds both have and test queries):", "",
                          to_markdown(show[["dataset", "variant", "scoring", "point_a", "point_b", "n_seeds",
                                            "test_mr_a", "test_mr_b", "gain"]], index=False, floatfmt=".2f"), ""]
    if full:
        for p in sorted(figs.glob("recipe_levers_*.png")) + sorted(figs.glob("recipe_frontier_*.png")):
            lines += [f"![{p.stem}]({rel}/figures/{p.name})", ""]
    return lines
