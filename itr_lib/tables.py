"""Results tables: one row per run from its metrics.json, mean +- std over seeds, published rows, bootstrap.

Tables are written as CSV (the source of truth) and Markdown, atomically.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .io import REPO_ROOT, atomic_write_text, read_json

log = logging.getLogger(__name__)

RECALLS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
METRICS = RECALLS + ["rsum", "mr"]
TABLE_COLUMNS = ["method", "variant", "n_seeds"] + METRICS + ["mr_std", "rsum_std", "published"]


def variant_name(cfg: dict) -> str:
    """Human-readable variant of a run's config (the ablation's row label)."""
    m = cfg["method"]
    if m == "selfalign":
        parts = [p for p, on in (("LCA", cfg.get("lca")), ("CRA", cfg.get("cra"))) if on]
        v = "+".join(parts)
        if cfg.get("lca"):
            v += f" K={cfg.get('codebook_size')}"
        for key, short, on in (("lca_weight", "w_lca", cfg.get("lca")), ("cra_weight", "w_cra", cfg.get("cra"))):
            if on and cfg.get(key, 1.0) != 1.0:  # loss weights off the authors' 1.0 (sensitivity runs)
                v += f" {short}={cfg[key]:g}"
    else:
        v = m
    # base_loss configures the independent-embedding models only; TGDT, ALADIN, SCAN and MrSw train with their own
    # triplet losses (hardest negative from epoch warmup_epochs on), false negatives masked the same way
    loss = cfg.get("base_loss", "triplet") if m in ("baseline", "selfalign") else "triplet"
    v += f" | {loss}" + (" +FN-mask" if cfg.get("false_negatives") == "mask" else "")
    if loss == "infonce" and cfg.get("captions_per_step") == "one":
        v += " 1cap"
    if cfg.get("epochs"):  # the schedule differs between methods and between runs of one method
        v += f" | {cfg['epochs']} ep"
    if cfg.get("text_encoder", "minilm") != "minilm":
        v += f" | {cfg['text_encoder']}"
    if cfg.get("extra"):  # method hyper-parameters off their defaults: never pooled with the default runs
        v += " | " + ",".join(f"{k}={val}" for k, val in sorted(cfg["extra"].items()))
    return v


def run_row(metrics: dict, protocol: str = "standard") -> dict:
    """One flat row of a finished run: config summary, test metrics (by protocol), val rsum, costs."""
    cfg = metrics["config"]
    test = metrics["test"][protocol] if protocol in metrics["test"] else metrics["test"]["standard"]
    row = {"dataset": metrics["dataset"], "method": cfg["method"], "variant": variant_name(cfg),
           "seed": cfg["seed"], "run": metrics["run"], "protocol": protocol,
           **{k: test[k] for k in METRICS}, "val_rsum": metrics["val"]["standard"]["rsum"],
           "best_epoch": metrics["best_epoch"], "epochs": metrics["epochs"],
           "train_seconds": metrics["train_seconds"], "retrieval_vector_dim": metrics["retrieval_vector_dim"],
           "lca": cfg.get("lca", False), "cra": cfg.get("cra", False), "codebook_size": cfg.get("codebook_size"),
           "base_loss": cfg.get("base_loss"), "false_negatives": cfg.get("false_negatives")}
    return row


def run_rows(metrics: dict, protocol: str = "standard") -> list[dict]:
    """The rows of one run: one, or for models with several inference modes (TGDT global / two-stage /
    exhaustive; ALADIN student / re-ranked / teacher; MrSw) one per mode, the mode in the variant."""
    base = run_row(metrics, protocol)
    modes = {k: v for k, v in (metrics.get("extra_eval") or {}).items() if k != "details"}
    if not modes or protocol != "standard":
        return [base]
    rows = []
    for mode, res in modes.items():
        r = dict(base)
        r["variant"] = f"{base['variant']} [{mode}]"
        r.update({k: res["standard"][k] for k in METRICS})
        rows.append(r)
    return rows


def collect_runs(paths, protocol: str = "standard") -> pd.DataFrame:
    """Rows of every finished run: ``paths`` is a folder (searched for */metrics.json) or a list of files."""
    if isinstance(paths, (str, Path)):
        files = sorted(Path(paths).glob("*/metrics.json")) + sorted(Path(paths).glob("*.json"))
    else:
        files = [Path(p) for p in paths]
    rows = []
    for f in files:
        m = read_json(f)
        if "config" in m and "test" in m:
            rows.extend(run_rows(m, protocol))
    return pd.DataFrame(rows)


def aggregate(df: pd.DataFrame, by=("dataset", "method", "variant")) -> pd.DataFrame:
    """Mean over seeds of every metric, with ``n_seeds`` and ``<metric>_std`` (sample std, ddof=1)."""
    by = list(by)
    g = df.groupby(by, sort=False)
    mean = g[METRICS].mean()
    std = g[METRICS].std(ddof=1).fillna(0.0).add_suffix("_std")
    out = pd.concat([g.size().rename("n_seeds"), mean, std], axis=1).reset_index()
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


# ----------------------------------------------------------------------------------------------- bootstrap
def _hits(ranks: np.ndarray) -> np.ndarray:
    return np.stack([ranks < k for k in (1, 5, 10)], axis=1).astype(np.float64)  # (n, 3)


def paired_bootstrap_seeds(ranks_a: list[tuple[np.ndarray, np.ndarray]], ranks_b: list[tuple[np.ndarray, np.ndarray]],
                           n_boot: int = 2000, seed: int = 0) -> dict:
    """rsum(B) - rsum(A) with a 95% paired bootstrap interval over test queries.

    Each system is a list of (i2t_ranks, t2i_ranks), one per seed; hit indicators are averaged over seeds
    (seed-matched), then image queries and caption queries are resampled with replacement, the same indices
    for A and B."""
    rng = np.random.default_rng(seed)
    d_i = np.mean([_hits(b[0]) - _hits(a[0]) for a, b in zip(ranks_a, ranks_b)], axis=0)  # (n_img, 3)
    d_t = np.mean([_hits(b[1]) - _hits(a[1]) for a, b in zip(ranks_a, ranks_b)], axis=0)  # (n_txt, 3)
    point = 100 * (d_i.mean(0).sum() + d_t.mean(0).sum())
    ii = rng.integers(0, len(d_i), size=(n_boot, len(d_i)))
    tt = rng.integers(0, len(d_t), size=(n_boot, len(d_t)))
    boots = 100 * (d_i.sum(1)[ii].mean(1) + d_t.sum(1)[tt].mean(1))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"delta_rsum": float(point), "ci_lo": float(lo), "ci_hi": float(hi), "n_boot": n_boot,
            "n_seeds": len(ranks_a)}


def load_ranks(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    z = np.load(Path(run_dir) / "test_ranks.npz")
    return z["i2t"], z["t2i"]
