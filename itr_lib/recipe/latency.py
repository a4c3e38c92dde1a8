"""Per-query cost of a recipe scoring, under 04_efficiency's protocol, so its point sits on the same accuracy / latency
frontier: batch 1, one thread, faiss flat search over the test gallery, medians over repeats
(:func:`itr_lib.efficiency.methods.measure_method`, mode ``vector``).

What an inference lever adds on top of the trained model's measured search:

- test-time augmentation over V views: an image query is encoded V times (the trainable layers, measured once and
  multiplied by V; the frozen backbone's extraction also runs V times for a new image, which
  ``tables/query_side.csv`` prices per view). Text queries are unchanged (the gallery's averaged image vectors are
  built offline).
- a seed ensemble of m models: measured directly (its vectors are m x D, and each query runs m encoders).
- a hubness correction with a training bank: its per-query extra (``extra_us_per_query_*`` of the inference
  record: the correction applied to one query's scores, the bank's normaliser built offline).

Each measurement is a small JSON record (``<results>/recipe/latency/<spec>--<first run>.json``) reused while its key
(runs, spec, repeats, threads) matches, so the tables rebuild exactly from records.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .levers import InferenceSpec, recipe_dir
from .records import read_record, write_record

REPEATS = 50


def combine_cost(measured, spec: InferenceSpec, hub_cost: dict | None) -> dict:
    """The recipe's per-query milliseconds from the model's measured batch-1 rows (``measured``: a
    :func:`measure_method` table with ``direction``, ``encode_ms``, ``search_ms``, ``total_ms``, ``bytes_per_item``),
    the spec's views and the hubness record's extra cost: ``total_ms`` (one view, as 04 reports it) plus the image
    encoder's median for each further view (image queries) plus the hubness extra. ``ms_per_query`` is the mean of
    the two directions (04's frontier column)."""
    views = max(1, len(spec.tta))
    hub = hub_cost or {}
    out = {"views": views, "ensemble": spec.ensemble, "hubness": spec.hubness}
    for d in ("t2i", "i2t"):
        r = measured[(measured.direction == d) & (measured.batch == 1)]
        if r.empty:
            raise ValueError(f"no batch-1 {d} row in the measured table: measure with batches=(1, ...)")
        r = r.iloc[0]
        more_views = float(r.encode_ms) * (views - 1) if d == "i2t" else 0.0
        extra = float(hub.get(f"extra_us_per_query_{d}", 0.0) or 0.0) / 1000 if spec.hubness else 0.0
        out[f"encode_ms_{d}"] = float(r.encode_ms) + more_views
        out[f"search_ms_{d}"] = float(r.search_ms)
        out[f"hubness_ms_{d}"] = extra
        out[f"ms_per_query_{d}"] = float(r.total_ms) + more_views + extra  # total_ms: 04's column for one view
    out["ms_per_query"] = (out["ms_per_query_t2i"] + out["ms_per_query_i2t"]) / 2
    out["bytes_per_item"] = float(measured.bytes_per_item.iloc[0])
    return out


def measure_recipe(models: Sequence | Callable[[], Sequence], cfgs: Sequence, spec: InferenceSpec, record: dict,
                   results_dir: str | Path, *, repeats: int = REPEATS, threads: int = 1, device: str = "cpu") -> dict:
    """The recipe scoring's per-query cost (:func:`combine_cost`) for ``models`` (one model, or a seed ensemble's
    models, concatenated as :class:`itr_lib.ensemble.EnsembleModel`; or a callable returning them, called only when
    the latency record is missing, so a rebuild from records never loads or retrains a checkpoint), timed on the test
    split of ``cfgs[0]`` at one thread (04's setting); ``record``: the spec's inference record (its hubness cost).
    Cached as a latency record."""
    key = {"runs": [c.run_name() for c in cfgs], "spec": spec.slug(), "repeats": int(repeats), "threads": int(threads),
           "beta": (record.get("spec") or {}).get("beta")}
    path = recipe_dir(results_dir) / "latency" / f"{spec.slug()}--{cfgs[0].run_name()}"
    rec = read_record(path, key)
    if rec is not None:
        return rec["cost"]
    import torch
    from ..efficiency.hardware import set_threads
    from ..efficiency.methods import measure_method
    from ..ensemble import EnsembleModel
    from ..splits import load_split_tensors
    if callable(models):
        models = models()
    model = models[0] if len(models) == 1 else EnsembleModel(list(models), list(cfgs)).eval()
    data = load_split_tensors(cfgs[0], "test")
    before = torch.get_num_threads()
    set_threads(threads)
    try:
        det = measure_method(model, data, "vector", label=spec.slug(), device=device, repeats=repeats, batches=(1,))
    finally:
        set_threads(before)
    hub = (record.get("hubness") or {}).get("cost")
    cost = {**combine_cost(det, spec, hub), "threads": int(threads), "device": device,
            "n_repeats_min": int(det.n_repeats.min())}
    write_record(path, {"key": key, "cost": cost, "measured": det.to_dict("records")})
    return cost


def frontier_rows(final, efficiency) -> "pd.DataFrame":  # noqa: F821
    """04's frontier table for one dataset (``efficiency``) with the recipe's scored rows of ``final`` (one dataset)
    appended as methods ``recipe: <variant> (<scoring>)`` (``..., adapted top`` at the adapted operating point),
    so :func:`itr_lib.plots.efficiency.frontier_figure` draws them on the same axes. Rows without a measured latency are left out."""
    import pandas as pd
    rec = final[final.ms_per_query.notna()] if "ms_per_query" in final else final.iloc[0:0]
    from .records import FROZEN, operating_points, point_label
    op = operating_points(rec)
    add = pd.DataFrame({"method": "recipe: " + rec.variant + " (" + rec.scoring + ")"
                        + pd.Series(["" if o == FROZEN else ", " + point_label(o) for o in op], index=rec.index),
                        "mr": rec.test_mr,
                        "mr_std": rec.test_mr_std, "ms_per_query": rec.ms_per_query, "family": "recipe (07)",
                        "bytes_per_item": rec.bytes_per_item, "device": rec.get("device", "cpu"), "mode": "vector"})
    cols = ["method", "mr", "mr_std", "ms_per_query", "family", "bytes_per_item", "device", "mode", "variant"]
    base = efficiency[[c for c in cols if c in efficiency]] if efficiency is not None and len(efficiency) else None
    out = pd.concat([base, add], ignore_index=True) if base is not None else add.reset_index(drop=True)
    out["ms_per_query"] = out.ms_per_query.astype(float)
    return out[np.isfinite(out.ms_per_query)].reset_index(drop=True)
