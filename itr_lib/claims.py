"""The study's claims ("B beats A", "B keeps A's accuracy within t mR"): their list, the rule that gives each its
verdict (a paired bootstrap over seeds and test queries held against the claim's bar), the claims table and its
reader's view (one row per claim, one column per dataset).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .metrics import paired_bootstrap
from .runs import load_hits
from .tables import _missing, _rules, aggregate

# (id, statement, A (variant key, mode), B (key, mode), kind, tolerance in mR, efficiency labels of A and B)
# kind "better": B beats A; "not_worse": B is at most `tolerance` mR below A.
CLAIMS = [
    ("selfalign_vs_baseline", "SelfAlign (LCA+CRA) beats its baseline at equal capacity",
     ("baseline", ""), ("lca+cra", ""), "better", 0.0, ("baseline", "SelfAlign")),
    ("lca_vs_baseline", "LCA alone beats the baseline", ("baseline", ""), ("lca", ""), "better", 0.0, None),
    ("cra_vs_baseline", "CRA alone beats the baseline", ("baseline", ""), ("cra", ""), "better", 0.0, None),
    ("tgdt_two_stage_vs_exhaustive", "TGDT two-stage keeps TGDT exhaustive's accuracy (within 1 mR)",
     ("tgdt", "exhaustive"), ("tgdt", "two_stage"), "not_worse", 1.0, ("TGDT exhaustive", "TGDT two-stage")),
    ("tgdt_two_stage_vs_global", "TGDT two-stage beats TGDT global retrieval",
     ("tgdt", "global"), ("tgdt", "two_stage"), "better", 0.0, ("TGDT global", "TGDT two-stage")),
    ("aladin_matching_vs_alignment", "ALADIN matching (kNN student) keeps the alignment teacher's accuracy "
     "(within 1 mR)", ("aladin", "exhaustive"), ("aladin", "global"), "not_worse", 1.0,
     ("ALADIN alignment", "ALADIN matching")),
    ("tgdt_vs_baseline", "TGDT (two-stage) beats the baseline", ("baseline", ""), ("tgdt", "two_stage"), "better",
     0.0, ("baseline", "TGDT two-stage")),
    ("aladin_vs_baseline", "ALADIN (matching) beats the baseline", ("baseline", ""), ("aladin", "global"), "better",
     0.0, ("baseline", "ALADIN matching")),
    ("scan_vs_baseline", "SCAN (cross-attention) beats the baseline", ("baseline", ""), ("scan", ""), "better", 0.0,
     ("baseline", "SCAN (cross-attention)")),
    ("mrsw_vs_baseline", "MrSw (exhaustive) beats the baseline", ("baseline", ""), ("mrsw", "exhaustive"), "better",
     0.0, ("baseline", "MrSw exhaustive")),
    ("scan_vs_mrsw", "Cross-attention (SCAN) beats exhaustive MrSw", ("mrsw", "exhaustive"), ("scan", ""), "better",
     0.0, ("MrSw exhaustive", "SCAN (cross-attention)")),
]


def _planned_pair(d: pd.DataFrame, ka: str, kb: str) -> str:
    """The seeds the plan asked for on both sides of a claim ("" without a plan)."""
    if "planned_seeds" not in d:
        return ""
    sides = [set().union(*(str(p).split(",") for p in d[d.key == k].planned_seeds.dropna())) for k in (ka, kb)]
    return ",".join(sorted(sides[0] & sides[1], key=int))


def _runs_of(d: pd.DataFrame, key: str, mode: str) -> pd.DataFrame:
    return d[(d.key == key) & (d["mode"] == mode)]


def claim_bar(kind: str, tol: float) -> float:
    """The bar a claim's interval of B - A (mR) is held against: 0 for "B beats A" (``better``), ``-tol`` for
    "B keeps A's accuracy within ``tol`` mR" (``not_worse``)."""
    if kind not in ("better", "not_worse"):
        raise ValueError(f"claim kind must be 'better' or 'not_worse', got {kind!r}")
    return 0.0 if kind == "better" else -float(tol)


def _verdict(lo: float, hi: float, kind: str, tol: float, margin: float) -> str:
    """holds when the CI of B - A (mR) lies above the claim's bar (:func:`claim_bar`), does not hold when it lies
    below it, else inconclusive; ``margin``: extra run-to-run noise a one-seed comparison must clear (0 when seeds
    were resampled)."""
    bar = claim_bar(kind, tol)
    if lo > bar + margin:
        return "holds"
    if hi < bar - margin:
        return "does not hold"
    return "inconclusive"


def top_and_runner_up(agg: pd.DataFrame):
    """The rows of the "strongest model" claim in an aggregate (``key``, ``mode``, ``mr``): the highest mean mR and
    the best row of *another* model (another inference mode of the top model is not a runner-up); None with fewer
    than two models."""
    ranked = agg.sort_values("mr", ascending=False)
    if ranked.key.nunique() < 2:
        return None
    top = ranked.iloc[0]
    return top, ranked[ranked.key != top.key].iloc[0]


def claims_table(df: pd.DataFrame, dataset: str, results_dir: Path, latency: pd.DataFrame | None = None,
                 n_boot: int = 2000, setting: str = "study loss", latency_suffix: str = "") -> pd.DataFrame:
    """The study's claims under one ``setting`` (default the study loss): per claim the two mR compared (means
    over the seeds both have), their difference, a 95% paired bootstrap CI over seeds and test queries
    (:func:`itr_lib.metrics.paired_bootstrap`), the latency ratio A/B from ``latency``
    (the efficiency table: ``method``, ``ms_per_query``) and a verdict. With one seed the CI covers query
    sampling only, so the verdict must clear twice the largest seed std of mR among this dataset's rows with 2+
    seeds (the measured run-to-run noise); otherwise it is ``inconclusive``. ``latency_suffix``: appended to the
    efficiency labels (the adapted point's rows: :data:`itr_lib.efficiency.specs.ADAPTED_SUFFIX`). ``bar_mr``: what the interval is held
    against (:func:`claim_bar`: 0 for "beats", minus the tolerance for "keeps ... within"). The last claim names the strongest
    row (highest mean mR) and tests it against the runner-up: the best row of another model, not another inference
    mode of the same one."""
    d = df[(df.dataset == dataset) & (df.setting == setting)]
    if d.empty:
        return pd.DataFrame()
    agg = aggregate(d, by=("key", "mode", "variant"))
    multi = agg[agg.n_seeds >= 2]
    noise = float(multi.mr_std.max()) if len(multi) else np.nan
    lat = {} if latency is None or latency.empty else dict(zip(latency.method, latency.ms_per_query))
    claims = list(CLAIMS)
    pair = top_and_runner_up(agg)
    if pair is not None:
        top, second = pair
        claims.append(("strongest", f"{top.variant} is the strongest model (vs runner-up {second.variant})",
                       (second.key, second["mode"]), (top.key, top["mode"]), "better", 0.0, None))
    rows = []
    for cid, text, (ka, ma), (kb, mb), kind, tol, labels in claims:
        a, b = _runs_of(d, ka, ma), _runs_of(d, kb, mb)
        seeds = sorted(set(a.seed) & set(b.seed))
        planned = _planned_pair(d, ka, kb)
        row = {"dataset": dataset, "claim": cid, "statement": text, "setting": setting,
               "a": a.variant.iloc[0] if len(a) else f"{ka} {ma}".strip(),
               "b": b.variant.iloc[0] if len(b) else f"{kb} {mb}".strip(), "seeds": ",".join(map(str, seeds)),
               "n_seeds": len(seeds), "missing_seeds": _missing(planned, seeds),
               "kind": kind, "tolerance_mr": tol, "bar_mr": claim_bar(kind, tol)}
        ms_a, ms_b = (lat.get(labels[0] + latency_suffix), lat.get(labels[1] + latency_suffix)) if labels \
            else (None, None)
        row["latency_ratio_a_over_b"] = ms_a / ms_b if ms_a and ms_b else np.nan
        if not seeds:
            rows.append({**row, "verdict": "not run", "note": "no seed has both runs recorded"})
            continue
        a, b = a[a.seed.isin(seeds)].sort_values("seed"), b[b.seed.isin(seeds)].sort_values("seed")
        _rules(f"{dataset} claim {cid!r}", a, b)
        ha = [load_hits(results_dir, r, ma) for r in a.run]
        hb = [load_hits(results_dir, r, mb) for r in b.run]
        bs = paired_bootstrap(ha, hb, n_boot=n_boot)
        lo, hi, delta = bs["ci_lo"] / 6, bs["ci_hi"] / 6, bs["delta_rsum"] / 6
        margin = 0.0 if len(seeds) >= 2 else (2 * noise if np.isfinite(noise) else np.inf)
        verdict = _verdict(lo, hi, kind, tol, margin)
        note = "" if len(seeds) >= 2 else (f"one seed: must clear 2 x seed std {noise:.2f} mR" if np.isfinite(noise)
                                           else "one seed and no seed spread measured")
        if row["missing_seeds"]:
            note = "; ".join(filter(None, (note, f"planned seeds {planned}, {row['missing_seeds']} not recorded")))
        rows.append({**row, "mr_a": a.mr.mean(), "mr_b": b.mr.mean(), "delta_mr": delta, "ci_lo_mr": lo,
                     "ci_hi_mr": hi, "verdict": verdict, "note": note})
    return pd.DataFrame(rows)


def operating_point(setting: str) -> str:
    """The operating point a comparison setting measures: ``frozen`` (the study loss on frozen backbone features)
    or ``adapted`` (the same with the image backbone's top trained, issue 28)."""
    from .experiments import ADAPTED_SETTING, STUDY_SETTING
    points = {STUDY_SETTING: "frozen", ADAPTED_SETTING: "adapted"}
    if setting not in points:
        raise ValueError(f"no operating point for setting {setting!r}; known: {sorted(points)}")
    return points[setting]


def claims_tables(df: pd.DataFrame, dataset: str, results_dir: Path, latency: pd.DataFrame | None = None,
                  n_boot: int = 2000) -> pd.DataFrame:
    """:func:`claims_table` at each operating point with runs on ``dataset`` (the study loss on the frozen
    features, then on the adapted ones), one frame with ``setting``. Each point's latency ratios come from its own
    rows of the efficiency table (04 labels the adapted ones ``..., adapted top``); a pair 04 has not timed stays
    blank, never borrowed from the other point."""
    from .efficiency.specs import ADAPTED_SUFFIX
    from .experiments import ADAPTED_SETTING, STUDY_SETTING
    parts = [claims_table(df, dataset, results_dir, latency, n_boot=n_boot, setting=st,
                          latency_suffix="" if st == STUDY_SETTING else ADAPTED_SUFFIX)
             for st in (STUDY_SETTING, ADAPTED_SETTING)]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def adaptation_gains(df: pd.DataFrame, dataset: str, results_dir: Path, n_boot: int = 2000) -> pd.DataFrame:
    """What adapting the image top did to each method (deployed mode) on ``dataset``: its adapted runs against its
    frozen runs of the same seeds under the study loss, the study's paired bootstrap over seeds and test queries
    (mR), with the claims' verdict rule for "the adapted model beats the frozen one" (a one-seed gain must clear twice
    the largest seed std of the two settings' rows). One row per method with adapted runs."""
    from .experiments import ADAPTED_SETTING, STUDY_SETTING
    from .tables import DEPLOYED_MODES
    d = df[(df.dataset == dataset) & df.setting.isin([STUDY_SETTING, ADAPTED_SETTING])]
    if not (d.setting == ADAPTED_SETTING).any():
        return pd.DataFrame()
    agg = aggregate(d, by=("setting", "key", "mode", "variant"))
    multi = agg[agg.n_seeds >= 2]
    noise = float(multi.mr_std.max()) if len(multi) else np.nan
    rows = []
    for key in dict.fromkeys(d[d.setting == ADAPTED_SETTING].key):
        mode = DEPLOYED_MODES.get(key, "")
        f = d[(d.setting == STUDY_SETTING) & (d.key == key) & (d["mode"] == mode)]
        a = d[(d.setting == ADAPTED_SETTING) & (d.key == key) & (d["mode"] == mode)]
        seeds = sorted(set(f.seed) & set(a.seed))
        row = {"dataset": dataset, "key": key, "mode": mode, "seeds": ",".join(map(str, seeds)),
               "n_seeds": len(seeds)}
        if not seeds:
            rows.append({**row, "verdict": "not run"})
            continue
        f, a = f[f.seed.isin(seeds)].sort_values("seed"), a[a.seed.isin(seeds)].sort_values("seed")
        _rules(f"{dataset} adaptation of {key!r}", f, a)
        bs = paired_bootstrap([load_hits(results_dir, r, mode) for r in f.run],
                              [load_hits(results_dir, r, mode) for r in a.run], n_boot=n_boot)
        lo, hi = bs["ci_lo"] / 6, bs["ci_hi"] / 6
        margin = 0.0 if len(seeds) >= 2 else (2 * noise if np.isfinite(noise) else np.inf)
        rows.append({**row, "mr_frozen": f.mr.mean(), "mr_adapted": a.mr.mean(), "delta_mr": bs["delta_rsum"] / 6,
                     "ci_lo_mr": lo, "ci_hi_mr": hi, "verdict": _verdict(lo, hi, "better", 0.0, margin)})
    return pd.DataFrame(rows)


def verdict_changes(c: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and claim, the verdict at each operating point and what became of it once the features
    adapted: ``survives`` (same verdict, run at both), ``flips`` (holds <-> does not hold), ``now holds`` /
    ``no longer holds`` / ``now does not hold`` / ``no longer fails`` (to or from inconclusive), ``not run
    adapted``. The "strongest model" claim names different models per point, so it is left out."""
    if "setting" not in c or c.empty:
        return pd.DataFrame()
    c = c[c.claim != "strongest"]
    c = c.assign(point=[operating_point(s) for s in c.setting])
    w = c.pivot_table(index=["dataset", "claim"], columns="point", values="verdict", aggfunc="first").reset_index()
    for col in ("frozen", "adapted"):
        if col not in w:
            w[col] = "not run"
    w = w.fillna("not run")

    def change(f: str, a: str) -> str:
        if a == "not run" or f == "not run":
            return "not run adapted" if a == "not run" else "not run frozen"
        if f == a:
            return "survives"
        if {f, a} == {"holds", "does not hold"}:
            return "flips"
        if a == "inconclusive":
            return {"holds": "no longer holds", "does not hold": "no longer fails"}[f]
        return {"holds": "now holds", "does not hold": "now does not hold"}[a]
    w["change"] = [change(f, a) for f, a in zip(w.frozen, w.adapted)]
    first = c.drop_duplicates("claim").set_index("claim")
    w.insert(2, "statement", first.statement.reindex(w.claim).to_numpy())
    order = {k: i for i, k in enumerate(dict.fromkeys(c.claim))}
    return w.sort_values(["dataset", "claim"], key=lambda s: s.map(order) if s.name == "claim" else s)[
        ["dataset", "claim", "statement", "frozen", "adapted", "change"]].reset_index(drop=True)


def claim_rule() -> str:
    """The verdict rule of the claims, as the README and RESULTS.md state it (bars from :data:`CLAIMS`)."""
    tols = sorted({tol for *_, kind, tol, _ in CLAIMS if kind == "not_worse"})
    within = ", ".join(f"-{t:g} mR for \"B keeps A's accuracy within {t:g} mR\"" for t in tols)
    return ("A claim *holds* when the 95% interval of B - A lies above its bar (column `bar`: 0 for \"B beats A\""
            + (f", {within}" if within else "") + "), *does not hold* when it lies below the bar, and is "
            "*inconclusive* otherwise; a one-seed claim must clear the bar by twice the largest seed std.")


def with_bar(c: pd.DataFrame) -> pd.DataFrame:
    """Claims with ``bar``: the bar each claim's interval of B - A is held against, as ``"> +0.00"`` (read from
    ``bar_mr``, or from ``kind`` / ``tolerance_mr`` in a claims table written before it carried the bar)."""
    c = c.copy()
    bars = c["bar_mr"] if "bar_mr" in c else pd.Series(
        [claim_bar(k, t) if isinstance(k, str) else float("nan") for k, t in zip(c.get("kind", [None] * len(c)),
                                                                             c.get("tolerance_mr", [0.0] * len(c)))],
        index=c.index)
    c["bar"] = ["" if pd.isna(b) else f"> {b:+.2f}" for b in bars]
    return c


def claims_by_dataset(c: pd.DataFrame) -> pd.DataFrame:
    """One row per claim, one column per dataset: ``"+1.14 [+0.44, +1.81] (3) holds"``. The "strongest model"
    claim names its two models per dataset, so its cell carries them. Claims at more than one operating point
    (``setting``, :func:`operating_point`) get a column per dataset and point: ``RSICD frozen``, ``RSICD adapted``."""
    c = with_bar(c)
    if "setting" in c and c.setting.nunique() > 1:
        c["dataset"] = [f"{d} {operating_point(s)}" for d, s in zip(c.dataset, c.setting)]
    c["cell"] = [f"{ci} ({n}) {v}" if n else v for ci, n, v in zip(c["B - A mR [95% CI]"], c.n_seeds, c.verdict)]
    strongest = c.claim == "strongest"
    c.loc[strongest, "cell"] = [f"{top} vs {runner_up}: {cell}" for top, runner_up, cell in
                                zip(c.b[strongest].str.split(" | ").str[0], c.a[strongest].str.split(" | ").str[0],
                                    c.cell[strongest])]
    c.loc[strongest, "statement"] = "The top model beats the runner-up"
    order = list(dict.fromkeys(c.claim))
    wide = c.pivot_table(index="claim", columns="dataset", values="cell", aggfunc="first").reindex(order)
    wide = wide[sorted(wide.columns, key=lambda d: (str(d).split(" ")[0], " adapted" in str(d)))]
    wide.columns = [" ".join([str(d).split(" ")[0].upper()] + str(d).split(" ")[1:]) for d in wide.columns]
    first = c.drop_duplicates("claim").set_index("claim")
    wide.insert(0, "statement", first.statement.reindex(order))
    wide.insert(1, "bar", first.bar.reindex(order))
    return wide.reset_index(drop=True).fillna("")
