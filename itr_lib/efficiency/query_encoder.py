"""The query-side text encoder at reduced precision: the frozen all-MiniLM-L6-v2 in float32 (the study's), with int8
dynamic quantisation of its linear layers (``torch.ao.quantization.quantize_dynamic``), or with bfloat16 weights.

A query is one caption encoded alone (batch 1, the explorer's and a search service's case; dynamic quantisation
scales activations per call, so batch 1 is also what its accuracy must be judged on). For every test caption of a
split, each variant's token states (cast to float16, as the feature cache stores them) go through a trained model's
trainable text layers, and the retrieval is compared with the float32 encoder's:

- ``ms_median`` / ``ms_p90``: milliseconds per query of the MiniLM forward alone (tokenised ids in, states out), one
  thread, after a warm-up, the variants interleaved query by query (the ratio ``speedup_vs_fp32`` is what counts on
  a busy machine);
- ``top10_agreement``: the share of caption queries whose top-10 images (text -> image, as a set) equal float32's;
  ``top10_overlap``: the mean share of the 10 in common; ``top1_agreement``;
- ``mr`` and ``delta_mr``: the test mR (study protocol) with that encoder's states, and its difference to float32.

The row ``cache`` scores the feature cache's own states (MiniLM float32 in batches, stored as float16): the
float32 batch-1 encoder differs from it only by rounding, so its agreement is the floor of what "agrees" means.
A variant is adoptable when ``top10_agreement >= 0.99`` and ``|delta_mr|`` is within run-to-run noise
(:func:`adoptable`).
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch

from ..lean_minilm import LeanMiniLM

VARIANTS = ("fp32", "int8", "bf16", "lean-fp32", "lean-bf16mm", "packed-fp32", "packed-bf16mm")
AGREEMENT_BAR = 0.99


def variant_model(model: torch.nn.Module, kind: str) -> torch.nn.Module:
    """The MiniLM ``model`` for a variant: itself (fp32), a copy with bfloat16 weights (bf16: autocast would cast
    every weight again at each batch-1 call, which costs more than the matmuls it speeds up), an int8
    dynamically quantised copy of its ``nn.Linear`` layers, or :class:`LeanMiniLM` (``lean-*``; ``packed-*``: its
    weights pre-packed for oneDNN)."""
    if kind not in VARIANTS:
        raise ValueError(f"unknown query-encoder variant {kind!r}; choose from {VARIANTS}")
    if kind == "fp32":
        return model
    if kind == "bf16":
        return copy.deepcopy(model).eval().to(torch.bfloat16)
    if kind.startswith(("lean-", "packed-")):
        return LeanMiniLM(model.eval(), torch.float32 if kind.endswith("fp32") else torch.bfloat16,
                          packed=kind.startswith("packed-")).eval()
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear}, dtype=torch.qint8)


def encode_one(model: torch.nn.Module, kind: str, ids: np.ndarray, length: int) -> torch.Tensor:
    """Token states (length, 384) float32 of one tokenised query (``ids`` (L,), ``length`` valid tokens)."""
    t_ids = torch.from_numpy(ids[None, :length].astype(np.int64))
    mask = torch.ones_like(t_ids)
    with torch.inference_mode():
        h = model(input_ids=t_ids, attention_mask=mask).last_hidden_state
    return h[0].float()


def encode_queries(models: dict, ids: np.ndarray, lengths: np.ndarray,
                   warmup: int = 5) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every query encoded alone by every variant of ``models`` (name -> MiniLM), the variants interleaved query by
    query so that a busy machine's load falls on all of them alike: ``({name: states (M, L, 384) float16,
    zero-padded}, {name: seconds per query (M,)})``."""
    out = {k: np.zeros((len(ids), ids.shape[1], 384), dtype=np.float16) for k in models}
    secs = {k: np.empty(len(ids)) for k in models}
    for j in range(min(warmup, len(ids))):
        for kind, m in models.items():
            encode_one(m, kind, ids[j], int(lengths[j]))
    for j in range(len(ids)):
        for kind, m in models.items():
            t0 = time.perf_counter()
            h = encode_one(m, kind, ids[j], int(lengths[j]))
            secs[kind][j] = time.perf_counter() - t0
            out[kind][j, :h.shape[0]] = h.numpy().astype(np.float16)
    return out, secs


def _with_text(data, states: np.ndarray):
    """A shallow copy of a :class:`itr_lib.splits.SplitTensors` whose caption states are ``states``."""
    d = copy.copy(data)
    d.text = torch.from_numpy(states[:, :data.text.shape[1]])
    d._groups_of = None
    return d


def topk_t2i(model, data, k: int = 10) -> np.ndarray:
    """(n_texts, k) the k best images per caption query (ties to the lower image id)."""
    from ..rerank import topk_stable
    from ..scoring import encode_split, score_matrix
    img, txt = encode_split(model, data, outputs="vectors")
    return topk_stable(score_matrix(model, img, txt).T, k)


def compare(model, data, states: dict[str, np.ndarray], reference: str = "fp32", k: int = 10) -> list[dict]:
    """Per variant: top-k agreement with ``reference`` and test mR (see the module docstring)."""
    from ..scoring import evaluate
    tops, mrs = {}, {}
    for name, st in states.items():
        d = _with_text(data, st)
        tops[name] = topk_t2i(model, d, k)
        mrs[name] = float(evaluate(model, d)["standard"]["mr"])
    ref = tops[reference]
    rows = []
    for name, top in tops.items():
        same = np.array([set(a) == set(b) for a, b in zip(top, ref)])
        overlap = np.array([len(set(a) & set(b)) / k for a, b in zip(top, ref)])
        rows.append({"variant": name, f"top{k}_agreement": float(same.mean()), f"top{k}_overlap": float(overlap.mean()),
                     "top1_agreement": float((top[:, 0] == ref[:, 0]).mean()), "mr": mrs[name],
                     "delta_mr": mrs[name] - mrs[reference], "queries": len(top)})
    return rows


def adoptable(row: dict, noise_mr: float, bar: float = AGREEMENT_BAR) -> bool:
    """The adoption rule: top-10 agreement >= ``bar`` and |delta mR| within ``noise_mr``."""
    return row["top10_agreement"] >= bar and abs(row["delta_mr"]) <= noise_mr


def query_encoder_rows(checkpoint, split: str = "test", threads: int = 1, noise_mr: float = 1.0) -> list[dict]:
    """The whole measurement for one trained checkpoint's dataset (see the module docstring); one row per variant
    (and the ``cache`` row)."""
    from ..data import load_dataset
    from ..features import TextEncoder
    from ..io import git_commit
    from ..splits import load_split_tensors
    from ..train import load_checkpoint
    import os
    torch.set_num_threads(threads)
    model, cfg = load_checkpoint(checkpoint)
    if cfg.text_top_layers:
        raise ValueError(f"{checkpoint}: the query-encoder variants re-encode captions with the whole frozen MiniLM, "
                         f"but this model has a trainable text top (text_top_layers={cfg.text_top_layers}) that "
                         f"reads hidden_states[{cfg.text_cut}]. Fix: measure a checkpoint with text_top_layers=0.")
    data = load_split_tensors(cfg, split)
    captions = load_dataset(cfg.dataset, cfg.data_root).split(split).captions
    if len(captions) != data.n_texts:
        raise ValueError(f"{cfg.dataset} {split}: {len(captions)} captions but {data.n_texts} cached states")
    enc = TextEncoder("cpu")
    ids, lengths = enc.tokenize(list(captions))
    # a caption string repeated in the split (RSICD: 3,331 distinct of 5,465 test captions) is one query: encoded
    # once (batch 1 is deterministic), its states shared by its copies
    _, first, inverse = np.unique(ids, axis=0, return_index=True, return_inverse=True)
    states, timing = encode_queries({kind: variant_model(enc.model, kind) for kind in VARIANTS}, ids[first],
                                    lengths[first])
    states = {k: v[inverse.ravel()] for k, v in states.items()}
    states["cache"] = data.text.numpy()
    rows = compare(model, data, states)
    for r in rows:
        secs = timing.get(r["variant"])
        r.update({"dataset": cfg.dataset, "split": split, "threads": threads, "checkpoint": str(checkpoint),
                  "ms_median": round(1e3 * float(np.median(secs)), 3) if secs is not None else np.nan,
                  "ms_p90": round(1e3 * float(np.percentile(secs, 90)), 3) if secs is not None else np.nan,
                  "load_1min": os.getloadavg()[0], "git_commit": git_commit()})
        r["speedup_vs_fp32"] = (np.median(timing["fp32"]) / np.median(secs)) if secs is not None else np.nan
        r["adopt"] = r["variant"] in VARIANTS[1:] and adoptable(r, noise_mr)
    return rows
