"""The run store: where training runs live, how they are trained (or reused), found, read and re-trained.

Why one module of ~480 lines: it is the single home of everything that reads or writes runs (one run store);
splitting it would bring back the several places that each globbed runs their own way.

Layout of a results folder (``results/<profile>/``):

- ``runs/<run>/``: a run's checkpoints (``best.pt``, ``last.pt``), ``metrics.json``, ``log.jsonl`` and
  ``test_ranks.npz``; not committed (large).
- ``metrics/<run>.json`` and ``metrics/<run>.ranks.npz``: the published copy of every finished run (committed):
  what every table is built from, and the record that makes a rerun skip the run on a fresh clone.

A run is named by its config (:meth:`itr_lib.config.TrainConfig.run_name`), so it is looked up by a config or a
query on config fields, never by a typed name. Every reader of runs goes through this module:
:func:`run_grid` (train or reuse), :func:`find_runs` / :func:`select_runs` (the runs of a method, for timing),
:func:`find_checkpoint` (a checkpoint by config query), :func:`runs_frame` (one table row per run and mode),
:func:`load_hits` (per-query hits for paired comparisons), :func:`retrain` (rebuild missing checkpoints).
"""
from __future__ import annotations

import fnmatch
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from .config import TrainConfig, config_identity, dataset_name, group_key, variant_label
from .io import read_json, write_json
from .recordio import RANKS, RunStoreError, publish_record, read_ranks, read_record, record_problem
from .recordio import relativize_records  # noqa: F401 - the run store's one-off rewrite of old records

log = logging.getLogger(__name__)

METRICS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "mr"]


# ----------------------------------------------------------------------------------------------- training grids
def _train_one(cfg_dict: dict, threads: int | None, results_dir: str | None = None) -> dict:
    """Train (or resume, or reuse) one run under its lock file and publish it; the task a Dask worker executes
    (importable, so any worker process can run it). Publishing here, on the worker, records a finished run even when
    the runner that asked for it has gone (Ctrl-C with a remote cluster)."""
    import torch
    from .cluster import RunLock
    from .train import train
    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig.from_dict(cfg_dict)
    fresh = not Path(cfg.run_dir).exists()
    try:
        with RunLock(cfg.run_dir):
            try:
                out = train(cfg)
            except BaseException:
                _drop_if_empty(Path(cfg.run_dir), fresh)
                raise
            if results_dir is not None:
                publish(cfg, Path(results_dir))
    except BaseException:
        try:
            Path(cfg.run_dir).parent.rmdir()  # runs/ itself, once the lock is gone, when nothing else is in it
        except OSError:
            pass
        raise
    return out


def _drop_if_empty(run_dir: Path, fresh: bool) -> None:
    """A run folder this call created whose training failed before its first checkpoint holds nothing to resume
    from (a refused config, a missing cache): remove it (under the run's lock), so failed configs leave no empty run
    folders."""
    if fresh and run_dir.is_dir() and not any((run_dir / f).exists() for f in ("last.pt", "best.pt", "metrics.json")):
        shutil.rmtree(run_dir, ignore_errors=True)


def publish(cfg: TrainConfig, results_dir: Path) -> None:
    """Record a finished run in ``<results_dir>/metrics/``: its test ranks, then its metrics.json (each atomic, the
    JSON last: a record is complete or absent; :func:`itr_lib.recordio.publish_record`)."""
    publish_record(cfg.run_dir, Path(results_dir) / "metrics")


def recorded(cfg: TrainConfig, results_dir: Path) -> dict | None:
    """The published metrics of ``cfg``'s run (``<results_dir>/metrics/<run>.json``), or None when not recorded,
    or recorded incompletely (ranks missing, a file unreadable: logged, and the run is run again, which re-records
    it from its run folder or retrains it)."""
    run = Path(cfg.run_dir).name if cfg.run_dir else cfg.run_name()
    path = Path(results_dir) / "metrics" / f"{run}.json"
    if not path.is_file():
        return None
    problem = record_problem(path)
    if problem is not None:
        log.warning("run %s is recorded incompletely, so it runs again: %s", run, problem)
        return None
    rec = read_record(path)
    if rec.get("config_identity") != cfg.identity():
        raise RunStoreError(f"{path} records another configuration (field 'config_identity' differs from run "
                            f"{run}). Fix: delete {path} (and runs/{run}) to retrain it.")
    return rec


def run_grid(configs: list, results_dir: str | Path, progress: bool | None = None, workers: int | None = None,
             threads: int | None = None, publish_runs: bool = True, scheduler: str | None = None,
             client=None, retries: int = 2) -> list[dict]:
    """Train (or reuse) every config; each run lives in ``<results_dir>/runs/<run_name>/`` and its metrics
    (and test ranks) are copied to ``<results_dir>/metrics/``. Returns the metrics of all runs, in order.
    A run recorded in ``metrics/`` is reused as recorded, whether or not its run folder exists (checkpoints are
    not committed; :func:`retrain` rebuilds them), so a study rerun on a fresh clone trains only what is missing.

    Where the runs train (:mod:`itr_lib.cluster`): on ``client``, else on the Dask scheduler ``scheduler`` or
    ``$DASK_SCHEDULER_ADDRESS`` (the study runner sets it for its notebooks), else on a local Dask cluster of
    ``workers`` processes (default: one per core) with ``threads`` torch threads each (default 1): on a small CPU,
    two single-threaded runs use the cores far better than one two-threaded run. ``workers=1`` trains in this
    process, one run after the other (tests, debugging), and so does a single run to train when no scheduler is
    given (starting a local cluster for it would only add its start-up). Every run trains under its lock file
    (:class:`itr_lib.cluster.RunLock`), so two runners on one results folder never train the same run at once;
    a run whose worker died is rescheduled on another worker and resumes from its ``last.pt`` (and submitted again,
    at most ``retries`` times, when Dask gives up on it: ``KilledWorker``); any other error is raised at once, never
    retried (:mod:`itr_lib.failures`). Missing feature caches are built first (:mod:`itr_lib.prepare`); a recorded
    run reused says so (``reused <run>, test mR x``).
    ``publish_runs=False`` leaves ``metrics/`` untouched (the retrained runs of :func:`retrain`)."""
    from tqdm.auto import tqdm
    from .io import progress_enabled
    results_dir = Path(results_dir).resolve()
    for cfg in configs:
        if cfg.run_dir is None:
            cfg.run_dir = str(results_dir / "runs" / cfg.run_name())
    out: list[dict | None] = [None] * len(configs)
    if publish_runs:  # a run already recorded in metrics/ is finished, even where its checkpoint is gone
        for i, cfg in enumerate(configs):
            out[i] = recorded(cfg, results_dir)
        _say_reused([m for m in out if m is not None])
    todo = [i for i in range(len(configs)) if out[i] is None]
    if not todo:
        return out
    from .prepare import ensure_run_caches
    ensure_run_caches([configs[i] for i in todo], progress)  # a fresh clone: build what 00_data_prep would
    dest = str(results_dir) if publish_runs else None
    bar = tqdm(total=len(todo), desc="runs", disable=not progress_enabled(progress))
    try:
        from .cluster import scheduler_address
        on_cluster = client is not None or scheduler_address(scheduler) is not None
        in_process = (workers == 1 and client is None and not scheduler) or \
            (workers is None and len(todo) == 1 and not on_cluster)
        if in_process:
            for i in todo:
                out[i] = _train_one(asdict(configs[i]), threads, dest)
                bar.update()
        else:
            _grid_on_dask(configs, todo, out, dest, bar, workers, threads or 1, scheduler, client, retries)
    finally:
        bar.close()
    return out


def _say_reused(recs: list[dict], most: int = 8) -> None:
    """One line per recorded run reused instead of trained (``reused <run>, test mR x``); a count beyond ``most``."""
    for m in recs[:most]:
        print(f"reused {m['run']}, test mR {mode_mr(m):.2f}", flush=True)
    if len(recs) > most:
        print(f"reused {len(recs) - most} more recorded runs", flush=True)


def _grid_on_dask(configs, todo, out, dest, bar, workers, threads, scheduler, client, retries) -> None:
    from distributed import as_completed
    from .cluster import check_workers, connect
    from .failures import one_line, worker_lost
    own = None
    if client is None:
        own = connect(scheduler, n_workers=workers, threads=threads)
        client = own.client
        if own.local is not None:
            log.info("local Dask cluster of %d workers; dashboard %s", own.n_workers(), own.dashboard)
    futs = {}
    try:
        readable = {p for i in todo for p in (configs[i].data_root, configs[i].cache_dir) if p}
        writable = {str(Path(configs[i].run_dir).parent) for i in todo} | ({dest} if dest else set())
        check_workers(client, readable, writable)
        # the key is the run's folder, so two runners on one scheduler share one task instead of training it twice;
        # no Dask retries: a deterministic error (bad value, missing data, full disk) fails at once, and only a lost
        # worker (failures.worker_lost) submits the run again (it resumes from last.pt), at most ``retries`` times
        def submit(i: int, attempt: int = 0):
            key = _task_key(configs[i].run_dir) + (f"-retry{attempt}" if attempt else "")
            return client.submit(_train_one, asdict(configs[i]), threads, dest, retries=0, key=key)
        futs = {submit(i): i for i in todo}
        tries = dict.fromkeys(todo, 0)
        running = as_completed(list(futs), loop=client.loop)
        for f in running:
            i = futs.pop(f)
            if f.status == "error" and worker_lost(f.exception()) and tries[i] < retries:
                tries[i] += 1
                log.warning("%s: a worker was lost (%s); submitting it again", configs[i].run_name(),
                            one_line(f.exception()))
                g = submit(i, tries[i])
                futs[g] = i
                running.add(g)
                continue
            out[i] = f.result()
            bar.update()
            left = len(futs)
            bar.set_postfix(running=min(left, _n_running(client)), left=left, refresh=False)
            log.info("finished %s (%d left)", configs[i].run_name(), left)
    except BaseException:  # Ctrl-C, an error: drop what has not run; finished runs are published already
        if futs:
            client.cancel(list(futs), force=True)
        raise
    finally:
        if own is not None:
            own.close()


def _task_key(run_dir: str) -> str:
    import hashlib
    return f"train-{Path(run_dir).name}-{hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:8]}"


def _n_running(client) -> int:
    try:
        return sum(len(v) for v in client.processing().values())
    except Exception:  # noqa: BLE001 - progress only
        return 0


# ----------------------------------------------------------------------------------------------- reading runs
def records(results_dir: str | Path) -> dict[str, tuple[Path, str | None]]:
    """Every finished run under ``results_dir``: ``{run: (metrics path, checkpoint path or None)}``. The metrics
    are read from ``metrics/<run>.json`` when present, else from ``runs/<run>/metrics.json``; a checkpoint is
    ``runs/<run>/best.pt`` of a finished run (a run folder without metrics.json is unfinished and ignored)."""
    results_dir = Path(results_dir)
    found: dict[str, tuple[Path, str | None]] = {}
    for ck in sorted((results_dir / "runs").glob("*/best.pt")):
        if (ck.parent / "metrics.json").is_file():
            copy = results_dir / "metrics" / f"{ck.parent.name}.json"
            found[ck.parent.name] = (copy if copy.is_file() else ck.parent / "metrics.json", str(ck))
    alone = sorted((results_dir / "metrics").glob("*.json")) + sorted((results_dir / "runs").glob("*/metrics.json"))
    for mpath in alone:
        found.setdefault(mpath.parent.name if mpath.name == "metrics.json" else mpath.stem, (mpath, None))
    return dict(sorted(found.items()))


def _read_record(mpath: Path) -> dict | None:
    """A run record, or None for a JSON that is not one (no 'config' / 'test'); an unreadable file stops the
    caller with one line naming it (:func:`itr_lib.recordio.read_record`): a skipped record would silently drop a
    seed from every table built on it."""
    m = read_record(mpath)
    return m if "config" in m and "test" in m else None


def scored_variant(metrics: dict) -> str:
    """The variant label of a record (:func:`itr_lib.config.variant_label`) naming the val images its checkpoint
    was actually selected on: the record's ``val_images`` where ``val_images_per_epoch`` asked for more than the
    split holds (UCM's val split has 210 images, so "val 1000" selected on 210)."""
    cfg, n = dict(metrics["config"]), metrics.get("val_images")
    if cfg.get("val_images_per_epoch") and n:
        cfg["val_images_per_epoch"] = min(int(cfg["val_images_per_epoch"]), int(n))
    return variant_label(cfg)


def find_runs(results_dir: str | Path) -> pd.DataFrame:
    """One row per finished run: run, method, dataset, seed, variant, group (config without the seed), checkpoint
    (or None: usable for mR only), metrics_path, train_s_per_epoch (mean of the history's ``train_seconds``),
    epochs_run, train_device, lca, cra, text_encoder."""
    rows = []
    for run, (mpath, ck) in records(results_dir).items():
        m = _read_record(mpath)
        if m is None:
            continue
        cfg = m["config"]
        hist = [h["train_seconds"] for h in m.get("history", []) if "train_seconds" in h]
        rows.append({"run": run, "method": m.get("method", cfg.get("method")), "dataset": m.get("dataset"),
                     "seed": m.get("seed", cfg.get("seed")), "variant": scored_variant(m), "group": group_key(cfg),
                     "text_encoder": cfg.get("text_encoder"), "lca": cfg.get("lca"), "cra": cfg.get("cra"),
                     "base_loss": cfg.get("base_loss"), "tie_rule": m.get("tie_rule", "index"),
                     "checkpoint": ck, "metrics_path": str(mpath),
                     "train_s_per_epoch": float(np.mean(hist)) if hist else np.nan,
                     "epochs_run": len(hist), "train_device": m.get("device")})
    cols = ["run", "method", "dataset", "seed", "variant", "group", "text_encoder", "lca", "cra", "base_loss",
            "tie_rule", "checkpoint", "metrics_path", "train_s_per_epoch", "epochs_run", "train_device"]
    return pd.DataFrame(rows, columns=cols)


def select_runs(runs: pd.DataFrame, method: str, dataset: str,
                prefer: dict | None = None) -> tuple[pd.Series | None, pd.DataFrame]:
    """The run whose checkpoint is used (lowest seed) and every run of its configuration (all seeds, for mR).

    Among several trained configurations of the method: those matching ``prefer`` (column -> value, applied in
    order while something matches), then the one with a checkpoint and the most seeds, then the longest
    schedule, then text encoder MiniLM, then the variant name."""
    d = runs[(runs.method == method) & (runs.dataset == dataset)]
    if d.empty:
        return None, d
    for key, val in (prefer or {}).items():
        sel = d[d[key] == val]
        if not sel.empty:
            d = sel
    groups = []
    for g, gd in d.groupby("group"):
        with_ck = gd[gd.checkpoint.notna()]
        groups.append((with_ck.empty, -gd.seed.nunique(), -int(gd.epochs_run.max()),
                       gd.text_encoder.iloc[0] != "minilm", gd.variant.iloc[0], g))
    groups.sort()
    gd = d[d.group == groups[0][-1]].sort_values("seed")
    with_ck = gd[gd.checkpoint.notna()]
    return (with_ck.iloc[0] if not with_ck.empty else None), gd


def _find_mr(v, protocol: str = "standard"):
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, dict):
        if "mr" in v:
            return float(v["mr"])
        for key in (protocol, "test"):
            if key in v:
                r = _find_mr(v[key], protocol)
                if r is not None:
                    return r
    return None


def mode_mr(metrics: dict, key: str = "test", protocol: str = "standard", extra: dict | None = None) -> float | None:
    """Test mR of a run for a retrieval mode: ``"test"`` is the run's own test score (the model's ``similarity``:
    exhaustive for TGDT / MrSw / SCAN, the student for ALADIN); other keys (``global``, ``two_stage``,
    ``exhaustive``) are looked up in ``metrics['extra_eval']``, ``metrics['test']`` and ``extra`` (a cache of
    evaluated modes), as a number, ``{'mr': ...}`` or ``{'standard': {'mr': ...}}``; None when absent."""
    if key == "test":
        return _find_mr(metrics.get("test", {}), protocol)
    names = [key, key.replace("_", "-"), key.replace("-", "_")]
    for src in (metrics.get("extra_eval") or {}, metrics.get("test") or {}, extra or {}):
        for nm in names:
            for cand in (nm, f"{nm}_mr"):
                if cand in src:
                    r = _find_mr(src[cand], protocol)
                    if r is not None:
                        return r
    return None


def matches(cfg: dict, query: dict) -> bool:
    """Whether a recorded config matches a query (field -> value; ``dataset`` by its short name). The fields added
    later with a default (:data:`itr_lib.config.ADDED_LATER_DEFAULTS`: the trained image / text tops) must be at the
    query's value, their default when the query does not name them: a query for a run on the frozen backbones (a
    config's identity leaves those fields out at their defaults) must not find a run with a trained top."""
    from .config import ADDED_LATER_DEFAULTS
    for k, v in {**ADDED_LATER_DEFAULTS, **query}.items():
        got = dataset_name(cfg.get("dataset", "")) if k == "dataset" else cfg.get(k, ADDED_LATER_DEFAULTS.get(k))
        if got != v:
            return False
    return True


def find_checkpoint(results_dir: str | Path, **query) -> Path:
    """The ``best.pt`` of a finished run under ``<results_dir>/runs/`` whose config matches ``query``
    (e.g. ``dataset="rsicd", method="selfalign", lca=True, cra=False, seed=0``); among several, the lowest seed,
    then the newest. The error names the query and how to get the checkpoint."""
    found = []
    for run, (mpath, ck) in records(results_dir).items():
        if ck is None:
            continue
        m = _read_record(mpath)
        if m is not None and matches(m["config"], query):
            found.append((m["config"].get("seed", 0), -Path(ck).stat().st_mtime, ck))
    if not found:
        recorded_only = [run for run, (mpath, ck) in records(results_dir).items()
                         if ck is None and (m := _read_record(mpath)) is not None and matches(m["config"], query)]
        hint = (f"retrain it from its record: python -m itr_lib.study --profile <profile> --retrain "
                f"'{recorded_only[0]}'" if recorded_only else
                "train it first (the profile's training notebooks write runs there)")
        raise FileNotFoundError(f"no finished run matching {query} with a checkpoint under "
                                f"{Path(results_dir) / 'runs'}. Fix: {hint}.")
    return Path(min(found)[2])


# ----------------------------------------------------------------------------------------------- table rows
def run_row(metrics: dict, protocol: str = "standard") -> dict:
    """One flat row of a finished run: config summary, test metrics (by protocol), val rsum, costs, the tie
    rule of its metrics and, where recorded, the optimistic / pessimistic tie bounds of mR."""
    cfg = metrics["config"]
    test = metrics["test"][protocol] if protocol in metrics["test"] else metrics["test"]["standard"]
    row = {"dataset": metrics["dataset"], "method": cfg["method"], "variant": scored_variant(metrics),
           "seed": cfg["seed"], "run": metrics["run"], "protocol": protocol, "mode": "",
           **{k: test[k] for k in METRICS}, "val_rsum": metrics["val"]["standard"]["rsum"],
           "best_epoch": metrics["best_epoch"], "epochs": metrics["epochs"],
           "train_seconds": metrics["train_seconds"], "retrieval_vector_dim": metrics["retrieval_vector_dim"],
           "lca": cfg.get("lca", False), "cra": cfg.get("cra", False), "codebook_size": cfg.get("codebook_size"),
           "base_loss": cfg.get("base_loss"), "false_negatives": cfg.get("false_negatives"),
           "captions_per_step": metrics.get("captions_per_step") or _resolved_captions(cfg),
           "val_images": metrics.get("val_images"), "tie_rule": metrics.get("tie_rule", "index"),
           "dim": cfg.get("dim"), "mlp": cfg.get("mlp", False), "threads": metrics.get("threads"),
           "length_buckets": cfg.get("length_buckets"), "relabelled": "relabelled" in metrics}
    row.update(_bounds(metrics["test"], protocol))
    return row


def _resolved_captions(cfg: dict) -> str:
    """The caption rule a record without the resolved field ran ("auto": all with InfoNCE, else one)."""
    c = cfg.get("captions_per_step", "auto")
    return c if c != "auto" else ("all" if cfg.get("base_loss") == "infonce" else "one")


def _bounds(bundle: dict, protocol: str) -> dict:
    return {f"mr_{rule}": bundle[f"{protocol}_{rule}"]["mr"] if f"{protocol}_{rule}" in bundle else np.nan
            for rule in ("optimistic", "pessimistic")}


def run_rows(metrics: dict, protocol: str = "standard") -> list[dict]:
    """The rows of one run: one, or for models with several inference modes (TGDT global / two-stage /
    exhaustive; ALADIN student / re-ranked / teacher; MrSw) one per mode, the mode in the variant."""
    base = run_row(metrics, protocol)
    modes = {k: v for k, v in (metrics.get("extra_eval") or {}).items() if k != "details"}
    if not modes or protocol != "standard":
        return [base]
    rows = []
    for mode, res in modes.items():
        r = dict(base)
        r["variant"] = f"{base['variant']} [{mode}]"
        r["mode"] = mode
        r.update({k: res["standard"][k] for k in METRICS})
        r.update(_bounds(res, protocol))
        rows.append(r)
    return rows


def runs_frame(results_dir: str | Path, protocol: str = "standard") -> pd.DataFrame:
    """One row per finished run (and inference mode) recorded under ``results_dir`` (its ``metrics/`` folder, or
    the folder itself when it holds the metrics JSON files)."""
    d = Path(results_dir)
    files = sorted((d / "metrics").glob("*.json")) if (d / "metrics").is_dir() else sorted(d.glob("*.json"))
    rows = []
    for f in files:
        m = _read_record(f)
        if m is not None:
            rows.extend(run_rows(m, protocol))
    if not rows:  # nothing recorded yet: the columns a caller filters on, no rows
        return pd.DataFrame(columns=["dataset", "method", "variant", "seed", "run", "mode", *METRICS, "train_seconds"])
    return pd.DataFrame(rows)


def load_hits(results_dir: str | Path, run: str, mode: str = "", rule: str | None = None):
    """Per-query hits ``(i2t (n_images, 3), t2i (n_texts, 3))`` at K = 1, 5, 10 of a recorded run's test queries,
    for an inference ``mode`` ("" = the run's own score): under the study's tie rule (probabilities under random
    tie-breaking) when the run recorded its tie counts, else the index-rule ranks of an older record (0/1)."""
    from .metrics import RECALL_KS, STUDY_TIE_RULE
    from .scoring import load_ties
    d = Path(results_dir)
    path = (d / "metrics" if (d / "metrics").is_dir() else d) / f"{run}{RANKS}"
    z = read_ranks(path)
    ties = load_ties(z, f"{mode}/" if mode else "")
    if ties is not None:
        return tuple(t.hits(RECALL_KS, rule or STUDY_TIE_RULE) for t in ties)
    if mode:
        raise KeyError(f"{path} holds no per-query ranks of mode {mode!r} (recorded before the tie rule)")
    return tuple(np.stack([z[d_] < k for k in RECALL_KS], axis=1).astype(np.float64) for d_ in ("i2t", "t2i"))


# ----------------------------------------------------------------------------------------------- retraining
def retrain(results_dir: str | Path, patterns: list[str], workers: int = 1, threads: int | None = None,
            dry_run: bool = False, scheduler: str | None = None) -> list[dict]:
    """Retrain the finished runs of ``<results_dir>/metrics/`` whose name matches one of the glob ``patterns``
    and whose checkpoint (``runs/<run>/best.pt``) is missing, from the config each run recorded. The run name
    is recomputed from that config and must match (else the recorded config is not the one that named the run:
    an error). ``metrics/`` keeps the recorded metrics (the tables were built from them); the retrained run's own
    ``runs/<run>/metrics.json`` holds its scores. Returns one row per run: run, recorded test mR, retrained test mR
    (None in a dry run)."""
    results_dir = Path(results_dir)
    metrics = sorted((results_dir / "metrics").glob("*.json"))
    chosen = [m for m in metrics if any(fnmatch.fnmatch(m.stem, pat) for pat in patterns)]
    if not chosen:
        raise RunStoreError(f"no run in {results_dir / 'metrics'} matches {patterns}. Fix: pass globs of run "
                            f"names such as 'rsicd-*-s0-*' (the file names without .json).")
    recs = {m: read_record(m) for m in chosen}
    chosen.sort(key=lambda m: -float(recs[m].get("train_seconds") or 0))  # longest first: the pool ends together
    rows, configs = [], []
    for m in chosen:
        rec = recs[m]
        if (results_dir / "runs" / m.stem / "best.pt").is_file():
            continue
        d = dict(rec["config"])
        for key in ("data_root", "cache_dir"):  # a path of another machine: fall back to the defaults here
            if d.get(key) and not Path(d[key]).exists():
                d[key] = None
        d.update(run_dir=str(results_dir / "runs" / m.stem), progress=False)
        cfg = TrainConfig.from_dict(d)
        if cfg.run_name() != m.stem:
            raise RunStoreError(f"{m}: field 'config' names run {cfg.run_name()}, not {m.stem}. Fix: this record "
                                f"was written by another version of TrainConfig (or relabelled: "
                                f"'relabelled' field); retrain it with 01_train instead.")
        configs.append(cfg)
        rows.append({"run": m.stem, "recorded_mr": rec["test"]["standard"]["mr"], "retrained_mr": None})
    if dry_run or not configs:
        return rows
    done = run_grid(configs, results_dir, workers=workers, threads=threads, publish_runs=False, scheduler=scheduler)
    for row, met, cfg in zip(rows, done, configs):
        row["retrained_mr"] = met["test"]["standard"]["mr"]
        write_json(Path(cfg.run_dir) / "retrained.json", {"recorded": str(results_dir / "metrics" / f"{row['run']}.json"),
                                                          "retrained": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return rows


# ----------------------------------------------------------------------------------------------- relabelling
FINE_METHODS = ("tgdt", "aladin", "scan", "mrsw")


def relabel_fine_records(results_dir: str | Path) -> list[str]:
    """Make the records of TGDT / ALADIN / SCAN / MrSw runs trained before those models read the base loss say
    what they ran, without retraining them: their models trained with the hardest-negative triplet on one caption
    per image and step whatever ``base_loss`` said, and took the warm-up from ``extra['warmup_epochs']`` (default
    0), not from ``warmup_epochs``; fields they never read (pooling, codebook size, ...) held whatever the notebook
    passed. The record's ``config`` becomes ``base_loss="triplet"``, ``captions_per_step="one"``,
    ``warmup_epochs`` = the warm-up it ran, every unread field back at its default; ``config_identity`` follows;
    the run name (the file name) stays, and ``relabelled`` keeps the fields as they were. Idempotent; returns the
    relabelled runs."""
    from .models import unused_fields
    done = []
    for path in sorted((Path(results_dir) / "metrics").glob("*.json")):
        rec = read_json(path)
        cfg = dict(rec.get("config") or {})
        if cfg.get("method") not in FINE_METHODS or "relabelled" in rec or "method_hp" in rec:
            continue
        extra = dict(cfg.get("extra") or {})
        cfg.update(base_loss="triplet", captions_per_step="one", warmup_epochs=int(extra.pop("warmup_epochs", 0)),
                   extra=extra)
        unread = {n: d for n, _, d in unused_fields(TrainConfig.from_dict(cfg))}
        before = {k: rec["config"].get(k) for k in ("base_loss", "captions_per_step", "warmup_epochs", "extra")}
        before.update({k: rec["config"][k] for k in unread})
        cfg.update(unread)
        rec["config"], rec["config_identity"] = cfg, config_identity(cfg)
        rec["captions_per_step"] = "one"
        rec["relabelled"] = {"before": before, "why": "the model trained with its own hardest-negative triplet on "
                             "one caption per image and step, whatever base_loss said, and read none of the other "
                             "fields listed (itr_lib.runs.relabel_fine_records)"}
        write_json(path, rec)
        done.append(path.stem)
    return done
