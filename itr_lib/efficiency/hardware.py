"""The hardware floor: memory bandwidth and GEMM rate of this machine, and the lowest possible time of a search.

The floor (``measure_hardware``, ``roofline_ms``): the memory bandwidth of a large single-threaded numpy copy
((bytes read + bytes written) / time, best of repeats; batch 1, where faiss reads the gallery on one thread; the
same copy on all threads for batches) and the float32 GEMM rate (best of torch and numpy). Galleries that fit in
the last-level cache can be searched faster than this DRAM floor (small galleries, repeated queries).
The lowest possible time of a search that reads ``B`` gallery bytes and does ``F`` FLOPs per query, for a batch of
``q`` queries sharing one pass over the gallery, is ``max(B / bandwidth / q, F / rate)`` per query; for an exact
flat search ``B = 4 N d`` and ``F = 2 N d``. Every measured search is reported as a multiple of its floor.
"""
from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np
import torch


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

