"""A scaling measurement that needs no trained checkpoint: flat / IVF / IVF-PQ / HNSW at one large gallery size on
synthetic vectors, each approximate index tuned to a recall@10 target against exact search, with its floor.

The "real" vectors are a stand-in (a random anisotropic Gaussian mixture of ``n_real`` unit vectors, ``dim``
dimensions), the gallery grows from them with the same :class:`~itr_lib.efficiency.synthetic.EmbeddingMixture`
the 04 notebook fits to the model's embeddings, and the queries are further mixture samples with noise. So the
timings and floors are real measurements of this machine, while recall depends on the stand-in's structure, not on
the study's embeddings (04_efficiency measures those).

With ``--streamed`` the gallery is never materialised (:mod:`~itr_lib.efficiency.streamed`: chunks drawn,
added to a compressed index trained on a prefix, exact ground truth merged chunk by chunk), so IVF / IVF-PQ can be
measured at a size whose float32 vectors do not fit in memory (10M x 512 = 20 GB); flat is then represented by its
floor at that size (column ``flat_floor_ms``).

CLI (writes a CSV and the hardware JSON beside it)::

    nice -n 15 python -m itr_lib.efficiency.atscale --n 1000000 --dim 512 --kinds flat ivf \\
        --out results/benchmarks/scaling_synthetic_1m.csv
    nice -n 15 python -m itr_lib.efficiency.atscale --n 10000000 --dim 512 --kinds ivfpq --streamed \\
        --out results/benchmarks/scaling_synthetic_10m.csv
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_write_text, write_json
from .hardware import ensure_read_bandwidth, flat_floor_ms, measure_hardware
from .indexes import index_floor_ms
from .scaling import index_series_measure
from .streamed import streamed_index_measure
from .synthetic import EmbeddingMixture, SyntheticGallery

log = logging.getLogger(__name__)


def stand_in_embeddings(n: int, dim: int, clusters: int = 64, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors from ``clusters`` Gaussian clusters, each with its own random covariance of decaying
    spectrum (a stand-in for real image embeddings when no trained model is at hand)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    comp = rng.integers(clusters, size=n)
    out = np.empty((n, dim), dtype=np.float32)
    scale = (1.0 / np.sqrt(1.0 + np.arange(dim))).astype(np.float32)  # decaying spectrum
    for c in range(clusters):
        idx = np.flatnonzero(comp == c)
        a = np.random.default_rng([seed, c]).standard_normal((dim, dim)).astype(np.float32) * scale
        out[idx] = centres[c] + rng.standard_normal((len(idx), dim)).astype(np.float32) @ a.T * 0.6
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def measure_at_scale(n: int, dim: int = 512, kinds: Sequence[str] = ("flat", "ivf"), *, n_real: int = 13000,
                     n_queries: int = 100, target_recall: float = 0.95, repeats: int = 10, warmup: int = 2,
                     index_params: dict | None = None, seed: int = 0, hw: dict | None = None,
                     streamed: bool = False, chunk: int = 65536) -> tuple[pd.DataFrame, dict]:
    """One row per index kind at ``n`` items (see the module docstring; ``streamed``: built chunk by chunk, the
    gallery never held); returns (rows, hardware)."""
    t0 = time.perf_counter()
    real = stand_in_embeddings(n_real, dim, seed=seed)
    mix = EmbeddingMixture(real, seed=seed)
    gallery = SyntheticGallery(real, mix, seed=seed)
    q = mix.sample(n_queries, seed=seed + 10_000)
    q += np.random.default_rng(seed + 1).standard_normal(q.shape).astype(np.float32) * (0.3 / np.sqrt(dim))
    if not streamed:
        gallery.get(n)  # materialised once, outside the timed build
        log.info("gallery of %d x %d grown in %.0f s", n, dim, time.perf_counter() - t0)
    hw = hw or measure_hardware(bandwidth_mb=256, gemm_n=1024, repeats=3, read_sizes_mib=())
    ensure_read_bandwidth(hw, [4.0 * n * dim])  # (measured at 2 GiB at most: DRAM's bandwidth beyond)
    rows, gt = [], {}
    for kind in kinds:
        t1 = time.perf_counter()
        if streamed:
            r = {"index": kind, "n_items": n, **streamed_index_measure(
                kind, gallery, n, q, repeats=repeats, warmup=warmup, index_params=index_params, chunk=chunk,
                target_recall=target_recall, name="--n")}
        else:
            meas = index_series_measure(kind, gallery, q, repeats=repeats, warmup=warmup, hw=hw,
                                        index_params=index_params, gt_cache=gt, target_recall=target_recall)
            r = {"index": kind, "n_items": n, **meas(n), "streamed": False}
        r["extrapolated"] = False
        r["cost_s"] = time.perf_counter() - t1
        r["gallery_kind"] = "synthetic"
        r["gallery"] = mix.describe(f"a stand-in Gaussian mixture of {n_real} unit vectors, dim {dim}")
        rows.append(r)
        log.info("%s at %d: %.3g ms/query, recall@10 %.3f, %.0f s", kind, n, r["ms_per_query"], r["recall_at_10"],
                 r["cost_s"])
    # the read bandwidth at each search's own footprint too (an IVF search reads a few MB of a large index: the
    # DRAM bandwidth of the whole gallery is no upper bound for it)
    ensure_read_bandwidth(hw, [r["floor_bytes"] for r in rows])
    for r in rows:
        r["floor_ms"] = index_floor_ms(r, hw, 1)
        r["floor_ms_batched"] = index_floor_ms(r, hw, n_queries)
        r["flat_floor_ms"] = flat_floor_ms(n, dim, hw, 1)  # an exact scan's floor at this size
        log.info("%s floor %.3g ms (batch 1)", r["index"], r["floor_ms"])
    df = pd.DataFrame(rows)
    df["vs_floor"] = df.ms_per_query / df.floor_ms
    first = ["index", "n_items", "ms_per_query", "recall_at_10", "floor_ms", "extrapolated"]
    return df[first + [c for c in df.columns if c not in first]], hw


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="gallery items")
    ap.add_argument("--dim", type=int, default=512, help="vector dimension (the study's models: 512)")
    ap.add_argument("--kinds", nargs="+", default=["flat", "ivf"], help="flat ivf ivfpq ivfpq_sq8 hnsw")
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists (0: itr_lib.index.default_nlist)")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--streamed", action="store_true",
                    help="build ivf / ivfpq chunk by chunk without holding the gallery (sizes past memory)")
    ap.add_argument("--chunk", type=int, default=65536, help="rows per streamed chunk")
    ap.add_argument("--n-real", type=int, default=13000, help="stand-in 'real' vectors the mixture is fitted to")
    ap.add_argument("--out", required=True, help="CSV to write (the hardware JSON goes beside it)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    params = {"nlist": a.nlist} if a.nlist else None
    df, hw = measure_at_scale(a.n, a.dim, a.kinds, target_recall=a.target_recall, repeats=a.repeats,
                              index_params=params, streamed=a.streamed, chunk=a.chunk, n_real=a.n_real)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, df.to_csv(index=False, float_format="%.6g"))
    write_json(out.with_suffix(".hardware.json"), hw)
    print(df[["index", "n_items", "ms_per_query", "floor_ms", "vs_floor", "flat_floor_ms", "recall_at_10",
              "params"]].to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
