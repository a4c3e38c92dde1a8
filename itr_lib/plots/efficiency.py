"""Efficiency figures: the accuracy / latency frontier and the gallery-size scaling curves."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .backend import plt


def _pareto(latency, score):
    from ..efficiency.pareto import pareto_front
    return pareto_front(latency, score)


def _plain_log_ticks(axis):
    """Label a log axis with plain numbers (0.5, 2, 50) instead of 5x10^-1, and leave minor ticks unlabelled."""
    from matplotlib.ticker import FuncFormatter, NullFormatter
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


SLOTS = [(6, 4), (6, -11), (-6, 4), (-6, -11), (6, 14), (6, -21), (-6, 14), (-6, -21), (6, 24), (-6, 24),
         (6, -31), (-6, -31), (6, 34), (-6, 34), (6, -41), (-6, -41), (6, 44), (-6, 44)]  # label offsets tried, points


def place_labels(ax, xs, ys, texts, fontsize: int = 8, marker_pt: float = 7.0) -> list:
    """Annotate each point with its text at the first offset of :data:`SLOTS` whose box overlaps no label placed
    before it and no other point's marker (``marker_pt`` wide), and stays within the axes (measured with the
    figure's renderer, so the text's real width counts); a label left of its point is right-aligned. Call after the
    axes' scales and limits are set. Returns the annotations."""
    from matplotlib.transforms import Bbox
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    r = marker_pt / 2 * fig.dpi / 72
    centres = ax.transData.transform(np.column_stack([np.asarray(xs, float), np.asarray(ys, float)]))
    markers = [Bbox.from_extents(cx - r, cy - r, cx + r, cy + r) for cx, cy in centres]
    placed, out = [], []
    for i, (x, y, text) in enumerate(zip(xs, ys, texts)):
        others = [m for j, m in enumerate(markers) if j != i]
        for k, (dx, dy) in enumerate(SLOTS):
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                              ha="left" if dx > 0 else "right")
            box = ann.get_window_extent(renderer)
            inside = (frame.y0 <= box.y0 and box.y1 <= frame.y1  # not over the title, the axis labels or a legend
                      and frame.x0 <= box.x0 and box.x1 <= frame.x1)
            free = not any(box.overlaps(b) for b in placed + others)
            if inside and free or k == len(SLOTS) - 1:
                break
            ann.remove()
        if k >= NEAR_SLOTS:  # away from its point: a thin leader line says which point the label names
            _leader(ax, x, y, dx, dy + fontsize * 0.35, marker_pt / 2)
        placed.append(box)
        out.append(ann)
    return out


#: the first slots sit beside their point; a label placed further away gets a leader line (:func:`_leader`)
NEAR_SLOTS = 4


def _leader(ax, x, y, dx: float, dy: float, marker_pt: float) -> None:
    """A thin grey line from the point ``(x, y)`` (data) to ``(dx, dy)`` points away from it: both ends follow the
    axes through any later layout change (the label's own offset is in points too)."""
    from matplotlib.patches import ConnectionPatch
    from matplotlib.transforms import offset_copy
    ax.add_artist(ConnectionPatch((x, y), (x, y), coordsA=ax.transData,
                                  coordsB=offset_copy(ax.transData, ax.figure, dx, dy, units="points"),
                                  color="0.55", lw=0.5, shrinkA=marker_pt, shrinkB=0, zorder=1))


MODE_MARKERS = {"vector": ("o", "one vector per item (faiss)"), "two_stage": ("s", "two-stage (shortlist re-scored)"),
                "exhaustive": ("^", "exhaustive (every pair scored)")}


def _point_label(r) -> str:
    """The point's label: the method row, with the SelfAlign variant named (LCA+CRA / CRA / LCA)."""
    label = str(r.method)
    variant = str(r.get("variant", "") or "")
    if label == "SelfAlign" and variant:
        return f"SelfAlign {variant.split(' |')[0].split(' K=')[0]}"
    if label.startswith("recipe: "):  # the colour says recipe: "lca+cra (recipe + ensemble)"
        return label[len("recipe: "):].replace("3-seed ensemble", "ensemble")
    return label


OTHER_MACHINE = "\u2020"  # dagger: a point timed on another machine than the x axis names


def frontier_figure(table: pd.DataFrame, dataset: str, latency_col: str = "ms_per_query", title: str | None = None):
    """mR (mean +- std over seeds) against per-query latency (log scale), every method of ``table`` labelled at its
    point, the Pareto front drawn. Colour: the method family (:mod:`itr_lib.plots.style`, the same as every
    figure); marker: how it retrieves (``mode``); both in legends. ``title``: default names the recipe when the
    table carries its rows (``recipe: ...``, 07's frontier)."""
    from .style import FAMILY_COLOURS, colour_of, family_of
    from matplotlib.lines import Line2D
    ok = np.isfinite(table[latency_col].astype(float)) & np.isfinite(table.mr.astype(float))
    t = table[ok].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(9.6, 5.2) if len(t) <= 24 else (11.0, 0.26 * len(t)))  # room for every label
    modes = t["mode"] if "mode" in t else pd.Series(["vector"] * len(t))
    for (_, r), mode in zip(t.iterrows(), modes):
        ax.errorbar(r[latency_col], r.mr, yerr=r.get("mr_std", 0) or 0, fmt=MODE_MARKERS.get(mode, ("o",))[0],
                    capsize=3, ms=7, color=colour_of(r.method), mec="k", mew=0.5)
    dev = t.device.iloc[0] if "device" in t and len(t) else ""
    # rows timed on another machine (merged later: efficiency.merge) are marked, named, and left off the front
    elsewhere = pd.Series([str(d) != str(dev) for d in t.device] if "device" in t else [False] * len(t), dtype=bool)
    others = list(dict.fromkeys(str(d) for d, e in zip(t.get("device", []), elsewhere) if e))
    handles = []
    if not t[~elsewhere].empty:
        same = t[~elsewhere]
        p = same[_pareto(same[latency_col], same.mr)].sort_values(latency_col)
        ax.step(p[latency_col], p.mr, where="post", color="k", lw=1.2, ls="--")
        handles.append(Line2D([], [], color="k", ls="--", lw=1.2,
                              label=f"Pareto front{f' (without {OTHER_MACHINE})' if others else ''}"))
    fams = [f for f in FAMILY_COLOURS if f in {family_of(m) for m in t.method}]
    handles += [Line2D([], [], ls="", marker="o", ms=8, color=FAMILY_COLOURS[f], mec="k", mew=0.5, label=f)
                for f in fams]
    handles += [Line2D([], [], ls="", marker=mk, ms=7, color="w", mec="k", label=lab)
                for m, (mk, lab) in MODE_MARKERS.items() if m in set(modes)]
    if others:
        handles.append(Line2D([], [], ls="", marker="", label=f"{OTHER_MACHINE} timed later, on another machine:\n"
                                                                  + "\n".join(others)))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              title="colour: family; marker: search", title_fontsize=8)
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    recipe = any(str(m).startswith("recipe") for m in t.method)
    title = title or (f"{dataset.upper()}: the recipe (07) beside every method, accuracy vs query latency" if recipe
                      else f"{dataset.upper()}: accuracy vs query latency")
    ax.set(xlabel=f"ms per query (batch 1, mean of t2i and i2t; {dev})",
           ylabel="test mR (mean ± std over seeds)", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.08, y=0.1)
    fig.tight_layout()
    place_labels(ax, t[latency_col].astype(float), t.mr.astype(float),
                 [_point_label(r) + (f" {OTHER_MACHINE}" if e else "") for (_, r), e in zip(t.iterrows(), elsewhere)])
    return fig


def scaling_figure(df: pd.DataFrame):
    """Log-log latency against gallery size, one line per index / scoring; extrapolated parts dashed, flat-search
    floor dotted; recall@10 of the approximate indexes on a second panel."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [2, 1]})
    cmap = plt.get_cmap("tab10")
    df = df.copy()
    kinds = df["gallery_kind"].dropna() if "gallery_kind" in df else pd.Series(dtype=object)
    primary = kinds.iloc[0] if not kinds.empty else None
    comparison = [not (pd.isna(g) or g == primary) for g in df.get("gallery_kind", pd.Series([None] * len(df)))]
    df["_label"] = [f"{i} ({g})" if cmp else i for i, g, cmp in
                    zip(df["index"], df.get("gallery_kind", [None] * len(df)), comparison)]
    df["_comparison"] = comparison
    # one colour per index / scoring, shared by its comparison-gallery line (told apart by squares, dash-dot)
    colour_of = {k: cmap(j % 10) for j, k in enumerate(dict.fromkeys(df["index"]))}
    for name, g in df.groupby("_label", sort=False):
        g = g.sort_values("n_items")
        c = colour_of[g["index"].iloc[0]]
        style = "s-." if g._comparison.iloc[0] else "o-"  # comparison galleries (tiled): dash-dot, squares
        meas, ext = g[~g.extrapolated.astype(bool)], g[g.extrapolated.astype(bool)]
        ax.plot(meas.n_items, meas.ms_per_query, style, color=c, label=name)
        if not ext.empty:
            join = pd.concat([meas.tail(1), ext])
            ax.plot(join.n_items, join.ms_per_query, "--", color=c, alpha=0.8)
            ax.plot(ext.n_items, ext.ms_per_query, "x", color=c)
        if name == "flat":
            ax.plot(g.n_items, g.floor_ms, ":", color="k", label="flat floor (read bandwidth)")
        if g.recall_at_10.notna().any() and g["index"].iloc[0] != "flat":
            ax2.plot(meas.n_items, meas.recall_at_10, style, color=c, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="gallery items", ylabel="ms per query (batch 1)",
           title="latency vs gallery size (x, dashed: extrapolated)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax2.set_xscale("log")
    ax2.axhline(0.95, color="r", lw=0.8, ls=":")
    ax2.set(xlabel="gallery items", ylabel="recall@10 vs exact", title="approximate indexes", ylim=(0, 1.02))
    ax2.grid(True, which="both", alpha=0.3)
    if ax2.lines:
        ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def nn_distance_figure(dist: pd.DataFrame, stats: pd.DataFrame):
    """Cumulative distributions of nearest-neighbour distances (``nn_distance_check``): to the nearest real item
    the mixture was fitted on (left) and to the nearest other item of the same sample (right), for held-out real
    items, synthetic and tiled samples; the legend gives each sample's two-sample KS statistic against the real."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0))
    colors = {"real (held out)": "k", "synthetic": "#2a9d8f", "tiled": "#e76f51"}
    titles = {"to_real": "distance to the nearest fitted real item",
              "within": "distance to the nearest item of the same sample"}
    for ax, kind in zip(axes, ("to_real", "within")):
        for name, g in dist[dist.kind == kind].groupby("sample", sort=False):
            x = np.sort(g.distance.to_numpy())
            st = stats[(stats["sample"] == name) & (stats.kind == kind)]
            label = name if st.empty else f"{name} (KS {st.ks_statistic.iloc[0]:.3f})"
            ax.plot(x, np.arange(1, len(x) + 1) / len(x), color=colors.get(name), label=label)
        ax.set(xlabel="Euclidean distance", ylabel="fraction of items", title=titles[kind])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
