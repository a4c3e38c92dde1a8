"""The hardware floor: read bandwidth and GEMM rate of this machine, and the lowest possible time of a search.

Read bandwidth (``measure_read_bandwidth``) is measured the way a scan uses memory: a streaming reduction (the
fastest of a numpy sum, a torch sum, a torch and a numpy matrix-vector product, a BLAS dot) over a float32 array
of a given size, bytes read / best time, on one thread and on all threads. It is measured at the size of each gallery it
bounds (``ensure_read_bandwidth``), so a gallery that fits in a cache is held to that cache's bandwidth and a large
one to DRAM's. The GEMM rate is the best float32 square matmul (torch on all threads, on one thread, numpy).

The floor (``roofline_ms``) of a search that reads ``B`` gallery bytes and does ``F`` FLOPs per query, for a batch
of ``q`` queries sharing one pass over the gallery, is ``max(B / read_bandwidth(B) / q, F / rate)`` per query;
batch 1 uses the single-thread bandwidth (faiss runs a single query on one thread), a batch the all-thread one.
For an exact flat search ``B = 4 N d`` and ``F = 2 N d``. Every measured search is reported as a multiple of its
floor. (Until issue 18 the floor divided by the bandwidth of an array copy, which reads and writes, and a large
scan could beat it: a floor that does not hold.) ``measure_hardware`` still records the copy bandwidth, labelled
as such, for comparison.
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


def available_memory(meminfo: str = "/proc/meminfo") -> float:
    """Bytes of memory a new allocation can get now: ``MemAvailable`` of ``/proc/meminfo`` (free pages plus the page
    cache and other memory the kernel can reclaim), else ``SC_AVPHYS_PAGES`` (free pages only: on a machine that has
    read gigabytes of feature caches it understates what fits, which once stopped every 1M-item series), else 8 GiB."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024  # the field is in kB
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2 ** 30


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


READ_SIZES_MIB = (0.25, 1, 4, 16, 64, 256)  # default read-bandwidth sizes: L2, L3 and DRAM on common CPUs


def _threads(n: int):
    """Context: torch on ``n`` threads (restored afterwards)."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        old = torch.get_num_threads()
        torch.set_num_threads(max(1, int(n)))
        try:
            yield
        finally:
            torch.set_num_threads(old)
    return ctx()


def measure_read_bandwidth(nbytes: float, threads: int = 1, repeats: int = 15, min_seconds: float = 0.005,
                           row: int = 256) -> dict:
    """Bytes per second of the fastest streaming reduction over a float32 array of about ``nbytes`` bytes (rows of
    ``row`` values), best of ``repeats`` trials, torch on ``threads`` threads (numpy's reductions run on one).
    Each trial repeats the kernel for at least ``min_seconds`` (a small, cache-resident array is read many times,
    as a search over a small gallery is). The kernels take turns, trial by trial, so a burst of load from other
    processes does not spoil every trial of one kernel (on a machine shared with training runs, a best of 3 trials
    once measured half the bandwidth a flat search then reached).
    Returns ``{"bytes", "threads", "read_bytes_per_s", "kernel", "rates"}``."""
    n_rows = max(1, int(nbytes) // (4 * row))
    x = np.ones((n_rows, row), dtype=np.float32)  # written once: no page faults inside the timed reads
    t, flat = torch.from_numpy(x), torch.from_numpy(x.reshape(-1))
    v, vn = torch.ones(row), np.ones(row, dtype=np.float32)
    x1, ones1 = x.reshape(-1), np.ones(x.size, dtype=np.float32)  # BLAS dot: also reads a second array (not counted)
    kernels = {"numpy_sum": lambda: x.sum(), "torch_sum": lambda: flat.sum(), "torch_mv": lambda: torch.mv(t, v),
               "numpy_matvec": lambda: x @ vn, "numpy_dot": lambda: x1 @ ones1}
    with _threads(threads):
        calls = {}
        for name, fn in kernels.items():
            t0 = time.perf_counter()
            fn()  # warm-up, and the call count per trial
            calls[name] = max(1, int(math.ceil(min_seconds / max(time.perf_counter() - t0, 1e-7))))
        best = dict.fromkeys(kernels, math.inf)
        for _ in range(max(1, repeats)):
            for name, fn in kernels.items():
                t0 = time.perf_counter()
                for _ in range(calls[name]):
                    fn()
                best[name] = min(best[name], (time.perf_counter() - t0) / calls[name])
    rates = {name: x.nbytes / b for name, b in best.items()}
    kernel = max(rates, key=rates.get)
    return {"bytes": int(x.nbytes), "threads": int(threads), "read_bytes_per_s": rates[kernel], "kernel": kernel,
            "rates": rates}


def ensure_read_bandwidth(hw: dict, sizes_bytes, repeats: int = 15, max_bytes: float = 2 ** 31,
                          refresh: bool = False) -> dict:
    """Add to ``hw["read_bandwidth"]`` (a list of ``{"bytes", "bw_1t", "bw_mt", ...}``) every size of ``sizes_bytes``
    not measured yet, on one thread and on all torch threads; returns ``hw`` (changed in place). Sizes above
    ``max_bytes`` are measured at ``max_bytes`` (far past every cache: DRAM's bandwidth holds beyond it).
    ``refresh``: measure sizes already present again and keep the higher figures (on a shared machine, measure
    before and after the searches a floor bounds)."""
    rows = hw.setdefault("read_bandwidth", [])
    have = {r["bytes"] for r in rows}
    all_threads = max(1, int(hw.get("torch_threads") or torch.get_num_threads()))
    for nb in sorted({int(min(s, max_bytes)) for s in sizes_bytes}):
        old = next((r for r in rows if abs(r["bytes"] - nb) <= 4 * 256), None)
        if old is not None and not refresh:
            continue
        one = measure_read_bandwidth(nb, 1, repeats)
        mt = measure_read_bandwidth(nb, all_threads, repeats) if all_threads > 1 else one
        new = {"bytes": one["bytes"], "bw_1t": one["read_bytes_per_s"],
               "bw_mt": max(one["read_bytes_per_s"], mt["read_bytes_per_s"]), "kernel_1t": one["kernel"],
               "kernel_mt": mt["kernel"], "threads_mt": all_threads}
        if old is None:
            rows.append(new)
            have.add(one["bytes"])
        elif new["bw_1t"] > old["bw_1t"] or new["bw_mt"] > old["bw_mt"]:
            old.update({k: v for k, v in new.items() if k == "bytes" or not k.startswith("bw")})
            old["bw_1t"], old["bw_mt"] = max(old["bw_1t"], new["bw_1t"]), max(old["bw_mt"], new["bw_mt"])
    rows.sort(key=lambda r: r["bytes"])
    return hw


def read_bandwidth(hw: dict, nbytes: float, batch: int = 1) -> float:
    """The read bandwidth (bytes/s) that bounds a scan of ``nbytes`` bytes: measured at the largest size not above
    ``nbytes`` (bandwidth falls as an array leaves each cache level, so that is an upper bound; all sizes above
    ``nbytes``: the highest measured, which is NOT a bound: measure at the footprint, :func:`ensure_read_bandwidth`,
    as the scaling study does for every search's ``floor_bytes``); single-thread for batch 1, all threads for a
    batch. Without a read
    measurement in ``hw``, the copy bandwidth of the old floor (``bandwidth_bytes_per_s``)."""
    rows = hw.get("read_bandwidth") or []
    col = "bw_1t" if batch <= 1 else "bw_mt"
    if not rows:
        return hw["bandwidth_bytes_per_s"] if batch <= 1 else \
            hw.get("bandwidth_mt_bytes_per_s", hw["bandwidth_bytes_per_s"])
    below = [r for r in rows if r["bytes"] <= nbytes * (1 + 1e-6)]
    return float(max(below, key=lambda r: r["bytes"])[col]) if below else float(max(r[col] for r in rows))


def measure_hardware(bandwidth_mb: int = 512, gemm_n: int = 2048, repeats: int = 5,
                     read_sizes_mib=READ_SIZES_MIB) -> dict:
    """Read bandwidth at ``read_sizes_mib`` (:func:`ensure_read_bandwidth`; more sizes are added by the scaling
    study), the copy bandwidth of the old floor for comparison (numpy copy of ``bandwidth_mb`` MiB: (read + written
    bytes) / time, best of ``repeats``, single thread and all torch threads) and the float32 GEMM rate (``gemm_n``
    square matmul, best of ``repeats``; the best of torch on all threads, torch on one thread and numpy)."""
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
    out = {"bandwidth_bytes_per_s": bandwidth, "bandwidth_gb_s": bandwidth / 1e9, "copy_mib": bandwidth_mb,
            "bandwidth_mt_bytes_per_s": bandwidth_mt, "bandwidth_mt_gb_s": bandwidth_mt / 1e9,
            "gemm_gflops_torch": rate_torch / 1e9, "gemm_gflops_torch_1thread": rate_torch_1t / 1e9,
            "gemm_gflops_numpy": rate_numpy / 1e9,
            "gemm_flops_per_s": max(rate_torch, rate_torch_1t, rate_numpy), "gemm_n": gemm_n,
            "read_bandwidth": [],
            "torch_threads": torch.get_num_threads(), "faiss_threads": faiss.omp_get_max_threads(),
            "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "faiss": getattr(faiss, "__version__", "?"),
            "method": "read_bandwidth: fastest streaming reduction (numpy / torch sum, torch / numpy mat-vec) over a "
                      "float32 array of each size, bytes read / best time, one thread (batch-1 floors) and all "
                      "threads (batched floors); bandwidth / bandwidth_mt: numpy / torch copy, (read + written "
                      "bytes) / best time, for comparison only; GEMM: float32 square matmul, best of torch (all "
                      "threads, one thread) and numpy"}
    return ensure_read_bandwidth(out, [m * 2 ** 20 for m in read_sizes_mib], max(15, repeats))


def roofline_ms(bytes_read: float, flops: float, hw: dict, batch: int = 1, footprint: float | None = None) -> float:
    """Lowest possible milliseconds PER QUERY of a search that reads ``bytes_read`` gallery bytes and does ``flops``
    FLOPs per query, when ``batch`` queries share one pass over the gallery. The bandwidth is the read bandwidth
    measured at the size of the data scanned (``footprint``, default ``bytes_read``; :func:`read_bandwidth`): one
    query is read on one thread (faiss parallelises a flat search over queries), so batch 1 uses the
    single-thread bandwidth and a batch the all-thread one."""
    bw = read_bandwidth(hw, bytes_read if footprint is None else footprint, batch)
    t_mem = bytes_read / bw / max(1, batch)
    t_flop = flops / hw["gemm_flops_per_s"]
    return 1e3 * max(t_mem, t_flop)


def flat_floor_ms(n_items: int, dim: int, hw: dict, batch: int = 1, bytes_per_value: int = 4) -> float:
    """Floor of an exact flat inner-product search, per query: gallery bytes / bandwidth for one query,
    max(that / batch, 2 N d / GEMM rate) for a batch."""
    return roofline_ms(n_items * dim * bytes_per_value, 2.0 * n_items * dim, hw, batch)

