"""The efficiency table of one dataset (``benchmark_dataset``): every method with a trained run, timed with
:func:`~itr_lib.efficiency.methods.measure_method`, its accuracy over seeds, and the speed-ups over the interactive
reference.

Which runs are timed: the fair-comparison group of each method (column ``setting`` from
``<results_dir>/tables/comparison_plan.csv``, preferred ``"study loss"`` by every :data:`~.specs.METHODS` entry),
its lowest seed's checkpoint. Latency does not depend on the weights, so with ``time_untrained`` a group whose
checkpoints are gone is timed on a model built from its recorded config with fresh weights (column ``weights``:
``"untrained (timing only)"``, else ``"trained"``); mR always comes from the runs' records. An untrained model never
seeds the scaling galleries (:attr:`DatasetResult.untrained`, :func:`~.scaling.scaling_entries`)."""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..io import read_json, write_json
from ..runs import mode_mr, select_runs
from .methods import encode_gallery, measure_method
from .specs import DIRECTIONS, METHODS, MethodSpec

log = logging.getLogger(__name__)


def evaluate_modes(checkpoint: str, modes: Sequence[str], cache_path: Path, device: str = "cpu",
                   data_root: str | None = None, cache_dir: str | None = None) -> dict:
    """Test metrics of a checkpoint in the given :func:`itr_lib.rerank.evaluate_two_stage` modes (``global``,
    ``two_stage``, ``exhaustive``), cached as JSON at ``cache_path`` (recomputed only for missing modes)."""
    from ..scoring import evaluate_two_stage
    cache = read_json(cache_path) if Path(cache_path).is_file() else {}
    todo = [m for m in modes if m not in cache]
    if todo:
        model, cfg = load_run_model(checkpoint, device, data_root, cache_dir)
        data = load_test_split(cfg)
        out = evaluate_two_stage(model, data, device, modes=tuple(todo))
        cache.update(out)
        write_json(cache_path, cache)
    return cache


def with_settings(runs: pd.DataFrame, results_dir: str | os.PathLike) -> pd.DataFrame:
    """``runs`` with a ``setting`` column ("study loss", "authors' loss", "loss ablation: ...") read from
    ``<results_dir>/tables/comparison_plan.csv`` (columns ``run``, ``setting``); NaN for runs the plan does not list,
    and for every run when the file is missing (05_results writes it)."""
    runs = runs.copy()
    plan_path = Path(results_dir) / "tables" / "comparison_plan.csv"
    settings: dict = {}
    if plan_path.is_file():
        plan = pd.read_csv(plan_path)
        if not {"run", "setting"} <= set(plan.columns):
            raise ValueError(f"{plan_path}: columns 'run' and 'setting' expected, found {list(plan.columns)}. Fix: "
                             f"regenerate it with 05_results (python -m itr_lib.study --only 05).")
        settings = dict(zip(plan.run, plan.setting))
    else:
        log.info("%s missing: runs are chosen without their comparison setting", plan_path)
    runs["setting"] = [settings.get(r, np.nan) for r in runs.run] if len(runs) else pd.Series(dtype=object)
    return runs


def untrained_run_model(record: dict, device: str = "cpu", data_root: str | None = None,
                        cache_dir: str | None = None):
    """The model of a recorded run, built from its ``config`` with fresh weights (``torch.manual_seed(seed)``), in
    eval mode: for timing only, when the run's checkpoint is gone (latency does not depend on the weights). Paths
    of another machine (``data_root`` / ``cache_dir`` that do not exist here) fall back to the defaults, as
    :func:`itr_lib.runs.retrain` does; the given ``data_root`` / ``cache_dir`` override them."""
    from ..config import TrainConfig
    from ..train import make_model
    d = dict(record["config"])
    for key in ("data_root", "cache_dir"):
        if d.get(key) and not Path(d[key]).exists():
            d[key] = None
    d.update(run_dir=None, progress=False)
    cfg = TrainConfig.from_dict(d)
    if data_root:
        cfg.data_root = data_root
    if cache_dir:
        cfg.cache_dir = cache_dir
    torch.manual_seed(cfg.seed)
    model = make_model(cfg).to(device)
    model.eval()
    return model, cfg


def load_run_model(checkpoint: str, device: str = "cpu", data_root: str | None = None,
                   cache_dir: str | None = None):
    """``train.load_checkpoint`` with the data root / feature cache overridden when given."""
    from ..train import load_checkpoint
    model, cfg = load_checkpoint(checkpoint, device)
    if data_root:
        cfg.data_root = data_root
    if cache_dir:
        cfg.cache_dir = cache_dir
    return model, cfg


@torch.no_grad()
def real_image_vectors(model, cfg, datasets: Sequence[str], splits: Sequence[str] = ("train", "test"),
                       device: str = "cpu", batch_size: int = 256) -> tuple[np.ndarray | None, list[str]]:
    """The retrieval vectors ``model`` gives every image of ``splits`` of ``datasets`` (their cached frozen
    features, through the run's config with the dataset swapped): the real embeddings a synthetic gallery is fitted
    on. A dataset / split whose data or features are missing is skipped (logged). Returns (vectors or None when
    nothing was found, the ``dataset/split (n)`` parts used)."""
    from ..splits import load_split_tensors
    model.eval()
    parts, used = [], []
    for ds in datasets:
        for split in splits:
            c = copy.copy(cfg)
            c.dataset = ds
            try:
                data = load_split_tensors(c, split)
            except (OSError, ValueError) as e:  # DataError / CacheError are ValueErrors
                log.warning("real embeddings: %s/%s skipped (%s)", ds, split, str(e).splitlines()[0])
                continue
            for a in range(0, data.n_images, batch_size):
                regions, mask = data.image_batch(torch.arange(a, min(a + batch_size, data.n_images)))
                out = model.encode_images(regions.to(device), mask.to(device))
                parts.append(model.image_vectors(out).float().cpu().numpy())
            used.append(f"{ds}/{split} ({data.n_images})")
    return (np.concatenate(parts) if parts else None), used


def load_test_split(cfg, split: str = "test"):
    from ..train import load_split_tensors
    return load_split_tensors(cfg, split)


@dataclass
class DatasetResult:
    table: pd.DataFrame                      # one row per method (efficiency_<dataset>.csv)
    detail: pd.DataFrame                     # one row per method x direction x batch
    notes: list[str]
    models: dict = field(default_factory=dict)   # label -> (model, cfg, data, encoded) for the scaling study
    untrained: set = field(default_factory=set)  # labels of ``models`` timed with fresh weights (timing only)


TRAINED, UNTRAINED = "trained", "untrained (timing only)"   # column ``weights``


def benchmark_dataset(runs: pd.DataFrame, dataset: str, results_dir: str | os.PathLike, *, hw: dict,
                      specs: Sequence[MethodSpec] = METHODS, device: str = "cpu", repeats: int = 20, warmup: int = 3,
                      batch_size: int = 64, k: int = 10, exhaustive_subset: int | None = None,
                      max_seconds: float | None = 60.0, eval_missing_mr: bool = False, data_root: str | None = None,
                      cache_dir: str | None = None, seed: int = 0, keep_models: bool = True,
                      time_untrained: bool = False) -> DatasetResult:
    """Time every method with a trained run on ``dataset``'s test split and build its efficiency table.

    Each method's group of runs is chosen by :func:`itr_lib.runs.select_runs` on ``runs`` with the comparison
    setting added (:func:`with_settings`). ``exhaustive_subset`` applies to the cross-attention reference only (the
    other exhaustive modes are timed against the whole gallery). Methods without a run are skipped with a note; so
    are groups without a checkpoint, unless ``time_untrained``: then the lowest seed's recorded config is built with
    fresh weights (:func:`untrained_run_model`) and timed the same way (``weights`` column, and a note)."""
    results_dir = Path(results_dir)
    runs = with_settings(runs, results_dir)
    notes, details, rows = [], [], []
    loaded: dict[str, tuple] = {}
    chosen: dict[str, str] = {}             # label -> run key of ``loaded``
    untrained_runs: set[str] = set()
    for spec in specs:
        timed, group = select_runs(runs, spec.method, dataset, spec.prefer)
        off = spec.mismatch(group)
        if off:  # a variant row (SelfAlign CRA) never times another variant's run
            notes.append(f"{dataset}: {spec.label}: skipped, no run with {', '.join(f'{k}={spec.prefer[k]}' for k in off)}")
            continue
        if timed is None and (group.empty or not time_untrained):
            why = (f"no trained run of method '{spec.method}'" if group.empty else
                   f"no checkpoint of its runs ({', '.join(group.run)}; set TIME_UNTRAINED to time the recorded "
                   f"config with fresh weights, or retrain: python -m itr_lib.study --retrain '{group.run.iloc[0]}')")
            notes.append(f"{dataset}: {spec.label}: skipped, {why} under {results_dir / 'runs'}")
            continue
        if timed is None:
            timed = group.iloc[0]          # lowest seed (select_runs sorts the group by seed)
            untrained_runs.add(timed.run)
        if timed.run not in loaded:
            if timed.run in untrained_runs:
                model, cfg = untrained_run_model(read_json(timed.metrics_path), device, data_root, cache_dir)
            else:
                model, cfg = load_run_model(timed.checkpoint, device, data_root, cache_dir)
            data = load_test_split(cfg)
            loaded[timed.run] = (model, cfg, data, encode_gallery(model, data, device))
        chosen[spec.label] = timed.run
        model, cfg, data, encoded = loaded[timed.run]
        weights = UNTRAINED if timed.run in untrained_runs else TRAINED
        subset = exhaustive_subset if spec.interactive else None
        det = measure_method(model, data, spec.mode, label=spec.label, device=device, repeats=repeats,
                             warmup=warmup, batch_size=batch_size, k=k, exhaustive_subset=subset, stored=spec.stored,
                             hw=hw, max_seconds=max_seconds, seed=seed, encoded=encoded)
        det["weights"] = weights
        details.append(det)
        mrs = _group_mrs(spec, group, results_dir, eval_missing_mr, device, data_root, cache_dir)
        if not mrs:
            notes.append(f"{dataset}: {spec.label}: no mR for mode '{spec.mr_key}' in the runs' metrics.json "
                         f"(set EVAL_MISSING_MR to compute it from the checkpoints)")
        row = _table_row(spec, det, mrs, group, timed, len(group))
        row["weights"] = weights
        row["n_params"] = int(sum(p.numel() for p in model.parameters()))
        rows.append(row)
    untrained_labels = {lab for lab, run in chosen.items() if run in untrained_runs}
    if untrained_labels:
        notes.append(f"{dataset}: timed untrained (timing only, no checkpoint; mR from the records): "
                     f"{', '.join(sorted(untrained_labels))}")
    table = pd.DataFrame(rows)
    if not table.empty:
        table = _add_speedups(table)
    if details and "search_vs_floor" in pd.concat(details):
        below = pd.concat(details).query("search_vs_floor < 1")
        if not below.empty:
            notes.append(f"{dataset}: {len(below)} measured searches ran faster than their floor "
                         f"({', '.join(sorted(set(below.method)))}): the hardware measurement underestimates this "
                         f"machine (read bandwidth or GEMM rate measured while the machine was loaded); "
                         f"rerun on a quiet machine")
    result = DatasetResult(table, pd.concat(details, ignore_index=True) if details else pd.DataFrame(), notes)
    if keep_models:
        result.models = {lab: loaded[run] for lab, run in chosen.items()}
        result.untrained = untrained_labels
    return result


def _group_mrs(spec: MethodSpec, group: pd.DataFrame, results_dir: Path, eval_missing_mr: bool, device: str,
               data_root: str | None, cache_dir: str | None) -> list[float]:
    """The mR of ``spec``'s mode for every run (seed) of the group, from its record (or the modes cache, or
    evaluated from its checkpoint with ``eval_missing_mr``)."""
    mrs = []
    for _, r in group.iterrows():
        m = read_json(r.metrics_path)
        cache_path = results_dir / "efficiency" / "modes" / f"{r.run}.json"
        extra = read_json(cache_path) if cache_path.is_file() else None
        v = mode_mr(m, spec.mr_key, extra=extra)
        if v is None and eval_missing_mr and r.checkpoint is not None:
            extra = evaluate_modes(r.checkpoint, [spec.mr_key], cache_path, device, data_root, cache_dir)
            v = mode_mr(m, spec.mr_key, extra=extra)
        if v is not None:
            mrs.append(v)
    return mrs


TABLE_COLUMNS = ["method", "ms_per_query_t2i", "ms_per_query_i2t", "bytes_per_item", "speedup_vs_interactive", "mr"]


def _table_row(spec: MethodSpec, det: pd.DataFrame, mrs: list, group: pd.DataFrame, timed, n_runs: int) -> dict:
    def get(direction, batch_one, col):
        d = det[det.direction == direction]
        d = d[d.batch == 1] if batch_one else d[d.batch == d.batch.max()]
        return float(d[col].iloc[0]) if not d.empty and col in d else np.nan
    row = {"method": spec.label,
           "ms_per_query_t2i": get("t2i", True, "total_ms"), "ms_per_query_i2t": get("i2t", True, "total_ms"),
           "bytes_per_item": get("t2i", True, "bytes_per_item"), "speedup_vs_interactive": np.nan,
           "mr": float(np.mean(mrs)) if mrs else np.nan,
           "mr_std": float(np.std(mrs, ddof=1)) if len(mrs) > 1 else (0.0 if mrs else np.nan),
           "n_seeds": len(mrs), "mode": spec.mode, "family": spec.family, "mr_source": spec.mr_key}
    row["ms_per_query"] = float(np.nanmean([row["ms_per_query_t2i"], row["ms_per_query_i2t"]]))
    for dr in DIRECTIONS:
        for col in ("encode_ms", "search_ms", "rerank_ms", "floor_ms", "search_vs_floor"):
            row[f"{col}_{dr}"] = get(dr, True, col)
        row[f"batched_ms_per_query_{dr}"] = get(dr, False, "total_ms")
        row[f"batched_search_vs_floor_{dr}"] = get(dr, False, "search_vs_floor")
    row["batch_size"] = int(det.batch.max()) if not det.empty else np.nan
    row["bytes_per_caption"] = get("i2t", True, "bytes_per_item")
    row["n_images"] = get("t2i", True, "n_gallery")
    row["n_texts"] = get("i2t", True, "n_gallery")
    ex = det.extrapolated_from.dropna()
    row["extrapolated_from"] = int(ex.min()) if not ex.empty else np.nan
    row["train_s_per_epoch"] = float(group.train_s_per_epoch.mean()) if not group.empty else np.nan
    row["train_device"] = ",".join(sorted({str(x) for x in group.train_device.dropna()}))
    row["run"] = timed.run
    row["variant"] = timed.variant
    row["seeds"] = ",".join(str(s) for s in sorted(group.seed))
    row["device"] = det.device.iloc[0] if not det.empty else ""
    row["threads"] = int(det.threads.iloc[0]) if not det.empty else np.nan
    row["n_repeats_min"] = int(det.n_repeats.min()) if not det.empty else 0
    return row


def _add_speedups(table: pd.DataFrame) -> pd.DataFrame:
    t = table.copy()
    ref = t[t.method.isin([s.label for s in METHODS if s.interactive])]
    for col, suffix in (("ms_per_query", ""), ("ms_per_query_t2i", "_t2i"), ("ms_per_query_i2t", "_i2t")):
        t[f"speedup_vs_interactive{suffix}"] = float(ref[col].iloc[0]) / t[col] if not ref.empty else np.nan
    return t


def speedup_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Speed-up of each method over the interactive reference (SCAN), per dataset (mean of both directions
    and per direction, batch 1)."""
    rows = []
    for ds, t in tables.items():
        for _, r in t.iterrows():
            rows.append({"dataset": ds, "method": r.method, "ms_per_query": r.ms_per_query,
                         "speedup_vs_interactive": r.speedup_vs_interactive,
                         "speedup_vs_interactive_t2i": r.get("speedup_vs_interactive_t2i", np.nan),
                         "speedup_vs_interactive_i2t": r.get("speedup_vs_interactive_i2t", np.nan)})
    return pd.DataFrame(rows)


