"""The process heap of a training run: large allocations straight from ``mmap`` (glibc's ``M_MMAP_THRESHOLD``).

With glibc's default (a dynamic threshold that climbs up to 32 MiB), the many short-lived tensors of a training
step, of changing sizes, are carved from the arenas and the freed space is rarely given back: the process keeps
growing. Measured on 07's adapted operating point (UCM baseline, image top of 6 blocks + two MiniLM layers, one
epoch of 14 steps, one thread): resident memory 7.4 GB after the epoch (peak 8.3 GB) with the default, 1.3 GB
(peak 3.6 GB) with a fixed 64 KiB threshold, and the epoch (with its validation score) took 95 s instead of 140 s. The RSICD run at
that point reached 15.5 GB, so only one fit in this machine's 24 GB; with the threshold, two run side by side at
about 4.4 GB each. The threshold changes where memory comes from, never a number computed: the same run trains
to bit-identical metrics either way (``tests/test_heap.py``).

:func:`limit_heap` sets it once per process (:func:`itr_lib.train.train` calls it); it is a runtime setting like
``threads`` and ``precision``, recorded in ``metrics.json`` (``"heap"``), not part of a run's identity. Where the
C library is not glibc (macOS, musl) nothing is set and the reason is recorded. ``ITR_HEAP=default`` leaves the
allocator alone (the old behaviour); a ``MALLOC_MMAP_THRESHOLD_`` set in the environment is glibc's own and wins.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
THRESHOLD = 64 * 1024
_done: dict | None = None


def limit_heap(threshold: int = THRESHOLD) -> dict:
    """Serve allocations of ``threshold`` bytes and more from ``mmap`` (once per process; later calls return the
    first call's record). Returns what applies: ``{"mmap_threshold": bytes, "set_by": ...}``, or
    ``{"mmap_threshold": None, "why": ...}`` where nothing was set."""
    global _done
    if _done is not None:
        return _done
    env = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if os.environ.get("ITR_HEAP", "").strip().lower() == "default":
        _done = {"mmap_threshold": None, "why": "ITR_HEAP=default: the C library's default allocator"}
    elif env:
        _done = {"mmap_threshold": int(env) if env.isdigit() else env, "set_by": "MALLOC_MMAP_THRESHOLD_"}
    else:
        _done = _mallopt(threshold)
    if _done.get("why"):
        log.info("heap: %s", _done["why"])
    return _done


def _mallopt(threshold: int) -> dict:
    try:
        gnu = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):
        gnu = None
    if not gnu:
        return {"mmap_threshold": None, "why": "not glibc: the C library's default allocator"}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, int(threshold))
    except (OSError, AttributeError) as e:
        return {"mmap_threshold": None, "why": f"mallopt unavailable ({e}): the C library's default allocator"}
    if ok != 1:
        return {"mmap_threshold": None, "why": f"mallopt(M_MMAP_THRESHOLD, {threshold}) refused: the default"}
    return {"mmap_threshold": int(threshold), "set_by": f"mallopt ({gnu})"}
