"""Image figures: sample grids, word -> region maps, concept patches, codebook usage, retrieval examples (with a
legend for the borders), the pointing game. Saved with :func:`itr_lib.plots.save`."""
from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np

from .backend import plt

CORRECT_COLOR = "#1a9850"   # green
WRONG_COLOR = "#d73027"     # red
DUP_COLOR = "#7f7f00"       # olive: same caption text as a correct one (duplicate-aware match)
CELL = 32                   # pixels per region cell (EfficientNet stride)


def sample_grid(split, n: int = 6, seed: int = 0, dataset: str | None = None):
    """A grid of sample images with their captions."""
    from ..data import load_image, scene_class
    rng = np.random.default_rng(seed)
    idx = sorted(rng.choice(split.n_images, size=min(n, split.n_images), replace=False))
    cols = min(3, len(idx))
    rows = (len(idx) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 6.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, idx):
        ax.imshow(load_image(split.image_paths[i]))
        caps = "\n".join(textwrap.fill(f"- {split.captions[j]}", 55) for j in split.img2txt[i])
        cls = scene_class(dataset, split.filenames[i]) if dataset else None
        ax.set_title(f"{split.filenames[i]}" + (f" [{cls}]" if cls else ""), fontsize=9)
        ax.text(0, 1.0, caps, transform=ax.transAxes, fontsize=7.5, va="bottom", ha="left")
        ax.set_title(f"{split.filenames[i]}" + (f" [{cls}]" if cls else ""), fontsize=9, y=-0.08)
    fig.tight_layout()
    return fig



# ----------------------------------------------------------------------------------------------- word maps
def _as_image(image, size: int):
    """A PIL image or a path -> RGB array resized to size x size."""
    from PIL import Image
    if not hasattr(image, "convert"):
        with Image.open(image) as im:
            image = im.convert("RGB")
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image)


def overlay_word_map(ax, image, sim_map: np.ndarray, region: int | None = None, title: str | None = None,
                     alpha: float = 0.5, cmap: str = "jet", box_color: str = "white") -> None:
    """Draw ``image`` with a word's (g, g) similarity map upsampled (bilinear) over it, min-max scaled per
    map, and the matched region boxed. The image is shown at g*32 pixels (224 for 7x7, 448 for 14x14)."""
    from matplotlib.patches import Rectangle
    sim_map = np.asarray(sim_map, dtype=np.float32)
    g = sim_map.shape[0]
    size = g * CELL
    ax.imshow(_as_image(image, size), extent=(0, size, size, 0))
    lo, hi = float(sim_map.min()), float(sim_map.max())
    norm = (sim_map - lo) / (hi - lo) if hi > lo else np.zeros_like(sim_map)
    ax.imshow(norm, extent=(0, size, size, 0), cmap=cmap, alpha=alpha, interpolation="bilinear", vmin=0, vmax=1)
    if region is not None:
        r, c = divmod(int(region), g)
        ax.add_patch(Rectangle((c * CELL, r * CELL), CELL, CELL, fill=False, edgecolor=box_color, linewidth=2))
    ax.set_xlim(0, size)
    ax.set_ylim(size, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def _word_title(m) -> str:
    word, concept = m[0], m[3]
    return f"{word}" + (f"  [c{concept}]" if concept is not None else "")


def plot_caption_word_maps(image, maps: Sequence, caption: str | None = None, max_words: int = 8,
                           ncols: int = 4, panel: float = 2.2):
    """A grid of one caption's words, each with its map over the image. ``maps`` are
    ``(word, sim_map, region, concept)`` tuples (``wordobj.word_maps``)."""
    maps = list(maps)[:max_words]
    n = max(len(maps), 1)
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel * ncols, panel * nrows + (0.4 if caption else 0)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m in zip(axes.flat, maps):
        ax.axis("on")
        overlay_word_map(ax, image, m[1], m[2], _word_title(m))
    if caption:
        fig.suptitle(caption, fontsize=10)
    fig.tight_layout()
    return fig


def plot_word_maps_compare(image, maps_by_model: dict, caption: str | None = None, max_words: int = 6,
                           panel: float = 2.0):
    """Rows = models, columns = the caption's words (the same words in every row): e.g. baseline vs LCA."""
    names = list(maps_by_model)
    n = max(1, min(max_words, max(len(v) for v in maps_by_model.values()) if names else 1))
    fig, axes = plt.subplots(len(names), n + 1, figsize=(panel * (n + 1), panel * len(names) + 0.5),
                             squeeze=False)
    for row, name in enumerate(names):
        ax0 = axes[row, 0]
        ax0.imshow(_as_image(image, 224))
        ax0.set_xticks([])
        ax0.set_yticks([])
        ax0.set_ylabel(name, fontsize=10)
        maps = list(maps_by_model[name])[:n]
        for col in range(n):
            ax = axes[row, col + 1]
            if col < len(maps):
                overlay_word_map(ax, image, maps[col][1], maps[col][2], _word_title(maps[col]))
            else:
                ax.axis("off")
    if caption:
        fig.suptitle(caption, fontsize=10)
    fig.tight_layout(h_pad=1.2)
    return fig


# ----------------------------------------------------------------------------------------------- concepts
def crop_region(image, region: int, grid: int = 7, size: int = 224) -> np.ndarray:
    """The 32x32-pixel cell of a region of the image resized to ``size`` (224 for the 7x7 grid)."""
    arr = _as_image(image, size)
    r, c = divmod(int(region), grid)
    cell = size // grid
    return arr[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell]


def plot_concept_patches(top_patches: dict, image_paths: Sequence, concepts: Sequence[int],
                         labels: dict | None = None, n_patches: int = 8, grid: int = 7, panel: float = 0.9):
    """One row per concept: its top patches (the 32x32 cells of ``(image, region, score)`` entries of
    ``top_patches[concept]``), labelled with the concept id and ``labels[concept]`` (e.g. its top words)."""
    concepts = list(concepts)
    nrows = max(len(concepts), 1)
    n_patches = max(1, min(n_patches, max([len(top_patches.get(k, [])) for k in concepts] or [1])))
    fig, axes = plt.subplots(nrows, n_patches, figsize=(panel * n_patches + 2.5, panel * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    for row, k in enumerate(concepts):
        for col, (img, reg, _score) in enumerate(list(top_patches.get(k, []))[:n_patches]):
            axes[row, col].imshow(crop_region(image_paths[img], reg, grid))
        text = f"c{k}" + (f": {labels[k]}" if labels and labels.get(k) else "")
        axes[row, 0].set_ylabel(text, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def plot_codebook_usage(word_usage: np.ndarray, region_usage: np.ndarray, title: str | None = None):
    """Sorted usage curves of the codebook (entries ranked by use), words and regions."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for name, u in (("words", word_usage), ("regions", region_usage)):
        u = np.sort(np.asarray(u, dtype=np.float64))[::-1]
        total = u.sum()
        ax.plot(np.arange(1, len(u) + 1), u / total if total else u, label=f"{name} ({int((u > 0).sum())} used)")
    ax.set_xlabel("codebook entry (ranked by use)")
    ax.set_ylabel("share of assignments")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- retrieval
def _wrap(text: str, width: int = 38) -> str:
    return "\n".join(textwrap.wrap(text, width))


def plot_retrieval_examples(examples: dict, image_paths: Sequence | None = None, title: str | None = None,
                            panel: float = 1.7):
    """Text->image rows (query caption, top-k images; correct ones framed green, images that carry the same
    caption text framed olive, others red) and image->text rows (query image, top-k captions; correct ones in
    green, duplicate-text matches in olive), from
    ``wordobj.retrieval_examples``."""
    image_paths = image_paths if image_paths is not None else examples["image_paths"]
    t2i, i2t = examples["t2i"], examples["i2t"]
    k = max([len(q["hits"]) for q in t2i + i2t] or [1])
    nrows = len(t2i) + len(i2t)
    fig, axes = plt.subplots(max(nrows, 1), k + 1, figsize=(panel * (k + 1) + 1.2, panel * max(nrows, 1) * 1.05),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for row, q in enumerate(t2i + i2t):
        for col in range(len(q["hits"]) + 1, k + 1):
            axes[row, col].axis("off")
    for row, q in enumerate(t2i):
        ax0 = axes[row, 0]
        ax0.axis("off")
        ax0.text(0.5, 0.5, _wrap(q["caption"], 24), ha="center", va="center", fontsize=7, transform=ax0.transAxes)
        ax0.set_title("text query", fontsize=8)
        for col, h in enumerate(q["hits"]):
            ax = axes[row, col + 1]
            ax.imshow(_as_image(image_paths[h["image"]], 224))
            color = CORRECT_COLOR if h["correct"] else (DUP_COLOR if h["correct_dup"] else WRONG_COLOR)
            for s in ax.spines.values():
                s.set_edgecolor(color)
                s.set_linewidth(3 if h["correct"] or h["correct_dup"] else 1)
            ax.set_title(f"#{col + 1}" + (" \u2713" if h["correct"] else ""), fontsize=8,
                         color=color if h["correct"] else "black")
    for n, q in enumerate(i2t):
        row = len(t2i) + n
        axes[row, 0].imshow(_as_image(image_paths[q["query"]], 224))
        axes[row, 0].set_title("image query", fontsize=8)
        for col, h in enumerate(q["hits"]):
            ax = axes[row, col + 1]
            ax.axis("off")
            color = CORRECT_COLOR if h["correct"] else (DUP_COLOR if h["correct_dup"] else "black")
            ax.text(0.5, 0.5, f"#{col + 1} " + _wrap(h["caption"], 22), ha="center", va="center", fontsize=6.5,
                    color=color, fontweight="bold" if h["correct"] else "normal", transform=ax.transAxes)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- pointing game
def plot_pointing_game(overall, per_class=None, chance: float = 0.25, title: str | None = None):
    """Hit rate per model (bars with 95% bootstrap intervals, falling back to Wilson) and the chance line;
    with ``per_class``, a second panel of per-class rates (grouped by model). Inputs are the DataFrames of
    ``wordobj.pointing_table``."""
    ncols = 2 if per_class is not None and len(per_class) else 1
    fig, axes = plt.subplots(1, ncols, figsize=(3.2 + (6.5 if ncols == 2 else 0), 3.4), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 3] if ncols == 2 else [1]})
    ax = axes[0, 0]
    models = list(overall["model"])
    rates = overall["hit_rate"].to_numpy(dtype=float)
    lo_col, hi_col = ("ci_boot_lo", "ci_boot_hi") if "ci_boot_lo" in overall else ("ci_wilson_lo", "ci_wilson_hi")
    err = np.vstack([rates - overall[lo_col].to_numpy(dtype=float), overall[hi_col].to_numpy(dtype=float) - rates])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ax.bar(models, rates, yerr=err, capsize=4, color=colors[:len(models)])
    ax.axhline(chance, color="grey", linestyle="--", linewidth=1)
    ax.text(len(models) - 0.55, chance, f"chance {chance:.0%}", ha="right", va="center", fontsize=7, color="dimgrey",
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0})
    ax.set_ylim(0, 1)
    ax.set_ylabel("pointing hit rate")
    ns = overall["n_words"].tolist() if "n_words" in overall else [None] * len(models)
    for i, (r, n) in enumerate(zip(rates, ns)):
        ax.text(i, r / 2, f"{r:.1%}" + (f"\nn={n}" if n is not None else ""), ha="center", va="center",
                fontsize=8, color="white", fontweight="bold")
    if ncols == 2:
        ax2 = axes[0, 1]
        piv = per_class.pivot(index="class", columns="model", values="hit_rate").reindex(columns=models)
        x = np.arange(len(piv))
        width = 0.8 / max(len(models), 1)
        for i, m in enumerate(models):
            ax2.bar(x + (i - (len(models) - 1) / 2) * width, piv[m].to_numpy(dtype=float), width, label=m,
                    color=colors[i % len(colors)])
        ax2.axhline(chance, color="grey", linestyle="--", linewidth=1)
        ax2.set_xticks(x)
        ax2.set_xticklabels(piv.index, rotation=60, ha="right", fontsize=7)
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("hit rate per class")
        ax2.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(models), frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
