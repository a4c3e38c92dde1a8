"""A recorded run without training (metrics JSON + index-rule test ranks in ``<folder>/metrics``), for the tests of
code that reads run records (the capacity probe, the recipe's lever search)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from itr_lib.config import TrainConfig
from itr_lib.runs import METRICS


def record_run(folder, cfg: TrainConfig, val_mr: float, hits_seed: int, vector_dim: int | None = None) -> dict:
    """Write ``cfg``'s record with val mR ``val_mr`` (test mR one below) and seeded random test ranks; returns it."""
    (folder / "metrics").mkdir(parents=True, exist_ok=True)
    name = cfg.run_name()
    bundle = {k: 10.0 for k in METRICS}
    rec = {"run": name, "dataset": "rsicd", "method": cfg.method, "seed": cfg.seed, "config": dataclasses.asdict(cfg),
           "config_identity": cfg.identity(), "val": {"standard": {**bundle, "rsum": 6 * val_mr}},
           "test": {"standard": {**bundle, "mr": val_mr - 1}}, "best_epoch": 2, "epochs": cfg.epochs,
           "train_seconds": 60.0, "retrieval_vector_dim": vector_dim or cfg.dim}
    (folder / "metrics" / f"{name}.json").write_text(json.dumps(rec))
    rng = np.random.default_rng(hits_seed)
    np.savez(folder / "metrics" / f"{name}.ranks.npz", i2t=rng.integers(0, 20, 30), t2i=rng.integers(0, 20, 150))
    return rec
