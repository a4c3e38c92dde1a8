"""Frozen pretrained features, extracted once and cached with a JSON sidecar.

The backbones live in :mod:`itr_lib.backbones`, the cache store (root, sidecar check, resumable chunked
builder) in :mod:`itr_lib.cachestore`, the GloVe vocabulary in :mod:`itr_lib.glove`; this module builds and opens
the image (one cache per transform and cut) and text (one per MiniLM cut) caches. Its names stay importable from
here (``from itr_lib.features import CacheError, cache_root, load_glove``).

Per split of a dataset, under ``<cache root>/<dataset>/``:

- ``{split}.image.{model}-{size}.npy``: (N, G*G, C) float16 grid features (EfficientNet-Lite2: 49 x 1280 at 224),
  and ``{split}.image.{model}-{size}.{transform}.npy`` the same of each rotated / mirrored image
  (:mod:`itr_lib.dihedral`; the transform is named in the sidecar; the identity ``r0`` is the plain file),
- ``{split}.image.{model}-{size}.cut{K}[.{transform}].npy``: (N, H*W, C) float16 activations of EfficientNet-Lite2
  *below* its top, the output of block K (14: 14 x 14 x 120, before the last stage; 19: 7 x 7 x 208), for models that
  train the blocks above K and the conv head (:mod:`itr_lib.models.adapt`); the cut is named in the sidecar,
- ``{split}.text.minilm-{L}.npy``: (M, L, 384) float16 all-MiniLM-L6-v2 token states (padding rows are zero),
  with ``.lengths.npy`` (M,) and ``.ids.npy`` (M, L) word-piece ids beside it,
- ``{split}.text.minilm-{L}.cut{K}.npy``: (M, L, 384) float16 ``hidden_states[K]`` of MiniLM (K = 5: below its last
  layer; 4: below the last two), zero-padded alike, for models that train the layers above K
  (:mod:`itr_lib.models.text_top`); the cut is named in the sidecar (``text_cut``),
- ``vocab.glove50.json`` + ``vocab.glove50.npy``: the GloVe-6B-50d vocabulary and embedding matrix of the train split
  (:mod:`itr_lib.glove`),

each with a ``.json`` sidecar (model id and weights hash, input size, preprocessing, dataset file checksum,
row order). A cache is reused only when its sidecar equals the request; otherwise it is rebuilt. Extraction
writes into ``*.partial.npy`` in chunks and records progress after each chunk, so an interrupted run continues
where it stopped; the final file appears by atomic rename, and its sidecar is written last, so nothing
half-written is ever read back as complete.

CLI: ``python -m itr_lib.features --data-root DIR --dataset NAME [--splits test ...] [--transforms r0 r90 ...]
[--cut 14 19] [--text-cut 5 4]`` (``--cut``: the activation caches of those blocks, in one pass, instead of the
grids; the text caches are built or reused as usual; ``--text-cut``: also MiniLM's hidden states below its last
layers, ``{split}.text.minilm-{L}.cut{K}.npy``, for :mod:`itr_lib.models.text_top`).
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import dihedral
from .backbones import (IMAGE_MODELS, PREPROCESSING, TEXT_MAX_LEN, TEXT_MODEL_ID, ImageEncoder,  # noqa: F401
                        TextEncoder, _image_weights_path, _text_model_dir, _weights_sha256, cut_shape)
from .cachestore import (FORMAT_VERSION, BuildReport, CacheError, build_array, cache_root,  # noqa: F401
                         cache_status, check_cache, row_order_sha)
from .data import Dataset, Split, load_dataset, load_image
from .glove import ensure_glove_vocab, glove_ids
from .io import REPO_ROOT, atomic_save_npy, read_json

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------- sidecars
def image_sidecar(ds: Dataset, split: Split, model: str = "efficientnet-lite2", size: int = 224,
                  transform: str = dihedral.IDENTITY, cut: int | None = None) -> dict:
    grid = size // 32
    side = {**dihedral.sidecar_fields(transform),
        "format_version": FORMAT_VERSION, "kind": "image", "model_id": model,
        "weights_sha256": _weights_sha256(str(_image_weights_path(model))),
        "input_size": size, "grid": [grid, grid], "dim": 1280, "dtype": "float16",
        "preprocessing": PREPROCESSING.replace("S", str(size)),
        "dataset": ds.name, "dataset_json_sha256": ds.json_sha256, "split": split.name,
        "n_rows": split.n_images, "row_order": "images of the split in JSON order (Split.filenames)",
        "row_order_sha256": row_order_sha(split.filenames),
    }
    if cut is not None:  # the grids' sidecars keep their fields (their caches stay valid)
        cells, channels = cut_shape(model, cut, size)
        side_len = int(round(cells ** 0.5))
        side.update({"kind": "image-activations", "cut": cut, "grid": [side_len, side_len], "dim": channels,
                     "output": f"block {cut} output (stem + blocks 0..{cut}, eval mode), before blocks "
                               f"{cut + 1}.. and the conv head"})
    return side


def text_sidecar(ds: Dataset, split: Split, max_length: int = TEXT_MAX_LEN, cut: int | None = None) -> dict:
    side = {
        "format_version": FORMAT_VERSION, "kind": "text", "model_id": TEXT_MODEL_ID,
        "weights_sha256": _weights_sha256(str(_text_model_dir() / "model.safetensors")),
        "max_length": max_length, "dim": 384, "dtype": "float16",
        "preprocessing": "raw caption -> MiniLM word-piece tokenizer ([CLS] ... [SEP], truncation), "
                         "last_hidden_state; rows past each length are zero",
        "dataset": ds.name, "dataset_json_sha256": ds.json_sha256, "split": split.name,
        "n_rows": split.n_texts, "row_order": "captions of the split, image by image in JSON order (Split.captions)",
        "row_order_sha256": row_order_sha(split.captions),
    }
    if cut is not None:  # the token-state caches' sidecars keep their fields (their caches stay valid)
        side.update({"kind": "text-hidden", "text_cut": cut,  # (a mismatch names text_cut: the first field)
                     "text_output": f"hidden_states[{cut}] (embeddings + layers 1..{cut}, eval mode), before layers "
                               f"{cut + 1}..6; rows past each length are zero"})
    return side


def _text_tag(max_length: int, cut: int | None = None) -> str:
    return f"minilm-{max_length}{'' if cut is None else f'.cut{cut}'}"


def _image_tag(model: str, size: int, transform: str = dihedral.IDENTITY, cut: int | None = None) -> str:
    return f"{model}-{size}{'' if cut is None else f'.cut{cut}'}{dihedral.cache_suffix(transform)}"


def _paths(ds_name: str, split: str, kind: str, tag: str, root=None) -> tuple[Path, Path]:
    base = cache_root(root) / ds_name / f"{split}.{kind}.{tag}"
    return base.with_name(base.name + ".npy"), base.with_name(base.name + ".json")


def ensure_image_features(ds: Dataset, split: str, model: str = "efficientnet-lite2", size: int = 224,
                          root=None, device: str = "cpu", batch_size: int = 32, progress: bool | None = None,
                          rebuild: bool = False, transform: str = dihedral.IDENTITY,
                          cut: int | None = None, also_cuts: tuple = ()) -> BuildReport:
    """The split's grid features of each image after ``transform`` (:mod:`itr_lib.dihedral`; default: as is);
    with ``cut``, the activations of block ``cut`` instead (:func:`cut_shape`). ``also_cuts``: further cuts whose
    caches the same forward pass fills (kept in RAM, written after the pass; a resumed pass builds them on their
    own); their reports are the result's ``also``."""
    sp = ds.split(split)
    npy, side = _paths(ds.name, split, "image", _image_tag(model, size, transform, cut), root)
    expected = image_sidecar(ds, sp, model, size, transform, cut)
    also_cuts = [c for c in also_cuts if c != cut]
    if not rebuild and cache_status(npy, side, expected) == "ok":
        rep = BuildReport(npy, False, 0.0, sp.n_images)
        rep.also = [ensure_image_features(ds, split, model, size, root, device, batch_size, progress, rebuild,
                                          transform, c) for c in also_cuts]
        return rep
    also = [c for c in also_cuts if rebuild or cache_status(*_paths(
        ds.name, split, "image", _image_tag(model, size, transform, c), root),
        image_sidecar(ds, sp, model, size, transform, c)) != "ok"]  # filled by this pass
    status = cache_status(npy, side, expected)
    if status not in ("ok", "missing"):
        log.warning("rebuilding %s: %s", npy, status)
    sp_paths = sp.image_paths
    enc = ImageEncoder(model, device)
    shape = (sp.n_images,) + (((size // 32) ** 2, 1280) if cut is None else cut_shape(model, cut, size))
    pool = ThreadPoolExecutor(max_workers=1)

    def load_batch(start, stop):
        return [dihedral.apply_pil(load_image(p), transform) for p in sp_paths[start:stop]]

    chunk = batch_size * 8
    pending: dict[int, object] = {}

    held = {c: np.zeros((sp.n_images,) + cut_shape(model, c, size), np.float16) for c in also}
    filled = np.zeros(sp.n_images, dtype=bool)

    def compute(start, stop):
        imgs_future = pending.pop(start, None) or pool.submit(load_batch, start, stop)
        nxt = stop
        if nxt < sp.n_images:
            pending[nxt] = pool.submit(load_batch, nxt, min(nxt + chunk, sp.n_images))
        imgs = imgs_future.result()
        parts = [enc.encode_cuts(imgs[i:i + batch_size], size, [cut] + also) for i in range(0, len(imgs), batch_size)]
        for c in also:
            held[c][start:stop] = np.concatenate([p[c] for p in parts])
        filled[start:stop] = True
        return np.concatenate([p[cut] for p in parts]), slice(start, stop)

    desc = f"{ds.name}/{split} images{'' if cut is None else f'.cut{cut}'}{dihedral.cache_suffix(transform)}"
    secs = build_array(npy, side, expected, shape, np.float16, sp.n_images, chunk, compute, desc=desc,
                       progress=progress)
    pool.shutdown()
    rep = BuildReport(npy, True, secs, sp.n_images)
    for c in also_cuts:
        if c in also and filled.all():  # the pass saw every image: its held rows are what a build of its own gives
            c_npy, c_side = _paths(ds.name, split, "image", _image_tag(model, size, transform, c), root)
            c_secs = build_array(c_npy, c_side, image_sidecar(ds, sp, model, size, transform, c), held[c].shape,
                                 np.float16, sp.n_images, chunk, lambda a, b, _c=c: (held[_c][a:b], slice(a, b)),
                                 desc=f"{ds.name}/{split} images.cut{c} (held)", progress=progress)
            rep.also.append(BuildReport(c_npy, True, c_secs, sp.n_images))
        else:
            rep.also.append(ensure_image_features(ds, split, model, size, root, device, batch_size, progress,
                                                  rebuild, transform, c))
    return rep


def ensure_text_features(ds: Dataset, split: str, root=None, device: str = "cpu", batch_size: int = 128,
                         max_length: int = TEXT_MAX_LEN, progress: bool | None = None,
                         rebuild: bool = False, cut: int | None = None, also_cuts: tuple = ()) -> BuildReport:
    """MiniLM token states (with ``cut``: ``hidden_states[cut]``, the input of a trainable text top,
    :mod:`itr_lib.models.text_top`). Identical caption strings are encoded once (RSICD repeats most of them).
    ``also_cuts``: further cuts the same forward pass fills (held in RAM per distinct caption, written after the
    pass; a resumed pass builds them on their own); their reports are the result's ``also``. The word-piece ids
    and lengths live beside the token-state cache (``cut`` None) only."""
    sp = ds.split(split)
    npy, side = _paths(ds.name, split, "text", _text_tag(max_length, cut), root)
    ids_path, len_path = npy.with_suffix(".ids.npy"), npy.with_suffix(".lengths.npy")
    expected = text_sidecar(ds, sp, max_length, cut)
    also_cuts = [c for c in also_cuts if c != cut]

    def ok(c, n, s_):
        return cache_status(n, s_, text_sidecar(ds, sp, max_length, c)) == "ok" and (
            c is not None or (ids_path.is_file() and len_path.is_file()))
    if not rebuild and ok(cut, npy, side):
        rep = BuildReport(npy, False, 0.0, sp.n_texts)
        if also_cuts:  # the further cuts, in one pass of their own
            r = ensure_text_features(ds, split, root, device, batch_size, max_length, progress, rebuild,
                                     also_cuts[0], tuple(also_cuts[1:]))
            rep.also = [r] + r.also
        return rep
    also = [c for c in also_cuts if rebuild or not ok(c, *_paths(ds.name, split, "text", _text_tag(max_length, c),
                                                                 root))]
    enc = TextEncoder(device, max_length)
    uniq, inverse = np.unique(np.asarray(sp.captions, dtype=object), return_inverse=True)
    u_ids, u_len = enc.tokenize(list(uniq))
    if cut is None:
        atomic_save_npy(ids_path, u_ids[inverse])
        atomic_save_npy(len_path, u_len[inverse])
    order = np.argsort(u_len, kind="stable")  # length-sorted batches pad little
    by_u = np.argsort(inverse, kind="stable")
    rows_of = np.split(by_u, np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1])
    held = {c: np.zeros((len(uniq), max_length, 384), np.float16) for c in also}  # per distinct caption
    filled = np.zeros(len(uniq), dtype=bool)

    def expand(states, us):  # distinct captions' rows -> every caption's row
        return np.repeat(states, [len(rows_of[u]) for u in us], axis=0), np.concatenate([rows_of[u] for u in us])

    def compute(start, stop):
        us = order[start:stop]
        parts = [enc.encode_layers(u_ids[us[i:i + batch_size]], u_len[us[i:i + batch_size]], [cut] + also)
                 for i in range(0, len(us), batch_size)]
        for c in also:
            held[c][us] = np.concatenate([p[c] for p in parts])
        filled[us] = True
        return expand(np.concatenate([p[cut] for p in parts]), us)

    shape, chunk = (sp.n_texts, max_length, 384), batch_size * 4
    secs = build_array(npy, side, expected, shape, np.float16, len(uniq), chunk, compute,
                       desc=f"{ds.name}/{split} captions{'' if cut is None else f'.cut{cut}'} ({len(uniq)} unique)",
                       progress=progress)
    rep = BuildReport(npy, True, secs, sp.n_texts)
    for c in also_cuts:
        if c in also and filled.all():  # the pass saw every caption: its held rows are what a build of its own gives
            c_npy, c_side = _paths(ds.name, split, "text", _text_tag(max_length, c), root)
            c_secs = build_array(c_npy, c_side, text_sidecar(ds, sp, max_length, c), shape, np.float16, len(uniq),
                                 chunk, lambda a, b, _c=c: expand(held[_c][order[a:b]], order[a:b]),
                                 desc=f"{ds.name}/{split} captions.cut{c} (held)", progress=progress)
            rep.also.append(BuildReport(c_npy, True, c_secs, sp.n_texts))
        else:
            rep.also.append(ensure_text_features(ds, split, root, device, batch_size, max_length, progress, rebuild,
                                                 c))
    return rep


# ----------------------------------------------------------------------------------------------- loading
@dataclass
class SplitFeatures:
    """Cached features of one split (memory-mapped), plus what the GRU encoder needs."""

    dataset: str
    split: Split
    images: np.ndarray        # (N, R, 1280) float16
    text: np.ndarray          # (M, L, 384) float16
    text_lengths: np.ndarray  # (M,)
    text_ids: np.ndarray      # (M, L) MiniLM word-piece ids
    glove_ids: np.ndarray     # (M, L) GloVe vocabulary ids
    glove_lengths: np.ndarray  # (M,)
    grid_cells: int | None = None  # cells of the grid the model sees (with a cut: the top's 7 x 7 output, not the
                                   # activation's positions); None: images.shape[1]


def load_features(dataset: str | Dataset, split: str, data_root=None, root=None,
                  image_model: str = "efficientnet-lite2", size: int = 224, max_length: int = TEXT_MAX_LEN,
                  mmap: bool = True, cut: int | None = None, text_cut: int | None = None) -> SplitFeatures:
    """Open a split's caches; raises :class:`CacheError` (with the command to fix it) if any is missing or stale.
    ``cut``: the images are block ``cut``'s activations (:func:`ensure_image_features`) instead of the grids;
    ``text_cut``: the text is MiniLM's ``hidden_states[text_cut]`` (:func:`ensure_text_features`) instead of the
    token states (whose cache still gives the word-piece ids and lengths)."""
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, data_root)
    sp = ds.split(split)
    hint = _build_hint(ds)
    inpy, iside = _paths(ds.name, split, "image", _image_tag(image_model, size, cut=cut), root)
    check_cache(inpy, iside, image_sidecar(ds, sp, image_model, size, cut=cut),
           hint + ("" if cut is None else f" --splits {split} --cut {cut}"))
    tnpy, tside = _paths(ds.name, split, "text", _text_tag(max_length), root)
    check_cache(tnpy, tside, text_sidecar(ds, sp, max_length), hint)
    snpy = tnpy  # the states the model reads
    if text_cut is not None:
        snpy, sside = _paths(ds.name, split, "text", _text_tag(max_length, text_cut), root)
        check_cache(snpy, sside, text_sidecar(ds, sp, max_length, text_cut),
               f"{hint} --splits {split} --text-cut {text_cut}")
    mode = "r" if mmap else None
    images, text = np.load(inpy, mmap_mode=mode), np.load(snpy, mmap_mode=mode)
    if images.shape[0] != sp.n_images or text.shape[0] != sp.n_texts:
        raise CacheError(f"feature cache {inpy} / {snpy} has {images.shape[0]} / {text.shape[0]} rows, the split "
                         f"has {sp.n_images} / {sp.n_texts}. Fix: rebuild with `{hint} --rebuild`.")
    vocab_json, _ = ensure_glove_vocab(ds, root)
    stoi = {w: i for i, w in enumerate(read_json(vocab_json)["itos"])}
    g_ids, g_len = glove_ids(sp.tokens, stoi, max_length)
    return SplitFeatures(ds.name, sp, images, text, np.load(tnpy.with_suffix(".lengths.npy")),
                         np.load(tnpy.with_suffix(".ids.npy")), g_ids, g_len,
                         None if cut is None else (size // 32) ** 2)


def _build_hint(ds: Dataset) -> str:
    return f"python -m itr_lib.features --data-root {ds.json_path.parent.parent} --dataset {ds.name}"


def load_image_grid(dataset: str | Dataset, split: str, transform: str, data_root=None, root=None,
                    image_model: str = "efficientnet-lite2", size: int = 224, mmap: bool = True,
                    cut: int | None = None) -> np.ndarray:
    """The (N, R, 1280) grid cache of a split's images after ``transform`` (with ``cut``: block ``cut``'s
    activations); raises :class:`CacheError` naming the command that builds it when it is missing or was built
    for another request (e.g. another transform or cut)."""
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, data_root)
    sp = ds.split(split)
    npy, side = _paths(ds.name, split, "image", _image_tag(image_model, size, transform, cut), root)
    hint = f"{_build_hint(ds)} --splits {split} --transforms {transform}" + ("" if cut is None else f" --cut {cut}")
    check_cache(npy, side, image_sidecar(ds, sp, image_model, size, transform, cut), hint)
    grid = np.load(npy, mmap_mode="r" if mmap else None)
    if grid.shape[0] != sp.n_images:
        raise CacheError(f"feature cache {npy} has {grid.shape[0]} rows, the split has {sp.n_images}. Fix: "
                         f"rebuild with `{hint} --rebuild`.")
    return grid


def ensure_features(dataset: str | Dataset, splits: list[str] | None = None, data_root=None, root=None,
                    image_model: str = "efficientnet-lite2", size: int = 224, device: str = "cpu",
                    progress: bool | None = None, rebuild: bool = False,
                    benchmark: bool | str | os.PathLike = False, transforms: list[str] | None = None,
                    cut: int | list[int] | None = None, threads: int | None = None,
                    text_cut: int | list[int] | None = None) -> list[dict]:
    """Build (or reuse) image, text and GloVe caches for the given splits (default: every split of the JSON),
    the image caches once per transform in ``transforms`` (default ``["r0"]``, the images as they are).

    ``cut`` (a block, or a list of blocks filled in one pass): block activation caches instead of the grids.
    ``text_cut`` (a MiniLM hidden state, or a list): also the caches of ``hidden_states[k]`` (a trainable text
    top's input), filled in the token states' pass when those are built, else in one pass of their own.

    Returns one row per cache: path, whether it was built, seconds and throughput (``kind`` is ``image`` for
    ``r0``, ``image.<transform>`` for the others, ``image.cut<K>[.<transform>]`` with ``cut``); with ``benchmark``,
    rows that were built are also merged into ``results/benchmarks/feature_extraction.csv`` (or into the CSV path
    given as ``benchmark``)."""
    import torch
    torch.set_num_threads(threads or max(1, os.cpu_count() or 1))
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, data_root)
    splits = splits or ds.split_names
    transforms = dihedral.validate(transforms or [dihedral.IDENTITY], "--transforms")
    cuts = sorted(cut) if isinstance(cut, (list, tuple)) else [cut]
    tcuts = sorted(text_cut, reverse=True) if isinstance(text_cut, (list, tuple)) else \
        ([] if text_cut is None else [text_cut])
    todo = [s for s in splits if rebuild or any(
        cache_status(*_paths(ds.name, s, "image", _image_tag(image_model, size, t, c), root),
                     image_sidecar(ds, ds.split(s), image_model, size, t, c)) != "ok"
        for t in transforms for c in cuts)]
    if todo:  # every image of every split to extract, checked before any is extracted (all bad files at once)
        ds.check_images(todo)
    rows = []
    for s in splits:
        image_jobs = [(t, functools.partial(ensure_image_features, ds, s, image_model, size, root, device,
                                            progress=progress, rebuild=rebuild, transform=t, cut=cuts[0],
                                            also_cuts=tuple(cuts[1:])))
                      for t in transforms]
        for t, fn in image_jobs + [(None, lambda: ensure_text_features(ds, s, root, device, progress=progress,
                                                                        rebuild=rebuild, also_cuts=tuple(tcuts)))]:
            r = fn()
            for c, rep in zip(cuts if t is not None else [None] + tcuts, [r] + r.also):
                kind = (f"text{'' if c is None else f'.cut{c}'}" if t is None else
                        f"image{'' if c is None else f'.cut{c}'}{dihedral.cache_suffix(t)}")
                rows.append({"dataset": ds.name, "split": s, "kind": kind, "path": str(rep.path), "built": rep.built,
                             "items": rep.items, "seconds": round(rep.seconds, 2), "items_per_s":
                             round(rep.items / rep.seconds, 1) if rep.built and rep.seconds > 0 else None})
    ensure_glove_vocab(ds, root)
    if benchmark and any(r["built"] for r in rows):
        path = None if benchmark is True else Path(benchmark)
        _record_benchmark([r for r in rows if r["built"]], image_model, device, path)
    return rows


def _record_benchmark(rows: list[dict], image_model: str, device: str, path: Path | None = None) -> None:
    import csv
    import platform
    path = path or REPO_ROOT / "results" / "benchmarks" / "feature_extraction.csv"
    fields = ["dataset", "split", "kind", "items", "seconds", "items_per_s", "model", "device", "cpus", "machine",
              "load_1min"]  # the 1-minute load average when the rows were recorded: > cpus means a shared machine
    old = []
    if path.is_file():
        with open(path) as f:
            old = [r for r in csv.DictReader(f)]
    new = [{**{k: r[k] for k in ("dataset", "split", "kind", "items", "seconds", "items_per_s")},
            "model": image_model if r["kind"].startswith("image") else TEXT_MODEL_ID, "device": device,
            "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else ""} for r in rows]
    keys = {(r["dataset"], r["split"], r["kind"], r["device"]) for r in new}
    merged = [r for r in old if (r["dataset"], r["split"], r["kind"], r["device"]) not in keys] + new
    import io
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, restval="")
    w.writeheader()
    w.writerows(merged)
    from .io import atomic_write_text
    atomic_write_text(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m itr_lib.features", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="dataset name (NAME/dataset_NAME.json under the data root) "
                                                    "or a path to a Karpathy JSON file")
    p.add_argument("--data-root", default=None, help="folder holding NAME/dataset_NAME.json (default: "
                                                      "$ITR_DATA_ROOT or ../shared/data)")
    p.add_argument("--cache-dir", default=None, help="feature cache root (default: $ITR_CACHE_DIR or ./cache/features)")
    p.add_argument("--splits", nargs="*", default=None, help="splits to build (default: every split in the JSON)")
    p.add_argument("--image-model", default="efficientnet-lite2", choices=IMAGE_MODELS)
    p.add_argument("--transforms", nargs="+", default=["r0"], metavar="T",
                   help="image caches to build, one per transform of the pixels (itr_lib.dihedral): "
                        f"{' '.join(dihedral.TRANSFORMS)}; default: r0 (the images as they are)")
    p.add_argument("--cut", type=int, nargs="+", default=None, metavar="K",
                   help="build the activation caches of EfficientNet-Lite2's block K (14: 14x14x120, the input of the "
                        "last stage; 19: 7x7x208) instead of the grids, for models that train the blocks above K "
                        "(TrainConfig.image_top_blocks = 20 - K); several cuts are filled in one pass")
    p.add_argument("--text-cut", type=int, nargs="+", default=None, metavar="K",
                   help="also build the caches of MiniLM's hidden_states[K] (5: below the last layer; 4: below the "
                        "last two), for models that train the layers above K (TrainConfig.text_top_layers = 6 - K); "
                        "several cuts are filled in one pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--rebuild", action="store_true", help="rebuild even when the caches match")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("--benchmark", default=None, metavar="CSV",
                   help="also merge the build times of the caches built into this CSV (the study's record of them: "
                        "results/benchmarks/feature_extraction.csv); default: record nothing")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        ds = load_dataset(a.dataset, a.data_root)
        print(f"cache directory: {cache_root(a.cache_dir) / ds.name}", flush=True)
        t0 = time.perf_counter()
        rows = ensure_features(ds, a.splits, root=a.cache_dir, image_model=a.image_model, device=a.device,
                               progress=not a.no_progress, rebuild=a.rebuild, benchmark=a.benchmark or False,
                               transforms=a.transforms, cut=a.cut, threads=a.threads, text_cut=a.text_cut)
    except ValueError as err:  # DataError / CacheError, or an unknown transform name
        print(f"error: {err}", file=sys.stderr)
        return 2
    for r in rows:
        state = f"built in {r['seconds']:.1f}s ({r['items_per_s']}/s)" if r["built"] else "reused"
        print(f"  {r['split']:>5} {r['kind']:<10} {r['items']:>6} rows  {state}  {r['path']}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
