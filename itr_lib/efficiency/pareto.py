"""The accuracy / latency Pareto front."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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


