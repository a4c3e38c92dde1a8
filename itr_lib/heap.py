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
``precision``: :func:`heap_state` is recorded in ``metrics.json`` (``"heap"``), not part of a run's identity.
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


def heap_state() -> dict:
    """What applies to this process now: :func:`limit_heap`'s record once it ran, else what it would record."""
    return _done if _done is not None else limit_heap()


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


def time_heap(variant: str, dataset: str, *, adapted: bool = False, steps: int = 6, repeats: int = 2,
              threads: int = 1) -> list[dict]:
    """The heap setting old (``ITR_HEAP=default``) vs new (:func:`limit_heap`) for one method: each timing in a
    process of its own (the setting holds for a whole process), the two alternating ``repeats`` times so the
    machine's load falls on both alike. Each process trains ``steps`` steps after one warm-up and scores val
    twice (:func:`itr_lib.levers.interleaved_timings`, the study's config at its recorded precision rule) and
    reports its peak resident memory. Returns one row per setting with medians and, on ``mmap``, the paired
    speed-ups (old / new) of the step, the val score and one epoch."""
    import json
    import subprocess
    import sys
    from .io import REPO_ROOT, git_commit
    runs = {"default": [], "mmap": []}
    for _ in range(repeats):
        for name in runs:
            env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
            env.update(ITR_HEAP="default" if name == "default" else "mmap", OMP_NUM_THREADS=str(threads),
                       PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
            code = ("import json, sys; from itr_lib.heap import _time_one; "
                    "print('HEAP ' + json.dumps(_time_one(*json.loads(sys.argv[1]))))")
            out = subprocess.run([sys.executable, "-c", code, json.dumps([variant, dataset, adapted, steps, threads])],
                                 capture_output=True, text=True, env=env)
            if out.returncode:
                raise RuntimeError(f"the heap timing of {variant} ({name}) failed:\n{out.stderr[-3000:]}")
            runs[name].append(json.loads(out.stdout.split("HEAP ", 1)[1]))
    rows = []
    import numpy as np
    for name, rs in runs.items():
        step = [float(np.median(r["step"])) for r in rs]
        val = [float(np.median(r["val"])) for r in rs]
        n = rs[0]["steps_per_epoch"]
        row = {"dataset": dataset, "method": variant + (", adapted top" if adapted else ""), "heap": name,
               "threads": threads, "repeats": repeats, "steps": steps, "step_s": round(float(np.median(step)), 4),
               "val_s": round(float(np.median(val)), 4), "peak_rss_gb": round(max(r["peak_rss_gb"] for r in rs), 2),
               "steps_per_epoch": n, "load_1min": os.getloadavg()[0], "git_commit": git_commit()}
        if name == "mmap":
            old = runs["default"]
            sd = [float(np.median(o["step"])) for o in old]
            vd = [float(np.median(o["val"])) for o in old]
            row.update(step_speedup=float(np.median(np.array(sd) / np.array(step))),
                       val_speedup=float(np.median(np.array(vd) / np.array(val))),
                       run_speedup=float(np.median([(a * n + b) / (c * n + d) for a, b, c, d in zip(sd, vd, step, val)])))
        rows.append(row)
    return rows


def _time_one(variant: str, dataset: str, adapted: bool, steps: int, threads: int) -> dict:
    import resource
    import numpy as np
    from .experiments import ADAPTED_CHANGE, study_config
    from .levers import interleaved_timings
    heap = limit_heap()
    cfg = study_config(variant, dataset, 0, **(ADAPTED_CHANGE if adapted else {}))
    t = interleaved_timings({"x": cfg}, threads, steps)
    return {"heap": heap, "step": t["x"]["step"], "val": t["x"]["val"], "steps_per_epoch": t["_steps_per_epoch"],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "median_step": float(np.median(t["x"]["step"]))}
