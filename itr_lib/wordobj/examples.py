"""Retrieval examples: top-k images for caption queries and top-k captions for image queries."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np


log = logging.getLogger(__name__)

from .words import _model_device  # noqa: E402

# ----------------------------------------------------------------------------------------------- retrieval
def retrieval_examples(model, data, n_queries: int = 3, k: int = 5, seed: int = 0, device: str | None = None,
                       sims: np.ndarray | None = None, text_queries: Sequence[int] | None = None,
                       image_queries: Sequence[int] | None = None) -> dict:
    """Top-``k`` images for a few caption queries (``"t2i"``) and top-``k`` captions for a few image queries
    (``"i2t"``), queries drawn at random (seeded) unless given. Each hit records whether it is correct by the
    standard protocol (``correct``: the caption's own image / the image's own captions) and duplicate-aware
    (``correct_dup``: the same caption text belongs to that image). ``sims`` (images x captions) is computed
    with ``train.encode_split`` / ``score_matrix`` when not given."""
    from ..scoring import encode_split, score_matrix
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



def example_pairs(data, n: int = 3, seed: int = 0) -> list[tuple[int, int]]:
    """``n`` (image, caption) pairs of a split, images drawn at random (seeded), each with its first caption."""
    rng = np.random.default_rng(seed)
    imgs = sorted(rng.choice(data.n_images, size=min(n, data.n_images), replace=False).tolist())
    return [(int(i), int(data.split.img2txt[i][0])) for i in imgs]

