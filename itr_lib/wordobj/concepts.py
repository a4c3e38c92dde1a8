"""The concept codebook: which words and image patches each entry gathers, and how evenly it is used."""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch


log = logging.getLogger(__name__)

from .words import (_check_text_kind, _codebook, _default_tokenizer, caption_words, encode_region_pre,
                    encode_text_pre, is_punct)

# A small stop-word list (articles, prepositions, auxiliaries, pronouns, counting words) for the concept tables.
STOP_WORDS = frozenset("""
a an the this that these those it its there here is are was were be been being has have had do does did
of in on at by to from for with without into onto over under near beside besides between among around
through across along behind above below next and or but so as than then which who whom whose what where
when while can could will would may might some many several lots lot much more most few other each both
all any one two three four five six seven eight nine ten very also such like only not no
""".split())


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


