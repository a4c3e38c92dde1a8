"""Where a training step's time goes: seconds per step of the ablation variants (and of TGDT / ALADIN / SCAN /
MrSw) on real batches of the cached features, split into batch assembly, encoding, loss, backward and optimizer. Writes
``results/benchmarks/train_step_<dataset>.csv`` (one row per variant and thread count). Run on an idle machine:

    python scripts/bench_train_step.py --dataset rsicd --threads 1 2 --steps 8
    python scripts/bench_train_step.py --dataset rsicd --threads 1 --variants tgdt aladin scan mrsw --out F
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from itr_lib.experiments import LOSSES, VARIANTS, make_config
from itr_lib.io import REPO_ROOT, atomic_write_text
from itr_lib.train import load_split_tensors, make_model, multi_caption

PARTS = ("batch", "encode", "loss", "backward", "optimizer")


def time_variant(variant: str, dataset: str, threads: int, steps: int, dim: int, pooling: str, k: int) -> dict:
    torch.set_num_threads(threads)
    if variant in VARIANTS:  # the ablation's settings (02_ablations, full profile)
        cfg = make_config(dict(dataset=dataset, dim=dim, pooling=pooling, codebook_size=k, epochs=6),
                          **VARIANTS[variant], **LOSSES["infonce"])
    else:  # TGDT / ALADIN / SCAN / MrSw as 01_train trains them (their triplet, one caption per image and step)
        cfg = make_config(dict(dataset=dataset, dim=dim, epochs=3), method=variant)
    tr = load_split_tensors(cfg, "train")
    torch.manual_seed(0)
    model = make_model(cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    multi = multi_caption(cfg, model)
    gen = torch.Generator().manual_seed(0)
    order = np.random.default_rng(0).permutation(tr.n_images)
    first_caption = np.array([c[0] for c in tr.img2txt])  # one-caption methods: each image's first caption
    sums = dict.fromkeys(PARTS, 0.0)
    n_texts = []
    for s in range(steps + 2):  # two warm-up steps
        t = [time.perf_counter()]
        batch = tr.train_batch(torch.from_numpy(order[s * cfg.batch_size:(s + 1) * cfg.batch_size]), cfg, multi,
                               first_caption, gen)
        t.append(time.perf_counter())
        model.on_step_start(1)
        img = model.encode_images(batch.regions, batch.region_mask)
        txt = model.encode_texts(batch.text, batch.text_mask, batch.word_mask)
        t.append(time.perf_counter())
        loss, _ = model.compute_loss(img, txt, batch, 1)
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        t.append(time.perf_counter())
        if s >= 2:
            for p, a, b in zip(PARTS, t[:-1], t[1:]):
                sums[p] += (b - a) / steps
            n_texts.append(batch.text.shape[0])
    step = sum(sums.values())
    n_steps = (tr.n_images + cfg.batch_size - 1) // cfg.batch_size
    return {"dataset": dataset, "variant": variant, "threads": threads, "batch_images": cfg.batch_size,
            "texts_per_step": float(np.mean(n_texts)), "codebook_size": k if cfg.lca else None, "dim": cfg.dim,
            **{f"{p}_s": round(v, 4) for p, v in sums.items()}, "step_s": round(step, 4),
            "steps_per_epoch": n_steps, "train_s_per_epoch": round(step * n_steps, 1),
            "load_1min": os.getloadavg()[0], "cpus": os.cpu_count(), "torch": torch.__version__,
            "machine": platform.processor() or platform.machine()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="rsicd")
    ap.add_argument("--variants", nargs="+", default=["baseline", "lca", "cra", "lca+cra"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--pooling", default="meanmax")
    ap.add_argument("--codebook-size", type=int, default=1024)
    ap.add_argument("--out", default=None)
    ap.add_argument("--append", action="store_true", help="add the rows to an existing CSV (other variants kept)")
    a = ap.parse_args()
    rows = [time_variant(v, a.dataset, th, a.steps, a.dim, a.pooling, a.codebook_size)
            for th in a.threads for v in a.variants]
    df = pd.DataFrame(rows)
    out = Path(a.out or REPO_ROOT / "results" / "benchmarks" / f"train_step_{a.dataset}.csv")
    if a.append and out.is_file():
        old = pd.read_csv(out)
        keep = ~old.set_index(["variant", "threads"]).index.isin(df.set_index(["variant", "threads"]).index)
        df = pd.concat([old[keep], df], ignore_index=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, df.to_csv(index=False))
    print(df[["variant", "threads", "texts_per_step"] + [f"{p}_s" for p in PARTS] + ["step_s", "train_s_per_epoch"]]
          .to_string(index=False))
    print("->", out)


if __name__ == "__main__":
    main()
