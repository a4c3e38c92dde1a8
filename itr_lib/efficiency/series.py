"""A scaling series: gallery sizes, measured while each series' time budget allows, the rest extrapolated with
the log-log slope fitted to the last measured points (``extrapolated=True``)."""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def scaling_sizes(min_items: int = 1000, max_items: int = 1_000_000, per_decade: int = 2) -> list[int]:
    """Geometric gallery sizes from ``min_items`` to ``max_items`` (both included), ``per_decade`` per decade."""
    if max_items < min_items:
        raise ValueError(f"max_items {max_items} < min_items {min_items}")
    n = max(1, int(math.ceil(per_decade * math.log10(max_items / min_items))))
    sizes = sorted({int(round(min_items * (max_items / min_items) ** (i / n))) for i in range(n + 1)})
    return sizes


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


