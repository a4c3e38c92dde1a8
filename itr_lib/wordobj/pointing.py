"""The mosaic pointing game: does a word that names a scene point into that scene's quadrant?"""
from __future__ import annotations

import functools
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch

from ..data import DataError, Dataset, load_dataset, load_image, scene_class

log = logging.getLogger(__name__)

from ..models.text_top import text_cut_of
from .words import _check_text_kind, caption_words, encode_region_pre, encode_text_pre, get_tokenizer

TILE = 224          # quadrant side in pixels (the training input size)
CELL = 32           # EfficientNet-Lite stride: one region = a 32x32-pixel cell
MOSAIC_GRID = 14    # regions per side of a 448x448 mosaic
CHANCE = 0.25

# Words that name a scene class in captions (RSICD file-name prefixes and UCM folder names). The class name
# itself is always added. Chosen from the test captions' vocabulary: the nouns a caption uses for the scene,
# excluding generic words that name many classes' content ("area", "field", "lot", "trees", "cars").
CLASS_ALIASES: dict[str, tuple[str, ...]] = {
    # UCM-Captions (UC Merced Land-Use folder names)
    "agricultural": ("farmland", "farmlands", "cropland", "croplands"),
    "airplane": ("airplane", "airplanes", "plane", "planes", "aircraft", "airport"),
    "baseballdiamond": ("baseball", "diamond"),
    "beach": ("beach", "beaches"),
    "buildings": ("buildings", "building"),
    "chaparral": ("chaparral",),
    "denseresidential": ("residential", "houses", "house"),
    "forest": ("forest", "forests"),
    "freeway": ("freeway", "freeways", "highway", "highways"),
    "golfcourse": ("golf", "course"),
    "harbor": ("harbor", "harbors", "harbour", "port"),
    "intersection": ("intersection", "intersections"),
    "mediumresidential": ("residential", "houses", "house"),
    "mobilehomepark": ("mobile", "homes", "home"),
    "overpass": ("overpass", "overpasses"),
    "parkinglot": ("parking",),
    "river": ("river", "rivers"),
    "runway": ("runway", "runways"),
    "sparseresidential": ("residential", "houses", "house"),
    "storagetanks": ("storage", "tank", "tanks"),
    "tenniscourt": ("tennis", "court", "courts"),
    # RSICD (file-name prefixes; beach, denseresidential, forest, mediumresidential, river, sparseresidential,
    # storagetanks as above)
    "airport": ("airport", "airports", "airplane", "airplanes", "plane", "planes"),
    "bareland": ("bareland", "bare"),
    "baseballfield": ("baseball",),
    "bridge": ("bridge", "bridges"),
    "center": ("center", "centre"),
    "church": ("church", "churches"),
    "commercial": ("commercial",),
    "desert": ("desert", "deserts"),
    "farmland": ("farmland", "farmlands", "cropland"),
    "industrial": ("industrial", "factory", "factories"),
    "meadow": ("meadow", "meadows", "pasture", "prairie", "grassland"),
    "mountain": ("mountain", "mountains"),
    "park": ("park", "parks"),
    "parking": ("parking",),
    "playground": ("playground", "playgrounds"),
    "pond": ("pond", "ponds", "lake"),
    "port": ("port", "ports", "harbor", "harbour"),
    "railwaystation": ("railway", "station", "train", "trains", "rails"),
    "resort": ("resort", "resorts"),
    "school": ("school", "schools"),
    "square": ("square", "plaza"),
    "stadium": ("stadium", "stadiums"),
    "viaduct": ("viaduct", "viaducts"),
}

# Classes never put into one mosaic: any two whose alias sets overlap (the three *residential classes), plus
# pairs whose images routinely show the other's named object (a bridge spans a river; storage tanks stand in
# industrial areas; resorts lie on beaches; parks hold ponds; overpasses are freeway junctions).
EXTRA_CONFLICTS: frozenset[frozenset[str]] = frozenset(frozenset(p) for p in (
    ("bridge", "river"), ("storagetanks", "industrial"), ("beach", "resort"), ("pond", "park"),
    ("freeway", "overpass"), ("intersection", "overpass"),
))


def aliases_for(cls: str, table: dict[str, Sequence[str]] | None = None) -> frozenset[str]:
    """The words that name ``cls`` in a caption: its alias-table entry plus the class name itself."""
    table = CLASS_ALIASES if table is None else table
    return frozenset([cls, *table.get(cls, ())])


def classes_conflict(a: str, b: str, table: dict[str, Sequence[str]] | None = None) -> bool:
    """True when two classes must not share a mosaic (overlapping aliases, or an :data:`EXTRA_CONFLICTS` pair)."""
    return a == b or bool(aliases_for(a, table) & aliases_for(b, table)) or frozenset((a, b)) in EXTRA_CONFLICTS


# ----------------------------------------------------------------------------------------------- pointing game
def region_quadrant(region, grid: int = MOSAIC_GRID):
    """Quadrant of a region index of a row-major ``grid`` x ``grid`` map: 0 top-left, 1 top-right,
    2 bottom-left, 3 bottom-right (the order :func:`make_mosaic` places images in). Works on arrays."""
    region = np.asarray(region)
    if np.any(region < 0) or np.any(region >= grid * grid):
        raise ValueError(f"region index out of range for a {grid}x{grid} grid")
    half = grid // 2
    q = (region // grid >= half).astype(np.int64) * 2 + (region % grid >= half).astype(np.int64)
    return int(q) if q.ndim == 0 else q


def quadrant_regions(quadrant: int, grid: int = MOSAIC_GRID) -> np.ndarray:
    """The region indices (row-major) of one quadrant."""
    half = grid // 2
    r0, c0 = (quadrant // 2) * half, (quadrant % 2) * half
    return np.array([(r0 + r) * grid + c0 + c for r in range(half) for c in range(half)], dtype=np.int64)


def make_mosaic(images: Sequence, tile: int = TILE):
    """Paste four PIL images (each resized to ``tile`` x ``tile``) into a 2x2 mosaic, in quadrant order
    0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right."""
    from PIL import Image
    if len(images) != 4:
        raise ValueError(f"a mosaic takes 4 images, got {len(images)}")
    out = Image.new("RGB", (2 * tile, 2 * tile))
    for q, im in enumerate(images):
        im = im.convert("RGB")
        if im.size != (tile, tile):
            im = im.resize((tile, tile), Image.BILINEAR)
        out.paste(im, ((q % 2) * tile, (q // 2) * tile))
    return out


class PointTarget(NamedTuple):
    mosaic: int
    quadrant: int
    cls: str
    caption: int               # index into PointingSet.captions
    word: str
    pieces: tuple[int, ...]


@dataclass
class PointingSet:
    """Mosaics, their grid features and the words to point with; model-independent, so one set serves
    every model compared (see :func:`build_pointing_set`)."""

    dataset: str
    split: str
    seed: int
    mosaics: list[tuple[int, int, int, int]]    # image indices (into image_paths), quadrant order
    classes: list[tuple[str, str, str, str]]
    image_paths: list[Path]
    features: np.ndarray                        # (n_mosaics, 196, C) float16 grid features at 448
    captions: list[str]                         # unique captions used (per image, deduplicated)
    states: np.ndarray                          # (n_captions, L, 384) float16 MiniLM states
    lengths: np.ndarray                         # (n_captions,)
    targets: list[PointTarget]

    @property
    def n_mosaics(self) -> int:
        return len(self.mosaics)

    def mosaic_image(self, m: int):
        return make_mosaic([load_image(self.image_paths[i]) for i in self.mosaics[m]])


@functools.lru_cache(maxsize=1)
def _default_image_encoder(device: str):
    from ..features import ImageEncoder
    return ImageEncoder("efficientnet-lite2", device)


@functools.lru_cache(maxsize=1)
def _default_text_encoder(device: str):
    from ..features import TextEncoder
    return TextEncoder(device)


def _pool_images(ds: Dataset, split: str) -> tuple[list[Path], list[str], list[list[str]]]:
    names = ds.split_names if split == "all" else [split]
    paths, files, caps = [], [], []
    for s in names:
        sp = ds.split(s)
        for i in range(sp.n_images):
            paths.append(sp.image_paths[i])
            files.append(sp.filenames[i])
            caps.append(list(dict.fromkeys(sp.captions[j] for j in sp.img2txt[i])))  # unique, in order
    return paths, files, caps


_POINTING_CACHE: "OrderedDict[tuple, PointingSet]" = OrderedDict()


def clear_pointing_cache() -> None:
    _POINTING_CACHE.clear()


def build_pointing_set(dataset: str | Dataset, split: str = "test", n_mosaics: int = 50, seed: int = 0,
                       data_root=None, image_encoder=None, text_encoder=None, device: str = "cpu",
                       aliases: dict[str, Sequence[str]] | None = None, batch_size: int = 8,
                       max_tries: int = 10000) -> PointingSet:
    """Sample ``n_mosaics`` mosaics of 4 images of 4 mutually non-conflicting classes and encode them.

    Only images with a scene class (``data.scene_class``) and at least one caption word naming it are
    drawn (so every quadrant is scored); within a mosaic no two classes conflict (:func:`classes_conflict`).
    Each image's captions are deduplicated (UCM/RSICD repeat captions) before the words are collected.
    ``split="all"`` draws from every split (for tiny fixtures). ``image_encoder`` needs ``encode(images,
    size)`` and ``text_encoder`` ``tokenize`` / ``encode_ids`` / ``tokenizer`` (defaults: the cached-feature
    encoders of :mod:`itr_lib.features`)."""
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, data_root)
    root = data_root if data_root is not None else ds.json_path.parent.parent
    text_encoder = text_encoder or _default_text_encoder(device)
    tokenizer = get_tokenizer(text_encoder)
    max_len = getattr(text_encoder, "max_length", 32)
    paths, files, caps = _pool_images(ds, split)

    # eligible images: class known, some caption word names it
    by_class: dict[str, list[int]] = {}
    words_of: dict[int, list[tuple[str, tuple[str, tuple[int, ...]]]]] = {}
    for i, f in enumerate(files):
        cls = scene_class(ds.name, f, root)
        if cls is None:
            continue
        names = aliases_for(cls, aliases)
        found = []
        for c in caps[i]:
            for w in caption_words(c, tokenizer, max_len):
                if w.text in names:
                    found.append((c, (w.text, w.pieces)))
        if found:
            by_class.setdefault(cls, []).append(i)
            words_of[i] = found
    classes = sorted(by_class)
    if len(classes) < 4:
        raise DataError(f"{ds.json_path}: split '{split}' has images of only {len(classes)} scene class(es) whose "
                        f"captions name their class ({classes}); a mosaic needs 4. Fix: use a larger split, "
                        f"split='all', or extend CLASS_ALIASES.")
    rng = np.random.default_rng(seed)
    mosaics, mosaic_classes = [], []
    for _ in range(n_mosaics):
        for _try in range(max_tries):
            pick = [classes[c] for c in rng.choice(len(classes), size=4, replace=False)]
            if not any(classes_conflict(a, b, aliases) for n, a in enumerate(pick) for b in pick[n + 1:]):
                break
        else:
            raise DataError(f"{ds.json_path}: could not draw 4 mutually non-conflicting classes from {classes}. "
                            f"Fix: use a split with more classes.")
        imgs = tuple(int(rng.choice(by_class[c])) for c in pick)
        mosaics.append(imgs)
        mosaic_classes.append(tuple(pick))

    # captions (unique across the set) and the targets
    cap_index: dict[str, int] = {}
    targets = []
    for m, (imgs, clss) in enumerate(zip(mosaics, mosaic_classes)):
        for q, (i, cls) in enumerate(zip(imgs, clss)):
            for c, (word, pieces) in words_of[i]:
                ci = cap_index.setdefault(c, len(cap_index))
                targets.append(PointTarget(m, q, cls, ci, word, pieces))
    captions = list(cap_index)
    ids, lengths = text_encoder.tokenize(captions)
    states = np.concatenate([text_encoder.encode_ids(ids[s:s + 128], lengths[s:s + 128])
                             for s in range(0, len(captions), 128)]).astype(np.float16)

    image_encoder = image_encoder or _default_image_encoder(device)
    feats = []
    for s in range(0, len(mosaics), batch_size):
        ims = [make_mosaic([load_image(paths[i]) for i in imgs]) for imgs in mosaics[s:s + batch_size]]
        feats.append(np.asarray(image_encoder.encode(ims, 2 * TILE)).astype(np.float16))
    features = np.concatenate(feats)
    if features.shape[1] != MOSAIC_GRID ** 2:
        raise ValueError(f"the image encoder gave {features.shape[1]} regions for a {2 * TILE}px mosaic, "
                         f"expected {MOSAIC_GRID ** 2}")
    return PointingSet(ds.name, split, seed, mosaics, mosaic_classes, paths, features, captions, states,
                       np.asarray(lengths), targets)


def _cached_pointing_set(dataset, split, n_mosaics, seed, data_root, device) -> PointingSet:
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, data_root)
    key = (str(ds.json_path), ds.json_sha256, split, n_mosaics, seed)
    if key not in _POINTING_CACHE:
        _POINTING_CACHE[key] = build_pointing_set(ds, split, n_mosaics, seed, data_root, device=device)
        while len(_POINTING_CACHE) > 2:
            _POINTING_CACHE.popitem(last=False)
    return _POINTING_CACHE[key]


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def cluster_bootstrap(hits: np.ndarray, clusters: np.ndarray, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the hit rate, resampling whole mosaics (words of one mosaic are not
    independent)."""
    if len(hits) == 0:
        return (float("nan"), float("nan"))
    ids, inv = np.unique(clusters, return_inverse=True)
    h = np.bincount(inv, weights=hits.astype(np.float64), minlength=len(ids))
    n = np.bincount(inv, minlength=len(ids)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(ids), size=(n_boot, len(ids)))
    rates = h[draw].sum(1) / np.maximum(n[draw].sum(1), 1)
    a = (1 - level) / 2
    return (float(np.quantile(rates, a)), float(np.quantile(rates, 1 - a)))


@torch.no_grad()
def score_pointing(model, pset: PointingSet, n_boot: int = 1000, seed: int = 0) -> dict:
    """Run one model on a :class:`PointingSet`: each target word's matched region over all 196 regions."""
    _check_text_kind(model)
    if text_cut_of(model) is not None:
        raise ValueError("the pointing game's caption states are MiniLM's last hidden states, but this model has a "
                         "trainable text top (TrainConfig.text_top_layers) that reads hidden_states"
                         f"[{text_cut_of(model)}]. Fix: score a checkpoint with text_top_layers=0 (pointing sets of "
                         "hidden states below the top are not built yet).")
    w = encode_text_pre(model, pset.states, pset.lengths)                # (n_captions, W, D)
    v = encode_region_pre(model, pset.features)                          # (n_mosaics, 196, D)
    records = []
    for t in pset.targets:
        vec = w[t.caption, list(t.pieces)].mean(0)
        sim = v[t.mosaic] @ vec
        r = int(sim.argmax())
        pred = region_quadrant(r)
        records.append({"mosaic": t.mosaic, "quadrant": t.quadrant, "class": t.cls, "word": t.word,
                        "caption": pset.captions[t.caption], "region": r, "pred_quadrant": pred,
                        "hit": pred == t.quadrant})
    hits = np.array([r["hit"] for r in records], dtype=bool)
    mos = np.array([r["mosaic"] for r in records], dtype=np.int64)
    per_class: dict[str, dict] = {}
    for r in records:
        d = per_class.setdefault(r["class"], {"hits": 0, "n": 0})
        d["hits"] += int(r["hit"])
        d["n"] += 1
    for d in per_class.values():
        d["rate"] = d["hits"] / d["n"]
    n = len(hits)
    return {"dataset": pset.dataset, "split": pset.split, "n_mosaics": pset.n_mosaics, "n_words": n,
            "hits": int(hits.sum()), "hit_rate": float(hits.mean()) if n else float("nan"),
            "class_mean_rate": float(np.mean([d["rate"] for d in per_class.values()])) if per_class else float("nan"),
            "ci_wilson": wilson_interval(int(hits.sum()), n),
            "ci_bootstrap": cluster_bootstrap(hits, mos, n_boot, seed), "chance": CHANCE,
            "per_class": dict(sorted(per_class.items())), "records": records}


def pointing_game(model, dataset: str | Dataset, split: str = "test", n_mosaics: int = 50, seed: int = 0,
                  data_root=None, *, pointing_set: PointingSet | None = None, image_encoder=None,
                  text_encoder=None, n_boot: int = 1000, device: str = "cpu") -> dict:
    """Mosaic pointing game for one model (see the module docstring).

    Returns ``hit_rate`` (over words), ``class_mean_rate`` (mean of the per-class rates: classes whose captions
    repeat their name weigh no more), ``hits``, ``n_words``, ``per_class`` ({class: hits, n, rate}), ``ci_wilson`` (95%
    binomial over words), ``ci_bootstrap`` (95%, resampling mosaics), ``chance`` (0.25) and per-word
    ``records``. The mosaics and their features are built once per (dataset, split, n_mosaics, seed) and kept
    in memory (two sets at most), so comparing models re-encodes nothing; pass ``pointing_set`` (from
    :func:`build_pointing_set`) or custom encoders to bypass that cache."""
    if pointing_set is None:
        if image_encoder is not None or text_encoder is not None:
            pointing_set = build_pointing_set(dataset, split, n_mosaics, seed, data_root, image_encoder,
                                              text_encoder, device)
        else:
            pointing_set = _cached_pointing_set(dataset, split, n_mosaics, seed, data_root, device)
    return score_pointing(model, pointing_set, n_boot, seed)


def pointing_difference(a: dict, b: dict, n_boot: int = 1000, seed: int = 0) -> dict:
    """Paired comparison of two :func:`pointing_game` results on the same pointing set: hit rate of ``b``
    minus that of ``a``, with a 95% bootstrap interval resampling mosaics (both models see the same words)."""
    ka = [(r["mosaic"], r["quadrant"], r["caption"], r["word"]) for r in a["records"]]
    kb = [(r["mosaic"], r["quadrant"], r["caption"], r["word"]) for r in b["records"]]
    if ka != kb:
        raise ValueError("the two results were scored on different pointing sets (different words or mosaics). "
                         "Fix: score both models with the same dataset, split, n_mosaics and seed.")
    ha = np.array([r["hit"] for r in a["records"]], dtype=np.float64)
    hb = np.array([r["hit"] for r in b["records"]], dtype=np.float64)
    mos = np.array([r["mosaic"] for r in a["records"]], dtype=np.int64)
    ids, inv = np.unique(mos, return_inverse=True)
    d = np.bincount(inv, weights=hb - ha, minlength=len(ids))
    n = np.bincount(inv, minlength=len(ids)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(ids), size=(n_boot, len(ids)))
    diffs = d[draw].sum(1) / np.maximum(n[draw].sum(1), 1)
    return {"difference": float((hb - ha).mean()) if len(ha) else float("nan"),
            "ci_lo": float(np.quantile(diffs, 0.025)), "ci_hi": float(np.quantile(diffs, 0.975)),
            "only_a": int(((ha == 1) & (hb == 0)).sum()), "only_b": int(((ha == 0) & (hb == 1)).sum()),
            "n_words": len(ha)}


def pointing_table(results: dict[str, dict]):
    """(overall, per-class) DataFrames of several :func:`pointing_game` results keyed by model name."""
    import pandas as pd
    overall, per_class = [], []
    for name, r in results.items():
        overall.append({"model": name, "dataset": r["dataset"], "split": r["split"], "n_mosaics": r["n_mosaics"],
                        "n_words": r["n_words"], "hits": r["hits"], "hit_rate": r["hit_rate"],
                        "class_mean_rate": r["class_mean_rate"], "ci_wilson_lo": r["ci_wilson"][0], "ci_wilson_hi": r["ci_wilson"][1],
                        "ci_boot_lo": r["ci_bootstrap"][0], "ci_boot_hi": r["ci_bootstrap"][1],
                        "chance": r["chance"]})
        for cls, d in r["per_class"].items():
            per_class.append({"model": name, "class": cls, "n_words": d["n"], "hits": d["hits"],
                              "hit_rate": d["rate"]})
    return pd.DataFrame(overall), pd.DataFrame(per_class)


