"""Wall time of whole training runs (train + per-epoch val selection + final val/test scoring) of the ablation's
configurations (``experiments.PROBE_BASE``: D, pooling, MLP, lr), each in a temporary folder (nothing is kept but the timing). Appends one row per run to
``results/benchmarks/train_run_<dataset>.csv``. Run on an idle machine:

    python scripts/bench_train_run.py --dataset rsicd --variants baseline lca+cra --epochs 6 --threads 2
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from itr_lib.experiments import LOSSES, PROBE_BASE, VARIANTS, make_config
from itr_lib.io import REPO_ROOT, atomic_write_text
from itr_lib.train import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="rsicd")
    ap.add_argument("--variants", nargs="+", default=["baseline", "lca+cra"])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--codebook-size", type=int, default=1024)
    a = ap.parse_args()
    out = REPO_ROOT / "results" / "benchmarks" / f"train_run_{a.dataset}.csv"
    rows = []
    for v in a.variants:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = make_config(dict(PROBE_BASE, dataset=a.dataset, epochs=a.epochs, seed=a.seed,
                                   codebook_size=a.codebook_size, threads=a.threads, run_dir=str(Path(tmp) / "run"),
                                   progress=False), **VARIANTS[v], **LOSSES["infonce"])
            t0 = time.perf_counter()
            m = train(cfg)
            wall = time.perf_counter() - t0
        rows.append({"dataset": a.dataset, "variant": v, "epochs": a.epochs, "threads": torch.get_num_threads(),
                     "wall_s": round(wall, 1), "train_s": m["train_seconds"], "val_select_s": m["val_eval_seconds"],
                     "final_eval_s": m["test_eval_seconds"], "load_s": m["load_seconds"],
                     "test_mr": round(m["test"]["standard"]["mr"], 2), "load_1min": os.getloadavg()[0],
                     "cpus": os.cpu_count(), "git_commit": m["git_commit"]})
        print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    if out.is_file():
        df = pd.concat([pd.read_csv(out), df], ignore_index=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, df.to_csv(index=False))
    print("->", out)


if __name__ == "__main__":
    main()
