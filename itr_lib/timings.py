"""Timings that need processes of their own: the old code against this code (``python -m itr_lib.bench
versions``: a different ``itr_lib`` per process), the heap setting old vs new (``bench heap``: the setting holds
for a whole process) and a small training grid serially, in a process pool and on local Dask workers (``bench
dask``). Split from :mod:`itr_lib.levers` (the in-process lever timing and the accuracy checks) and
:mod:`itr_lib.bench` (the command line)."""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .config import TrainConfig
from .experiments import study_config
from .io import REPO_ROOT, atomic_write_text, git_commit
from .levers import interleaved_timings, new_default_kw


def _machine() -> dict:
    """The machine a timing ran on, beside its numbers (the load average first: a shared machine)."""
    import platform
    import torch
    return {"load_1min": os.getloadavg()[0], "cpus": os.cpu_count(), "torch": torch.__version__,
            "machine": platform.processor() or platform.machine()}


def time_heap(variant: str, dataset: str, *, adapted: bool = False, steps: int = 6, repeats: int = 2,
              threads: int = 1) -> list[dict]:
    """The heap setting old (``ITR_HEAP=default``) vs new (``ITR_HEAP=mmap``, :mod:`itr_lib.heap`) for one
    method: each timing in a process of its own (the setting holds for a whole process), the two alternating
    ``repeats`` times so the machine's load falls on both alike. Each process trains ``steps`` steps after one
    warm-up and scores val twice (:func:`interleaved_timings`, the study's config at its recorded precision rule)
    and reports its peak resident memory. Returns one row per setting with medians and, on ``mmap``, the paired
    speed-ups (old / new) of the step, the val score and one epoch."""
    import json
    import subprocess
    import sys
    runs = {"default": [], "mmap": []}
    for _ in range(repeats):
        for name in runs:
            env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
            env.update(ITR_HEAP="default" if name == "default" else "mmap", OMP_NUM_THREADS=str(threads),
                       PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
            code = ("import json, sys; from itr_lib.timings import _time_one; "
                    "print('HEAP ' + json.dumps(_time_one(*json.loads(sys.argv[1]))))")
            out = subprocess.run([sys.executable, "-c", code, json.dumps([variant, dataset, adapted, steps, threads])],
                                 capture_output=True, text=True, env=env)
            if out.returncode:
                raise RuntimeError(f"the heap timing of {variant} ({name}) failed:\n{out.stderr[-3000:]}")
            runs[name].append(json.loads(out.stdout.split("HEAP ", 1)[1]))
    rows = []
    paired = _process_ratios(runs["default"], runs["mmap"])
    for name, rs in runs.items():
        row = {"dataset": dataset, "method": variant + (", adapted top" if adapted else ""), "heap": name,
               "threads": threads, "repeats": repeats, "steps": steps,
               "step_s": paired[f"step_s_{'old' if name == 'default' else 'new'}"],
               "val_s": paired[f"val_s_{'old' if name == 'default' else 'new'}"],
               "peak_rss_gb": round(max(r["peak_rss_gb"] for r in rs), 2),
               "steps_per_epoch": paired["steps_per_epoch"], "load_1min": os.getloadavg()[0],
               "git_commit": git_commit()}
        if name == "mmap":
            row.update({k: paired[k] for k in ("step_speedup", "val_speedup", "run_speedup")})
        rows.append(row)
    return rows


def _process_ratios(old: list[dict], new: list[dict]) -> dict:
    """Timings made one process each, old and new alternating (``{"step": [s...], "val": [s...],
    "steps_per_epoch": n}`` per process): the medians over processes of each process's median step and val seconds
    (``step_s_old`` ...), and the medians of the paired per-process ratios old / new of the step, the val score and
    one epoch (steps x step + val)."""
    step = {k: np.array([np.median(r["step"]) for r in rs]) for k, rs in (("old", old), ("new", new))}
    val = {k: np.array([np.median(r["val"]) for r in rs]) for k, rs in (("old", old), ("new", new))}
    n = old[0]["steps_per_epoch"]
    return {"step_s_old": round(float(np.median(step["old"])), 4), "step_s_new": round(float(np.median(step["new"])), 4),
            "val_s_old": round(float(np.median(val["old"])), 4), "val_s_new": round(float(np.median(val["new"])), 4),
            "step_speedup": float(np.median(step["old"] / step["new"])),
            "val_speedup": float(np.median(val["old"] / val["new"])),
            "run_speedup": float(np.median((step["old"] * n + val["old"]) / (step["new"] * n + val["new"]))),
            "steps_per_epoch": n}


def _time_one(variant: str, dataset: str, adapted: bool, steps: int, threads: int) -> dict:
    import resource
    from .experiments import ADAPTED_CHANGE
    from .heap import limit_heap
    heap = limit_heap()
    cfg = study_config(variant, dataset, 0, **(ADAPTED_CHANGE if adapted else {}))
    t = interleaved_timings({"x": cfg}, threads, steps)
    return {"heap": heap, "step": t["x"]["step"], "val": t["x"]["val"], "steps_per_epoch": t["_steps_per_epoch"],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


# ----------------------------------------------------------------------------------------------- old code vs new
def source_tree(commit: str, dest: str | Path) -> Path:
    """``itr_lib`` of ``commit`` (git archive of this repository) under ``dest``; returns ``dest``."""
    import subprocess
    import tarfile
    import io as _io
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    data = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", commit, "itr_lib"], capture_output=True, check=True)
    with tarfile.open(fileobj=_io.BytesIO(data.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


_TIME_CODE = ("import json, sys; from itr_lib.levers import interleaved_timings; "
              "from itr_lib.experiments import study_config; v, ds, steps, threads, kw = json.loads(sys.argv[1]); "
              "t = interleaved_timings({'x': study_config(v, ds, 0, **kw)}, threads, steps); "
              "print('TIMING ' + json.dumps({'step': t['x']['step'], 'val': t['x']['val'], "
              "'steps_per_epoch': t['_steps_per_epoch']}))")


def time_versions(variant: str, dataset: str, old_tree: str | Path, *, steps: int = 4, repeats: int = 2,
                  threads: int = 1, adapted: bool = False) -> dict:
    """The study's training of ``variant`` with the OLD code (``old_tree``, e.g. :func:`source_tree` of the commit the
    records were trained with) and its recorded config (float32, the old defaults) against THIS code with the study's
    new defaults (:func:`new_default_kw`): each timing in a process of its own (a different ``itr_lib`` per process),
    old and new alternating ``repeats`` times, each process training ``steps`` steps after a warm-up step and
    scoring val twice (:func:`interleaved_timings`; a compiled block is compiled before timing). This is what a
    rerun of the study gains, the exact code changes included (which ``time_levers`` cannot see: it times both
    configs with the current code). Returns the per-process medians and the paired ratios (old / new).
    ``adapted``: both at the adapted operating point (:data:`itr_lib.experiments.ADAPTED_CHANGE`), the row's method
    named ``<variant>, adapted top`` (:data:`itr_lib.cost.ADAPTED`: what the cost estimate credits those runs with)."""
    import json
    import subprocess
    import sys
    from .cachestore import cache_root
    from .data import data_root
    from .cost import ADAPTED
    from .experiments import ADAPTED_CHANGE
    point = dict(ADAPTED_CHANGE) if adapted else {}
    new_kw = {**new_default_kw(variant, adapted), **point}
    trees = {"old": (Path(old_tree), {"precision": "fp32", **point}), "new": (REPO_ROOT, new_kw)}
    runs = {"old": [], "new": []}
    for _ in range(repeats):
        for name, (tree, kw) in trees.items():
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(tree),
                       ITR_DATA_ROOT=str(data_root()), ITR_CACHE_DIR=str(cache_root()))  # the old tree's own
            # defaults would be relative to wherever it was unpacked
            env.pop("MALLOC_MMAP_THRESHOLD_", None)
            out = subprocess.run([sys.executable, "-c", _TIME_CODE, json.dumps([variant, dataset, steps, threads, kw])],
                                 capture_output=True, text=True, env=env, cwd=str(tree))
            if out.returncode:
                raise RuntimeError(f"timing {variant} with the {name} code ({tree}) failed:\n{out.stderr[-3000:]}")
            runs[name].append(json.loads(out.stdout.split("TIMING ", 1)[1]))
    return {"dataset": dataset, "method": variant + (ADAPTED if adapted else ""), "threads": threads,
            "repeats": repeats, "steps": steps,
            "new_fields": ", ".join(f"{k}={v}" for k, v in new_kw.items()),
            **_process_ratios(runs["old"], runs["new"]), "load_1min": os.getloadavg()[0], "git_commit": git_commit()}


VERSIONS_NOTES = """Each method's study training with the old code (`old_commit`, float32 as recorded) against this code with the
study's notebook defaults (`new_fields`), one process per timing, old and new alternating (`repeats` each), `steps`
training steps after a warm-up plus the per-epoch val score twice; ratios are medians of the paired per-process
ratios (`python -m itr_lib.bench versions`); `load_1min` is the machine's load at the end of the method's timing."""


def write_versions_markdown(csv: str | Path) -> Path:
    """``versions_<dataset>.md`` beside the CSV: its table under a title and :data:`VERSIONS_NOTES`."""
    csv = Path(csv)
    t = pd.read_csv(csv).sort_values(["threads", "method"])
    cols = ["method", "threads", "new_fields", "step_s_old", "step_s_new", "step_speedup", "val_speedup",
            "run_speedup", "load_1min", "old_commit"]
    title = f"# Old code vs this code ({csv.stem.split('_', 1)[1]}): what a rerun of the study gains"
    atomic_write_text(csv.with_suffix(".md"), f"{title}\n\n{VERSIONS_NOTES}\n\n"
                      + t[[c for c in cols if c in t]].to_markdown(index=False, floatfmt=".3g") + "\n")
    return csv.with_suffix(".md")


def _noop(i: int) -> int:
    return i


def time_dask_grid(configs: list[TrainConfig], workers: Sequence[int] = (1, 2), pool: int = 2,
                   overhead_tasks: int = 200, compare_default: Sequence[int] = ()) -> list[dict]:
    """Wall time of training ``configs`` (fresh temporary results folders, nothing kept): serially in this process
    (1 torch thread), in a spawn process pool of ``pool`` processes (the runner's pools before Dask), and on a local
    Dask cluster of each of ``workers`` processes (cluster start included and also reported apart). Each row: mode,
    workers, runs, wall_s, speedup over serial, efficiency (speedup / workers); the Dask rows add the cluster start
    and the scheduler's overhead per task (round trip of ``overhead_tasks`` no-op tasks, divided by their number).
    ``compare_default``: also time these worker counts under Dask's own nanny setting MALLOC_TRIM_THRESHOLD_=65536
    (which the study's cluster removes: :func:`itr_lib.cluster.training_worker_config`)."""
    import dataclasses
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from .cluster import connect
    from .runs import _train_one, run_grid

    def fresh(tmp):
        return [dataclasses.replace(c, run_dir=None, progress=False) for c in configs], Path(tmp)

    rows, machine = [], _machine()
    with tempfile.TemporaryDirectory() as tmp:
        cfgs, out = fresh(tmp)
        t0 = time.perf_counter()
        run_grid(cfgs, out, progress=False, workers=1, threads=1)
        serial = time.perf_counter() - t0
    rows.append({"mode": "serial", "workers": 1, "wall_s": serial})
    if pool > 1:
        with tempfile.TemporaryDirectory() as tmp:
            cfgs, out = fresh(tmp)
            for c in cfgs:
                c.run_dir = str(out / "runs" / c.run_name())
            t0 = time.perf_counter()
            with ProcessPoolExecutor(max_workers=pool, mp_context=mp.get_context("spawn")) as ex:
                list(ex.map(_train_one, [dataclasses.asdict(c) for c in cfgs], [1] * len(cfgs), [str(out)] * len(cfgs)))
            rows.append({"mode": "process pool", "workers": pool, "wall_s": time.perf_counter() - t0})
    nanny_default = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 65536}  # Dask's own, for comparison
    for n, mode, cfg in [(n, "dask local", None) for n in workers] + \
            [(n, "dask local (nanny default MALLOC_TRIM_THRESHOLD_=65536)", nanny_default) for n in compare_default]:
        with tempfile.TemporaryDirectory() as tmp:
            cfgs, out = fresh(tmp)
            t0 = time.perf_counter()
            with connect(n_workers=n, threads=1, worker_config=cfg) as cluster:
                start = time.perf_counter() - t0
                run_grid(cfgs, out, progress=False, client=cluster.client)
                wall = time.perf_counter() - t0
                t1 = time.perf_counter()
                cluster.client.gather(cluster.client.map(_noop, range(overhead_tasks), pure=False))
                per_task = (time.perf_counter() - t1) / overhead_tasks
        rows.append({"mode": mode, "workers": n, "wall_s": wall, "cluster_start_s": start,
                     "overhead_per_task_ms": 1000 * per_task})
    for r in rows:
        r.update(runs=len(configs), speedup=serial / r["wall_s"], efficiency=serial / r["wall_s"] / r["workers"],
                 epochs=configs[0].epochs if configs else None, git_commit=git_commit(), **machine)
        r["wall_s"] = round(r["wall_s"], 2)
    return rows
