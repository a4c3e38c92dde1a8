"""Efficiency of every method of the study: per-query cost, memory per gallery item, the hardware floor,
scaling with the gallery size, and the accuracy / latency frontier (notebook ``04_efficiency``).

What is timed (``measure_method``), per query, median over ``repeats`` after ``warmup`` untimed runs:

- **encode**: the trainable query encoder on the cached frozen features (``model.encode_texts`` /
  ``encode_images``, plus the retrieval vector). The frozen backbones (MiniLM, EfficientNet-Lite2) are NOT
  included: they cost the same for every method (see ``results/benchmarks/feature_extraction.csv``).
  Fetching the query's cached features is done before the clock starts.
- **search**: ``vector`` mode (independent embeddings, TGDT global, ALADIN student): a faiss exact flat
  inner-product search over the gallery's retrieval vectors (top ``k``). ``two_stage``: the same global search
  for a shortlist of ``k_t2i`` images / ``k_i2t`` captions. ``exhaustive``: the full score of the query against
  every gallery item (``model.rescore_similarity`` when the model has it, e.g. ALADIN's alignment teacher,
  otherwise ``model.similarity``) and a top-``k``.
- **rerank** (``two_stage`` only): gather the shortlist's stored features, re-score them
  (``model.rescore_pairs``), sort.

The gallery is encoded once beforehand (offline, not counted). Times are taken at batch 1 and for a batch of
queries (reported per query). Cross-attention (or any exhaustive) search may be timed against the first
``exhaustive_subset`` gallery items and scaled linearly to the whole gallery (column ``extrapolated_from``).

Memory per gallery item (``bytes_per_item``): what a deployment keeps for each gallery item, float32 as stored:
one retrieval vector (4 * dim bytes) for vector search; every valid region / word feature for fine-grained scoring
(4 * 49 * dim for a 7x7-region image), plus the global vector for TGDT. Masks (one length per item) are ignored.

The floor (``measure_hardware``, ``roofline_ms``): the memory bandwidth of a large single-threaded numpy copy
((bytes read + bytes written) / time, best of repeats; batch 1, where faiss reads the gallery on one thread; the
same copy on all threads for batches) and the float32 GEMM rate (best of torch and numpy). Galleries that fit in
the last-level cache can be searched faster than this DRAM floor (small galleries, repeated queries).
The lowest possible time of a search that reads ``B`` gallery bytes and does ``F`` FLOPs per query, for a batch of
``q`` queries sharing one pass over the gallery, is ``max(B / bandwidth / q, F / rate)`` per query; for an exact
flat search ``B = 4 N d`` and ``F = 2 N d``. Every measured search is reported as a multiple of its floor.

Scaling (``scaling_study``): galleries from ``min`` to ``max`` items grown from the real test embeddings: the first
``n0`` rows are the real vectors, every further row a copy of real row ``j % n0`` plus Gaussian noise of norm
about ``noise`` times the vector's norm, rescaled to that norm (:func:`grow_gallery`). Queries are real caption
vectors (text-to-image). Latency of faiss flat / IVF / HNSW and recall@10 of the approximate indexes against
exact search; fine-grained two-stage and exhaustive scoring on galleries that repeat the real test gallery
(every copy is scored, none skipped). Each series stops when the next size is predicted to exceed its time
budget; the remaining sizes are extrapolated with the log-log slope fitted to the last measured points
(``extrapolated=True``).
"""
from __future__ import annotations

import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import torch

from .io import read_json, write_json
from .runs import find_runs, mode_mr, select_runs  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

MODES = ("vector", "two_stage", "exhaustive")
DIRECTIONS = ("t2i", "i2t")
SCALING_GALLERY_METHOD = ("tiled real test vectors: rows < n0 are the real vectors, row j >= n0 is real row j % n0 "
                          "+ Gaussian noise of relative norm {noise}, rescaled to the real row's norm (seed {seed})")
FINE_GALLERY_METHOD = "the real test gallery repeated (every copy scored); text-to-image, search + re-ranking only"


# ----------------------------------------------------------------------------------------------- the methods
@dataclass(frozen=True)
class MethodSpec:
    """One row of the efficiency table: a trained method and the way it retrieves."""

    label: str                       # row label
    method: str                      # TrainConfig.method of the run
    mode: str                        # vector | two_stage | exhaustive
    family: str                      # independent | global | two-stage | exhaustive | cross-attention
    stored: tuple[str, ...] | None = None   # gallery tensors a deployment keeps (None: the retrieval vector)
    mr_key: str = "test"             # "test": the run's test mR; else a mode key (global, two_stage, exhaustive)
    prefer: dict = field(default_factory=dict)  # config fields preferred when several variants were trained
    interactive: bool = False        # the interactive reference the speed-ups are relative to


METHODS: tuple[MethodSpec, ...] = (
    MethodSpec("baseline", "baseline", "vector", "independent"),
    MethodSpec("SelfAlign", "selfalign", "vector", "independent", prefer={"lca": True, "cra": True}),
    MethodSpec("TGDT global", "tgdt", "vector", "global", stored=("global",), mr_key="global"),
    MethodSpec("TGDT two-stage", "tgdt", "two_stage", "two-stage", stored=("global", "locals"), mr_key="two_stage"),
    MethodSpec("TGDT exhaustive", "tgdt", "exhaustive", "exhaustive", stored=("global", "locals")),
    MethodSpec("ALADIN matching", "aladin", "vector", "independent"),
    MethodSpec("ALADIN two-stage", "aladin", "two_stage", "two-stage", stored=("emb", "tokens"), mr_key="two_stage"),
    MethodSpec("ALADIN alignment", "aladin", "exhaustive", "exhaustive", stored=("tokens",), mr_key="exhaustive"),
    MethodSpec("MrSw exhaustive", "mrsw", "exhaustive", "exhaustive", stored=("locals",)),
    MethodSpec("SCAN (cross-attention)", "scan", "exhaustive", "cross-attention", stored=("locals",),
               interactive=True),
)


def spec_by_label(label: str) -> MethodSpec:
    for s in METHODS:
        if s.label == label:
            return s
    raise KeyError(f"no method labelled {label!r}; choose one of {[s.label for s in METHODS]}")


# ----------------------------------------------------------------------------------------------- hardware
def set_threads(threads: int | None) -> None:
    """Set torch's and faiss's thread counts (None / 0: leave the library defaults)."""
    if threads:
        torch.set_num_threads(int(threads))
        faiss.omp_set_num_threads(int(threads))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_hardware(bandwidth_mb: int = 512, gemm_n: int = 2048, repeats: int = 5) -> dict:
    """Memory bandwidth (single-threaded numpy copy of ``bandwidth_mb`` MiB: (read + written bytes) / time, best of
    ``repeats``; and on all torch threads) and float32 GEMM rate (``gemm_n`` square matmul, best of ``repeats``;
    the best of torch on all threads, torch on one thread and numpy).

    Use an array well above the last-level cache (hundreds of MiB) for a DRAM figure; small arrays give the
    cache's bandwidth (a lower, still valid, floor is then NOT guaranteed)."""
    n = max(1, int(bandwidth_mb * 2 ** 20) // 8)
    src = np.ones(n, dtype=np.float64)
    dst = np.zeros_like(src)  # both touched: no page faults inside the timed copies
    best_copy = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best_copy = min(best_copy, time.perf_counter() - t0)
    bandwidth = 2 * src.nbytes / best_copy
    # the same copy on all torch threads (for batched searches, which faiss / BLAS run multi-threaded)
    ts, td = torch.from_numpy(src), torch.from_numpy(dst)
    best_mt = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        td.copy_(ts)
        best_mt = min(best_mt, time.perf_counter() - t0)
    bandwidth_mt = max(bandwidth, 2 * src.nbytes / best_mt)
    del src, dst, ts, td

    def best_of(fn) -> float:
        fn()  # warm-up
        best = math.inf
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(gemm_n, gemm_n, generator=g), torch.randn(gemm_n, gemm_n, generator=g)
    flops = 2.0 * gemm_n ** 3
    rate_torch = flops / best_of(lambda: torch.mm(a, b))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread too: on a loaded machine a thread team can be far slower than one core
    try:
        rate_torch_1t = flops / best_of(lambda: torch.mm(a, b))
    finally:
        torch.set_num_threads(threads)
    an, bn = a.numpy(), b.numpy()
    rate_numpy = flops / best_of(lambda: an @ bn)
    return {"bandwidth_bytes_per_s": bandwidth, "bandwidth_gb_s": bandwidth / 1e9, "copy_mib": bandwidth_mb,
            "bandwidth_mt_bytes_per_s": bandwidth_mt, "bandwidth_mt_gb_s": bandwidth_mt / 1e9,
            "gemm_gflops_torch": rate_torch / 1e9, "gemm_gflops_torch_1thread": rate_torch_1t / 1e9,
            "gemm_gflops_numpy": rate_numpy / 1e9,
            "gemm_flops_per_s": max(rate_torch, rate_torch_1t, rate_numpy), "gemm_n": gemm_n,
            "torch_threads": torch.get_num_threads(), "faiss_threads": faiss.omp_get_max_threads(),
            "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "faiss": getattr(faiss, "__version__", "?"),
            "method": "bandwidth: single-threaded numpy copy, (read + written bytes) / best time (batch-1 floors); "
                      "bandwidth_mt: the same copy with torch on all threads (batched floors); "
                      "GEMM: float32 square matmul, best of torch (all threads, one thread) and numpy"}


def roofline_ms(bytes_read: float, flops: float, hw: dict, batch: int = 1) -> float:
    """Lowest possible milliseconds PER QUERY of a search that reads ``bytes_read`` gallery bytes and does ``flops``
    FLOPs per query, when ``batch`` queries share one pass over the gallery. One query is read on one thread
    (faiss parallelises a flat search over queries), so batch 1 uses the single-threaded bandwidth; a batch uses
    the multi-threaded one (``bandwidth_mt_bytes_per_s``, when measured)."""
    bw = hw["bandwidth_bytes_per_s"] if batch <= 1 else hw.get("bandwidth_mt_bytes_per_s", hw["bandwidth_bytes_per_s"])
    t_mem = bytes_read / bw / max(1, batch)
    t_flop = flops / hw["gemm_flops_per_s"]
    return 1e3 * max(t_mem, t_flop)


def flat_floor_ms(n_items: int, dim: int, hw: dict, batch: int = 1, bytes_per_value: int = 4) -> float:
    """Floor of an exact flat inner-product search, per query: gallery bytes / bandwidth for one query,
    max(that / batch, 2 N d / GEMM rate) for a batch."""
    return roofline_ms(n_items * dim * bytes_per_value, 2.0 * n_items * dim, hw, batch)


# ----------------------------------------------------------------------------------------------- memory
def bytes_per_item(tensors: dict | torch.Tensor, keys: Sequence[str] | None = None, mask_key: str = "mask") -> float:
    """Mean bytes a deployment stores per gallery item.

    ``tensors``: one (N, d) tensor (a retrieval vector per item: ``d * element_size``) or a dict of a model's
    outputs with ``keys`` the stored ones: a 2-D entry costs ``d * element_size`` per item, a 3-D entry (N, T, d)
    costs the item's VALID positions (``tensors[mask_key]``, (N, T) bool, when its shape matches) times
    ``d * element_size`` (padding is not stored). So a float32 vector model is ``4 * dim`` and a float32 model
    keeping 49 region features is ``4 * 49 * dim``."""
    if torch.is_tensor(tensors) or isinstance(tensors, np.ndarray):
        tensors, keys = {"vec": tensors}, ["vec"]
    keys = list(keys) if keys is not None else [k for k in tensors if k != mask_key]
    mask = tensors.get(mask_key)
    total = 0.0
    for k in keys:
        t = tensors[k]
        esize = t.element_size() if torch.is_tensor(t) else np.asarray(t).itemsize
        shape = tuple(t.shape)
        if len(shape) == 2:
            total += shape[1] * esize
        elif len(shape) == 3:
            if mask is not None and tuple(mask.shape) == shape[:2]:
                valid = float(torch.as_tensor(mask).float().sum(1).mean())
            else:
                valid = float(shape[1])
            total += valid * shape[2] * esize
        else:
            raise ValueError(f"stored tensor {k!r} has shape {shape}; expected (N, d) or (N, T, d)")
    return total


def _local_stats(tensors: dict, keys: Sequence[str] | None, mask_key: str = "mask") -> tuple[float, int]:
    """(mean valid positions per item, feature dim) of the first 3-D stored tensor; (1, d) for vectors only."""
    for k in (keys or tensors.keys()):
        t = tensors[k]
        if t.dim() == 3:
            mask = tensors.get(mask_key)
            valid = float(mask.float().sum(1).mean()) if mask is not None and mask.shape == t.shape[:2] \
                else float(t.shape[1])
            return valid, int(t.shape[2])
    t = next(v for v in tensors.values() if torch.is_tensor(v) and v.dim() == 2 and v.is_floating_point())
    return 1.0, int(t.shape[1])


# ----------------------------------------------------------------------------------------------- timing
def _sync(device: str) -> Callable[[], None]:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.synchronize
    return lambda: None


def time_phases(prepare: Callable[[int], object], phases: Sequence[Callable[[object], object]], repeats: int,
                warmup: int = 1, max_seconds: float | None = None, sync: Callable[[], None] = lambda: None,
                min_repeats: int = 3) -> np.ndarray:
    """Run ``prepare(r)`` (untimed) then each phase in turn (timed, ``sync`` after each), ``warmup + repeats``
    times; returns an (n_timed, n_phases) array of seconds. Stops early once ``max_seconds`` of wall time have
    passed and at least ``min_repeats`` runs were timed."""
    rows = []
    t_start = time.perf_counter()
    for r in range(warmup + repeats):
        state = prepare(r)
        sync()
        stamps = [time.perf_counter()]
        for ph in phases:
            state = ph(state)
            sync()
            stamps.append(time.perf_counter())
        if r >= warmup:
            rows.append(np.diff(stamps))
            if (max_seconds is not None and time.perf_counter() - t_start > max_seconds
                    and len(rows) >= min(min_repeats, repeats)):
                break
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(phases))


def _to(d: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in d.items()}


def _take(d: dict, idx: torch.Tensor) -> dict:
    return {k: v.index_select(0, idx) for k, v in d.items()}


def _score_fn(model) -> Callable[[dict, dict], torch.Tensor]:
    """The exhaustive score: the re-scoring function when the model has one (ALADIN's teacher), else similarity."""
    return getattr(model, "rescore_similarity", None) or model.similarity


def _rescore_topk(model, q: dict, gal: dict, ids: torch.Tensor, direction: str) -> torch.Tensor:
    """Re-score each query's shortlist ``ids`` (B, k) and return the ids re-ordered, best first."""
    b, k = ids.shape
    flat = ids.reshape(-1)
    sub = _take(gal, flat)
    if hasattr(model, "rescore_pairs"):
        rep = _take(q, torch.arange(b, device=flat.device).repeat_interleave(k))
        img, txt = (sub, rep) if direction == "t2i" else (rep, sub)
        scores = model.rescore_pairs(img, txt).view(b, k)
    else:
        fn, rows = _score_fn(model), []
        for i in range(b):
            qi = _take(q, torch.tensor([i], device=flat.device))
            si = _take(sub, torch.arange(i * k, (i + 1) * k, device=flat.device))
            s = fn(si, qi)[:, 0] if direction == "t2i" else fn(qi, si)[0]
            rows.append(s)
        scores = torch.stack(rows)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    return torch.gather(ids, 1, order)


@torch.no_grad()
def encode_gallery(model, data, device: str = "cpu", batch_size: int = 256) -> tuple[dict, dict]:
    """Every tensor output of the model on all images and captions of a split (CPU), for any mode."""
    from .scoring import encode_split
    return encode_split(model, data, device, batch_size, outputs="all")


@torch.no_grad()
def measure_method(model, data, mode: str, *, label: str | None = None, device: str = "cpu", repeats: int = 20,
                   warmup: int = 3, batch_size: int = 64, k: int = 10, k_i2t: int | None = None,
                   k_t2i: int | None = None, directions: Sequence[str] = DIRECTIONS,
                   batches: Sequence[int] | None = None,
                   exhaustive_subset: int | None = None, stored: Sequence[str] | None = None, hw: dict | None = None,
                   max_seconds: float | None = 60.0, seed: int = 0, encoded: tuple[dict, dict] | None = None,
                   encode_batch: int = 256) -> pd.DataFrame:
    """Per-query cost of one trained model on one split (``SplitTensors``), see the module docstring.

    ``mode``: ``vector`` (faiss flat over ``image_vectors`` / ``text_vectors``), ``two_stage`` (that search for a
    shortlist of ``k_t2i`` / ``k_i2t`` items, default the model's ``hp`` or 100 / 50, re-scored with
    ``rescore_pairs``), ``exhaustive`` (the query scored against every gallery item). ``batches``: query batch
    sizes (default ``(1, batch_size)``). ``exhaustive_subset``: time exhaustive search against only that many
    gallery items and scale it by ``N / subset`` (column ``extrapolated_from``). ``stored``: the gallery tensors a
    deployment keeps (default: the retrieval vector in ``vector`` mode, every floating output otherwise).
    ``hw`` (from :func:`measure_hardware`) adds the floor columns. ``encoded``: a precomputed
    :func:`encode_gallery` result (the gallery encoding is offline and never timed).

    Returns one row per (direction, batch): milliseconds per query (medians) of ``encode_ms``, ``search_ms``,
    ``rerank_ms`` and ``total_ms`` (median of the per-run sums), ``bytes_per_item`` of that direction's gallery,
    ``floor_ms`` and ``search_vs_floor`` ((search + rerank) / floor)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    bad = set(directions) - set(DIRECTIONS)
    if bad:
        raise ValueError(f"unknown direction(s) {sorted(bad)}; choose from {DIRECTIONS}")
    model.eval()
    model.to(device)
    sync = _sync(device)
    img, txt = encoded if encoded is not None else encode_gallery(model, data, device, encode_batch)
    hp = getattr(model, "hp", {}) or {}
    k_short = {"t2i": int(k_t2i or hp.get("k_t2i", 100)), "i2t": int(k_i2t or hp.get("k_i2t", 50))}
    batches = tuple(batches) if batches is not None else (1, batch_size)
    rng = np.random.default_rng(seed)
    rows = []
    for direction in directions:
        gal_all, n_query = (img, data.n_texts) if direction == "t2i" else (txt, data.n_images)
        n = next(iter(gal_all.values())).shape[0]
        vec_fn = model.image_vectors if direction == "t2i" else model.text_vectors
        qvec_fn = model.text_vectors if direction == "t2i" else model.image_vectors
        needs_vec = mode in ("vector", "two_stage")
        index, gvec = None, None
        if needs_vec:
            from .index import EmbeddingIndex
            gvec = vec_fn(gal_all).float().contiguous()
            index = EmbeddingIndex(gvec.shape[1], kind="flat", normalize=False).add(gvec.numpy())
        if mode == "vector":
            store_keys = None
            mem = bytes_per_item(gvec)
        else:
            store_keys = list(stored) if stored is not None else \
                [kk for kk, v in gal_all.items() if torch.is_tensor(v) and v.is_floating_point()]
            mem = bytes_per_item(gal_all, store_keys)
        gal = _to(gal_all, device) if mode != "vector" else None
        m = n
        if mode == "exhaustive" and exhaustive_subset and exhaustive_subset < n:
            m = int(exhaustive_subset)
            gal = _take(gal, torch.arange(m, device=device))
        scale = n / m
        kk_short = min(k_short[direction], n)
        score = _score_fn(model)

        def encode(batch):
            if direction == "t2i":
                out = model.encode_texts(*batch)
            else:
                out = model.encode_images(*batch)
            return out, (qvec_fn(out) if needs_vec else None)

        def search(state):
            out, qv = state
            if mode == "exhaustive":
                s = score(gal, out).t() if direction == "t2i" else score(out, gal)   # (B, m)
                return out, torch.topk(s, min(k, m), dim=1).indices
            ids = index.search(qv.float().cpu().numpy(), kk_short if mode == "two_stage" else k)[1]
            return out, torch.from_numpy(ids)

        def rerank(state):
            out, ids = state
            if mode != "two_stage":
                return ids
            return _rescore_topk(model, out, gal, ids.to(device), direction)

        for b in batches:
            b = int(min(b, n_query))
            picks = [np.sort(rng.choice(n_query, size=b, replace=False)) for _ in range(warmup + repeats)]

            def prepare(r, picks=picks):
                idx = torch.from_numpy(picks[r])
                if direction == "t2i":
                    return tuple(t.to(device) for t in data.text_batch(idx))
                return tuple(t.to(device) for t in data.image_batch(idx))
            t = time_phases(prepare, [encode, search, rerank], repeats, warmup, max_seconds, sync)
            t[:, 1] *= scale if mode == "exhaustive" else 1.0
            ms = 1e3 * np.median(t, axis=0) / b
            total = 1e3 * float(np.median(t.sum(1))) / b
            row = {"method": label or getattr(model, "__class__").__name__, "mode": mode, "direction": direction,
                   "batch": b, "n_gallery": n, "n_repeats": len(t), "encode_ms": ms[0], "search_ms": ms[1],
                   "rerank_ms": ms[2] if mode == "two_stage" else 0.0, "total_ms": total, "k": k,
                   "k_shortlist": kk_short if mode == "two_stage" else np.nan,
                   "extrapolated_from": m if m < n else np.nan, "bytes_per_item": mem, "device": device,
                   "threads": torch.get_num_threads()}
            if hw is not None:
                row.update(_search_floor(mode, gal_all, txt if direction == "t2i" else img, gvec, store_keys, n,
                                         kk_short, hw, b))
                row["search_vs_floor"] = (row["search_ms"] + row["rerank_ms"]) / row["floor_ms"]
            rows.append(row)
    return pd.DataFrame(rows)


def _search_floor(mode: str, gal_all: dict, qry_all: dict, gvec, store_keys, n: int, k_short: int, hw: dict,
                  batch: int) -> dict:
    """Bytes and FLOPs a search must at least touch per query (see the module docstring), and its floor.

    vector: the gallery's vectors (4 N d bytes, 2 N d FLOPs). exhaustive: every stored byte of the gallery and one
    product per (gallery position, query position) pair (2 R L D FLOPs per item: the least any region-word score
    does; SCAN does more). two_stage: the global search plus the shortlist's stored bytes and products."""
    if mode == "vector":
        d = gvec.shape[1]
        b, f = n * d * 4.0, 2.0 * n * d
    else:
        per_item = bytes_per_item(gal_all, store_keys)
        positions, dim = _local_stats(gal_all, store_keys)
        q_positions, _ = _local_stats(qry_all, store_keys)  # words of a caption (t2i) / regions of an image (i2t)
        pair_flops = 2.0 * positions * q_positions * dim    # every region-word product, the least any fine score does
        if mode == "exhaustive":
            b, f = n * per_item, n * pair_flops
        else:
            d = gvec.shape[1]
            b, f = n * d * 4.0 + k_short * per_item, 2.0 * n * d + k_short * pair_flops
    return {"floor_bytes": b, "floor_flops": f, "floor_ms": roofline_ms(b, f, hw, batch)}


def evaluate_modes(checkpoint: str, modes: Sequence[str], cache_path: Path, device: str = "cpu",
                   data_root: str | None = None, cache_dir: str | None = None) -> dict:
    """Test metrics of a checkpoint in the given :func:`itr_lib.rerank.evaluate_two_stage` modes (``global``,
    ``two_stage``, ``exhaustive``), cached as JSON at ``cache_path`` (recomputed only for missing modes)."""
    from .scoring import evaluate_two_stage
    cache = read_json(cache_path) if Path(cache_path).is_file() else {}
    todo = [m for m in modes if m not in cache]
    if todo:
        model, cfg = load_run_model(checkpoint, device, data_root, cache_dir)
        data = load_test_split(cfg)
        out = evaluate_two_stage(model, data, device, modes=tuple(todo))
        cache.update(out)
        write_json(cache_path, cache)
    return cache


def load_run_model(checkpoint: str, device: str = "cpu", data_root: str | None = None,
                   cache_dir: str | None = None):
    """``train.load_checkpoint`` with the data root / feature cache overridden when given."""
    from .train import load_checkpoint
    model, cfg = load_checkpoint(checkpoint, device)
    if data_root:
        cfg.data_root = data_root
    if cache_dir:
        cfg.cache_dir = cache_dir
    return model, cfg


def load_test_split(cfg, split: str = "test"):
    from .train import load_split_tensors
    return load_split_tensors(cfg, split)


# ----------------------------------------------------------------------------------------------- per dataset
@dataclass
class DatasetResult:
    table: pd.DataFrame                      # one row per method (efficiency_<dataset>.csv)
    detail: pd.DataFrame                     # one row per method x direction x batch
    notes: list[str]
    models: dict = field(default_factory=dict)   # label -> (model, cfg, data, encoded) for the scaling study


def benchmark_dataset(runs: pd.DataFrame, dataset: str, results_dir: str | os.PathLike, *, hw: dict,
                      specs: Sequence[MethodSpec] = METHODS, device: str = "cpu", repeats: int = 20, warmup: int = 3,
                      batch_size: int = 64, k: int = 10, exhaustive_subset: int | None = None,
                      max_seconds: float | None = 60.0, eval_missing_mr: bool = False, data_root: str | None = None,
                      cache_dir: str | None = None, seed: int = 0, keep_models: bool = True) -> DatasetResult:
    """Time every method with a trained run on ``dataset``'s test split and build its efficiency table.

    ``exhaustive_subset`` applies to the cross-attention reference only (the other exhaustive modes are timed
    against the whole gallery). Methods without a run are skipped with a note."""
    results_dir = Path(results_dir)
    notes, details, rows = [], [], []
    loaded: dict[str, tuple] = {}
    for spec in specs:
        timed, group = select_runs(runs, spec.method, dataset, spec.prefer)
        if timed is None:
            notes.append(f"{dataset}: {spec.label}: skipped, no trained run of method '{spec.method}' with a "
                         f"checkpoint under {results_dir / 'runs'}")
            continue
        if timed.run not in loaded:
            model, cfg = load_run_model(timed.checkpoint, device, data_root, cache_dir)
            data = load_test_split(cfg)
            loaded[timed.run] = (model, cfg, data, encode_gallery(model, data, device))
        model, cfg, data, encoded = loaded[timed.run]
        subset = exhaustive_subset if spec.interactive else None
        det = measure_method(model, data, spec.mode, label=spec.label, device=device, repeats=repeats,
                             warmup=warmup, batch_size=batch_size, k=k, exhaustive_subset=subset, stored=spec.stored,
                             hw=hw, max_seconds=max_seconds, seed=seed, encoded=encoded)
        details.append(det)
        # accuracy over seeds
        mrs = []
        for _, r in group.iterrows():
            m = read_json(r.metrics_path)
            cache_path = results_dir / "efficiency" / "modes" / f"{r.run}.json"
            extra = read_json(cache_path) if cache_path.is_file() else None
            v = mode_mr(m, spec.mr_key, extra=extra)
            if v is None and eval_missing_mr and r.checkpoint is not None:
                extra = evaluate_modes(r.checkpoint, [spec.mr_key], cache_path, device, data_root, cache_dir)
                v = mode_mr(m, spec.mr_key, extra=extra)
            if v is not None:
                mrs.append(v)
        if not mrs:
            notes.append(f"{dataset}: {spec.label}: no mR for mode '{spec.mr_key}' in the runs' metrics.json "
                         f"(set EVAL_MISSING_MR to compute it from the checkpoints)")
        rows.append(_table_row(spec, det, mrs, group, timed, len(group)))
    table = pd.DataFrame(rows)
    if not table.empty:
        table = _add_speedups(table)
    if details and "search_vs_floor" in pd.concat(details):
        below = pd.concat(details).query("search_vs_floor < 1")
        if not below.empty:
            notes.append(f"{dataset}: {len(below)} measured searches ran faster than their floor "
                         f"({', '.join(sorted(set(below.method)))}): the hardware measurement underestimates this "
                         f"machine (a loaded machine, or copy / GEMM sizes too small); rerun on a quiet machine")
    result = DatasetResult(table, pd.concat(details, ignore_index=True) if details else pd.DataFrame(), notes)
    if keep_models:
        for spec in specs:
            timed, _ = select_runs(runs, spec.method, dataset, spec.prefer)
            if timed is not None and timed.run in loaded:
                result.models[spec.label] = loaded[timed.run]
    return result


TABLE_COLUMNS = ["method", "ms_per_query_t2i", "ms_per_query_i2t", "bytes_per_item", "speedup_vs_interactive", "mr"]


def _table_row(spec: MethodSpec, det: pd.DataFrame, mrs: list, group: pd.DataFrame, timed, n_runs: int) -> dict:
    def get(direction, batch_one, col):
        d = det[det.direction == direction]
        d = d[d.batch == 1] if batch_one else d[d.batch == d.batch.max()]
        return float(d[col].iloc[0]) if not d.empty and col in d else np.nan
    row = {"method": spec.label,
           "ms_per_query_t2i": get("t2i", True, "total_ms"), "ms_per_query_i2t": get("i2t", True, "total_ms"),
           "bytes_per_item": get("t2i", True, "bytes_per_item"), "speedup_vs_interactive": np.nan,
           "mr": float(np.mean(mrs)) if mrs else np.nan,
           "mr_std": float(np.std(mrs, ddof=1)) if len(mrs) > 1 else (0.0 if mrs else np.nan),
           "n_seeds": len(mrs), "mode": spec.mode, "family": spec.family, "mr_source": spec.mr_key}
    row["ms_per_query"] = float(np.nanmean([row["ms_per_query_t2i"], row["ms_per_query_i2t"]]))
    for dr in DIRECTIONS:
        for col in ("encode_ms", "search_ms", "rerank_ms", "floor_ms", "search_vs_floor"):
            row[f"{col}_{dr}"] = get(dr, True, col)
        row[f"batched_ms_per_query_{dr}"] = get(dr, False, "total_ms")
        row[f"batched_search_vs_floor_{dr}"] = get(dr, False, "search_vs_floor")
    row["batch_size"] = int(det.batch.max()) if not det.empty else np.nan
    row["bytes_per_caption"] = get("i2t", True, "bytes_per_item")
    row["n_images"] = get("t2i", True, "n_gallery")
    row["n_texts"] = get("i2t", True, "n_gallery")
    ex = det.extrapolated_from.dropna()
    row["extrapolated_from"] = int(ex.min()) if not ex.empty else np.nan
    row["train_s_per_epoch"] = float(group.train_s_per_epoch.mean()) if not group.empty else np.nan
    row["train_device"] = ",".join(sorted({str(x) for x in group.train_device.dropna()}))
    row["run"] = timed.run
    row["variant"] = timed.variant
    row["seeds"] = ",".join(str(s) for s in sorted(group.seed))
    row["device"] = det.device.iloc[0] if not det.empty else ""
    row["threads"] = int(det.threads.iloc[0]) if not det.empty else np.nan
    row["n_repeats_min"] = int(det.n_repeats.min()) if not det.empty else 0
    return row


def _add_speedups(table: pd.DataFrame) -> pd.DataFrame:
    t = table.copy()
    ref = t[t.method.isin([s.label for s in METHODS if s.interactive])]
    for col, suffix in (("ms_per_query", ""), ("ms_per_query_t2i", "_t2i"), ("ms_per_query_i2t", "_i2t")):
        t[f"speedup_vs_interactive{suffix}"] = float(ref[col].iloc[0]) / t[col] if not ref.empty else np.nan
    return t


def speedup_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Speed-up of each method over the interactive reference (SCAN), per dataset (mean of both directions
    and per direction, batch 1)."""
    rows = []
    for ds, t in tables.items():
        for _, r in t.iterrows():
            rows.append({"dataset": ds, "method": r.method, "ms_per_query": r.ms_per_query,
                         "speedup_vs_interactive": r.speedup_vs_interactive,
                         "speedup_vs_interactive_t2i": r.get("speedup_vs_interactive_t2i", np.nan),
                         "speedup_vs_interactive_i2t": r.get("speedup_vs_interactive_i2t", np.nan)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- Pareto front
def pareto_front(latency: Sequence[float], score: Sequence[float]) -> np.ndarray:
    """Boolean mask of the non-dominated points (lower latency and higher score are better): a point is dominated
    when another is no worse in both and strictly better in one. NaN points are never on the front."""
    x, y = np.asarray(latency, dtype=float), np.asarray(score, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    front = np.zeros(len(x), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i]))
        front[i] = not dominated.any()
    return front


# ----------------------------------------------------------------------------------------------- scaling
def scaling_sizes(min_items: int = 1000, max_items: int = 1_000_000, per_decade: int = 2) -> list[int]:
    """Geometric gallery sizes from ``min_items`` to ``max_items`` (both included), ``per_decade`` per decade."""
    if max_items < min_items:
        raise ValueError(f"max_items {max_items} < min_items {min_items}")
    n = max(1, int(math.ceil(per_decade * math.log10(max_items / min_items))))
    sizes = sorted({int(round(min_items * (max_items / min_items) ** (i / n))) for i in range(n + 1)})
    return sizes


def grow_gallery(base: np.ndarray, n: int, noise: float = 0.25, seed: int = 0, block: int | None = None) -> np.ndarray:
    """``n`` float32 rows grown from the ``n0`` real rows of ``base``: rows < n0 are the real vectors; row j >= n0 is
    real row ``j % n0`` plus isotropic Gaussian noise of expected norm ``noise`` times that row's norm, rescaled to
    the row's norm. Deterministic per block of n0 rows, so a smaller gallery is a prefix of a larger one."""
    base = np.ascontiguousarray(base, dtype=np.float32)
    n0, d = base.shape
    block = block or n0
    if n <= n0:
        return base[:n].copy()
    norms = np.linalg.norm(base, axis=1, keepdims=True).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    out[:n0] = base
    for a in range(n0, n, block):
        b = min(a + block, n)
        rng = np.random.default_rng([seed, a])
        src = np.arange(a, b) % n0
        x = base[src] + rng.standard_normal((b - a, d), dtype=np.float32) * (noise / math.sqrt(d)) * norms[src]
        x *= norms[src] / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        out[a:b] = x
    return out


class GrowingGallery:
    """Prefixes of one grown gallery (:func:`grow_gallery`), generated once up to the largest size asked."""

    def __init__(self, base: np.ndarray, noise: float = 0.25, seed: int = 0):
        self.base, self.noise, self.seed = np.ascontiguousarray(base, dtype=np.float32), noise, seed
        self._arr = self.base.copy()

    def get(self, n: int) -> np.ndarray:
        if n > len(self._arr):
            self._arr = grow_gallery(self.base, n, self.noise, self.seed)
        return self._arr[:n]


def fit_loglog(n: Sequence[float], t: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of log(t) = intercept + slope * log(n), least squares; slope 1 through a single point."""
    n, t = np.asarray(n, dtype=float), np.asarray(t, dtype=float)
    ok = (n > 0) & (t > 0) & np.isfinite(t)
    n, t = n[ok], t[ok]
    if len(n) == 0:
        raise ValueError("no positive measurements to fit")
    if len(np.unique(n)) < 2:
        return 1.0, float(np.log(t.mean()) - np.log(n[0]))
    slope, intercept = np.polyfit(np.log(n), np.log(t), 1)
    return float(slope), float(intercept)


def extrapolate(measured: pd.DataFrame, sizes: Sequence[int], y: str = "ms_per_query", fit_last: int = 3,
                extra_cols: Sequence[str] = ("ms_per_query_batched",)) -> pd.DataFrame:
    """Rows for ``sizes`` (those not measured) predicted with the log-log slope fitted to the last ``fit_last``
    measured points of ``y`` (and of ``extra_cols`` when present); marked ``extrapolated=True`` with the slope used
    (a negative fitted slope, timing noise on a flat curve, is replaced by 0: the last measured value is held)."""
    m = measured[~measured.extrapolated.astype(bool)].sort_values("n_items")
    if m.empty:
        return pd.DataFrame()
    tail = m.tail(fit_last)
    rest = [int(n) for n in sizes if int(n) not in set(m.n_items.astype(int))]
    rows = []

    def predict(col: str, n: int) -> tuple[float, float]:
        slope, icpt = fit_loglog(tail.n_items, tail[col])
        if slope < 0:  # timing noise on a flat curve: latency does not fall with size; hold the last value
            return 0.0, float(tail[col].iloc[-1])
        return slope, float(np.exp(icpt + slope * np.log(n)))
    for n in rest:
        slope, value = predict(y, n)
        row = {"index": m["index"].iloc[0], "n_items": n, y: value, "recall_at_10": np.nan, "extrapolated": True,
               "fit_slope": slope, "fit_range": f"{int(tail.n_items.min())}-{int(tail.n_items.max())}"}
        for c in extra_cols:
            if c in tail and (tail[c] > 0).sum() > 0:
                row[c] = predict(c, n)[1]
        rows.append(row)
    return pd.DataFrame(rows)


def run_series(name: str, sizes: Sequence[int], measure: Callable[[int], dict], *, budget_s: float,
               min_points: int = 2, fit_last: int = 3, fits: Callable[[int], bool] | None = None) -> pd.DataFrame:
    """Measure ``measure(n) -> {'ms_per_query': ..., ...}`` at increasing sizes while the next size's predicted
    cost (the last cost scaled by the size ratio to the power of the observed cost slope, at least 1) fits in
    ``budget_s`` (the first ``min_points`` sizes are always measured, memory permitting: ``fits(n)``); the rest
    are extrapolated (:func:`extrapolate`)."""
    sizes = sorted(int(s) for s in sizes)
    rows, costs, spent = [], [], 0.0
    stop_reason = ""
    for n in sizes:
        if fits is not None and not fits(n):
            stop_reason = f"memory: {n} items do not fit"
            break
        if len(rows) >= min_points:
            cslope = 1.0
            if len(costs) >= 2 and costs[-2][1] > 0 and costs[-1][1] > 0:
                cslope = max(1.0, math.log(costs[-1][1] / costs[-2][1]) / math.log(costs[-1][0] / costs[-2][0]))
            predicted = costs[-1][1] * (n / costs[-1][0]) ** cslope
            if spent + predicted > budget_s:
                stop_reason = (f"time budget: {n} items predicted {predicted:.0f}s, {spent:.0f}s of {budget_s:.0f}s "
                               f"spent")
                break
        t0 = time.perf_counter()
        r = measure(n)
        cost = time.perf_counter() - t0
        spent += cost
        costs.append((n, cost))
        rows.append({"index": name, "n_items": n, **r, "extrapolated": False, "cost_s": cost})
        log.info("scaling %s n=%d: %.4g ms/query (%.1fs)", name, n, r.get("ms_per_query", np.nan), cost)
    measured = pd.DataFrame(rows)
    if measured.empty:
        return measured
    if stop_reason:
        log.info("scaling %s stopped (%s)", name, stop_reason)
    extra = extrapolate(measured, sizes, fit_last=fit_last)
    out = pd.concat([measured, extra], ignore_index=True) if not extra.empty else measured
    out["stop_reason"] = stop_reason
    return out


def _median_ms(fn: Callable[[int], object], repeats: int, warmup: int, max_seconds: float | None,
               sync: Callable[[], None] = lambda: None) -> tuple[float, int]:
    t = time_phases(lambda r: r, [fn], repeats, warmup, max_seconds, sync)
    return 1e3 * float(np.median(t[:, 0])), len(t)


def build_faiss(kind: str, x: np.ndarray, *, nlist: int | None = None, nprobe: int = 16, hnsw_m: int = 32,
                ef_search: int = 128, ef_construction: int = 40, ivf_train_per_list: int = 40, ivf_niter: int = 10,
                seed: int = 0) -> faiss.Index:
    """A faiss inner-product index over ``x`` (float32, used as is): ``flat``, ``ivf`` (IndexIVFFlat with
    :func:`itr_lib.index.default_nlist` lists, ``ivf_niter`` k-means iterations on at most
    ``ivf_train_per_list * nlist`` sampled points) or ``hnsw`` (IndexHNSWFlat, ``ef_construction``)."""
    from .index import default_nlist
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = nlist or default_nlist(n)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = ivf_train_per_list
        index.cp.niter = ivf_niter
        index.cp.seed = seed
        index.train(x)
        index.nprobe = min(nprobe, nlist)  # (faiss's constructor wrapper keeps the quantizer referenced)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"kind must be flat, ivf or hnsw, got {kind!r}")
    index.add(x)
    return index


def index_series_measure(kind: str, gallery: GrowingGallery, queries: np.ndarray, *, k: int = 10, repeats: int = 20,
                         warmup: int = 3, max_seconds: float | None = 30.0, hw: dict | None = None,
                         index_params: dict | None = None, gt_cache: dict | None = None) -> Callable[[int], dict]:
    """``measure(n)`` for :func:`run_series`: build a ``kind`` index over ``n`` grown items, time batch-1 searches
    (median) and one batched search of every query (per query), recall@k of the batched result against exact
    search (faiss.knn, cached per n in ``gt_cache``)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    params = dict(index_params or {})
    gt_cache = {} if gt_cache is None else gt_cache

    def measure(n: int) -> dict:
        x = gallery.get(n)
        t0 = time.perf_counter()
        index = build_faiss(kind, x, **params)
        build_s = time.perf_counter() - t0
        nq = len(queries)
        ms, reps = _median_ms(lambda r: index.search(queries[r % nq:r % nq + 1], k), repeats, warmup, max_seconds)
        t0 = time.perf_counter()
        _, ids = index.search(queries, k)
        batched_ms = 1e3 * (time.perf_counter() - t0) / nq
        if kind == "flat":
            recall = 1.0
            gt_cache[n] = ids
        else:
            if n not in gt_cache:
                gt_cache[n] = faiss.knn(queries, x, k, metric=faiss.METRIC_INNER_PRODUCT)[1]
            gt = gt_cache[n]
            recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, gt)]))
        d = x.shape[1]
        out = {"ms_per_query": ms, "ms_per_query_batched": batched_ms, "recall_at_10": recall, "build_s": build_s,
               "n_repeats": reps, "dim": d, "n_queries_batched": nq}
        if kind == "ivf":
            out["params"] = f"nlist={index.nlist} nprobe={index.nprobe}"
        elif kind == "hnsw":
            out["params"] = (f"M={params.get('hnsw_m', 32)} efSearch={index.hnsw.efSearch} "
                             f"efConstruction={index.hnsw.efConstruction}")
        else:
            out["params"] = "exact"
        del index
        return out
    return measure


@torch.no_grad()
def fine_series_measure(model, mode: str, img: dict, txt: dict, *, device: str = "cpu", k: int = 10,
                        k_shortlist: int | None = None, repeats: int = 20, warmup: int = 1,
                        max_seconds: float | None = 30.0, noise: float = 0.25, seed: int = 0,
                        n_queries: int = 64, chunk_items: int = 2048) -> Callable[[int], dict]:
    """``measure(n)`` for fine-grained scoring (text-to-image) over an n-image gallery grown from the real one.

    ``two_stage``: faiss flat over the grown global image vectors (:func:`grow_gallery`), the shortlist's ids map
    to real items (``id % n0``) whose stored features are re-scored. ``exhaustive``: the query scored against the
    real gallery repeated to n items (streamed in chunks of ``chunk_items`` = the real gallery tiled), top-k merged.
    Times are search + re-ranking per query (query encoding excluded: constant in n)."""
    model.eval()
    sync = _sync(device)
    n0 = next(iter(img.values())).shape[0]
    gal = _to(img, device)
    nq = min(n_queries, next(iter(txt.values())).shape[0])
    qs = [_to(_take(txt, torch.tensor([i])), device) for i in range(nq)]
    score = _score_fn(model)
    hp = getattr(model, "hp", {}) or {}
    k_short = int(k_shortlist or hp.get("k_t2i", 100))
    grower = GrowingGallery(model.image_vectors(img).float().numpy(), noise, seed) if mode == "two_stage" else None

    @torch.no_grad()
    def measure(n: int) -> dict:
        if mode == "two_stage":
            index = build_faiss("flat", grower.get(n))
            qv = [model.text_vectors(q).float().cpu().numpy() for q in qs]

            def one(r):
                ids = index.search(qv[r % nq], min(k_short, n))[1]
                ids = torch.from_numpy(ids % n0).to(device)
                return _rescore_topk(model, qs[r % nq], gal, ids, "t2i")
        elif mode == "exhaustive":
            # stream the gallery in chunks of the real gallery tiled to >= chunk_items (so per-call overhead does not
            # dominate when the real gallery is small), plus a prefix of the chunk
            c = min(n, max(n0, chunk_items))
            chunk = _take(gal, torch.arange(c, device=device) % n0)
            full, part = divmod(n, c)
            prefix = _take(chunk, torch.arange(part, device=device)) if part else None

            def one(r):
                q = qs[r % nq]
                best = []
                for _ in range(full):
                    best.append(torch.topk(score(chunk, q)[:, 0], min(k, c)).values)
                if prefix is not None:
                    best.append(torch.topk(score(prefix, q)[:, 0], min(k, part)).values)
                return torch.topk(torch.cat(best), min(k, n)).values
        else:
            raise ValueError(f"mode must be two_stage or exhaustive, got {mode!r}")
        ms, reps = _median_ms(one, repeats, warmup, max_seconds, sync)
        return {"ms_per_query": ms, "ms_per_query_batched": np.nan, "recall_at_10": np.nan, "build_s": np.nan,
                "n_repeats": reps, "params": f"k_shortlist={k_short}" if mode == "two_stage" else "exhaustive"}
    return measure


@torch.no_grad()
def scaling_study(vec_model_entry: tuple | None, fine_entries: dict[str, tuple], *, hw: dict,
                  min_items: int = 1000, max_items: int = 100_000, per_decade: int = 2,
                  kinds: Sequence[str] = ("flat", "ivf", "hnsw"), budget_s: float = 60.0, repeats: int = 20,
                  warmup: int = 3, max_seconds: float | None = 30.0, noise: float = 0.25, seed: int = 0,
                  n_queries: int = 100, index_params: dict | None = None, device: str = "cpu",
                  max_memory_gb: float | None = None, k: int = 10) -> pd.DataFrame:
    """The scaling table (``scaling.csv``): latency (and recall@10 of approximate indexes) against gallery size.

    ``vec_model_entry``: ``(label, model, (img, txt))`` of a vector model whose image vectors seed the grown
    galleries and whose caption vectors are the queries; ``fine_entries``: ``{series name: (mode, model,
    (img, txt), stored keys)}`` for fine-grained two-stage / exhaustive series (:func:`fine_entries_from`).
    Each series has ``budget_s`` seconds."""
    sizes = scaling_sizes(min_items, max_items, per_decade)
    mem_limit = (max_memory_gb * 2 ** 30) if max_memory_gb else _available_memory() * 0.6
    parts = []
    if vec_model_entry is not None:
        label, model, (img, txt) = vec_model_entry
        base = model.image_vectors(img).float().numpy()
        queries = model.text_vectors(txt).float().numpy()
        rng = np.random.default_rng(seed)
        queries = queries[np.sort(rng.choice(len(queries), size=min(n_queries, len(queries)), replace=False))]
        gallery = GrowingGallery(base, noise, seed)
        d = base.shape[1]
        gt: dict = {}
        copies = {"flat": 3, "ivf": 3, "hnsw": 3.5}  # gallery + index (+ graph) + growth temporaries
        for kind in kinds:
            meas = index_series_measure(kind, gallery, queries, k=k, repeats=repeats, warmup=warmup,
                                        max_seconds=max_seconds, hw=hw, index_params=index_params, gt_cache=gt)
            s = run_series(kind, sizes, meas, budget_s=budget_s,
                           fits=lambda n, kind=kind: n * d * 4 * copies[kind] < mem_limit)
            if s.empty:
                continue
            s["dim"] = d
            s["floor_ms"] = [flat_floor_ms(n, d, hw, 1) for n in s.n_items]
            s["floor_ms_batched"] = [flat_floor_ms(n, d, hw, len(queries)) for n in s.n_items]
            s["embeddings"] = label
            s["gallery"] = SCALING_GALLERY_METHOD.format(noise=noise, seed=seed)
            parts.append(s)
    for name, (mode, model, (img, txt), stored) in fine_entries.items():
        meas = fine_series_measure(model, mode, img, txt, device=device, k=k, repeats=repeats, warmup=min(warmup, 1),
                                   max_seconds=max_seconds, noise=noise, seed=seed)
        s = run_series(name, sizes, meas, budget_s=budget_s)
        if s.empty:
            continue
        positions, dim = _local_stats(img, stored)
        words, _ = _local_stats(txt, stored)
        per_item = bytes_per_item(img, stored)
        if mode == "exhaustive":
            s["floor_ms"] = [roofline_ms(n * per_item, n * 2.0 * positions * words * dim, hw) for n in s.n_items]
        else:
            gd = model.image_vectors(img).shape[1]
            ks = int((getattr(model, "hp", {}) or {}).get("k_t2i", 100))
            s["floor_ms"] = [roofline_ms(n * gd * 4.0 + ks * per_item,
                                         2.0 * n * gd + ks * 2.0 * positions * words * dim, hw) for n in s.n_items]
        s["dim"] = dim
        s["embeddings"] = name
        s["gallery"] = FINE_GALLERY_METHOD + ("" if mode == "exhaustive" else
                                               "; global vectors grown as " +
                                               SCALING_GALLERY_METHOD.format(noise=noise, seed=seed))
        parts.append(s)
    if not parts:
        return pd.DataFrame(columns=["index", "n_items", "ms_per_query", "recall_at_10", "floor_ms", "extrapolated"])
    out = pd.concat(parts, ignore_index=True)
    out["vs_floor"] = out.ms_per_query / out.floor_ms
    first = ["index", "n_items", "ms_per_query", "recall_at_10", "floor_ms", "extrapolated"]
    return out[first + [c for c in out.columns if c not in first]]


VECTOR_SEED_ORDER = ("baseline", "SelfAlign", "ALADIN matching", "TGDT global")
FINE_SERIES = ("TGDT two-stage", "MrSw exhaustive", "SCAN (cross-attention)")


def scaling_entries(models: dict, fine: Sequence[str] = FINE_SERIES,
                    vector_order: Sequence[str] = VECTOR_SEED_ORDER) -> tuple[tuple | None, dict]:
    """From :attr:`DatasetResult.models` (label -> (model, cfg, data, encoded)): the vector model seeding the
    grown galleries (first of ``vector_order`` that was measured) and the fine-grained series of ``fine``
    (labels of :data:`METHODS` in two_stage or exhaustive mode) that have a model."""
    vec = next(((lab, models[lab][0], models[lab][3]) for lab in vector_order if lab in models), None)
    fine_entries = {}
    for lab in fine:
        spec = spec_by_label(lab)
        if spec.mode == "vector":
            raise ValueError(f"{lab!r} is a vector method; the fine-grained series take two_stage/exhaustive ones")
        if lab in models:
            model, _, _, enc = models[lab]
            fine_entries[lab] = (spec.mode, model, enc, spec.stored)
    return vec, fine_entries


def _available_memory() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2 ** 30


# ----------------------------------------------------------------------------------------------- targets
def check_targets(table: pd.DataFrame | None, scaling: pd.DataFrame | None, at_items: int = 1_000_000) -> pd.DataFrame:
    """The issue's targets, evaluated on the measurements (``holds`` True / False, or None when not measured):
    independent embeddings >= 100x faster than exhaustive fine-grained scoring and >= 1000x faster than cross
    attention (per query, batch 1, mean of both directions); exact flat search within 2x of the bandwidth floor at
    ``at_items``; an approximate index at ``at_items`` >= 10x faster than flat with recall@10 >= 0.95; TGDT
    two-stage within 5x of global-only latency."""
    rows = []

    def add(target, holds, value, detail):
        rows.append({"target": target, "holds": holds, "value": value, "detail": detail})
    t = table if table is not None else pd.DataFrame(columns=["method", "family", "ms_per_query"])
    indep = t[t.family == "independent"] if "family" in t else t.iloc[0:0]
    for ref_family, factor, name in (("exhaustive", 100, "exhaustive fine-grained scoring (MrSw)"),
                                     ("cross-attention", 1000, "cross-attention (SCAN)")):
        ref = t[t.family == ref_family] if "family" in t else t.iloc[0:0]
        if ref_family == "exhaustive" and (ref.method == "MrSw exhaustive").any():
            ref = ref[ref.method == "MrSw exhaustive"]  # METHODS.md's exhaustive reference; else any exhaustive row
        target = f"independent embeddings >= {factor}x faster per query than {name}"
        if indep.empty or ref.empty:
            add(target, None, np.nan, "not measured (missing runs)")
            continue
        pairs = []
        for _, a in indep.iterrows():
            for _, b in ref.iterrows():
                search_only = np.nan
                if {"search_ms_t2i", "search_ms_i2t"} <= set(t.columns):
                    search_only = _search_rerank_ms(b) / _search_rerank_ms(a)
                pairs.append((a.method, b.method, b.ms_per_query / a.ms_per_query, search_only))
        worst = min(pairs, key=lambda p: p[2])
        add(target, bool(worst[2] >= factor), worst[2],
            "; ".join(f"{a} vs {b}: {s:.0f}x" + (f" (search alone {so:.0f}x)" if np.isfinite(so) else "")
                      for a, b, s, so in pairs))
    s = scaling if scaling is not None else pd.DataFrame(columns=["index", "n_items", "extrapolated"])
    big = s[(s.n_items >= at_items) & ~s.extrapolated.astype(bool)] if not s.empty else s
    flat = big[big["index"] == "flat"]
    target = f"exact flat search within 2x of the bandwidth floor at {at_items:,} items"
    if flat.empty:
        add(target, None, np.nan, f"flat not measured at {at_items:,} items")
    else:
        r = flat.iloc[0]
        add(target, bool(r.ms_per_query <= 2 * r.floor_ms), r.ms_per_query / r.floor_ms,
            f"{r.ms_per_query:.2f} ms vs floor {r.floor_ms:.2f} ms")
    target = f"approximate index at {at_items:,} items >= 10x faster than flat with recall@10 >= 0.95"
    approx = big[big["index"].isin(["ivf", "hnsw"])]
    if flat.empty or approx.empty:
        add(target, None, np.nan, "flat or approximate index not measured at that size")
    else:
        f_ms = flat.iloc[0].ms_per_query
        res = [(r["index"], f_ms / r.ms_per_query, r.recall_at_10) for _, r in approx.iterrows()]
        ok = [x for x in res if x[1] >= 10 and x[2] >= 0.95]
        best = max(res, key=lambda x: (x[1] >= 10 and x[2] >= 0.95, x[1]))
        add(target, bool(ok), best[1], "; ".join(f"{i}: {sp:.1f}x faster, recall@10 {rc:.3f}" for i, sp, rc in res))
    target = "TGDT two-stage within 5x of global-only latency"
    two, glob = t[t.method == "TGDT two-stage"], t[t.method == "TGDT global"]
    if two.empty or glob.empty:
        add(target, None, np.nan, "TGDT not measured")
    else:
        ratio = float(two.ms_per_query.iloc[0] / glob.ms_per_query.iloc[0])
        add(target, bool(ratio <= 5), ratio,
            f"{two.ms_per_query.iloc[0]:.3f} vs {glob.ms_per_query.iloc[0]:.3f} ms/query")
    return pd.DataFrame(rows)


def _search_rerank_ms(row) -> float:
    """Search + re-ranking ms per query (batch 1), mean of both directions (query encoding left out)."""
    return float(np.nanmean([row.search_ms_t2i + row.get("rerank_ms_t2i", 0),
                             row.search_ms_i2t + row.get("rerank_ms_i2t", 0)]))


def format_targets(targets: pd.DataFrame) -> str:
    """One line per target: PASS / FAIL / N/A, the target, the evidence."""
    lines = []
    for _, r in targets.iterrows():
        tag = "N/A " if r.holds is None or (isinstance(r.holds, float) and np.isnan(r.holds)) else \
            ("PASS" if r.holds else "FAIL")
        lines.append(f"{tag}  {r.target}: {r.detail}")
    return "\n".join(lines)


__all__ = ["MethodSpec", "METHODS", "measure_hardware", "roofline_ms", "flat_floor_ms", "bytes_per_item",
           "measure_method", "encode_gallery", "find_runs", "select_runs", "mode_mr", "benchmark_dataset",
           "speedup_table", "pareto_front", "scaling_sizes", "grow_gallery", "fit_loglog",
           "extrapolate", "run_series", "build_faiss", "scaling_study", "check_targets",
           "format_targets", "set_threads", "time_phases", "scaling_entries", "DatasetResult"]
