"""Query-side cost against gallery size: the query encoder (frozen MiniLM + the method's trainable layers) is part
of every method's latency; this table puts it beside each search at 1K, 100K and 1M items and says which
dominates (``query_side.csv``)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .targets import primary_gallery

SIZES = (1000, 100_000, 1_000_000)


def minilm_ms_per_caption(feature_csv: str | Path | None) -> float:
    """Milliseconds per caption of the frozen text encoder, from ``results/benchmarks/feature_extraction.csv``
    (``kind == "text"`` rows: total seconds / total items, i.e. batched throughput, not batch-1 latency); NaN
    when the file or its text rows are missing."""
    if feature_csv is None or not Path(feature_csv).is_file():
        return np.nan
    f = pd.read_csv(feature_csv)
    t = f[f.kind == "text"] if "kind" in f else f.iloc[0:0]
    return float(1e3 * t.seconds.sum() / t["items"].sum()) if len(t) and t["items"].sum() > 0 else np.nan


MAX_SIZE_RATIO = 10.0  # a series' row stands in for a size at most one decade away (10M for 1M, never for 1K)


def _series_at(scaling: pd.DataFrame, name: str, n: int) -> pd.Series | None:
    """The row of series ``name`` at the size nearest ``n`` (log scale), or None when it has no row within a factor
    ``MAX_SIZE_RATIO`` of ``n`` (a kind measured only at 10M says nothing about a 1K gallery)."""
    s = scaling[scaling["index"] == name]
    if s.empty:
        return None
    dist = np.abs(np.log(s.n_items.astype(float)) - np.log(n))
    i = int(np.argmin(dist))
    return s.iloc[i] if dist.iloc[i] <= np.log(MAX_SIZE_RATIO) + 1e-9 else None


def query_side_table(table: pd.DataFrame, scaling: pd.DataFrame, *, minilm_ms: float = np.nan,
                     sizes: Sequence[int] = SIZES) -> pd.DataFrame:
    """One row per (method, search, gallery size): ``encode_ms`` (MiniLM per caption + the method's trainable
    text encoder, ``encode_ms_t2i`` of the efficiency table, batch 1), ``search_ms`` (text-to-image search at that
    size from ``scaling``: every index kind for vector methods, the method's own series for fine-grained ones; the
    nearest size measured, ``n_items_used`` and ``extrapolated`` say which), their sum and ``dominant``."""
    rows = []
    sc = primary_gallery(scaling)
    kinds = [k for k in ("flat", "ivf", "ivfpq", "ivfpq_sq8", "hnsw") if (sc["index"] == k).any()] if not sc.empty else []
    for _, m in table.iterrows():
        own = (sc["index"] == m.method).any() if not sc.empty else False
        searches = [m.method] if own else (kinds if m.get("mode", "vector") == "vector" else [])
        for search in searches:
            for n in sizes:
                r = _series_at(sc, search, n)
                if r is None:
                    continue
                enc = float(np.nansum([minilm_ms, m.get("encode_ms_t2i", np.nan)]))
                srch = float(r.ms_per_query)
                rows.append({"method": m.method, "search": search, "n_items": int(n),
                             "n_items_used": int(r.n_items), "extrapolated": bool(r.extrapolated),
                             "minilm_ms": minilm_ms, "encoder_ms": float(m.get("encode_ms_t2i", np.nan)),
                             "encode_ms": enc, "search_ms": srch, "total_ms": enc + srch,
                             "dominant": "encode" if enc > srch else "search"})
    return pd.DataFrame(rows)
