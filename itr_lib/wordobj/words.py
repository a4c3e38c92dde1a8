"""Words of a caption and their word -> region maps (the space LCA trains in)."""
from __future__ import annotations

import functools
import logging
import math
import os
import string
from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import torch

from ..models.text_top import text_cut_of

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------- words
@functools.lru_cache(maxsize=1)
def _default_tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoTokenizer
    from ..backbones import _text_model_dir
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
    """Pre-context region vectors ``"pre"`` (N, R, D) of region features (N, R, C), on CPU. A model with a
    trainable image top (:mod:`itr_lib.models.adapt`) takes its cached activations and maps them to its grid."""
    regions = torch.as_tensor(np.asarray(regions)) if not torch.is_tensor(regions) else regions
    dev = _model_device(model)
    model.eval()
    top = getattr(model, "image_top", None)
    outs = []
    for s in range(0, len(regions), chunk):
        r = regions[s:s + chunk].float().to(dev)
        grid = top(r) if top is not None else r
        mask = torch.ones(grid.shape[:2], dtype=torch.bool, device=dev)
        enc = model.encode_grid if top is not None else model.encode_images  # the top runs once
        outs.append(enc(grid, mask)["pre"].float().cpu())
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
    ids, lengths = text_encoder.tokenize([caption])
    cut = text_cut_of(model)  # a trainable text top reads MiniLM's hidden states below it, then runs the rest
    states = text_encoder.encode_ids(ids, lengths) if cut is None else text_encoder.encode_ids(ids, lengths, layer=cut)
    w = encode_text_pre(model, states, lengths)[0]           # (W, D)
    v = encode_region_pre(model, regions[None])[0]           # (R, D): the model's grid (a top's 7 x 7 output)
    g = _grid_side(v.shape[0])
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


