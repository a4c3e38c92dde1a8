"""Data and results charts: caption statistics, training curves, ablation and codebook-sweep bars, results
overview. Saved with :func:`itr_lib.plots.save`."""
from __future__ import annotations

import re
import textwrap

import numpy as np
import pandas as pd

from .backend import plt
from .style import FAMILY_COLOURS, colour_of, family_legend, family_of, split_shared


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
    """Mean +- std of a metric per variant (seeds per row in its label; colour: the method family, in a legend), and
    the rsum gain over the baseline of the same loss with its 95% paired bootstrap CI (seeds and test queries)."""
    from .style import FAMILY_COLOURS, colour_of, family_legend, family_of
    t = table.reset_index(drop=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(t) + 2.2))
    y = np.arange(len(t))
    names = ["baseline" if m == "baseline" else "selfalign" for m in t.method]
    seeds = t.n_seeds if "n_seeds" in t else pd.Series([np.nan] * len(t))
    labels = [f"{v} ({int(n)} seed{'s' if n != 1 else ''})" if pd.notna(n) else str(v) for v, n in zip(t.variant, seeds)]
    axes[0].barh(y, t[metric], xerr=t[f"{metric}_std"].fillna(0), color=[colour_of(n) for n in names],
                 edgecolor="k", lw=0.4, capsize=2)
    axes[0].set_yticks(y, labels, fontsize=8)
    axes[0].set_ylim(len(t) + 1.4, -0.7)  # top row first; two empty rows at the bottom hold the legends
    axes[0].set(xlabel=f"test {metric} (mean ± std over the row's seeds)", title=f"{dataset.upper()}: SelfAlign ablation")
    family_legend(axes[0], {family_of(n) for n in names} & set(FAMILY_COLOURS), fontsize=8, loc="lower right",
                  title="method family", title_fontsize=8)
    if "delta_rsum" in t:
        d = t.delta_rsum.to_numpy(float)
        lo, hi = t.ci_lo.to_numpy(float), t.ci_hi.to_numpy(float)
        ok = ~np.isnan(d)
        axes[1].errorbar(d[ok], y[ok], xerr=[d[ok] - lo[ok], hi[ok] - d[ok]], fmt="o", color="k", capsize=3,
                         label="gain, 95% paired bootstrap CI")
        axes[1].axvline(0, color="r", lw=1, label="no difference")
        axes[1].set_yticks(y, labels, fontsize=8)
        axes[1].set_ylim(axes[0].get_ylim())
        axes[1].set(xlabel="test rsum gain over the baseline of the same loss (baselines: no row)",
                    title="paired difference")
        axes[1].legend(fontsize=8, loc="lower right")
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


#: the blocks of the results overview, top to bottom (a setting not listed follows, in table order)
OVERVIEW_SETTINGS = ("recipe, adapted top", "recipe", "study loss, adapted top", "study loss", "authors' loss",
                     "ablation", "history")


def _short_tta(label: str) -> str:
    """``[tta-r0-r90-...-f270+qb_norm]`` -> ``[8-view TTA+qb_norm]`` (display only; the table keeps the full tag)."""
    return re.sub(r"tta-((?:[rf]\d+-?)+)", lambda m: f"{len([v for v in m.group(1).split('-') if v])}-view TTA", label)


#: label lines a row's slot holds before it grows (three 7.5-pt lines fit one bar's slot at the overview's scale)
LINES_PER_SLOT = 3


def row_positions(n_lines: list[int]) -> np.ndarray:
    """The y of each row's centre (top to bottom, from 0): one unit per row, or more for a label of more than
    :data:`LINES_PER_SLOT` lines, so a long label never runs into its neighbour's."""
    h = np.maximum(1.0, np.asarray(n_lines, dtype=float) / LINES_PER_SLOT)
    return np.cumsum(h) - h / 2 - 0.5


def results_overview(main: pd.DataFrame, dataset: str):
    """Every run of ``main`` (05's ``main_<ds>.csv``) as horizontal bars of test mR (mean ± std over seeds), one block
    per setting (:data:`OVERVIEW_SETTINGS`, sorted by mR inside a block) under a bold heading that says what every row
    of the block shares; a row's label is its method and what sets it apart inside the block (never shortened with
    an ellipsis). Colour: the method family (legend); published numbers: dashed lines labelled at their top."""
    ours = main[~main.published.astype(bool)].copy()
    ours["setting"] = ours.setting.fillna("other")
    order = [s for s in OVERVIEW_SETTINGS if s in set(ours.setting)] + \
        [s for s in dict.fromkeys(ours.setting) if s not in OVERVIEW_SETTINGS]
    rows = []  # (label, mr, std, family, is_heading)
    for st in order:
        g = ours[ours.setting == st].sort_values("mr", ascending=False)
        short, shared = split_shared([_short_tta(v if m in str(v).split(" | ")[0] or str(v).startswith("recipe")
                                                 else f"{m}: {v}") for m, v in zip(g.method, g.variant)])
        head = f"{st}" + (f" (all rows: {_short_tta(shared)})" if shared else "")
        rows.append((textwrap.fill(head, 75), np.nan, np.nan, None, True))
        for lab, (_, r) in zip(short, g.iterrows()):
            seeds = f" ({int(r.n_seeds)} seed{'s' if r.n_seeds != 1 else ''})"
            rows.append((textwrap.fill(lab + seeds, 60), r.mr, r.mr_std, family_of(r.method), False))
    n_lines = sum(lab.count("\n") + 1 for lab, *_ in rows)
    fig, ax = plt.subplots(figsize=(11, 0.22 * n_lines + 0.14 * len(rows) + 3.0))
    y = row_positions([lab.count("\n") + 1 for lab, *_ in rows])
    bars = [(i, r) for i, r in enumerate(rows) if not r[4]]
    ax.barh([y[i] for i, _ in bars], [r[1] for _, r in bars], xerr=[0 if pd.isna(r[2]) else r[2] for _, r in bars],
            color=[FAMILY_COLOURS.get(r[3], "#555555") for _, r in bars], edgecolor="k", lw=0.4, capsize=2)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=7.5)
    for tick, r in zip(ax.get_yticklabels(), rows):
        if r[4]:
            tick.set_fontweight("bold")
            tick.set_fontsize(8)
    ax.set_ylim(y[-1] + 5.5, -0.8)  # four empty rows at the bottom hold the legend
    pub = main[main.published.astype(bool)]
    if len(pub):
        _published_lines(ax, pub)
    ax.set_xlabel(f"{dataset.upper()} test mR (mean ± std over the row's seeds; dashed: published, other backbones)")
    family_legend(ax, {r[3] for _, r in bars} | ({"published"} if len(pub) else set()), fontsize=8, loc="lower right",
                  title="method family", title_fontsize=8)
    fig.tight_layout()
    return fig


def _deployed_rows(t: pd.DataFrame, modes: dict | None) -> pd.DataFrame:
    """The rows of fine-grained methods in their deployed inference mode (``variant`` ends in ``[mode]``), others
    as they are."""
    if modes is None:
        from ..tables import DEPLOYED_MODES as modes
    keep = [not (m in modes and v.endswith("]")) or v.endswith(f"[{modes[m]}]") for m, v in zip(t.method, t.variant)]
    return t[keep]


#: the least horizontal distance between two published labels' anchors, as a fraction of the x range: the labels
#: are parallel diagonals, so closer anchors (SCAN 14.23 beside CLIP zero-shot 15.04 on RSICD) overprint each other
LABEL_GAP = 0.03


def _published_lines(ax, published: pd.DataFrame) -> list:
    """Each published mR as a dashed vertical line labelled at its top end ("PIR 24.46"), above the axes; a label
    whose line sits closer than :data:`LABEL_GAP` to its left neighbour's label starts that far to its right."""
    import matplotlib.transforms as mtransforms
    trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    rows = sorted(zip(published.method, published.mr), key=lambda r: r[1])
    for _, mr in rows:
        ax.axvline(mr, color=FAMILY_COLOURS["published"], lw=0.9, ls="--", zorder=0)
    lo, hi = ax.get_xlim()  # the lines are drawn: the limits the labels sit in
    texts, last = [], -np.inf
    for name, mr in rows:
        x = max(mr, last + LABEL_GAP * (hi - lo))
        label = f"{str(name).replace(' (published)', '')} {mr:.2f}"
        texts.append(ax.text(x, 1.01, label, transform=trans, rotation=55, ha="left", va="bottom", fontsize=7.5,
                             color="#555", rotation_mode="anchor"))
        last = x
    return texts


def comparison_bars(table: pd.DataFrame, dataset: str, published: pd.DataFrame | None = None,
                    modes: dict | None = None):
    """Test mR per method under the study loss, fine-grained methods in their deployed inference mode (``modes``,
    default :data:`itr_lib.tables.DEPLOYED_MODES`; every mode is in the table): bars the mean over seeds, coloured
    by method family, ± std as error bars, the pessimistic / optimistic tie bounds as a thin line under each bar;
    published numbers as dashed lines labelled at their top. Row labels are the methods; the protocol every row
    shares is stated once, under the axis."""
    t = _deployed_rows(table[table.setting == "study loss"], modes).sort_values("mr").reset_index(drop=True)
    labels, shared = split_shared(list(t.variant))
    seeds = set(zip(t.n_seeds, t.get("seeds", t.n_seeds).astype(str)))
    if len(seeds) > 1:
        labels = [f"{lab} (n={n})" for lab, n in zip(labels, t.n_seeds)]
    fig, ax = plt.subplots(figsize=(10.5, 0.42 * len(t) + 2.9))
    y = np.arange(len(t))
    ax.barh(y, t.mr, color=[colour_of(m) for m in t.method], edgecolor="k", lw=0.5, height=0.62)
    ax.errorbar(t.mr, y, xerr=t.mr_std.fillna(0), fmt="none", ecolor="k", elinewidth=1.2, capsize=3)
    handles = []
    if {"mr_optimistic", "mr_pessimistic"} <= set(t):
        ax.hlines(y - 0.42, t.mr_pessimistic, t.mr_optimistic, color="#333", lw=1.0)
        ax.plot(t.mr_pessimistic, y - 0.42, "|", color="#333", ms=5)
        ax.plot(t.mr_optimistic, y - 0.42, "|", color="#333", ms=5)
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_ylim(-0.8, len(t) - 0.4)
    if published is not None and len(published):
        _published_lines(ax, published)
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color="k", marker="|", ls="-", lw=1.2, ms=6, label="± std over seeds"),
               Line2D([], [], color="#333", marker="|", lw=1.0, ms=5, label="tie bounds (pessimistic, optimistic)")]
    if published is not None and len(published):
        handles.append(Line2D([], [], color=FAMILY_COLOURS["published"], ls="--", lw=0.9,
                              label="published (their backbones)"))
    fams = [family_of(m) for m in t.method]
    leg = family_legend(ax, fams, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="method family",
                        title_fontsize=8, frameon=False)
    ax.add_artist(leg) if leg is not None else None
    ax.legend(handles=handles, fontsize=8, loc="lower left", bbox_to_anchor=(1.01, 0.0), frameon=False)
    n_txt = f"; {t.n_seeds.iloc[0]} seeds ({t.seeds.iloc[0]})" if len(seeds) == 1 and "seeds" in t else ""
    ax.set_xlabel(f"test mR (mean over seeds{n_txt})")
    fig.suptitle(f"{dataset.upper()}: every method under one protocol (study loss)")
    note = (f"Every row: {shared}" if shared else "") + ("; " if shared else "") + \
        "fine-grained methods in their deployed inference mode (every mode: tables/comparison_" + f"{dataset}.md)."
    fig.text(0.01, 0.005, textwrap.fill(note, 120), fontsize=8, color="#333", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


RECIPE_COLOURS = {"chosen (kept by the greedy rule on val)": "#264653", "tried, not chosen": "#9cbfcc",
                  "transductive (reported, never chosen)": "#c9c9c9"}


def recipe_levers(table: pd.DataFrame, dataset: str, published: dict | None = None):
    """The recipe's levers (``tables/recipe_<ds>.csv``), each alone against its reference, grouped by stage, in one
    measure (mR gain) on two panels: left the val gain (what the greedy rule chooses on), right the test gain with
    its 95% paired bootstrap interval (reported, never used to choose; the table's rsum interval / 6). Colours: chosen,
    not chosen, transductive (legend). ``published``: {name: test mR}, named in the caption for scale. A stage's own
    reference row is left out."""
    t = table[table.lever.ne("reference") & table.lever.ne("plain score (reference)")
              & ~table.stage.astype(str).str.contains(": reference")].reset_index(drop=True)
    y = np.arange(len(t))[::-1]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 * len(t) + 2.4), sharey=True, sharex=True)
    keys = list(RECIPE_COLOURS)
    kind = [keys[2] if "transductive" in str(st) else keys[0] if bool(c) else keys[1]
            for c, st in zip(t.chosen, t.stage)]
    colors = [RECIPE_COLOURS[k] for k in kind]
    axes[0].barh(y, t.val_gain.astype(float), color=colors, edgecolor="k", lw=0.4)
    err = np.vstack([t.delta_rsum - t.ci_lo, t.ci_hi - t.delta_rsum]).astype(float) / 6
    axes[1].barh(y, t.delta_rsum.astype(float) / 6, xerr=np.nan_to_num(err), color=colors, edgecolor="k", lw=0.4,
                 capsize=3)
    axes[0].set_yticks(y, [textwrap.fill(str(lv), 34) for lv in t.lever], fontsize=9)
    stages = list(t.stage.astype(str))
    for ax in axes:
        ax.axvline(0, color="k", lw=0.8)
        ax.grid(True, axis="x", alpha=0.3)
        for i in range(1, len(t)):
            if stages[i] != stages[i - 1]:
                ax.axhline(y[i] + 0.5, color="#888", lw=0.8, ls=":")
    import matplotlib.transforms as mtransforms
    trans = mtransforms.blended_transform_factory(axes[0].transAxes, axes[0].transData)
    for i, st in enumerate(stages):
        if i == 0 or st != stages[i - 1]:
            axes[0].text(0.99, y[i] + 0.42, st, transform=trans, ha="right", va="top", fontsize=8, style="italic",
                         color="#555", zorder=5, bbox=dict(facecolor="white", alpha=0.9, edgecolor="none", pad=1.5))
    axes[0].set(xlabel="val mR gain over the reference (decides)", title="val: what the greedy rule chooses on")
    axes[1].set(xlabel="test mR gain over the reference, 95% paired bootstrap CI", title="test: reported, never chosen on")
    from matplotlib.patches import Patch
    present = [k for k in keys if k in kind]
    fig.legend(handles=[Patch(facecolor=RECIPE_COLOURS[k], edgecolor="k", lw=0.4, label=k) for k in present],
               loc="lower center", ncol=len(present), fontsize=9, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"{dataset.upper()}: the recipe's levers, each alone against its reference (seed 0)")
    note = ""
    if published:
        note = "For scale, the best published test mR: " + ", ".join(f"{k.replace(' (published)', '')} {v:.2f}"
                                                                    for k, v in published.items()) + "."
    if note:
        fig.text(0.01, 0.045, note, fontsize=8, color="#333", ha="left")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def operating_point_shift(table: pd.DataFrame, dataset: str, modes: dict | None = None):
    """Test mR of each method at both operating points (issue 28): on the frozen features (setting ``study loss``)
    and with the image backbone's top trained (``study loss, adapted top``), same protocol and seeds plan; a row per
    method (fine-grained methods in their deployed mode) with a point per operating point (mean over seeds, ± std as
    error bars, the seed count beside it) and a line joining them. Methods run at one point only show one point.
    None when no method has an adapted row."""
    from ..experiments import ADAPTED_SETTING, STUDY_SETTING
    t = _deployed_rows(table[table.setting.isin([STUDY_SETTING, ADAPTED_SETTING])], modes)
    if not (t.setting == ADAPTED_SETTING).any():
        return None
    name = lambda v: v.split(" | ")[0] + (" " + v.split(" ")[-1] if v.endswith("]") else "")  # noqa: E731
    t = t.assign(label=[name(v) for v in t.variant])
    order = (t[t.setting == ADAPTED_SETTING].sort_values("mr").label.tolist()
             + t[t.setting == STUDY_SETTING].sort_values("mr").label.tolist())
    order = list(dict.fromkeys(order))
    frozen_only = [lab for lab in order if lab not in set(t[t.setting == ADAPTED_SETTING].label)]
    order = frozen_only + [lab for lab in order if lab not in frozen_only]
    y = {lab: i for i, lab in enumerate(order)}
    fig, ax = plt.subplots(figsize=(9.5, 0.45 * len(order) + 2.2))
    style = {STUDY_SETTING: dict(marker="o", color="#4c72b0", label="frozen features (study loss)"),
             ADAPTED_SETTING: dict(marker="^", color="#dd8452", label="adapted image top (study loss, Lite2 last stage "
                                                                           "+ head trained)")}
    for lab, g in t.groupby("label"):
        if len(g) == 2:
            ax.plot(g.mr, [y[lab]] * 2, color="#999", lw=1.0, zorder=1)
    for st, g in t.groupby("setting"):
        yy = [y[lab] for lab in g.label]
        ax.errorbar(g.mr, yy, xerr=g.mr_std.fillna(0), fmt=style[st]["marker"], color=style[st]["color"], ms=7,
                    capsize=3, label=style[st]["label"], zorder=2)
        for x, yi, n in zip(g.mr, yy, g.n_seeds):
            ax.annotate(f"n={int(n)}", (x, yi), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7,
                        color=style[st]["color"])
    ax.set_yticks(range(len(order)), order, fontsize=9)
    ax.set_ylim(-0.7, len(order) - 0.3)
    ax.set_xlabel("test mR (mean over seeds; bars ± std; n = seeds)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1 - 0.6 / max(len(order), 1)), ncol=1,
              frameon=False)
    fig.suptitle(f"{dataset.upper()}: each method on frozen and on adapted features (same protocol)")
    fig.tight_layout()
    return fig
