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
- :func:`load_models`: the baseline and LCA checkpoints to compare, given or looked up by config in a results
  folder (:func:`itr_lib.runs.find_checkpoint`).

Modules: :mod:`.words`, :mod:`.concepts`, :mod:`.examples`, :mod:`.pointing`; this package re-exports what the
notebooks use.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .concepts import STOP_WORDS, ConceptReport, concept_analysis, usage_entropy
from .examples import example_pairs, retrieval_examples, retrieval_examples_frame
from .pointing import (CHANCE, CLASS_ALIASES, MOSAIC_GRID, PointingSet, PointTarget, aliases_for,
                       build_pointing_set, classes_conflict, cluster_bootstrap, make_mosaic, pointing_difference,
                       pointing_game, pointing_table, quadrant_regions, region_quadrant, score_pointing,
                       wilson_interval)
from .words import (Word, WordMap, caption_words, encode_region_pre, encode_text_pre, get_tokenizer, is_punct,
                    word_maps)

def load_models(results_dir: str | os.PathLike, dataset: str, lca_checkpoint: str = "",
                baseline_checkpoint: str = "", device: str = "cpu", lca_query: dict | None = None,
                baseline_query: dict | None = None) -> dict[str, tuple[Any, Any, Path]]:
    """``{"baseline": (model, cfg, path), "selfalign-lca": (...)}``: the given checkpoints, or else the runs under
    ``<results_dir>/runs`` whose configs match the queries (:func:`itr_lib.runs.find_checkpoint`; default: a
    baseline, and a SelfAlign run with LCA, of ``dataset`` on MiniLM features). Both must be ``dataset``'s."""
    from ..config import dataset_name
    from ..io import repo_path
    from ..runs import find_checkpoint
    from ..train import load_checkpoint
    queries = {"baseline": {"method": "baseline", **(baseline_query or {})},
               "selfalign-lca": {"method": "selfalign", "lca": True, **(lca_query or {})}}
    out = {}
    for name, given, lca in (("baseline", baseline_checkpoint, False), ("selfalign-lca", lca_checkpoint, True)):
        param = "LCA_CHECKPOINT" if lca else "BASELINE_CHECKPOINT"
        path = repo_path(given) if given else find_checkpoint(results_dir, dataset=dataset, text_encoder="minilm",
                                                              **queries[name])
        model, cfg = load_checkpoint(path, device)
        if dataset_name(cfg.dataset) != dataset:
            raise ValueError(f"{path} was trained on '{cfg.dataset}', not '{dataset}'. Fix: set {param} to a "
                             f"checkpoint of {dataset}, or DATASET to '{cfg.dataset}'.")
        if lca and not getattr(model, "use_lca", False):
            raise ValueError(f"{path} has no LCA codebook (config field 'lca' is false). Fix: set {param} to a "
                             f"SelfAlign run trained with lca=True.")
        out[name] = (model, cfg, path)
    return out


__all__ = ["STOP_WORDS", "ConceptReport", "concept_analysis", "usage_entropy", "example_pairs", "retrieval_examples",
           "retrieval_examples_frame", "CHANCE", "CLASS_ALIASES", "MOSAIC_GRID", "PointingSet", "PointTarget",
           "aliases_for", "build_pointing_set", "classes_conflict", "cluster_bootstrap", "make_mosaic",
           "pointing_difference", "pointing_game", "pointing_table", "quadrant_regions", "region_quadrant",
           "score_pointing", "wilson_interval", "Word", "WordMap", "caption_words", "encode_region_pre",
           "encode_text_pre", "get_tokenizer", "is_punct", "word_maps", "load_models"]
