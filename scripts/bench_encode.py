"""How long encoding a whole split takes: every image and caption of the split through a trained model, from the cached
frozen features to the retrieval vectors (what indexing a gallery or scoring a split costs), median of ``--repeats``.
Writes ``results/benchmarks/encode_split_<dataset>.csv``. Run on an idle machine:

    python scripts/bench_encode.py --dataset rsicd --split test --threads 1 2 \
        --checkpoints results/full/runs/rsicd-baseline-minilm-s0-65361e3b/best.pt \
                      results/full/runs/rsicd-selfalign-lca-cra-k1024-minilm-s0-05a96636/best.pt
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from itr_lib.io import REPO_ROOT, atomic_write_text, git_commit, repo_path
from itr_lib.tables import variant_name
from itr_lib.train import encode_split, load_checkpoint, load_split_tensors

DEFAULT = ["results/full/runs/rsicd-baseline-minilm-s0-65361e3b/best.pt",
           "results/full/runs/rsicd-selfalign-lca-cra-k1024-minilm-s0-05a96636/best.pt"]


def time_encode(path: Path, split: str, threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    model, cfg = load_checkpoint(path)
    data = load_split_tensors(cfg, split)
    encode_split(model, data, batch_size=cfg.eval_batch_size)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        img, _ = encode_split(model, data, batch_size=cfg.eval_batch_size)
        times.append(time.perf_counter() - t)
    vec_dim = img["vec"].shape[1] if "vec" in img else None
    return {"dataset": cfg.dataset, "split": split, "variant": variant_name(asdict(cfg)), "dim": cfg.dim,
            "threads": threads, "n_images": data.n_images, "n_texts": data.n_texts, "vector_dim": vec_dim,
            "encode_s_median": round(float(np.median(times)), 3), "encode_s_min": round(min(times), 3),
            "repeats": repeats, "checkpoint": str(Path(path).parent.name), "load_1min": os.getloadavg()[0],
            "cpus": os.cpu_count(), "git_commit": git_commit()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="rsicd")
    ap.add_argument("--split", default="test")
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checkpoints", nargs="+", default=DEFAULT)
    a = ap.parse_args()
    paths = [repo_path(p) for p in a.checkpoints]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"checkpoint(s) not found: {missing}. Fix: retrain them "
                         f"(python -m itr_lib.study --profile full --retrain '<run name>') or pass --checkpoints.")
    rows = [time_encode(p, a.split, th, a.repeats) for th in a.threads for p in paths]
    df = pd.DataFrame(rows)
    out = REPO_ROOT / "results" / "benchmarks" / f"encode_split_{a.dataset}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, df.to_csv(index=False))
    print(df[["variant", "threads", "n_images", "n_texts", "vector_dim", "encode_s_median"]].to_string(index=False))
    print("->", out)


if __name__ == "__main__":
    main()
