"""Timing helpers: phases timed per run (untimed preparation, synchronisation after each phase), medians."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch


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



def _median_ms(fn: Callable[[int], object], repeats: int, warmup: int, max_seconds: float | None,
               sync: Callable[[], None] = lambda: None) -> tuple[float, int]:
    t = time_phases(lambda r: r, [fn], repeats, warmup, max_seconds, sync)
    return 1e3 * float(np.median(t[:, 0])), len(t)

