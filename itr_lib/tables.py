"""Results tables: mean +- std over seeds of the run rows (:func:`itr_lib.runs.runs_frame`), published rows, the
study's tables (ablation, main, schedule, probe, comparison, claims, ceilings) and their writing.

Tables are written as CSV (the source of truth, every column) and Markdown (a reader's selection), atomically.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .config import dataset_name
from .io import REPO_ROOT, atomic_write_text
from .metrics import paired_bootstrap, require_same_tie_rule
from .recordio import RANKS, read_ranks, read_record
from .runs import load_hits, runs_frame

log = logging.getLogger(__name__)

RECALLS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
METRICS = RECALLS + ["rsum", "mr"]


def aggregate(df: pd.DataFrame, by=("dataset", "method", "variant")) -> pd.DataFrame:
    """Mean over seeds of every metric (and of the tie bounds ``mr_optimistic`` / ``mr_pessimistic`` where the
    rows have them), with ``n_seeds``, ``seeds``, ``<metric>_std`` (sample std, ddof=1) and, when the rows carry
    the plan's ``planned_seeds`` (:func:`label_settings`), ``missing_seeds``. Rows scored under
    different tie rules are never pooled (``tie_rule`` joins the grouping when present)."""
    by = list(by) + (["tie_rule"] if "tie_rule" in df and "tie_rule" not in by else [])
    cols = METRICS + [c for c in ("mr_optimistic", "mr_pessimistic") if c in df]
    g = df.groupby(by, sort=False, dropna=False)
    mean = g[cols].mean()
    std = g[METRICS].std(ddof=1).fillna(0.0).add_suffix("_std")
    seeds = g["seed"].agg(lambda s: ",".join(str(int(x)) for x in sorted(s))).rename("seeds") if "seed" in df else None
    planned = g["planned_seeds"].agg(lambda p: _seed_list(int(x) for v in p.dropna() for x in str(v).split(","))) \
        if "planned_seeds" in df else None
    parts = [g.size().rename("n_seeds"), seeds, mean, std]
    out = pd.concat([p for p in parts if p is not None], axis=1).reset_index()
    out["published"] = False
    if planned is not None:  # the plan's seeds a row lacks (runs not recorded): the table says so
        out["missing_seeds"] = [_missing(p, s) for p, s in zip(planned.values, out.seeds)]
    return out


def published_rows(dataset: str, path: Path | None = None) -> pd.DataFrame:
    """Published mR of METHODS.md (configs/published.yaml), labelled published=True with n_seeds=0."""
    import yaml
    path = path or REPO_ROOT / "configs" / "published.yaml"
    data = yaml.safe_load(path.read_text()).get(dataset, [])
    rows = [{"dataset": dataset, "method": f"{r['method']} (published)", "variant": r.get("backbone", ""),
             "n_seeds": 0, **{k: np.nan for k in RECALLS}, "rsum": r["mr"] * 6, "mr": r["mr"],
             "mr_std": np.nan, "rsum_std": np.nan, "published": True, "source": r.get("source", "")}
            for r in data]
    return pd.DataFrame(rows)


def fmt_ci(v, lo, hi) -> str:
    """``+1.23 [+0.45, +2.01]``: a difference with its interval (blank when not measured)."""
    return "" if pd.isna(v) else f"{v:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def tie_cells(df: pd.DataFrame) -> list[str]:
    """Each row's tie bracket as ``[pess., opt.]`` mR (ties resolved against / for the query); ``index rule`` for a
    record scored before the tie rule (index-rule ranks: no bracket recorded); blank for published rows."""
    n = len(df)
    lo, hi = (df[c] if c in df else pd.Series([np.nan] * n, index=df.index) for c in ("mr_pessimistic", "mr_optimistic"))
    rule = df["tie_rule"] if "tie_rule" in df else pd.Series([None] * n, index=df.index)
    return [f"[{a:.2f}, {b:.2f}]" if pd.notna(a) and pd.notna(b) else ("index rule" if r == "index" else "")
            for a, b, r in zip(lo, hi, rule)]


def to_markdown(df: pd.DataFrame, compact: bool = False, **kw) -> str:
    """``df.to_markdown`` with ``|`` inside text cells escaped (variant labels carry it), so no cell splits.
    ``compact``: no padding (same table once rendered, a third of the bytes; for the README), numbers right-aligned
    and formatted with ``floatfmt``."""
    esc = df.copy()
    for c in esc.columns:
        if not pd.api.types.is_numeric_dtype(esc[c]):
            esc[c] = [v.replace("|", "\\|") if isinstance(v, str) else v for v in esc[c]]
    if not compact:  # text cells stay text ("0" is a seed list, not 0.00); a missing value is a blank, not "nan"
        shift = 0 if kw.get("index", True) is False else 1
        text = [i + shift for i, c in enumerate(esc.columns) if not pd.api.types.is_numeric_dtype(esc[c])]
        return esc.astype(object).where(esc.notna(), None).to_markdown(disable_numparse=text or False,
                                                                         missingval="", **kw)
    fmt = kw.get("floatfmt", "g")
    num = [pd.api.types.is_numeric_dtype(esc[c]) for c in esc.columns]

    def cell(v, is_num):
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return ""
        return format(v, fmt) if is_num and isinstance(v, float) else str(v)
    rows = ["| " + " | ".join(map(str, esc.columns)) + " |", "|" + "|".join("---:" if n else ":---" for n in num) + "|"]
    rows += ["| " + " | ".join(cell(v, n) for v, n in zip(r, num)) + " |" for r in esc.itertuples(index=False)]
    return "\n".join(rows)


MD_HIDDEN = {"run", "protocol", "val_rsum", "threads", "retrieval_vector_dim", "tie_rule", "key", "n_boot"}
MD_IF_VARYING = {"dataset", "published", "source", "mode", "setting", "epochs", "seed"}
MD_MAX_COLUMNS = 14


def reader_view(df: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """The Markdown copy of a table: ``mean ± std`` cells where seeds were pooled (no std column beside a single
    seed), ``columns`` when given, else without bookkeeping columns, columns that are empty everywhere, and
    columns that hold one value for every row (dataset, published, ...); at most :data:`MD_MAX_COLUMNS`."""
    t = format_mean_std(df) if "n_seeds" in df and any(c.endswith("_std") for c in df) else df.copy()
    if columns:
        return t[[c for c in columns if c in t]]
    keep = []
    for c in t.columns:
        col = t[c]
        if c in MD_HIDDEN or c.endswith("_std") or col.isna().all() or (col.astype(str) == "").all():
            continue
        if c in MD_IF_VARYING and col.astype(str).nunique() <= 1:
            continue
        keep.append(c)
    return t[keep[:MD_MAX_COLUMNS]]


CSV_FLOAT_FORMAT = "%.4f"  # every table CSV's floats (write_table)


def write_table(df: pd.DataFrame, name: str, tables_dir: Path, floatfmt: str = ".2f",
                md_columns: list[str] | None = None) -> tuple[Path, Path]:
    """Write ``<name>.csv`` (every column, the source of truth) and ``<name>.md`` (:func:`reader_view`)
    atomically; returns both paths."""
    tables_dir = Path(tables_dir)
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format=CSV_FLOAT_FORMAT)
    csv = tables_dir / f"{name}.csv"
    atomic_write_text(csv, buf.getvalue())
    return csv, write_markdown(df, name, tables_dir, floatfmt, md_columns)


def write_markdown(df: pd.DataFrame, name: str, tables_dir: Path, floatfmt: str = ".2f",
                   md_columns: list[str] | None = None) -> Path:
    """Write ``<name>.md`` (:func:`reader_view` of ``df``) atomically; returns its path."""
    md = Path(tables_dir) / f"{name}.md"
    view = reader_view(df, md_columns) if len(df) else df
    atomic_write_text(md, to_markdown(view, index=False, floatfmt=floatfmt) + "\n")
    return md


def format_mean_std(df: pd.DataFrame, metrics=METRICS) -> pd.DataFrame:
    """Display copy with 'mean ± std' strings (published rows: the value alone)."""
    out = df.copy()
    for m in metrics:
        if f"{m}_std" in df:
            out[m] = [("" if pd.isna(v) else (f"{v:.2f}" if pd.isna(s) or n <= 1 else f"{v:.2f} ± {s:.2f}"))
                      for v, s, n in zip(df[m], df[f"{m}_std"], df["n_seeds"])]
    return out.drop(columns=[c for c in out.columns if c.endswith("_std") and c[:-4] in metrics and c != "mr_std"])


# ----------------------------------------------------------------------------------------------- tables of the study
def _rules(what: str, *frames: pd.DataFrame) -> str:
    """The one tie rule of the runs in ``frames`` (their ``tie_rule`` column; none: index-rule records), or the
    error of :func:`itr_lib.metrics.require_same_tie_rule` naming two runs scored under different rules."""
    rules = {}
    for f in frames:
        col = f["tie_rule"] if "tie_rule" in f else pd.Series([None] * len(f), index=f.index)
        rules.update(zip(f.run, col))
    return require_same_tie_rule(rules, what)


def ablation_table(df: pd.DataFrame, dataset: str, metrics_dir: Path, n_boot: int = 2000) -> pd.DataFrame:
    """Mean +- std per variant, with the paired bootstrap of rsum vs the baseline of the same loss (over seeds and
    test queries, :func:`itr_lib.metrics.paired_bootstrap`; runs of one tie rule only)."""
    d = df[df.dataset == dataset]
    if d.empty:
        return pd.DataFrame()
    agg = aggregate(d)
    agg["loss"] = [v.split(" | ")[1] if " | " in v else "" for v in agg.variant]
    rows = []
    for _, r in agg.iterrows():
        runs = d[(d.method == r.method) & (d.variant == r.variant)]
        base = d[(d.method == "baseline") & (d.variant.str.split(" | ", regex=False).str[1] == r.loss)
                 & d.epochs.isin(set(runs.epochs))]
        out = r.to_dict()
        out.update({"delta_rsum": np.nan, "ci_lo": np.nan, "ci_hi": np.nan, "seeds": ",".join(map(str, sorted(runs.seed)))})
        if r.method != "baseline" and not base.empty:
            pairs = [(base[base.seed == s].run.iloc[0], runs[runs.seed == s].run.iloc[0])
                     for s in sorted(set(runs.seed) & set(base.seed))]
            if pairs:
                _rules(f"{dataset} ablation: {r.variant} vs its baseline", base[base.run.isin([p[0] for p in pairs])],
                       runs[runs.run.isin([p[1] for p in pairs])])
                a = [load_hits(metrics_dir, p[0]) for p in pairs]
                b = [load_hits(metrics_dir, p[1]) for p in pairs]
                bs = paired_bootstrap(a, b, n_boot=n_boot)
                out.update({"delta_rsum": bs["delta_rsum"], "ci_lo": bs["ci_lo"], "ci_hi": bs["ci_hi"]})
        rows.append(out)
    return pd.DataFrame(rows)


def label_settings(df: pd.DataFrame, plan: pd.DataFrame | None) -> pd.DataFrame:
    """``setting`` and ``key`` columns for run rows: the comparison plan's (``tables/comparison_plan.csv``) where
    the run is planned; ``history`` for the fine-grained methods' earlier runs, relabelled by what they trained
    with (the authors' triplet, one caption per step, 3 epochs, selected on 300 val images); ``ablation`` for the
    rest (the SelfAlign ablation, probes, ad-hoc runs)."""
    out = df.drop(columns=[c for c in ("setting", "key") if c in df])
    if plan is not None and len(plan):
        out = out.merge(plan[["run", "setting", "key"]], on="run", how="left")
    else:
        out["setting"], out["key"] = np.nan, np.nan
    old = out["relabelled"].astype(bool) if "relabelled" in out else pd.Series(False, index=out.index)
    out["setting"] = out.setting.where(out.setting.notna(), np.where(old, "history", "ablation"))
    if plan is not None and len(plan):  # the seeds the plan asked for, per row group: what a table must say is missing
        by = ["dataset", "setting", "key"]
        planned = plan.assign(dataset=plan.dataset.map(dataset_name)).groupby(by).seed.agg(_seed_list)
        out = out.merge(planned.rename("planned_seeds").reset_index(), on=by, how="left")
    return out


def _seed_list(seeds) -> str:
    return ",".join(str(int(x)) for x in sorted(set(seeds)))


def _missing(planned, seeds) -> str:
    """The planned seeds (``"0,1,2"``) not among ``seeds`` (an iterable or the same string form), as ``"1"``."""
    have = {str(int(x)) for x in (seeds.split(",") if isinstance(seeds, str) else seeds) if str(x).strip()}
    return ",".join(x for x in planned.split(",") if x not in have) if isinstance(planned, str) and planned else ""


def study_frame(results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Every recorded run of ``results_dir`` (one row per run and mode, :func:`itr_lib.runs.runs_frame`) labelled by
    the comparison plan (``tables/comparison_plan.csv``, also returned; None without one), after reading every
    record whole, its ranks included: a damaged record stops here with one line naming the file and the fix, before
    any table is written (a skipped record would publish a table with fewer seeds than its plan)."""
    out = Path(results_dir)
    plan_csv = out / "tables" / "comparison_plan.csv"
    plan = pd.read_csv(plan_csv) if plan_csv.is_file() else None
    df = runs_frame(out)
    metrics = out / "metrics" if (out / "metrics").is_dir() else out
    for run in sorted(set(df.run) | (set(plan.run) if plan is not None else set())):
        if (metrics / f"{run}.json").is_file():
            read_ranks(metrics / f"{run}{RANKS}")
    return label_settings(df, plan), plan


def main_table(df: pd.DataFrame, dataset: str, include_published: bool = True) -> pd.DataFrame:
    """Every method/variant of ours (mean +- std over seeds; grouped by ``setting`` when the rows carry one, see
    :func:`label_settings`) beside the published numbers."""
    d = df[df.dataset == dataset]
    by = ("dataset", "setting", "method", "variant") if "setting" in d else ("dataset", "method", "variant")
    ours = aggregate(d, by=by) if not d.empty else pd.DataFrame()
    parts = [ours]
    if include_published:
        parts.append(published_rows(dataset))
    out = pd.concat([p for p in parts if not p.empty], ignore_index=True)
    if "source" not in out:
        out["source"] = ""
    out["source"] = out["source"].fillna("this study")
    return out


def schedule_table(df: pd.DataFrame, dataset: str, method: str = "baseline", loss: str = "infonce") -> pd.DataFrame:
    """What val says about the number of epochs: per schedule (epochs) of ``method`` with ``loss``, the val mR of
    the selected checkpoint, the test mR (reported, not used to choose), the seeds, and the training minutes per
    run. Only seeds trained on every schedule are compared. (The study's epochs are a cost cap where val preferred
    more: :func:`itr_lib.report.schedule_caption` says which.)"""
    d = df[(df.dataset == dataset) & (df.method == method) & (df.base_loss == loss)]
    if d.empty or d.epochs.nunique() < 2:
        return pd.DataFrame()
    common = set.intersection(*(set(g.seed) for _, g in d.groupby("epochs")))
    d = d[d.seed.isin(common)]
    if d.empty:
        return pd.DataFrame()
    g = d.groupby("epochs")
    return pd.DataFrame({"epochs": list(g.groups), "seeds": [",".join(map(str, sorted(x.seed))) for _, x in g],
                         "best_epoch": [",".join(str(int(b) + 1) for b in x.sort_values("seed").best_epoch) for _, x in g],
                         "val_mr": (g.val_rsum.mean() / 6).round(2).values, "test_mr": g.mr.mean().round(2).values,
                         "train_min_per_run": (g.train_seconds.mean() / 60).round(1).values}).reset_index(drop=True)


def probe_table(rows: list[tuple[str, dict, dict]]) -> pd.DataFrame:
    """One row per probe from (name, change, run metrics), the first row the reference: the change, val mR and its
    gain over the reference (what the choice is made on), test mR (reported, not used), best epoch, training
    minutes, retrieval-vector size."""
    recs = []
    for name, change, m in rows:
        recs.append({"probe": name, "change": ", ".join(f"{k}={v}" for k, v in change.items()) or "-",
                     "val_mr": round(m["val"]["standard"]["rsum"] / 6, 2),
                     "test_mr": round(m["test"]["standard"]["mr"], 2),
                     "best_epoch": m["best_epoch"] + 1, "train_min": round(m["train_seconds"] / 60, 1),
                     "vector_dim": m["retrieval_vector_dim"], "run": m["run"]})
    df = pd.DataFrame(recs)
    ref = df.val_mr.iloc[0]
    df.insert(3, "val_gain", (df.val_mr - ref).round(2))
    df["chosen_on_val"] = df.val_mr == df.val_mr.max()
    return df


# ----------------------------------------------------------------------------------------------- the fair comparison
def comparison_table(df: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Mean +- std over seeds per (setting, method, variant) of the comparison's runs (rows of
    :func:`itr_lib.runs.runs_frame` merged with the plan's ``setting`` and ``key``), with the optimistic and
    pessimistic tie bounds of mR and the mean training minutes per run; the study loss first. ``bucketed_seeds``:
    the seeds whose run encoded its captions in length groups (``TrainConfig.length_buckets``, a runtime setting:
    same model, faster steps, so their minutes are not the others')."""
    d = df[df.dataset == dataset]
    if d.empty:
        return pd.DataFrame()
    out = aggregate(d, by=("dataset", "setting", "key", "mode", "method", "variant"))
    mins = d.groupby(["setting", "variant"], sort=False).train_seconds.mean().div(60).rename("train_min")
    out = out.merge(mins.reset_index(), on=["setting", "variant"], how="left")
    lb = d["length_buckets"] if "length_buckets" in d else pd.Series(np.nan, index=d.index)
    bucketed = d.assign(_lb=lb.fillna(1).astype(float) > 1).groupby(["setting", "variant"], sort=False).apply(
        lambda g: ",".join(str(int(s)) for s in sorted(g[g._lb].seed.unique())), include_groups=False)
    out = out.merge(bucketed.rename("bucketed_seeds").reset_index(), on=["setting", "variant"], how="left")
    if "best_epoch" in d:  # the val-chosen epoch of each seed (1-based) "of" the schedule: is the schedule a cap?
        best = d.groupby(["setting", "variant"], sort=False).apply(
            lambda g: ",".join(str(int(b) + 1) if pd.notna(b) else "?" for b in g.sort_values("seed").best_epoch)
            + (f" of {int(g.epochs.max())}" if "epochs" in g and g.epochs.notna().any() else ""),
            include_groups=False)
        out = out.merge(best.rename("best_epochs").reset_index(), on=["setting", "variant"], how="left")
    if "missing_seeds" not in out:  # no plan: nothing known to be missing
        out["missing_seeds"] = ""
    order = {s: i for i, s in enumerate(sorted(out.setting.unique(), key=lambda s: (s != "study loss", s)))}
    return out.sort_values(["setting", "mr"], key=lambda c: c.map(order) if c.name == "setting" else -c,
                           kind="stable").reset_index(drop=True)


def deployed_mask(t: pd.DataFrame) -> pd.Series:
    """Rows of a comparison table (``key``, ``mode``) in their method's deployed inference mode
    (:data:`DEPLOYED_MODES`; a method without one keeps every row)."""
    mode = t["mode"].fillna("").astype(str)
    return pd.Series([m == DEPLOYED_MODES.get(k, m) for k, m in zip(t.key, mode)], index=t.index)


def _gain_cell(gains: pd.DataFrame | None, key: str) -> str:
    if gains is None or gains.empty or "delta_mr" not in gains or not (gains.key == key).any():
        return ""
    g = gains[gains.key == key].iloc[0]
    if pd.isna(g.get("delta_mr")):
        return ""
    return f"{g.delta_mr:+.2f} [{g.ci_lo_mr:+.2f}, {g.ci_hi_mr:+.2f}] ({int(g.n_seeds)}) {g.verdict}"


def operating_point_table(t: pd.DataFrame, gains: pd.DataFrame | None = None) -> pd.DataFrame:
    """A comparison table (:func:`comparison_table`) as one row per method in its deployed mode with its test mR on
    the frozen features and at the adapted point (``"mean ± std (n)"``) and the change of the means (adapted -
    frozen); empty without adapted rows. The change is a difference of means over the seeds each side has; with
    ``gains`` (:func:`itr_lib.claims.adaptation_gains`, same dataset) it is the paired gain over the seeds both
    points share, ``"+5.00 [+4.10, +5.90] holds"``."""
    from .experiments import ADAPTED_SETTING, STUDY_SETTING
    if t.empty or not (t.setting == ADAPTED_SETTING).any():
        return pd.DataFrame()
    d = t[deployed_mask(t) & t.setting.isin([STUDY_SETTING, ADAPTED_SETTING])]
    cell = lambda r: f"{r.mr:.2f} ± {r.mr_std:.2f} ({int(r.n_seeds)})" if r.n_seeds > 1 else \
        f"{r.mr:.2f} ({int(r.n_seeds)})"  # noqa: E731
    rows = []
    for key, g in d.groupby("key", sort=False):
        f, a = g[g.setting == STUDY_SETTING], g[g.setting == ADAPTED_SETTING]
        label = (f if len(f) else a).variant.iloc[0].split(" | ")[0]
        rows.append({"method": label + (f" [{DEPLOYED_MODES[key]}]" if key in DEPLOYED_MODES else ""),
                     "frozen": cell(f.iloc[0]) if len(f) else "not run",
                     "adapted": cell(a.iloc[0]) if len(a) else "not run",
                     "change": _gain_cell(gains, key) or (f"{a.mr.iloc[0] - f.mr.iloc[0]:+.2f}"
                                                          if len(f) and len(a) else ""),
                     "_order": a.mr.iloc[0] if len(a) else -1e9 + (f.mr.iloc[0] if len(f) else 0)})
    return pd.DataFrame(rows).sort_values("_order", ascending=False).drop(columns="_order").reset_index(drop=True)


# The inference mode each fine-grained method is deployed with (the mode its claims against the baseline use); the
# README's short table shows only these rows, RESULTS.md every mode.
DEPLOYED_MODES = {"tgdt": "two_stage", "aladin": "global", "mrsw": "exhaustive"}




def ceilings_table(datasets: dict) -> pd.DataFrame:
    """The best scores any model can reach when identical caption strings score identically
    (:func:`itr_lib.metrics.duplicate_ceiling`, study tie rule), per ``{name: test Split}``."""
    from .metrics import caption_groups, duplicate_ceiling
    rows = []
    for name, split in datasets.items():
        groups = caption_groups(split.captions)
        m = duplicate_ceiling(split.img2txt, split.txt2img, groups)
        rows.append({"dataset": name, "n_captions": split.n_texts, "distinct_captions": int(groups.max()) + 1,
                     **{k: m[k] for k in METRICS}})
    return pd.DataFrame(rows)


def loss_ablation_table(df: pd.DataFrame, dataset: str, results_dir: Path, n_boot: int = 2000) -> pd.DataFrame:
    """The baseline under the study loss beside each ``loss ablation: <loss>`` setting (one knob changed), mean
    +- std over seeds, and the mR difference to the study-loss baseline with a 95% paired bootstrap CI over seeds
    and test queries (seed-matched)."""
    d = df[(df.dataset == dataset) & (df.key == "baseline") & (df["mode"] == "")]
    ref = d[d.setting == "study loss"]
    abl = d[d.setting.str.startswith("loss ablation")]
    if ref.empty or abl.empty:
        return pd.DataFrame()
    out = aggregate(pd.concat([ref, abl]), by=("dataset", "setting", "variant"))
    rows = []
    for _, r in out.iterrows():
        row = r.to_dict()
        runs = d[d.setting == r.setting]
        seeds = sorted(set(runs.seed) & set(ref.seed))
        if r.setting != "study loss" and seeds:
            _rules(f"{dataset} loss ablation {r.setting!r}", ref[ref.seed.isin(seeds)], runs[runs.seed.isin(seeds)])
            ha = [load_hits(results_dir, x) for x in ref[ref.seed.isin(seeds)].sort_values("seed").run]
            hb = [load_hits(results_dir, x) for x in runs[runs.seed.isin(seeds)].sort_values("seed").run]
            bs = paired_bootstrap(ha, hb, n_boot=n_boot)
            row.update(delta_mr=bs["delta_rsum"] / 6, ci_lo_mr=bs["ci_lo"] / 6, ci_hi_mr=bs["ci_hi"] / 6,
                       paired_seeds=",".join(map(str, seeds)))
        rows.append(row)
    return pd.DataFrame(rows)


def retrain_check(results_dir: str | Path):
    """Recorded vs retrained test scores of every run :func:`retrain` rebuilt (its folder holds ``retrained.json``):
    a reproducibility check (same config and seed, another process and feature build). Written to
    ``tables/retrain_check.csv`` when there is any."""
    results_dir = Path(results_dir)
    rows = []
    for marker in sorted((results_dir / "runs").glob("*/retrained.json")):
        new, rec_path = marker.parent / "metrics.json", results_dir / "metrics" / f"{marker.parent.name}.json"
        if not (new.is_file() and rec_path.is_file()):
            continue
        rec, ret = read_record(rec_path)["test"]["standard"], read_record(new)["test"]["standard"]
        rows.append({"run": new.parent.name, "recorded_mr": rec["mr"], "retrained_mr": ret["mr"],
                     "diff_mr": ret["mr"] - rec["mr"], "recorded_rsum": rec["rsum"], "retrained_rsum": ret["rsum"]})
    df = pd.DataFrame(rows)
    earlier = results_dir / "tables" / "retrain_check.csv"
    if len(df) and earlier.is_file():  # checkpoints (and their markers) are not committed: a fresh clone rebuilds a
        # few runs, so the rows of runs rebuilt by earlier clones are kept, and a run rebuilt again takes its new row
        old = pd.read_csv(earlier)
        old = old[~old["run"].isin(df["run"]) & old["run"].map(
            lambda r: (results_dir / "metrics" / f"{r}.json").is_file())]  # a run whose record is gone is dropped
        df = pd.concat([old, df], ignore_index=True).sort_values("run", ignore_index=True)
    if len(df):
        write_table(df, "retrain_check", results_dir / "tables", floatfmt=".2f")
    return df
