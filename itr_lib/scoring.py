"""Scoring a model on a split: encode, score, rank, metrics under the study's tie rule; two-stage inference.

One evaluation for every method (METHODS.md, "Evaluation protocol"):

- Each distinct caption *input* (the same token ids) is encoded once and shared by every caption carrying it
  (:meth:`SplitTensors.text_groups <itr_lib.splits.SplitTensors.text_groups>`), so identical captions get
  bit-identical scores whatever the batch they were encoded in, and the tie rule of :mod:`itr_lib.metrics`
  sees every tie the data holds (and no spurious float noise between copies). It also saves the work of the
  copies (RSICD test: 3,331 distinct of 5,465 captions).
- Metrics bundles: ``{"standard": study tie rule, "standard_optimistic", "standard_pessimistic",
  "duplicate-aware"}`` (:func:`itr_lib.metrics.evaluate_split`); the per-query tie counts come with them so
  paired comparisons can resample queries under any rule.
- Models with a re-scorer (``rescore_similarity``: TGDT, ALADIN's teacher, exhaustive MrSw) are also scored
  in the modes ``global`` (retrieval vectors only), ``two_stage`` (global shortlist re-scored, see
  :mod:`itr_lib.rerank`) and ``exhaustive`` (the re-scorer over every pair).
- Test-time augmentation (:func:`evaluate_tta`, models whose score is an inner product of retrieval vectors):
  each image's vector is the mean of its vectors over rotated / mirrored copies (:mod:`itr_lib.dihedral`),
  re-normalised; the same metrics bundle, at ``len(transforms)`` image encodes per image.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from . import precision as prec
from .metrics import Ties, evaluate_split, metrics_from_ranks, protocol_metrics, retrieval_metrics_dup
from .models import RetrievalModel
from .rerank import model_rescorer, two_stage_ranks
from .splits import SplitTensors

MODES = ("global", "two_stage", "exhaustive")


def _cat(dicts: list[dict]) -> dict:
    out = {}
    for k in dicts[0]:
        v = dicts[0][k]
        if not torch.is_tensor(v):
            continue
        if v.dim() >= 2 and any(d[k].shape[1:] != v.shape[1:] for d in dicts):  # ragged text widths: pad
            width = max(d[k].shape[1] for d in dicts)
            parts = [torch.nn.functional.pad(d[k], (0, 0) * (v.dim() - 2) + (0, width - d[k].shape[1]))
                     for d in dicts]
        else:
            parts = [d[k] for d in dicts]
        out[k] = torch.cat(parts)
    return out


@torch.no_grad()
def encode_split(model: RetrievalModel, data: SplitTensors, device: str = "cpu", batch_size: int = 256,
                 texts: np.ndarray | None = None, outputs: str = "auto", view: str | None = None) -> tuple[dict, dict]:
    """Encode every image and the captions ``texts`` (default: all, in order) of a split in eval mode; returns
    (image outputs, text outputs) on CPU.

    ``outputs``: ``"vectors"`` keeps only the retrieval vectors (key ``vec``), ``"all"`` every tensor output
    (what an exhaustive score or a re-scorer reads), ``"auto"`` vectors for models whose retrieval vectors are
    their score (``exact_vectors``), else all. ``view``: encode the images of that transform (a view the split was
    loaded with, :meth:`SplitTensors.image_batch <itr_lib.splits.SplitTensors.image_batch>`)."""
    if outputs not in ("auto", "vectors", "all"):
        raise ValueError(f"outputs must be 'auto', 'vectors' or 'all', not {outputs!r}")
    model.eval()
    vectors = outputs == "vectors" or (outputs == "auto" and model.exact_vectors)

    def keep(out: dict, vec_fn) -> dict:
        if vectors:
            return {"vec": vec_fn(out).cpu()}
        return {k: v.cpu() for k, v in out.items() if torch.is_tensor(v)}
    text_idx = torch.arange(data.n_texts) if texts is None else torch.as_tensor(np.asarray(texts), dtype=torch.long)
    imgs, txts = [], []
    for s in range(0, data.n_images, batch_size):
        idx = torch.arange(s, min(s + batch_size, data.n_images))
        regions, mask = data.image_batch(idx, view=view)
        imgs.append(keep(prec.encode_images(model, regions.to(device), mask.to(device)), model.image_vectors))
    for s in range(0, len(text_idx), batch_size):
        text, mask, word = data.text_batch(text_idx[s:s + batch_size])
        txts.append(keep(prec.encode_texts(model, text.to(device), mask.to(device), word.to(device)),
                         model.text_vectors))
    if not txts:
        raise ValueError("no captions to encode")
    return _cat(imgs), _cat(txts)


@torch.no_grad()
def encode_items(model: RetrievalModel, data: SplitTensors, idx, side: str, device: str = "cpu",
                 batch_size: int = 256, outputs: str = "vectors") -> dict:
    """Encoder outputs of the ``side`` (``"images"`` or ``"texts"``) items ``idx`` (indices into the split's images
    or captions) of a split, in eval mode, on CPU: ``{"vec": retrieval vectors}`` (``outputs`` ``"vectors"``) or
    every tensor output (``"all"``, what an exhaustive score reads). The loop of :func:`encode_split` for one side
    and a subset (a querybank sample)."""
    if side not in ("images", "texts") or outputs not in ("vectors", "all"):
        raise ValueError(f"side must be 'images' or 'texts' and outputs 'vectors' or 'all', got {side!r}, {outputs!r}")
    model.eval()
    idx = np.asarray(idx)
    if not len(idx):
        raise ValueError(f"no {side} to encode")
    parts = []
    for s in range(0, len(idx), batch_size):
        ii = torch.as_tensor(idx[s:s + batch_size], dtype=torch.long)
        if side == "images":
            regions, mask = data.image_batch(ii)
            out, vec = model.encode_images(regions.to(device), mask.to(device)), model.image_vectors
        else:
            text, mask, word = data.text_batch(ii)
            out, vec = model.encode_texts(text.to(device), mask.to(device), word.to(device)), model.text_vectors
        parts.append({"vec": vec(out).cpu()} if outputs == "vectors" else
                     {k: v.cpu() for k, v in out.items() if torch.is_tensor(v)})
    return _cat(parts)


def _slice(d: dict, sl) -> dict:
    return {k: v[sl] for k, v in d.items()}


@torch.no_grad()
def score_matrix(model: RetrievalModel, img: dict, txt: dict, device: str = "cpu", chunk: int = 128,
                 fn=None) -> np.ndarray:
    """(n_images, n_texts) scores: one matmul of retrieval vectors (``vec`` outputs), or ``fn`` (default
    ``model.similarity``) over image chunks x every text."""
    model.eval()
    if "vec" in img and fn is None:
        return (img["vec"] @ txt["vec"].t()).numpy()
    fn = fn or model.similarity
    n_i = next(iter(img.values())).shape[0]
    rows = []
    for s in range(0, n_i, chunk):
        rows.append(fn({k: v.to(device) for k, v in _slice(img, slice(s, s + chunk)).items()},
                       {k: v.to(device) for k, v in txt.items()}).float().cpu())
    return torch.cat(rows).numpy()


def has_two_stage(model: RetrievalModel) -> bool:
    """Models scored by a global search plus a re-scorer (TGDT, ALADIN's teacher, exhaustive MrSw)."""
    return hasattr(model, "rescore_similarity")


def _bundle(ties: tuple[Ties, Ties]) -> dict:
    return protocol_metrics(*ties)


def evaluate(model: RetrievalModel, data: SplitTensors, device: str = "cpu", batch_size: int = 256,
             with_ranks: bool = False, selection: bool = False) -> dict:
    """Metrics of the model's own score on a split (:func:`itr_lib.metrics.evaluate_split` bundle, with the
    duplicate-aware protocol, labelled).

    ``selection``: the cheap score used for per-epoch model selection; for models with a re-scorer that is
    their two-stage score (global shortlist re-scored), not the exhaustive one. ``with_ranks``: also
    ``"_ties"`` (the standard protocol's per-query tie counts) and ``"_ranks"`` (index-rule ranks)."""
    if selection and not model.exact_vectors and has_two_stage(model):
        res, info = evaluate_two_stage(model, data, device, batch_size, modes=("two_stage",), return_details=True)
        return {**res["two_stage"], **({"_ties": info["ties"]["two_stage"]} if with_ranks else {})}
    uniq, inverse = data.text_groups()
    img, txt = encode_split(model, data, device, batch_size, texts=uniq)
    return _metrics(score_matrix(model, img, txt, device)[:, inverse], data, with_ranks)


def _metrics(sims: np.ndarray, data: SplitTensors, with_ranks: bool) -> dict:
    """The bundle of :func:`evaluate` from the (n_images, n_captions) score matrix."""
    out, ties = evaluate_split(sims, data.img2txt, data.txt2img, return_ties=True)
    img2txt_dup, txt2imgs = data.split.duplicate_aware_maps()
    out["duplicate_aware"] = retrieval_metrics_dup(sims, img2txt_dup, txt2imgs)  # the key of every record
    if with_ranks:
        from .metrics import rank_arrays
        out["_ties"] = ties
        out["_ranks"] = rank_arrays(sims, data.img2txt, data.txt2img)
    return out


@torch.no_grad()
def tta_image_vectors(model: RetrievalModel, data: SplitTensors, transforms: Sequence[str], device: str = "cpu",
                      batch_size: int = 256) -> tuple[torch.Tensor, dict]:
    """Each image's retrieval vector averaged over its ``transforms`` views, rescaled to the mean norm of the
    vectors averaged (unit for unit vectors; SelfAlign-CRA's concatenation keeps its own fixed norm), and the
    seconds each view's encoding took. With one transform the vectors are exactly the model's own."""
    from . import dihedral
    transforms = dihedral.validate(transforms, "transforms")
    if not model.exact_vectors:
        raise ValueError(f"test-time augmentation averages retrieval vectors, but {type(model).__name__} scores "
                         f"pairs with a function that is not an inner product of them (exact_vectors is False; "
                         f"TGDT, MrSw, SCAN). Fix: score it with evaluate / evaluate_two_stage, without tta.")
    total, norms, seconds = None, None, {}
    for name in transforms:
        t0 = time.perf_counter()
        vec = encode_images(model, data, device, batch_size, view=name).float()
        seconds[name] = time.perf_counter() - t0
        n = vec.norm(dim=1, keepdim=True)
        total, norms = (vec, n) if total is None else (total + vec, norms + n)
    mean = total / len(transforms)
    return mean * ((norms / len(transforms)) / mean.norm(dim=1, keepdim=True)), seconds


@torch.no_grad()
def encode_images(model: RetrievalModel, data: SplitTensors, device: str = "cpu", batch_size: int = 256,
                  view: str | None = None) -> torch.Tensor:
    """The (n_images, d) retrieval vectors of a split's images (of one ``view``), in eval mode, on CPU."""
    model.eval()
    rows = []
    for s in range(0, data.n_images, batch_size):
        regions, mask = data.image_batch(torch.arange(s, min(s + batch_size, data.n_images)), view=view)
        rows.append(model.image_vectors(prec.encode_images(model, regions.to(device), mask.to(device))).cpu())
    return torch.cat(rows)


@torch.no_grad()
def evaluate_tta(model: RetrievalModel, data: SplitTensors, transforms: Sequence[str], device: str = "cpu",
                 batch_size: int = 256, with_ranks: bool = False, return_details: bool = False):
    """:func:`evaluate`'s bundle with test-time augmentation of the images: each image's retrieval vector is the
    re-normalised mean of its vectors over ``transforms`` (:func:`tta_image_vectors`); captions as in
    :func:`evaluate`. ``data`` must hold those views (``load_split_tensors(cfg, split, transforms=...)``).
    Only for models whose score is an inner product of retrieval vectors (``exact_vectors``: baseline, SelfAlign,
    ALADIN's student); others raise ValueError.

    The cost: an image *query* (or an indexed image) is encoded ``len(transforms)`` times. With
    ``return_details`` also ``{"transforms", "image_encodes_per_image", "image_encode_seconds" (per
    transform), "image_encode_seconds_per_image" (all transforms), "text_encode_seconds"}``."""
    vec, secs = tta_image_vectors(model, data, transforms, device, batch_size)
    uniq, inverse = data.text_groups()
    t0 = time.perf_counter()
    txt = encode_texts(model, data, uniq, device, batch_size)
    t_text = time.perf_counter() - t0
    out = _metrics((vec @ txt.t()).numpy()[:, inverse], data, with_ranks)
    if not return_details:
        return out
    info = {"transforms": list(transforms), "image_encodes_per_image": len(transforms),
            "image_encode_seconds": {k: round(v, 4) for k, v in secs.items()},
            "image_encode_seconds_per_image": sum(secs.values()) / max(1, data.n_images),
            "text_encode_seconds": t_text}
    return out, info


@torch.no_grad()
def encode_texts(model: RetrievalModel, data: SplitTensors, texts: np.ndarray, device: str = "cpu",
                 batch_size: int = 256) -> torch.Tensor:
    """The retrieval vectors of the captions ``texts`` (indices into the split's captions), in eval mode, on CPU."""
    model.eval()
    idx = torch.as_tensor(np.asarray(texts), dtype=torch.long)
    rows = []
    for s in range(0, len(idx), batch_size):
        text, mask, word = data.text_batch(idx[s:s + batch_size])
        out = prec.encode_texts(model, text.to(device), mask.to(device), word.to(device))
        rows.append(model.text_vectors(out).cpu())
    return torch.cat(rows)


@torch.no_grad()
def evaluate_two_stage(model, data: SplitTensors, device: str = "cpu", batch_size: int = 256,
                       k_i2t: int | None = None, k_t2i: int | None = None, modes: Sequence[str] = MODES,
                       use_faiss: bool = True, return_details: bool = False):
    """Metrics of a model with a global (kNN) score and a re-scoring function, on a split.

    Modes: ``global`` (image_vectors . text_vectors only), ``two_stage`` (global shortlist of k_i2t captions /
    k_t2i images per query re-scored by ``model.rescore_similarity``, grouped by image), ``exhaustive``
    (``model.rescore_similarity`` over every pair). TGDT: global vs s_global+s_local; ALADIN: student vs student
    shortlist re-scored by the teacher vs exhaustive teacher. ``k_*`` default to the model's ``hp`` or 50 / 100.

    Returns ``{mode: metrics bundle}``; with ``return_details`` also a dict of timings, the shortlist-miss rates,
    the metrics the released TGDT evaluation would report (misses counted as hits) and ``ties`` (per mode)."""
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown mode(s) {sorted(unknown)}; choose from {MODES}")
    hp = getattr(model, "hp", {})
    k_i2t = k_i2t or hp.get("k_i2t", 50)
    k_t2i = k_t2i or hp.get("k_t2i", 100)
    model.eval()
    uniq, inverse = data.text_groups()
    t0 = time.perf_counter()
    img, txt = encode_split(model, data, device, batch_size, texts=uniq, outputs="all")
    info: dict = {"encode_seconds": time.perf_counter() - t0, "k_i2t": k_i2t, "k_t2i": k_t2i, "ties": {}}
    iv, tv = model.image_vectors(img).float(), model.text_vectors(txt).float()[inverse]
    out = {}

    def record(mode: str, sims: np.ndarray) -> None:
        res, ties = evaluate_split(sims, data.img2txt, data.txt2img, return_ties=True)
        out[mode], info["ties"][mode] = res, ties
    if "global" in modes:
        t0 = time.perf_counter()
        record("global", (iv @ tv.t()).numpy())
        info["global_seconds"] = time.perf_counter() - t0
    if "two_stage" in modes:
        t0 = time.perf_counter()
        first = (iv.numpy(), tv.numpy()) if use_faiss else (iv @ tv.t()).numpy()
        rescore = model_rescorer(model, img, txt, device)
        i2t, t2i, det = two_stage_ranks(first, lambda i, t: rescore(i, inverse[t]), data.img2txt, data.txt2img,
                                        k_i2t, k_t2i, return_details=True)
        ties = (det["ties_i2t"], det["ties_t2i"])
        out["two_stage"], info["ties"]["two_stage"] = _bundle(ties), ties
        info["two_stage_seconds"] = time.perf_counter() - t0
        info["two_stage_rescore_seconds"] = det["rescore_seconds"]
        info["pairs_rescored"] = det["pairs_rescored"]
        info["shortlist_miss_rate_i2t"] = float(det["missed_i2t"].mean())
        info["shortlist_miss_rate_t2i"] = float(det["missed_t2i"].mean())
        info["two_stage_released_bug"] = metrics_from_ranks(np.where(det["missed_i2t"], 0, i2t),
                                                            np.where(det["missed_t2i"], 0, t2i))
    if "exhaustive" in modes:
        t0 = time.perf_counter()
        record("exhaustive", score_matrix(model, img, txt, device, fn=model.rescore_similarity)[:, inverse])
        info["exhaustive_seconds"] = time.perf_counter() - t0
    return (out, info) if return_details else out


def ties_arrays(ties: tuple[Ties, Ties], prefix: str = "") -> dict[str, np.ndarray]:
    """The arrays a ranks file stores for one mode: ``{prefix}i2t_above`` ... ``{prefix}t2i_tpos``."""
    return {**ties[0].to_arrays(f"{prefix}i2t"), **ties[1].to_arrays(f"{prefix}t2i")}


def load_ties(z, prefix: str = "") -> tuple[Ties, Ties] | None:
    """``(i2t, t2i)`` tie counts of a ranks file (``np.load`` result) for a mode prefix; None in a file written
    before the tie rule was stated (it holds index-rule ranks only)."""
    if f"{prefix}i2t_above" not in z:
        return None
    return Ties.from_arrays(z, f"{prefix}i2t"), Ties.from_arrays(z, f"{prefix}t2i")
