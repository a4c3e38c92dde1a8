"""Data and results charts: caption statistics, training curves, ablation and codebook-sweep bars, results
overview. Saved with :func:`itr_lib.plots.save`."""
from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd

from .backend import plt


def caption_stats(ds) -> "object":
    """Caption-length histogram per split and duplicate-caption bars."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for s in ds.split_names:
        lens = [len(t) for t in ds.split(s).tokens]
        axes[0].hist(lens, bins=range(0, max(lens) + 2), alpha=0.5, density=True, label=f"{s} ({len(lens)})")
    axes[0].set(xlabel="caption length (words)", ylabel="fraction", title=f"{ds.name}: caption lengths")
    axes[0].legend()
    st = ds.stats()
    x = np.arange(len(st))
    tot = st["captions"].to_numpy(float)
    axes[1].bar(x - 0.2, 100 * st["dup_lines_within_image"] / tot, 0.4, label="repeats within an image")
    axes[1].bar(x + 0.2, 100 * st["caption_lines_shared_across_images"] / tot, 0.4, label="shared across images")
    axes[1].set_xticks(x, st.index)
    axes[1].set(ylabel="% of caption lines", title=f"{ds.name}: duplicate captions")
    axes[1].legend()
    fig.tight_layout()
    return fig


def training_curves(history: list[dict], title: str = ""):
    """Loss terms per epoch (left) and val rsum per epoch (right)."""
    h = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for c in [c for c in h.columns if c.startswith("loss_")]:
        axes[0].plot(h.epoch + 1, h[c], marker="o", label=c[5:])
    axes[0].set(xlabel="epoch", ylabel="mean loss", title=f"{title} training losses")
    axes[0].legend()
    axes[1].plot(h.epoch + 1, h.val_rsum, marker="o", color="k")
    best = int(h.val_rsum.idxmax())
    axes[1].scatter([h.epoch[best] + 1], [h.val_rsum[best]], s=120, facecolors="none", edgecolors="r",
                    label="best (kept)")
    axes[1].set(xlabel="epoch", ylabel="val rsum", title="validation rsum (model selection)")
    axes[1].legend()
    fig.tight_layout()
    return fig


def ablation_bars(table: pd.DataFrame, dataset: str, metric: str = "mr"):
    """Mean +- std of a metric per variant (dots: seeds are in the CSV), and rsum gain vs baseline with CI."""
    t = table.reset_index(drop=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(t) + 2.2))
    y = np.arange(len(t))
    axes[0].barh(y, t[metric], xerr=t[f"{metric}_std"], color=["#888" if m == "baseline" else "#3a7" for m in t.method])
    axes[0].set_yticks(y, t.variant, fontsize=8)
    axes[0].invert_yaxis()
    axes[0].set(xlabel=f"test {metric} (mean ± std over seeds)", title=f"{dataset}: SelfAlign ablation")
    if "delta_rsum" in t:
        d = t.delta_rsum.to_numpy(float)
        lo, hi = t.ci_lo.to_numpy(float), t.ci_hi.to_numpy(float)
        ok = ~np.isnan(d)
        axes[1].errorbar(d[ok], y[ok], xerr=[d[ok] - lo[ok], hi[ok] - d[ok]], fmt="o", color="k", capsize=3)
        axes[1].axvline(0, color="r", lw=1)
        axes[1].set_yticks(y, t.variant, fontsize=8)
        axes[1].invert_yaxis()
        axes[1].set(xlabel="rsum gain over baseline (95% paired bootstrap CI)", title="paired difference")
    fig.tight_layout()
    return fig


def codebook_sweep(df_runs: pd.DataFrame, dataset: str, baseline_mr: float | None = None):
    """Test mR against codebook size K (each seed a dot, mean line)."""
    d = df_runs[(df_runs.dataset == dataset) & df_runs.lca.astype(bool)]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for v, g in d.groupby("variant_family"):
        m = g.groupby("codebook_size").mr.agg(["mean", "std"]).reset_index()
        ax.errorbar(m.codebook_size, m["mean"], yerr=m["std"].fillna(0), marker="o", capsize=3, label=v)
        ax.scatter(g.codebook_size, g.mr, s=10, alpha=0.5)
    if baseline_mr is not None:
        ax.axhline(baseline_mr, color="#888", ls="--", label="baseline")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="codebook size K", ylabel="test mR", title=f"{dataset}: codebook size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def results_overview(main: pd.DataFrame, dataset: str):
    """Horizontal bars of mR: ours (mean ± std) beside published rows (hatched)."""
    t = main.sort_values("mr").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(t) + 1.5))
    y = np.arange(len(t))
    colors = ["#ddd" if p else "#3a7" for p in t.published]
    ax.barh(y, t.mr, xerr=t.mr_std.fillna(0), color=colors, hatch=None, edgecolor="k", lw=0.5)
    labels = [f"{m} — {v}" if not p else m for m, v, p in zip(t.method, t.variant, t.published)]
    ax.set_yticks(y, [textwrap.shorten(s, 60) for s in labels], fontsize=8)
    ax.set(xlabel="test mR (ours: mean ± std over seeds; grey: published)", title=f"{dataset.upper()}: results")
    fig.tight_layout()
    return fig


def comparison_bars(table: pd.DataFrame, dataset: str, published: pd.DataFrame | None = None):
    """Test mR per method under the study loss (mean ± std over seeds, the optimistic / pessimistic tie bounds
    as a thin line), published numbers as grey marks; the caption states seeds per row."""
    t = table[table.setting == "study loss"].sort_values("mr").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(t) + 1.6))
    y = np.arange(len(t))
    ax.barh(y, t.mr, xerr=t.mr_std.fillna(0), color="#3a7", edgecolor="k", lw=0.5, capsize=2, label="ours")
    if {"mr_optimistic", "mr_pessimistic"} <= set(t):
        ax.hlines(y, t.mr_pessimistic, t.mr_optimistic, color="k", lw=2.5, label="tie bounds")
    labels = [f"{v} (n={n})" for v, n in zip(t.variant, t.n_seeds)]
    ax.set_yticks(y, [textwrap.shorten(s, 70) for s in labels], fontsize=8)
    if published is not None and len(published):
        for x in published.mr:
            ax.axvline(x, color="#999", lw=0.8, ls="--")
        ax.plot([], [], color="#999", ls="--", lw=0.8, label="published (other setups)")
    ax.set(xlabel="test mR (study loss, one protocol; mean ± std over n seeds)",
           title=f"{dataset.upper()}: every method under one protocol")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def recipe_levers(table: pd.DataFrame, dataset: str, published: dict | None = None):
    """The recipe's levers (``tables/recipe_<ds>.csv``): left, each lever's val mR gain over its reference (what the
    greedy rule chooses on; chosen levers filled); right, the test rsum gain with its 95% paired bootstrap interval
    (reported, never used to choose). ``published``: {name: test mR} drawn nowhere here but named in the title."""
    t = table[table.lever.ne("reference") & table.lever.ne("plain score (reference)")
              & ~table.stage.astype(str).str.contains(": reference")].reset_index(drop=True)  # a stage's own reference
    y = np.arange(len(t))[::-1]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(t) + 1.6), sharey=True)
    colors = ["C2" if c else ("C7" if "transductive" in s else "C0") for c, s in zip(t.chosen.astype(bool), t.stage)]
    axes[0].barh(y, t.val_gain, color=colors)
    axes[0].axvline(0, color="k", lw=0.8)
    axes[0].set_yticks(y, [textwrap.shorten(f"{lv}", 48) for lv in t.lever])
    axes[0].set(xlabel="val mR gain over the reference (decides)", title=f"{dataset}: levers, one at a time")
    err = np.vstack([t.delta_rsum - t.ci_lo, t.ci_hi - t.delta_rsum]).astype(float)
    axes[1].barh(y, t.delta_rsum, xerr=np.nan_to_num(err), color=colors, alpha=0.8, capsize=3)
    axes[1].axvline(0, color="k", lw=0.8)
    axes[1].set(xlabel="test rsum gain, 95% paired bootstrap CI (reported)", title="green: chosen; grey: transductive")
    if published:
        fig.suptitle("published: " + ", ".join(f"{k} {v:.2f} mR" for k, v in published.items()), fontsize=9)
    fig.tight_layout()
    return fig
