"""Seconds per training step of the fine-grained models on random tensors of the real shapes, and the cost of
their exhaustive / two-stage scoring extrapolated from a small timed chunk. Short by design (a few steps).

    python scripts/time_fine_models.py --methods tgdt aladin --steps 3 --dim 512
    python scripts/time_fine_models.py --scoring --dim 512      # scoring-cost extrapolation only
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from itr_lib.models import Batch, build_model
from itr_lib.models.encoders import l2norm
from itr_lib.models.fine import mrsw_scores, scan_t2i_scores
from itr_lib.rerank import exhaustive_scores, model_rescorer, two_stage_ranks
from itr_lib.train import TrainConfig


def random_batch(b: int, regions: int, length: int, text_dim: int = 384, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 2, length + 1, (b,), generator=g)
    lengths[0] = length
    tmask = torch.arange(length)[None] < lengths[:, None]
    wmask = tmask.clone()
    wmask[:, 0] = False
    wmask[torch.arange(b), lengths - 1] = False  # MiniLM: no [CLS]/[SEP]
    rmask = torch.rand(b, regions, generator=g) >= 0.2  # VSE-infinity region drop
    rmask[:, 0] = True
    return Batch(torch.randn(b, regions, 1280, generator=g).half(), rmask,
                 torch.randn(b, length, text_dim, generator=g).half(), tmask, wmask,
                 torch.zeros(b, b, dtype=torch.bool))


def time_steps(method: str, dim: int, steps: int, b: int, length: int, extra: dict) -> dict:
    torch.manual_seed(0)
    model = build_model(TrainConfig(method=method, dim=dim, extra=extra))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for step in range(steps + 1):
        batch = random_batch(b, 49, length, seed=step)
        t0 = time.perf_counter()
        img = model.encode_images(batch.regions, batch.region_mask)
        txt = model.encode_texts(batch.text, batch.text_mask, batch.word_mask)
        loss, terms = model.compute_loss(img, txt, batch, epoch=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    steady = times[1:]
    return {"method": method, "dim": dim, "batch": b, "text_len": length, "extra": extra,
            "first_step_s": round(times[0], 3), "mean_step_s": round(sum(steady) / len(steady), 3),
            "min_step_s": round(min(steady), 3),
            "n_params": sum(p.numel() for p in model.parameters()), "terms": terms}


@torch.no_grad()
def scoring_costs(dim: int, n_img: int = 1093, n_txt: int = 5465, length: int = 20, ci: int = 16,
                  ct: int = 256, k_i2t: int = 50, k_t2i: int = 100) -> dict:
    """Extrapolate the full n_img x n_txt cost from a ci x ct chunk (all regions valid, ``length`` valid words)."""
    g = torch.Generator().manual_seed(0)
    v = l2norm(torch.randn(ci, 49, dim, generator=g))
    vm = torch.ones(ci, 49, dtype=torch.bool)
    u = l2norm(torch.randn(ct, length, dim, generator=g))
    um = torch.ones(ct, length, dtype=torch.bool)
    out = {"dim": dim, "words_per_caption": length, "chunk": [ci, ct], "split": [n_img, n_txt]}
    for name, fn in (("mrsw", mrsw_scores), ("scan", scan_t2i_scores)):
        fn(v[:2], vm[:2], u[:8], um[:8])
        t0 = time.perf_counter()
        fn(v, vm, u, um)
        per_pair = (time.perf_counter() - t0) / (ci * ct)
        out[name] = {"us_per_pair": round(per_pair * 1e6, 3),
                     "full_matrix_s": round(per_pair * n_img * n_txt, 1),
                     "per_t2i_query_s (vs all images)": round(per_pair * n_img, 4),
                     "per_i2t_query_s (vs all captions)": round(per_pair * n_txt, 4)}
    # two-stage re-scoring (TGDT: s_global + MrSw) on a 1/10 split with the same shortlist sizes, so each image
    # meets as many shortlisted captions as in the full split (k_i2t + n_txt * k_t2i / n_img); scaled by 10
    n_i = n_img // 10
    n_t = 5 * n_i
    model = build_model(TrainConfig(method="tgdt", dim=dim)).eval()
    lens = torch.randint(length - 8, length + 9, (n_t,), generator=g)
    tm = torch.arange(32)[None] < lens[:, None]
    img = {"global": l2norm(torch.randn(n_i, dim, generator=g)),
           "locals": l2norm(torch.randn(n_i, 49, dim, generator=g)), "mask": torch.ones(n_i, 49, dtype=torch.bool)}
    txt = {"global": l2norm(torch.randn(n_t, dim, generator=g)),
           "locals": l2norm(torch.randn(n_t, 32, dim, generator=g)) * tm[..., None], "mask": tm}
    img2txt = [list(range(5 * i, 5 * i + 5)) for i in range(n_i)]
    txt2img = [j // 5 for j in range(n_t)]
    glob = (img["global"] @ txt["global"].t()).numpy()
    t0 = time.perf_counter()
    _, _, det = two_stage_ranks(glob, model_rescorer(model, img, txt), img2txt, txt2img, k_i2t, k_t2i,
                                return_details=True)
    total = time.perf_counter() - t0
    scale = n_txt / n_t
    out["two_stage_tgdt"] = {"reduced_split": [n_i, n_t], "pairs": det["pairs_rescored"],
                             "rescore_s": round(det["rescore_seconds"], 2), "total_s": round(total, 2),
                             "full_split_estimate_s": round(total * scale, 1),
                             "us_per_pair": round(det["rescore_seconds"] / det["pairs_rescored"] * 1e6, 2)}
    t0 = time.perf_counter()
    exhaustive_scores(model, img, txt)
    ex = time.perf_counter() - t0
    out["exhaustive_tgdt"] = {"reduced_split_s": round(ex, 2),
                              "full_split_estimate_s": round(ex * (n_img * n_txt) / (n_i * n_t), 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", nargs="*", default=["tgdt", "aladin"])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--text-len", type=int, default=20)
    ap.add_argument("--extra", type=json.loads, default={})
    ap.add_argument("--scoring", action="store_true", help="also extrapolate the scoring costs")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps({"torch_threads": torch.get_num_threads()}))
    for m in args.methods:
        print(json.dumps(time_steps(m, args.dim, args.steps, args.batch, args.text_len, args.extra)), flush=True)
    if args.scoring:
        print(json.dumps(scoring_costs(args.dim)), flush=True)


if __name__ == "__main__":
    main()
