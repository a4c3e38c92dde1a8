"""Word -> object correspondence: what SelfAlign's LCA aligns, inspected and measured.

- :func:`word_maps`: for one image and one caption, each word's similarity map over the image's regions
  (cosine of the pre-context projections ``"pre"``, the space LCA trains in; the baseline has the same
  projections, so the same readout works for it), its matched region r*(j) = argmax (METHODS.md) and, with
  LCA, its concept (codebook entry). MiniLM word pieces are grouped into words with the fast tokenizer's
  ``word_ids()``; a word's map is the mean of its pieces' maps ([CLS]/[SEP] skipped).
- :func:`concept_analysis`: per codebook entry, the words that fall into it, the image patches that score
  highest on it, and how evenly the codebook is used (fraction used, entropy, perplexity).
- :func:`retrieval_examples`: top-k images for a few text queries and top-k captions for a few image queries.
- :func:`pointing_game`: a mosaic pointing game. Four test images of four different scene classes are pasted
  into a 2x2 mosaic (224 px each, 448 px in all); its 14x14 EfficientNet grid is extracted at 448 (each
  quadrant = 7x7 regions). For each caption word that names its image's class (:data:`CLASS_ALIASES`), the
  word's matched region is taken over all 196 mosaic regions; a hit is a region inside that image's quadrant.
  Chance is 25%.
- :func:`find_checkpoint`: the newest finished run of a kind (LCA / baseline) for a dataset in a results dir.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import string
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import torch

from .data import DataError, Dataset, load_dataset, load_image, scene_class

log = logging.getLogger(__name__)

TILE = 224          # quadrant side in pixels (the training input size)
CELL = 32           # EfficientNet-Lite stride: one region = a 32x32-pixel cell
MOSAIC_GRID = 14    # regions per side of a 448x448 mosaic
CHANCE = 0.25

# A small stop-word list (articles, prepositions, auxiliaries, pronouns, counting words) for the concept tables.
STOP_WORDS = frozenset("""
a an the this that these those it its there here is are was were be been being has have had do does did
of in on at by to from for with without into onto over under near beside besides between among around
through across along behind above below next and or but so as than then which who whom whose what where
when while can could will would may might some many several lots lot much more most few other each both
all any one two three four five six seven eight nine ten very also such like only not no
""".split())

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


# ----------------------------------------------------------------------------------------------- words
@functools.lru_cache(maxsize=1)
def _default_tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer
    from .features import _text_model_dir
    return AutoTokenizer.from_pretrained(str(_text_model_dir()))


def get_tokenizer(text_encoder=None):
    """The MiniLM fast tokenizer (``text_encoder.tokenizer`` when given; else loaded once, without the model)."""
    return text_encoder.tokenizer if text_encoder is not None else _default_tokenizer()


class Word(NamedTuple):
    text: str               # the word as written in the caption, lower-cased
    index: int              # word number in the caption (the tokenizer's word id)
    pieces: tuple[int, ...]  # its word-piece positions in the token sequence ([CLS] = 0)


def caption_words(caption: str, tokenizer=None, max_length: int = 32) -> list[Word]:
    """Group a caption's word pieces into words, as the feature cache tokenised it (``max_length`` truncation).

    Uses the fast tokenizer's ``word_ids()``: [CLS]/[SEP] (word id None) are skipped; a word cut by the
    truncation keeps the pieces that survived."""
    tokenizer = tokenizer or _default_tokenizer()
    enc = tokenizer(caption, truncation=True, max_length=max_length)
    groups: "OrderedDict[int, list[int]]" = OrderedDict()
    for pos, wid in enumerate(enc.word_ids()):
        if wid is not None:
            groups.setdefault(wid, []).append(pos)
    out = []
    for wid, pieces in groups.items():
        span = enc.word_to_chars(wid)
        out.append(Word(caption[span.start:span.end].lower(), wid, tuple(pieces)))
    return out


def is_punct(word: str) -> bool:
    return all(ch in string.punctuation for ch in word)


def _model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _check_text_kind(model) -> None:
    if getattr(model, "text_kind", "minilm") != "minilm":
        raise ValueError("word-object analysis needs a model on MiniLM token features (text_encoder='minilm'); "
                         "this one uses the GloVe GRU. Fix: pass a checkpoint trained with text_encoder='minilm'.")


def _text_masks(lengths: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.arange(width)[None, :]
    mask = pos < lengths[:, None]
    return mask, mask & (pos > 0) & (pos < lengths[:, None] - 1)


@torch.no_grad()
def encode_text_pre(model, states, lengths, chunk: int = 256) -> torch.Tensor:
    """Pre-context word vectors ``"pre"`` (N, W, D) of MiniLM states (N, L, 384), on CPU; W = max length."""
    states = torch.as_tensor(np.asarray(states)) if not torch.is_tensor(states) else states
    lengths = torch.as_tensor(np.asarray(lengths)).long()
    width = int(lengths.max())
    dev = _model_device(model)
    model.eval()
    outs = []
    for s in range(0, len(states), chunk):
        ln = lengths[s:s + chunk]
        mask, word = _text_masks(ln, width)
        t = states[s:s + chunk, :width].float()
        outs.append(model.encode_texts(t.to(dev), mask.to(dev), word.to(dev))["pre"].float().cpu())
    return torch.cat(outs)


@torch.no_grad()
def encode_region_pre(model, regions, chunk: int = 64) -> torch.Tensor:
    """Pre-context region vectors ``"pre"`` (N, R, D) of region features (N, R, C), on CPU."""
    regions = torch.as_tensor(np.asarray(regions)) if not torch.is_tensor(regions) else regions
    dev = _model_device(model)
    model.eval()
    outs = []
    for s in range(0, len(regions), chunk):
        r = regions[s:s + chunk].float()
        mask = torch.ones(r.shape[:2], dtype=torch.bool)
        outs.append(model.encode_images(r.to(dev), mask.to(dev))["pre"].float().cpu())
    return torch.cat(outs)


class WordMap(NamedTuple):
    word: str
    sim_map: np.ndarray      # (g, g) cosine similarity of the word to each region (row-major grid)
    region: int              # matched region r*(j) = argmax of the map (flat, row-major)
    concept: int | None      # LCA: the codebook entry the word falls into; None without LCA


def _codebook(model) -> torch.Tensor | None:
    if getattr(model, "use_lca", False) and hasattr(model, "codebook"):
        return model.codebook.weight.detach().float().cpu()
    return None


def _grid_side(n_regions: int) -> int:
    g = int(round(math.sqrt(n_regions)))
    if g * g != n_regions:
        raise ValueError(f"{n_regions} regions do not form a square grid (expected 49 = 7x7 or 196 = 14x14)")
    return g


@torch.no_grad()
def word_maps(model, regions, caption: str, text_encoder, skip_punct: bool = True) -> list[WordMap]:
    """Each word of ``caption`` against one image's regions (R, 1280): ``[(word, map, r*, concept), ...]``.

    The map is (7, 7) for R = 49 and (14, 14) for R = 196; concept is the LCA codebook entry of the word's
    mean piece vector (None for a model without LCA). Works for the baseline and for SelfAlign."""
    _check_text_kind(model)
    regions = torch.as_tensor(np.asarray(regions)) if not torch.is_tensor(regions) else regions
    if regions.dim() != 2:
        raise ValueError(f"regions must be (R, C) for one image, got shape {tuple(regions.shape)}")
    g = _grid_side(regions.shape[0])
    ids, lengths = text_encoder.tokenize([caption])
    states = text_encoder.encode_ids(ids, lengths)
    w = encode_text_pre(model, states, lengths)[0]           # (W, D)
    v = encode_region_pre(model, regions[None])[0]           # (R, D)
    cb = _codebook(model)
    out = []
    for word in caption_words(caption, get_tokenizer(text_encoder), ids.shape[1]):
        if skip_punct and is_punct(word.text):
            continue
        vec = w[list(word.pieces)].mean(0)                   # mean of the pieces' maps = map of the mean vector
        sim = (v @ vec).numpy()
        concept = int((cb @ vec).argmax()) if cb is not None else None
        out.append(WordMap(word.text, sim.reshape(g, g), int(sim.argmax()), concept))
    return out


# ----------------------------------------------------------------------------------------------- concepts
@dataclass
class ConceptReport:
    """Codebook analysis of an LCA model over one split (see :func:`concept_analysis`)."""

    top_words: dict[int, list[tuple[str, int]]]          # concept -> [(word, occurrences)], stop words excluded
    top_patches: dict[int, list[tuple[int, int, float]]]  # concept -> [(image, region, <c_k, v_r>)], best first
    word_usage: np.ndarray                                # (K,) word occurrences per concept (all words)
    region_usage: np.ndarray                              # (K,) regions whose argmax concept is k
    image_paths: list = field(default_factory=list)
    filenames: list = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.word_usage)

    def summary(self) -> dict:
        """Fraction of the K entries used by words / regions / either, entropy (nats) and perplexity of each
        usage distribution (perplexity K = perfectly even, 1 = collapsed onto one entry)."""
        out: dict[str, Any] = {"codebook_size": self.size}
        for name, u in (("words", self.word_usage), ("regions", self.region_usage)):
            h = usage_entropy(u)
            out[f"{name}_assigned"] = int(u.sum())
            out[f"used_by_{name}"] = float((u > 0).mean())
            out[f"entropy_{name}"] = h
            out[f"perplexity_{name}"] = float(math.exp(h))
            out[f"normalised_entropy_{name}"] = h / math.log(self.size) if self.size > 1 else 0.0
        out["used_by_either"] = float(((self.word_usage > 0) | (self.region_usage > 0)).mean())
        out["used_by_both"] = float(((self.word_usage > 0) & (self.region_usage > 0)).mean())
        return out

    def table(self, n_words: int = 8, top: int | None = 20):
        """One row per concept (most word occurrences first): counts and top words."""
        import pandas as pd
        rows = [{"concept": k, "word_occurrences": int(self.word_usage[k]), "regions": int(self.region_usage[k]),
                 "top_words": ", ".join(f"{w} ({c})" for w, c in self.top_words.get(k, [])[:n_words])}
                for k in range(self.size)]
        df = pd.DataFrame(rows).sort_values(["word_occurrences", "regions", "concept"],
                                            ascending=[False, False, True])
        return (df.head(top) if top else df).reset_index(drop=True)

    def busiest(self, n: int = 8, by: str = "words") -> list[int]:
        """The ``n`` concepts with the most word occurrences (``by="words"``) or regions (``by="regions"``)."""
        u = self.word_usage if by == "words" else self.region_usage
        order = sorted(range(self.size), key=lambda k: (-u[k], k))
        return [k for k in order[:n] if u[k] > 0]


def usage_entropy(counts: np.ndarray) -> float:
    """Shannon entropy (nats) of a usage histogram; 0 for an empty one."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


@torch.no_grad()
def concept_analysis(model, data, tokenizer=None, n_words: int = 10, n_patches: int = 8, chunk: int = 128,
                     stop_words: Iterable[str] = STOP_WORDS) -> ConceptReport:
    """Codebook analysis of an LCA model over a split's cached features (``train.SplitTensors``).

    Words: each caption's word vectors (mean of its pieces' ``"pre"`` vectors) are assigned to their nearest
    entry; top words count occurrences per entry, ignoring stop words and punctuation (usage counts all words).
    Regions: each region's nearest entry gives the region usage; an entry's top patches are the
    (image, region) pairs with the highest <c_k, v_r>, at most one region per image. Encodes in chunks."""
    _check_text_kind(model)
    cb = _codebook(model)
    if cb is None:
        raise ValueError("concept_analysis needs a model with LCA (a codebook). Fix: pass a SelfAlign checkpoint "
                         "trained with lca=True.")
    tokenizer = tokenizer or _default_tokenizer()
    stop = frozenset(stop_words)
    k_size = cb.shape[0]
    word_usage = np.zeros(k_size, dtype=np.int64)
    region_usage = np.zeros(k_size, dtype=np.int64)
    word_counts: list[Counter] = [Counter() for _ in range(k_size)]

    captions = data.split.captions
    lengths = data.lengths
    width_all = data.text.shape[1]
    for s in range(0, data.n_texts, chunk):
        idx = torch.arange(s, min(s + chunk, data.n_texts))
        pre = encode_text_pre(model, data.text[idx], lengths[idx])          # (B, W, D)
        for b, j in enumerate(idx.tolist()):
            n_tok = int(lengths[j])
            words = [w for w in caption_words(captions[j], tokenizer, width_all) if max(w.pieces) < n_tok - 1]
            if not words:
                continue
            vecs = torch.stack([pre[b, list(w.pieces)].mean(0) for w in words])
            ks = (vecs @ cb.t()).argmax(-1).tolist()
            for w, k in zip(words, ks):
                if is_punct(w.text):
                    continue
                word_usage[k] += 1
                if w.text not in stop:
                    word_counts[k][w.text] += 1

    best_val = torch.full((0, k_size), -float("inf"))
    best_img = torch.zeros((0, k_size), dtype=torch.long)
    best_reg = torch.zeros((0, k_size), dtype=torch.long)
    for s in range(0, data.n_images, chunk):
        regions = data.images[s:s + chunk]
        v = encode_region_pre(model, regions)                               # (B, R, D)
        sc = v @ cb.t()                                                     # (B, R, K)
        region_usage += np.bincount(sc.argmax(-1).flatten().numpy(), minlength=k_size)
        val, reg = sc.max(1)                                                # best region per image and concept
        img = torch.arange(s, s + len(v))[:, None].expand_as(reg)
        best_val, best_img, best_reg = (torch.cat([best_val, val]), torch.cat([best_img, img]),
                                        torch.cat([best_reg, reg]))
        keep = min(n_patches, len(best_val))
        top = best_val.topk(keep, dim=0).indices                            # (keep, K)
        best_val, best_img, best_reg = (best_val.gather(0, top), best_img.gather(0, top), best_reg.gather(0, top))

    top_words = {k: word_counts[k].most_common(n_words) for k in range(k_size) if word_counts[k]}
    top_patches = {k: [(int(best_img[i, k]), int(best_reg[i, k]), float(best_val[i, k]))
                       for i in range(len(best_val))] for k in range(k_size)}
    return ConceptReport(top_words, top_patches, word_usage, region_usage,
                         list(data.split.image_paths), list(data.split.filenames))


# ----------------------------------------------------------------------------------------------- retrieval
def retrieval_examples(model, data, n_queries: int = 3, k: int = 5, seed: int = 0, device: str | None = None,
                       sims: np.ndarray | None = None, text_queries: Sequence[int] | None = None,
                       image_queries: Sequence[int] | None = None) -> dict:
    """Top-``k`` images for a few caption queries (``"t2i"``) and top-``k`` captions for a few image queries
    (``"i2t"``), queries drawn at random (seeded) unless given. Each hit records whether it is correct by the
    standard protocol (``correct``: the caption's own image / the image's own captions) and duplicate-aware
    (``correct_dup``: the same caption text belongs to that image). ``sims`` (images x captions) is computed
    with ``train.encode_split`` / ``score_matrix`` when not given."""
    from .scoring import encode_split, score_matrix
    if sims is None:
        device = device or str(_model_device(model))
        img, txt = encode_split(model, data, device)
        sims = score_matrix(model, img, txt, device)
    sp = data.split
    keys = sp.caption_keys()
    img_keys = [{keys[j] for j in c} for c in sp.img2txt]
    rng = np.random.default_rng(seed)
    if text_queries is None:
        text_queries = sorted(rng.choice(sp.n_texts, size=min(n_queries, sp.n_texts), replace=False).tolist())
    if image_queries is None:
        image_queries = sorted(rng.choice(sp.n_images, size=min(n_queries, sp.n_images), replace=False).tolist())
    t2i, i2t = [], []
    for j in text_queries:
        col = sims[:, j]
        order = np.argsort(-col, kind="stable")
        gt = int(sp.txt2img[j])
        t2i.append({"query": int(j), "caption": sp.captions[j], "gt_image": gt,
                    "gt_rank": int(np.nonzero(order == gt)[0][0]) + 1,
                    "hits": [{"image": int(i), "filename": sp.filenames[i], "score": float(col[i]),
                              "correct": int(i) == gt, "correct_dup": keys[j] in img_keys[i]}
                             for i in order[:k]]})
    for i in image_queries:
        row = sims[i]
        order = np.argsort(-row, kind="stable")
        own = set(sp.img2txt[i])
        t2i_rank = min(int(np.nonzero(order == j)[0][0]) for j in own) + 1
        i2t.append({"query": int(i), "filename": sp.filenames[i], "gt_rank": t2i_rank,
                    "hits": [{"caption_index": int(j), "caption": sp.captions[j], "score": float(row[j]),
                              "correct": int(j) in own, "correct_dup": keys[j] in img_keys[i]}
                             for j in order[:k]]})
    return {"t2i": t2i, "i2t": i2t, "image_paths": list(sp.image_paths)}


def retrieval_examples_frame(examples: dict):
    """Long table of :func:`retrieval_examples`: one row per (direction, query, rank)."""
    import pandas as pd
    rows = []
    for q in examples["t2i"]:
        for r, h in enumerate(q["hits"], 1):
            rows.append({"direction": "t2i", "query": q["caption"], "rank": r, "result": h["filename"],
                         "score": round(h["score"], 4), "correct": h["correct"], "correct_dup": h["correct_dup"]})
    for q in examples["i2t"]:
        for r, h in enumerate(q["hits"], 1):
            rows.append({"direction": "i2t", "query": q["filename"], "rank": r, "result": h["caption"],
                         "score": round(h["score"], 4), "correct": h["correct"], "correct_dup": h["correct_dup"]})
    return pd.DataFrame(rows)


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
    from .features import ImageEncoder
    return ImageEncoder("efficientnet-lite2", device)


@functools.lru_cache(maxsize=1)
def _default_text_encoder(device: str):
    from .features import TextEncoder
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


# ----------------------------------------------------------------------------------------------- runs
def _run_dataset(cfg: dict) -> str:
    return Path(str(cfg.get("dataset", ""))).stem.replace("dataset_", "")


def find_checkpoint(results_dir: str | os.PathLike, dataset: str, lca: bool = True,
                    text_encoder: str | None = "minilm") -> Path:
    """The ``best.pt`` of the newest run under ``<results_dir>/runs/`` for ``dataset`` that is SelfAlign with
    LCA (``lca=True``) or the baseline (``lca=False``), trained on ``text_encoder`` features (None: any).
    The config comes from the run's metrics.json (finished runs) or else from the checkpoint itself."""
    runs = Path(results_dir) / "runs"
    found = []
    for ck in sorted(runs.glob("*/best.pt")):
        metrics = ck.parent / "metrics.json"
        try:
            if metrics.is_file():
                from .io import read_json
                cfg = read_json(metrics)["config"]
            else:
                cfg = torch.load(ck, map_location="cpu", weights_only=False)["config"]
        except (KeyError, OSError, ValueError, RuntimeError) as err:
            log.warning("skipping %s: cannot read its config (%s)", ck, err)
            continue
        if _run_dataset(cfg) != dataset:
            continue
        if text_encoder is not None and cfg.get("text_encoder", "minilm") != text_encoder:
            continue
        kind_ok = (cfg.get("method") == "selfalign" and cfg.get("lca")) if lca else cfg.get("method") == "baseline"
        if kind_ok:
            found.append((ck.stat().st_mtime, str(ck), ck))
    if not found:
        kind = "SelfAlign-with-LCA (method selfalign, lca=True)" if lca else "baseline (method baseline)"
        param = "LCA_CHECKPOINT" if lca else "BASELINE_CHECKPOINT"
        raise FileNotFoundError(
            f"no {kind} run for dataset '{dataset}'"
            f"{f' with text_encoder={text_encoder!r}' if text_encoder else ''} under {runs} (looked for "
            f"runs/*/best.pt). Fix: run the training notebooks of the same profile first (e.g. `python -m "
            f"itr_lib.study --profile <profile>`, which writes runs into {runs}), or set {param} to a best.pt.")
    return max(found)[2]


def load_models(results_dir: str | os.PathLike, dataset: str, lca_checkpoint: str = "",
                baseline_checkpoint: str = "", device: str = "cpu") -> dict[str, tuple[Any, Any, Path]]:
    """``{"baseline": (model, cfg, path), "selfalign-lca": (...)}``: the given checkpoints, or else the newest
    matching runs under ``<results_dir>/runs`` (:func:`find_checkpoint`). Both must be ``dataset``'s."""
    from .io import repo_path
    from .train import load_checkpoint
    out = {}
    for name, given, lca in (("baseline", baseline_checkpoint, False), ("selfalign-lca", lca_checkpoint, True)):
        path = repo_path(given) if given else find_checkpoint(results_dir, dataset, lca=lca)
        model, cfg = load_checkpoint(path, device)
        param = "LCA_CHECKPOINT" if lca else "BASELINE_CHECKPOINT"
        if _run_dataset({"dataset": cfg.dataset}) != dataset:
            raise ValueError(f"{path} was trained on '{cfg.dataset}', not '{dataset}'. Fix: set {param} to a "
                             f"checkpoint of {dataset}, or DATASET to '{cfg.dataset}'.")
        if lca and not getattr(model, "use_lca", False):
            raise ValueError(f"{path} has no LCA codebook (config field 'lca' is false). Fix: set {param} to a "
                             f"SelfAlign run trained with lca=True.")
        out[name] = (model, cfg, path)
    return out


def example_pairs(data, n: int = 3, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` (image, caption) pairs of a split, images drawn at random (seeded), each with its first caption."""
    rng = np.random.default_rng(seed)
    imgs = sorted(rng.choice(data.n_images, size=min(n, data.n_images), replace=False).tolist())
    return [(int(i), int(data.split.img2txt[i][0])) for i in imgs]
