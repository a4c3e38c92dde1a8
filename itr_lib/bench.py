"""What training and encoding cost: seconds per training step (split into its phases), whole training runs, and
encoding a whole split with a trained model. Query-side costs (search, floors, scaling) are :mod:`itr_lib.efficiency`.

    python -m itr_lib.bench train-step --dataset rsicd --threads 1 2 --variants baseline lca cra lca+cra
    python -m itr_lib.bench train-step --dataset rsicd --threads 1 --variants aladin --length-buckets 1 8
    python -m itr_lib.bench train-step --dataset rsicd --threads 1 --variants baseline tgdt --adapted
    python -m itr_lib.bench train-run --dataset rsicd --variants lca+cra baseline --epochs 6 --threads 2
    python -m itr_lib.bench encode --dataset rsicd --split test --threads 1 2
    python -m itr_lib.bench dask --dataset ucm --variants baseline --seeds 0 1 2 3 --epochs 2 --workers 1 2
    python -m itr_lib.bench levers --dataset ucm --threads 1 2   # issue 29's levers, old vs new (itr_lib.levers)
    python -m itr_lib.bench heap --dataset ucm --variants baseline tgdt   # the heap setting old vs new (itr_lib.heap)

(``make bench-train-step``, ``make bench-train``, ``make bench-encode``.) Every configuration is the one the study
trains: the fair comparison's (:func:`itr_lib.experiments.comparison_plan`, study loss, ``COMPARISON_BASE``), keyed
by the comparison's variant names (``baseline``, ``lca``, ``cra``, ``lca+cra``, ``tgdt``, ``aladin``, ``scan``,
``mrsw``). A step is timed through :func:`itr_lib.train.train_step`, the training loop's own step; a checkpoint is
looked up by its config (:func:`itr_lib.runs.find_checkpoint`), never by a typed run name.

Each command writes ``results/benchmarks/<kind>_<dataset>.csv`` (atomically): ``train_step`` and ``encode_split``
replace the rows of the same key (variant, threads[, split]) and keep the others; ``train_run`` appends (rows
accumulate as the code changes; each row carries its git commit). Run on an idle machine: every row records the
1-minute load average beside its times.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import precision as prec
from .config import TrainConfig, variant_label
from .experiments import METHOD_VARIANTS, study_config
from .io import REPO_ROOT, atomic_write_text, git_commit
from .levers import LEVER_METHODS
from .timings import _machine

PARTS = ("batch", "encode", "loss", "backward", "optimizer")
BENCH_DIR = REPO_ROOT / "results" / "benchmarks"


def time_train_step(cfg: TrainConfig, threads: int, steps: int = 8, warmup: int = 2, name: str | None = None) -> dict:
    """Mean seconds per training step of ``cfg``'s model on real batches of its cached training features (a fresh
    model, the run's optimiser), split into batch assembly and the phases of :func:`itr_lib.train.train_step`
    (encode, loss, backward, optimizer); ``warmup`` untimed steps first. ``name``: the row's variant (default the
    config's label, also in column ``config``)."""
    from .splits import load_split_tensors
    from .train import make_model, make_optimizer, multi_caption, train_step
    torch.set_num_threads(threads)
    used = prec.resolve(cfg.precision, cfg.device)[0]
    tr = load_split_tensors(cfg, "train", cfg.max_train_images)
    torch.manual_seed(cfg.seed)
    model = make_model(cfg).train()
    opt, _ = make_optimizer(cfg, model)
    multi = multi_caption(cfg, model)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    order = rng.permutation(tr.n_images)
    cap_choice = np.array([c[rng.integers(len(c))] for c in tr.img2txt])
    n_batches = max(1, tr.n_images // cfg.batch_size)
    sums = dict.fromkeys(PARTS, 0.0)
    n_texts = []
    for s in range(warmup + steps):
        b = s % n_batches
        stamps = {"start": time.perf_counter()}
        ii = torch.from_numpy(order[b * cfg.batch_size:(b + 1) * cfg.batch_size])
        batch = tr.train_batch(ii, cfg, multi, cap_choice, gen)
        stamps["batch"] = time.perf_counter()
        with prec.policy(used):  # cfg.precision, as train() runs it
            train_step(model, opt, batch, epoch=1, grad_clip=cfg.grad_clip,
                       lap=lambda phase: stamps.__setitem__(phase, time.perf_counter()))
        if s >= warmup:
            t = [stamps[k] for k in ("start",) + PARTS]
            for p, a, c in zip(PARTS, t[:-1], t[1:]):
                sums[p] += (c - a) / steps
            n_texts.append(batch.text.shape[0])
    step = sum(sums.values())
    per_epoch = (tr.n_images + cfg.batch_size - 1) // cfg.batch_size
    return {"dataset": cfg.dataset, "variant": name or variant_label(cfg.__dict__), "threads": threads,
            "batch_images": cfg.batch_size, "texts_per_step": float(np.mean(n_texts)),
            "codebook_size": cfg.codebook_size if cfg.lca else None, "dim": cfg.dim,
            **{f"{p}_s": round(v, 4) for p, v in sums.items()}, "step_s": round(step, 4),
            "steps_per_epoch": per_epoch, "train_s_per_epoch": round(step * per_epoch, 1), **_machine(),
            "config": variant_label(cfg.__dict__)}


def time_train_run(cfg: TrainConfig, threads: int, name: str | None = None) -> dict:
    """Wall time of one whole training run of ``cfg`` (train, per-epoch val selection, final val / test scoring) in a
    temporary folder (nothing is kept but the timing). ``name``: the row's variant (default the config's label)."""
    import dataclasses
    from .train import train
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dataclasses.replace(cfg, threads=threads, run_dir=str(Path(tmp) / "run"), progress=False)
        t0 = time.perf_counter()
        m = train(cfg)
        wall = time.perf_counter() - t0
    return {"dataset": cfg.dataset, "variant": name or variant_label(cfg.__dict__), "epochs": cfg.epochs,
            "threads": torch.get_num_threads(), "wall_s": round(wall, 1), "train_s": m["train_seconds"],
            "val_select_s": m["val_eval_seconds"], "final_eval_s": m["test_eval_seconds"], "load_s": m["load_seconds"],
            "test_mr": round(m["test"]["standard"]["mr"], 2), "load_1min": os.getloadavg()[0], "cpus": os.cpu_count(),
            "git_commit": m["git_commit"], "config": variant_label(cfg.__dict__)}


def time_encode(checkpoint: str | os.PathLike, split: str, threads: int, repeats: int = 5) -> dict:
    """Seconds to encode every image and caption of ``split`` with a trained model, from the cached frozen features
    to the retrieval vectors (what indexing a gallery or scoring a split costs): median and min of ``repeats``
    after one untimed pass."""
    from .scoring import encode_split
    from .splits import load_split_tensors
    from .train import load_checkpoint
    torch.set_num_threads(threads)
    model, cfg = load_checkpoint(checkpoint)
    data = load_split_tensors(cfg, split)
    encode_split(model, data, batch_size=cfg.eval_batch_size, outputs="vectors")  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        img, _ = encode_split(model, data, batch_size=cfg.eval_batch_size, outputs="vectors")
        times.append(time.perf_counter() - t0)
    return {"dataset": cfg.dataset, "split": split, "variant": variant_label(cfg.__dict__), "dim": cfg.dim,
            "threads": threads, "n_images": data.n_images, "n_texts": data.n_texts,
            "vector_dim": int(img["vec"].shape[1]), "encode_s_median": round(float(np.median(times)), 3),
            "encode_s_min": round(min(times), 3), "repeats": repeats, "checkpoint": Path(checkpoint).parent.name,
            "load_1min": os.getloadavg()[0], "cpus": os.cpu_count(), "git_commit": git_commit()}


def checkpoint_for(cfg: TrainConfig, results_dir: str | os.PathLike) -> Path:
    """The ``best.pt`` of the finished run of ``cfg`` under ``<results_dir>/runs`` (looked up by its identity)."""
    from .runs import find_checkpoint
    return find_checkpoint(results_dir, **cfg.identity())


def time_explore(results_dir: str | os.PathLike, dataset: str, n_queries: int = 20, k: int = 8,
                 threads: int = 1, data_root: str | None = None, cache_dir: str | None = None) -> list[dict]:
    """The explorer's text -> image answer (query encoding + search + re-scoring) per method whose checkpoint is
    present under ``results_dir``: the split's first test captions as queries (every other one), after one warm-up
    query that loads the model and the gallery. One row per method: median / max ms, and how many queries found
    an image of theirs in the top ``k``."""
    import torch
    from .explore import Explorer
    torch.set_num_threads(threads)
    ex = Explorer(results_dir, dataset, data_root=data_root, cache_dir=cache_dir)
    queries = [" ".join(t) for t in ex.split.tokens[:2 * n_queries:2]]
    rows = []
    for label in ex.labels():
        ex.text_to_image(queries[0], label, k=k)
        res = [ex.text_to_image(q, label, k=k) for q in queries]
        ms = np.array([1e3 * r.seconds for r in res])
        rows.append({"method": label, "search": res[0].search, "gallery_images": len(ex.split.filenames),
                     "queries": len(queries), "k": k, "threads": threads, "ms_median": round(float(np.median(ms)), 2),
                     "ms_max": round(float(ms.max()), 2), "queries_with_truth_in_top_k": sum(
                         any(h.truth for h in r.hits) for r in res), **_machine()})
    return rows


def merge_rows(new: pd.DataFrame, path: Path, key: Sequence[str] | None) -> pd.DataFrame:
    """``new`` merged into the CSV at ``path``: old rows whose ``key`` columns match a new row are replaced, the rest
    kept (``key`` None: appended)."""
    if not path.is_file():
        return new
    old = pd.read_csv(path)
    if key is not None and set(key) <= set(old.columns):
        keep = ~old.set_index(list(key)).index.isin(new.set_index(list(key)).index)
        old = old[keep]
    return pd.concat([old, new], ignore_index=True)


def write_benchmark(rows: list[dict], kind: str, dataset: str, key: Sequence[str] | None,
                    out_dir: str | os.PathLike = BENCH_DIR) -> Path:
    """Write ``rows`` to ``<out_dir>/<kind>_<dataset>.csv`` (:func:`merge_rows`, atomic); returns the path."""
    path = Path(out_dir) / f"{kind}_{dataset}.csv"
    df = merge_rows(pd.DataFrame(rows), path, key)
    atomic_write_text(path, df.to_csv(index=False))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m itr_lib.bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="kind", required=True)
    step = sub.add_parser("train-step", help="seconds per training step by phase, per variant and thread count")
    step.add_argument("--variants", nargs="+", default=["baseline", "lca", "cra", "lca+cra"],
                      choices=sorted(METHOD_VARIANTS))
    step.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    step.add_argument("--steps", type=int, default=8)
    step.add_argument("--length-buckets", nargs="+", type=int, default=[1],
                      help="TrainConfig.length_buckets values to time (ALADIN only; 1: off); rows named "
                           "'<variant> (length_buckets=N)' for N > 1")
    step.add_argument("--adapted", action="store_true",
                      help="also time each variant at the adapted operating point (experiments.ADAPTED_CHANGE: the "
                           "image top trained from block 14's cache); rows named '<variant>, adapted top'")
    run = sub.add_parser("train-run", help="wall time of whole training runs (temporary folders)")
    run.add_argument("--variants", nargs="+", default=["baseline", "lca+cra"], choices=sorted(METHOD_VARIANTS))
    run.add_argument("--epochs", type=int, default=None, help="default: the study's schedule")
    run.add_argument("--threads", type=int, default=2)
    dk = sub.add_parser("dask", help="a small grid serially, in a process pool and on 1 / 2 local Dask workers")
    dk.add_argument("--variants", nargs="+", default=["baseline"], choices=sorted(METHOD_VARIANTS))
    dk.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    dk.add_argument("--epochs", type=int, default=2)
    dk.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    dk.add_argument("--pool", type=int, default=2, help="processes of the process-pool row (0: none)")
    dk.add_argument("--repeats", type=int, default=3, help="times the whole sequence is timed (medians printed)")
    dk.add_argument("--compare-default", nargs="*", type=int, default=[2],
                    help="worker counts also timed under Dask's nanny default MALLOC_TRIM_THRESHOLD_=65536")
    dk.add_argument("--data-root", default=None, help="data root (default: $ITR_DATA_ROOT or ../shared/data)")
    dk.add_argument("--cache-dir", default=None, help="feature cache (default: $ITR_CACHE_DIR or cache/features)")
    enc = sub.add_parser("encode", help="seconds to encode a whole split with the study's trained checkpoints")
    enc.add_argument("--variants", nargs="+", default=["baseline", "lca+cra"], choices=sorted(METHOD_VARIANTS))
    enc.add_argument("--split", default="test")
    enc.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    enc.add_argument("--repeats", type=int, default=5)
    enc.add_argument("--profile", default="full", help="results/<profile>/runs holds the checkpoints")
    lev = sub.add_parser("levers", help="speed levers old vs new per method: step and val time, ratios "
                                        "(itr_lib.levers); writes speed_levers_steps_<dataset>.csv")
    lev.add_argument("--variants", nargs="+", default=["baseline", "lca+cra", "tgdt", "scan", "mrsw", "aladin"],
                     choices=sorted(METHOD_VARIANTS))
    lev.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    lev.add_argument("--steps", type=int, default=4)
    lev.add_argument("--adapted", action="store_true", help="at the adapted operating point (experiments."
                     "ADAPTED_CHANGE): fp32, bf16 and bf16+top (the image top's 1 x 1 convolutions in bf16)")
    hp = sub.add_parser("heap", help="the heap setting (itr_lib.heap) old vs new per method, each in its own "
                                     "process, alternating: step, val and epoch ratios, peak memory -> heap_<dataset>.csv")
    hp.add_argument("--variants", nargs="+", default=["baseline", "lca+cra", "tgdt", "scan", "mrsw", "aladin"],
                    choices=sorted(METHOD_VARIANTS))
    hp.add_argument("--adapted", action="store_true", help="at the adapted operating point (experiments.ADAPTED_CHANGE)")
    hp.add_argument("--threads", type=int, default=1)
    hp.add_argument("--steps", type=int, default=6)
    hp.add_argument("--repeats", type=int, default=2)
    vs = sub.add_parser("versions", help="the study's training old code + recorded config (float32) vs this code + "
                                         "the new defaults, each in its own process, alternating: step, val and "
                                         "epoch ratios -> versions_<dataset>.csv")
    vs.add_argument("--old-commit", required=True, help="the commit of the old code (git archive of its itr_lib)")
    vs.add_argument("--variants", nargs="+", default=["baseline", "lca+cra", "tgdt", "aladin", "scan", "mrsw"],
                    choices=sorted(METHOD_VARIANTS))
    vs.add_argument("--threads", type=int, nargs="+", default=[1])
    vs.add_argument("--steps", type=int, default=4)
    vs.add_argument("--repeats", type=int, default=2)
    vs.add_argument("--adapted", action="store_true",
                    help="at the adapted operating point (experiments.ADAPTED_CHANGE, the image top trained, both "
                         "codes); rows named '<variant>, adapted top' (what the cost estimate credits adapted runs with)")
    qe = sub.add_parser("query-encoder", help="MiniLM query encoder fp32 vs int8 vs bf16 at batch 1: latency, top-10 "
                                              "agreement, test mR (efficiency.query_encoder) -> query_encoder.csv")
    qe.add_argument("--results-dir", default=str(REPO_ROOT / "results" / "full"),
                    help="folder whose runs/ holds the study baseline's checkpoint (looked up by its config)")
    qe.add_argument("--threads", type=int, default=1)
    rep = sub.add_parser("levers-report", help="speed_levers.csv/.md (timings + accuracy check) and the study's "
                                               "cost tables with the adopted levers")
    rep.add_argument("--new-dir", default=str(BENCH_DIR / "precision_bf16"),
                     help="results folder of the bf16 reruns (metrics/); default: the committed ones")
    rep.add_argument("--old-dir", default=str(REPO_ROOT / "results" / "full"), help="the float32 records")
    rep.add_argument("--lever-dir", nargs=2, action="append", default=[], metavar=("LEVER", "DIR"),
                     help="results folder (metrics/) of a lever's reruns, e.g. --lever-dir bf16+top runs/top; default "
                          "per lever: results/benchmarks/<its records folder> (levers.LEVER_RECORDS), the committed ones")
    rep.add_argument("--datasets", nargs="+", default=["ucm", "rsicd"])
    rep.add_argument("--variants", nargs="+", default=["baseline", "lca+cra", "tgdt"], choices=sorted(METHOD_VARIANTS))
    lr = sub.add_parser("lever-reruns", help="train a speed lever's accuracy reruns (the study configs with the lever "
                                             "on, seed-matched to the float32 records) into --results-dir")
    lr.add_argument("--lever", required=True, choices=sorted(LEVER_METHODS))
    lr.add_argument("--datasets", nargs="+", default=["ucm", "rsicd"])
    lr.add_argument("--variants", nargs="+", default=None, help="default: the methods the lever changes")
    lr.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    lr.add_argument("--results-dir", required=True, help="where the runs train (runs/, metrics/); resumable")
    lr.add_argument("--workers", type=int, default=2, help="single-threaded runs side by side")
    lr.add_argument("--reference", action="store_true",
                    help="also train the float32 runs of these seeds into --results-dir/reference: the old side of "
                         "the check for seeds the study's records lack (e.g. --seeds 3 4 5)")
    exp = sub.add_parser("explore", help="the explorer's text -> image answer time per method with a checkpoint")
    exp.add_argument("--queries", type=int, default=20)
    exp.add_argument("--threads", type=int, default=1)
    exp.add_argument("--profile", default="full", help="results/<profile>/runs holds the checkpoints")
    for s in (step, run, enc, dk, exp, lev, hp, vs, qe, rep, lr):
        s.add_argument("--dataset", default="rsicd")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--out-dir", default=str(BENCH_DIR), help="folder of the benchmark CSVs")
    a = p.parse_args(argv)
    if a.kind == "train-step":
        from .experiments import ADAPTED_CHANGE
        points = [("", {})] + ([(", adapted top", ADAPTED_CHANGE)] if a.adapted else [])
        rows = [time_train_step(study_config(v, a.dataset, a.seed, **ch, **({"length_buckets": lb} if lb > 1 else {})),
                                th, a.steps, name=(v if lb <= 1 else f"{v} (length_buckets={lb})") + suffix)
                for th in a.threads for v in a.variants for lb in a.length_buckets for suffix, ch in points]
        path = write_benchmark(rows, "train_step", a.dataset, ["variant", "threads"], a.out_dir)
        cols = ["variant", "threads", "texts_per_step"] + [f"{x}_s" for x in PARTS] + ["step_s", "train_s_per_epoch"]
    elif a.kind == "train-run":
        rows = []
        for v in a.variants:
            cfg = study_config(v, a.dataset, a.seed, **({"epochs": a.epochs} if a.epochs else {}))
            rows.append(time_train_run(cfg, a.threads, name=v))
            print(rows[-1], flush=True)
        path = write_benchmark(rows, "train_run", a.dataset, None, a.out_dir)
        cols = ["variant", "epochs", "threads", "wall_s", "train_s", "val_select_s", "final_eval_s", "test_mr"]
    elif a.kind == "dask":
        paths = {k: v for k, v in (("data_root", a.data_root), ("cache_dir", a.cache_dir)) if v}
        cfgs = [study_config(v, a.dataset, s, epochs=a.epochs, **paths) for v in a.variants for s in a.seeds]
        rows = []
        from .timings import time_dask_grid
        for rep in range(a.repeats):  # the whole sequence again: this machine's run-to-run noise is ~20%
            for r in time_dask_grid(cfgs, a.workers, a.pool, compare_default=a.compare_default):
                rows.append({"repeat": rep, **r})
        path = write_benchmark(rows, "dask_grid", a.dataset, None, a.out_dir)
        cols = ["repeat", "mode", "workers", "runs", "wall_s", "speedup", "efficiency", "cluster_start_s",
                "overhead_per_task_ms", "load_1min"]
        med = pd.DataFrame(rows).groupby(["mode", "workers"], sort=False)[["wall_s", "speedup", "efficiency"]].median()
        print("medians over repeats:\n" + med.to_string() + "\n")
    elif a.kind == "levers":
        from .levers import time_levers
        rows = []
        for th in a.threads:  # written after each method: a long timing interrupted keeps what it measured
            for v in a.variants:
                rows += time_levers([v], a.dataset, [th], a.steps, adapted=a.adapted)
                path = write_benchmark(rows, "speed_levers_steps", a.dataset, ["method", "lever", "threads"],
                                       a.out_dir)
        cols = ["method", "lever", "threads", "step_s", "val_s", "step_speedup", "val_speedup", "run_speedup",
                "load_1min"]
    elif a.kind == "heap":
        from .timings import time_heap
        rows = []
        for v in a.variants:  # written after each method: an interrupted timing keeps what it measured
            rows += time_heap(v, a.dataset, adapted=a.adapted, steps=a.steps, repeats=a.repeats, threads=a.threads)
            print(rows[-1], flush=True)
            path = write_benchmark(rows, "heap", a.dataset, ["method", "heap", "threads"], a.out_dir)
        cols = ["method", "heap", "threads", "step_s", "val_s", "peak_rss_gb", "step_speedup", "val_speedup",
                "run_speedup", "load_1min"]
    elif a.kind == "versions":
        import tempfile
        from .timings import source_tree, time_versions, write_versions_markdown
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            old = source_tree(a.old_commit, tmp)
            for th in a.threads:
                for v in a.variants:  # written after each method: an interrupted timing keeps what it measured
                    rows.append({**time_versions(v, a.dataset, old, steps=a.steps, repeats=a.repeats, threads=th,
                                                 adapted=a.adapted), "old_commit": a.old_commit})
                    print(rows[-1], flush=True)
                    path = write_benchmark(rows, "versions", a.dataset, ["method", "threads"], a.out_dir)
                    write_versions_markdown(path)
        cols = ["method", "threads", "step_s_old", "step_s_new", "step_speedup", "val_speedup", "run_speedup",
                "load_1min"]
    elif a.kind == "query-encoder":
        from .efficiency.query_encoder import query_encoder_rows
        try:
            ck = checkpoint_for(study_config("baseline", a.dataset, a.seed), a.results_dir)
        except FileNotFoundError as err:
            print(f"error: {err}", flush=True)
            return 2
        rows = query_encoder_rows(ck, threads=a.threads)
        path = Path(a.out_dir) / "query_encoder.csv"
        atomic_write_text(path, merge_rows(pd.DataFrame(rows), path, ["dataset", "variant"]).to_csv(index=False))
        cols = ["variant", "ms_median", "speedup_vs_fp32", "top10_agreement", "top10_overlap", "mr", "delta_mr",
                "adopt"]
    elif a.kind == "levers-report":
        from .levers import levers_report
        out = Path(a.out_dir)
        rows = levers_report([out / f"speed_levers_steps_{d}.csv" for d in a.datasets], a.old_dir, a.new_dir,
                             a.datasets, a.variants, out, lever_dirs=dict(a.lever_dir)).to_dict("records")
        path = out / "speed_levers.csv"
        cols = ["dataset", "method", "lever", "step_speedup_1t", "run_speedup_1t", "delta_mr", "half_width_mr",
                "verdict", "records"]
    elif a.kind == "lever-reruns":
        from .levers import LEVER_RECORDS, lever_reruns
        recs = lever_reruns(a.lever, a.datasets, a.variants or LEVER_METHODS[a.lever], a.seeds, a.results_dir,
                            workers=a.workers, reference=a.reference)
        rows = [{"run": m["run"], "test_mr": m["test"]["standard"]["mr"], "train_s": m.get("train_seconds")}
                for m in recs]
        print(f"records: {Path(a.results_dir) / 'metrics'}" + (" and reference/metrics" if a.reference else "")
              + f"; to commit the check, copy them to results/benchmarks/{LEVER_RECORDS[a.lever]}/", flush=True)
        path, cols = None, ["run", "test_mr", "train_s"]
    elif a.kind == "explore":
        from .explore import ExploreError
        try:
            rows = time_explore(REPO_ROOT / "results" / a.profile, a.dataset, a.queries, threads=a.threads)
        except ExploreError as err:
            print(f"error: {err}", flush=True)
            return 2
        path = write_benchmark(rows, "explore_latency", a.dataset, ["method", "threads"], a.out_dir)
        cols = ["method", "search", "gallery_images", "ms_median", "ms_max", "queries_with_truth_in_top_k"]
    else:
        results_dir = REPO_ROOT / "results" / a.profile
        try:
            cks = [checkpoint_for(study_config(v, a.dataset, a.seed), results_dir) for v in a.variants]
        except FileNotFoundError as err:
            print(f"error: {err}", flush=True)
            return 2
        rows = [time_encode(ck, a.split, th, a.repeats) for th in a.threads for ck in cks]
        path = write_benchmark(rows, "encode_split", a.dataset, ["variant", "threads", "split"], a.out_dir)
        cols = ["variant", "threads", "n_images", "n_texts", "vector_dim", "encode_s_median"]
    df = pd.DataFrame(rows)
    print(df[[c for c in cols if c in df]].to_string(index=False))
    if path is not None:
        print("->", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
