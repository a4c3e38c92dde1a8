"""The process heap of a training run: optionally, large allocations straight from ``mmap`` (glibc's
``M_MMAP_THRESHOLD``), a *memory* lever, off by default.

With glibc's default (a dynamic threshold that climbs up to 32 MiB), the short-lived tensors of a training step, of
changing sizes, are carved from the arenas and much of the freed space is not given back, so the process grows.
Measured on 07's adapted point (UCM baseline, image top of 6 blocks + two MiniLM layers, one epoch of 14 steps and
its validation score, one thread, beside other training processes): resident memory 7.4 GB after the epoch (peak
8.3 GB) with the default, 1.3 GB (peak 3.6 GB) with a 64 KiB threshold and 1.4 GB with 1 MiB. An RSICD run at that
point reached 15.5 GB with the default, so only one fit in this machine's 24 GB; with 1 MiB (set through the
environment) two ran side by side at 4.4-5.7 GB each.

It costs speed: ``python -m itr_lib.bench heap --dataset ucm`` (each setting in its own process, alternating, two
repeats of 6 steps and 2 val scores, one thread, load 2-4; ``results/benchmarks/heap_ucm.csv``) measured the 1 MiB
threshold at 0.75x (baseline), 0.74x (TGDT) and 0.72x (baseline with the image top) of the default's step speed,
val scoring 0.60-0.84x. Earlier single-epoch timings under changing load (95 s against 140 s, then 80 s against
80 s) were noise. So it is **off by default**; ``ITR_HEAP=mmap`` switches it on for a machine whose memory, not
its cores, limits how many runs train at once (two runs at 0.72x each still train 1.44 runs' worth at a time where
only one fitted). The threshold changes where memory comes from, never a number computed: a run trains to
bit-identical metrics either way (``tests/test_heap.py``). It is a runtime setting like ``threads`` and
``precision``: :func:`limit_heap`'s record is in ``metrics.json`` (``"heap"``), not part of a run's identity.
:func:`limit_heap` applies it once per process (:func:`itr_lib.train.train` calls it); glibc only (elsewhere
nothing is set and the reason is recorded); a ``MALLOC_MMAP_THRESHOLD_`` in the environment is glibc's own and is
recorded as such.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
THRESHOLD = 1 << 20  # 1 MiB
_done: dict | None = None


def limit_heap(threshold: int = THRESHOLD) -> dict:
    """Serve allocations of ``threshold`` bytes and more from ``mmap`` when ``ITR_HEAP=mmap`` (once per process;
    later calls return the first call's record). Returns what applies: ``{"mmap_threshold": bytes, "set_by": ...}``,
    or ``{"mmap_threshold": None, "why": ...}`` where nothing was set."""
    global _done
    if _done is not None:
        return _done
    mode = os.environ.get("ITR_HEAP", "").strip().lower()
    if mode not in ("", "default", "mmap"):
        raise ValueError(f"ITR_HEAP={mode!r}: use 'mmap' (large tensors from mmap, a bounded heap, slower steps) or "
                         f"'default' / unset (glibc's allocator; itr_lib.heap)")
    env = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    if env:
        _done = {"mmap_threshold": int(env) if env.isdigit() else env, "set_by": "MALLOC_MMAP_THRESHOLD_"}
    elif mode != "mmap":
        _done = {"mmap_threshold": None, "why": "the C library's default allocator (ITR_HEAP=mmap bounds the heap)"}
    else:
        _done = _mallopt(threshold)
    if _done.get("why"):
        log.debug("heap: %s", _done["why"])
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

