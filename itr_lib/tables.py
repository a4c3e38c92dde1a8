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

from .io import REPO_ROOT, atomic_write_text
from .metrics import paired_bootstrap
from .runs import load_hits

log = logging.getLogger(__name__)

RECALLS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
METRICS = RECALLS + ["rsum", "mr"]


def aggregate(df: pd.DataFrame, by=("dataset", "method", "variant")) -> pd.DataFrame:
    """Mean over seeds of every metric (and of the tie bounds ``mr_optimistic`` / ``mr_pessimistic`` where the
    rows have them), with ``n_seeds``, ``seeds`` and ``<metric>_std`` (sample std, ddof=1). Rows scored under
    different tie rules are never pooled (``tie_rule`` joins the grouping when present)."""
    by = list(by) + (["tie_rule"] if "tie_rule" in df and "tie_rule" not in by else [])
    cols = METRICS + [c for c in ("mr_optimistic", "mr_pessimistic") if c in df]
    g = df.groupby(by, sort=False, dropna=False)
    mean = g[cols].mean()
    std = g[METRICS].std(ddof=1).fillna(0.0).add_suffix("_std")
    seeds = g["seed"].agg(lambda s: ",".join(str(int(x)) for x in sorted(s))).rename("seeds") if "seed" in df else None
    parts = [g.size().rename("n_seeds"), seeds, mean, std]
    out = pd.concat([p for p in parts if p is not None], axis=1).reset_index()
    out["published"] = False
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


def to_markdown(df: pd.DataFrame, **kw) -> str:
    """``df.to_markdown`` with ``|`` inside text cells escaped (variant labels carry it), so no cell splits."""
    esc = df.copy()
    for c in esc.columns:
        if not pd.api.types.is_numeric_dtype(esc[c]):
            esc[c] = [v.replace("|", "\\|") if isinstance(v, str) else v for v in esc[c]]
    return esc.to_markdown(**kw)


def write_table(df: pd.DataFrame, name: str, tables_dir: Path, floatfmt: str = ".2f") -> tuple[Path, Path]:
    """Write ``<name>.csv`` and ``<name>.md`` atomically; returns both paths."""
    tables_dir = Path(tables_dir)
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.4f")
    csv = tables_dir / f"{name}.csv"
    atomic_write_text(csv, buf.getvalue())
    md = tables_dir / f"{name}.md"
    atomic_write_text(md, to_markdown(df, index=False, floatfmt=floatfmt) + "\n")
    return csv, md


def format_mean_std(df: pd.DataFrame, metrics=METRICS) -> pd.DataFrame:
    """Display copy with 'mean ± std' strings (published rows: the value alone)."""
    out = df.copy()
    for m in metrics:
        if f"{m}_std" in df:
            out[m] = [("" if pd.isna(v) else (f"{v:.2f}" if pd.isna(s) or n == 0 else f"{v:.2f} ± {s:.2f}"))
                      for v, s, n in zip(df[m], df[f"{m}_std"], df["n_seeds"])]
    return out.drop(columns=[c for c in out.columns if c.endswith("_std") and c[:-4] in metrics and c != "mr_std"])


# ----------------------------------------------------------------------------------------------- tables of the study
def ablation_table(df: pd.DataFrame, dataset: str, metrics_dir: Path, n_boot: int = 2000) -> pd.DataFrame:
    """Mean +- std per variant, with the paired bootstrap of rsum vs the baseline of the same loss."""
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
                a = [load_hits(metrics_dir, p[0]) for p in pairs]
                b = [load_hits(metrics_dir, p[1]) for p in pairs]
                bs = paired_bootstrap(a, b, n_boot=n_boot)
                out.update({"delta_rsum": bs["delta_rsum"], "ci_lo": bs["ci_lo"], "ci_hi": bs["ci_hi"]})
        rows.append(out)
    return pd.DataFrame(rows)


def main_table(df: pd.DataFrame, dataset: str, include_published: bool = True) -> pd.DataFrame:
    """Every method/variant of ours (mean +- std over seeds) beside the published numbers."""
    d = df[df.dataset == dataset]
    ours = aggregate(d) if not d.empty else pd.DataFrame()
    parts = [ours]
    if include_published:
        parts.append(published_rows(dataset))
    out = pd.concat([p for p in parts if not p.empty], ignore_index=True)
    if "source" not in out:
        out["source"] = ""
    out["source"] = out["source"].fillna("this study")
    return out


def schedule_table(df: pd.DataFrame, dataset: str, method: str = "baseline", loss: str = "infonce") -> pd.DataFrame:
    """How the number of epochs was chosen: per schedule (epochs) of ``method`` with ``loss``, the val mR of the
    selected checkpoint (what the choice is made on), the test mR (reported, not used to choose), the seeds, and the
    training minutes per run. Only seeds trained on every schedule are compared."""
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
