"""The strongest frozen-feature recipe (issue 15, notebook ``07_recipe``): levers measured one at a time against one
reference, chosen greedily on val, then the chosen recipe over seeds for the baseline and SelfAlign (LCA+CRA).

The reference is the capacity probe's best RSICD model (:mod:`itr_lib.probe`): the baseline at D = 1024 with residual-MLP
encoders (:data:`REFERENCE`), under the study loss (FN-masked InfoNCE, all captions per step), 6 epochs, the
checkpoint chosen on the full val split.

Levers (:data:`TRAIN_LEVERS`, :data:`INFERENCE_LEVERS`):

- **training levers** change the run's config (schedule, rotation/flip sampling of the cached grids, InfoNCE
  temperature, region/token dropout); each lever is one run of seed 0, compared with the reference's seed-0 run.
  Levers that set the same fields are alternatives (a *group*; at most one of a group enters the recipe).
- **inference levers** change how a trained model scores (test-time augmentation over rotations, querybank
  normalisation with a bank of *training* items, a seed ensemble); they need no training. The transductive dual
  softmax (it reads the whole test query set) is measured and reported beside them, never chosen.

The rule (stated in the table and the README): a lever's gain is its val mR minus the reference's (seed 0). Training
levers with a positive gain are added greedily, best first (the best of each group only): each addition is a run of
the current recipe plus the lever, kept when its val mR beats the current recipe's. Then inference levers are added the
same way on the chosen training recipe's seed-0 model, with their own parameters (the querybank's beta) chosen on val.
Test numbers are reported beside every val number and are never used to choose.

Runs live in ``<results>/recipe/`` (:func:`itr_lib.runs.run_grid`: a recorded run is never retrained) and inference
records in ``<results>/recipe/inference/`` (metrics JSON + per-query tie counts, so tables and paired bootstraps are
rebuilt without checkpoints).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .config import TrainConfig
from .experiments import LOSSES, PROBE_BASE, VARIANTS, make_config

log = logging.getLogger(__name__)

# the probe's val winner (round 2: D = 1024 + residual MLP), the baseline variant, the study loss
REFERENCE = dict(PROBE_BASE, dim=1024, mlp=True)
ROT4 = ("r0", "r90", "r180", "r270")
D4 = ("r0", "r90", "r180", "r270", "f0", "f90", "f180", "f270")

# (name, group, change): levers of one group set the same fields and are alternatives
TRAIN_LEVERS: list[tuple[str, str, dict]] = [
    ("10 epochs", "schedule", {"epochs": 10}),
    ("rotations (train)", "transforms", {"image_transforms": list(ROT4)}),
    ("rotations + flips (train)", "transforms", {"image_transforms": list(D4)}),
    ("InfoNCE temperature 0.03", "temperature", {"infonce_temperature": 0.03}),
    ("InfoNCE temperature 0.07", "temperature", {"infonce_temperature": 0.07}),
    ("region/token drop 0.1", "dropout", {"region_drop": 0.1, "token_drop": 0.1}),
    ("region/token drop 0.3", "dropout", {"region_drop": 0.3, "token_drop": 0.3}),
]


@dataclass(frozen=True)
class InferenceSpec:
    """How a trained model (or several) scores at inference. ``tta``: image transforms whose retrieval vectors are
    averaged (the image side; () = the plain grid); ``ensemble``: how many seeds' models are concatenated (1 = the
    model alone); ``hubness``: None | "inverted_softmax" | "qbnorm" (querybank of training items) |
    "dual_softmax" (transductive); ``beta``: the correction's inverse temperature (None: chosen on val from
    :data:`BETAS`)."""
    tta: tuple = ()
    ensemble: int = 1
    hubness: str | None = None
    beta: float | None = None

    def merged(self, other: "InferenceSpec") -> "InferenceSpec":
        return InferenceSpec(tta=other.tta or self.tta, ensemble=max(self.ensemble, other.ensemble),
                             hubness=other.hubness or self.hubness,
                             beta=other.beta if other.hubness else self.beta)

    @property
    def transductive(self) -> bool:
        return self.hubness == "dual_softmax"

    def slug(self) -> str:
        parts = []
        if self.tta:
            parts.append("tta-" + "-".join(self.tta))
        if self.ensemble > 1:
            parts.append(f"ens{self.ensemble}")
        if self.hubness:
            parts.append(self.hubness + (f"-b{self.beta:g}" if self.beta is not None else ""))
        return "+".join(parts) or "plain"


BETAS = (10.0, 20.0, 30.0, 50.0)
# (name, group, spec); the groups as for the training levers
INFERENCE_LEVERS: list[tuple[str, str, InferenceSpec]] = [
    ("test-time rotations", "tta", InferenceSpec(tta=ROT4)),
    ("test-time rotations + flips", "tta", InferenceSpec(tta=D4)),
    ("inverted softmax (training bank)", "hubness", InferenceSpec(hubness="inverted_softmax")),
    ("querybank normalisation (training bank)", "hubness", InferenceSpec(hubness="qbnorm")),
    ("seed ensemble (3 models)", "ensemble", InferenceSpec(ensemble=3)),
]
TRANSDUCTIVE_LEVERS = [("dual softmax (transductive: whole test query set)", "transductive",
                        InferenceSpec(hubness="dual_softmax"))]


def lever_config(change: dict, dataset: str, seed: int, variant: str = "baseline", base: dict | None = None
                 ) -> TrainConfig:
    """The reference with ``change`` for ``variant`` under the study loss (``base``: runtime fields)."""
    return make_config({**REFERENCE, **change, "progress": False, **(base or {}), "dataset": dataset, "seed": seed},
                       **VARIANTS[variant], **LOSSES["infonce"])


def combine(changes: Sequence[dict]) -> dict:
    """The union of lever changes; two changes that set one field differently are an error (same group)."""
    out: dict = {}
    for ch in changes:
        for k, v in ch.items():
            if k in out and out[k] != v:
                raise ValueError(f"levers conflict on {k!r}: {out[k]!r} vs {v!r} (choose one lever of a group)")
            out[k] = v
    return out


def best_per_group(gains: Sequence[tuple[str, str, float]]) -> list[str]:
    """The greedy order: lever names with a positive val gain, best first, the best of each group only.
    ``gains``: (name, group, val gain)."""
    best: dict[str, tuple[str, float]] = {}
    for name, group, g in gains:
        if g is None or not np.isfinite(g) or g <= 0:
            continue
        if group not in best or g > best[group][1]:
            best[group] = (name, g)
    return [n for n, _ in sorted(best.values(), key=lambda t: -t[1])]


def val_mr(m: dict) -> float:
    return float(m["val"]["standard"]["rsum"]) / 6


def test_mr(m: dict) -> float:
    return float(m["test"]["standard"]["mr"])


@dataclass
class GreedyTrace:
    """The greedy search's steps: (recipe levers so far, val mR, kept?) per step, and the chosen levers."""
    steps: list[dict] = field(default_factory=list)
    chosen: list[str] = field(default_factory=list)


def greedy_train(order: Sequence[str], reference: dict, train_fn, changes: dict[str, dict]) -> GreedyTrace:
    """Add the levers of ``order`` one by one to the recipe; ``train_fn(change) -> run metrics`` trains (or reuses)
    the recipe with a combined change. A lever stays when the combined run's val mR beats the current recipe's.
    ``reference``: the reference run's metrics (the recipe before any lever)."""
    trace = GreedyTrace()
    current, best = [], val_mr(reference)
    for name in order:
        if not current:  # a single lever's run is its own one-lever run: already trained and measured
            m = train_fn(changes[name])
        else:
            m = train_fn(combine([changes[n] for n in current] + [changes[name]]))
        v = val_mr(m)
        kept = v > best
        trace.steps.append({"step": len(trace.steps) + 1, "levers": " + ".join(current + [name]), "val_mr": round(v, 2),
                            "test_mr": round(test_mr(m), 2), "kept": kept, "run": m.get("run")})
        if kept:
            current.append(name)
            best = v
    trace.chosen = current
    return trace


def write_record(path: Path, record: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    """An inference record: ``<path>.json`` (metrics, spec, costs) and ``<path>.ranks.npz`` (tie counts), atomically
    (the JSON last, so a record with a JSON is complete)."""
    from .io import atomic_write_bytes, write_json
    import io as _io
    path.parent.mkdir(parents=True, exist_ok=True)
    if arrays:
        buf = _io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(path.with_suffix(".ranks.npz"), buf.getvalue())
    write_json(path.with_suffix(".json"), record)


def read_record(path: Path, key: dict) -> dict | None:
    """The record at ``<path>.json`` when its ``key`` (runs, spec, split sizes) equals ``key``; else None (rebuilt)."""
    from .io import read_json
    js = path.with_suffix(".json")
    if not js.is_file():
        return None
    rec = read_json(js)
    return rec if json.dumps(rec.get("key"), sort_keys=True) == json.dumps(key, sort_keys=True) else None


def lever_table(rows: list[dict]) -> pd.DataFrame:
    """The lever table: one row per lever (stage, name, change), its val / test mR beside the reference's, the
    val gain (what decides), the paired bootstrap of its test rsum gain (reported, never used to choose) and whether
    the greedy rule kept it."""
    cols = ["stage", "lever", "change", "ref_val_mr", "val_mr", "val_gain", "ref_test_mr", "test_mr",
            "delta_rsum", "ci_lo", "ci_hi", "chosen", "extra_query_ms", "train_min", "run"]
    df = pd.DataFrame(rows)
    for c in cols:
        if c not in df:
            df[c] = np.nan
    df["val_gain"] = (df.val_mr - df.ref_val_mr).round(2)
    return df[cols]


# ----------------------------------------------------------------------------------------------- running the levers
def recipe_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / "recipe"


def _reuse_recorded(results_dir: Path, dest: Path, cfgs: Sequence[TrainConfig]) -> None:
    """Copy the records of runs already made elsewhere in ``results_dir`` (the probe's follow-up trained the
    reference on 3 seeds) into ``dest/metrics``: the same config (same name, same identity) is never retrained."""
    from .probe import _copy_recorded
    for c in cfgs:
        name = c.run_name()
        for src in sorted(results_dir.glob(f"probe/**/metrics/{name}.json")):
            _copy_recorded(src.parent.parent, dest, name)
            break


def _grid(cfgs: list[TrainConfig], results_dir: Path, workers: int) -> list[dict]:
    from .runs import run_grid
    rdir = recipe_dir(results_dir)
    _reuse_recorded(Path(results_dir), rdir, cfgs)
    return run_grid(cfgs, rdir, workers=workers, threads=1)


def training_levers(dataset: str, results_dir: str | Path, *, seed: int = 0, levers=None, workers: int = 1,
                    base: dict | None = None, n_boot: int = 2000) -> tuple[pd.DataFrame, GreedyTrace, dict]:
    """Stage 1 and 2: each training lever alone (seed 0) against the reference, then the greedy combination.
    Returns (lever rows as a table, the greedy trace, the chosen change)."""
    from .runs import load_hits
    from .metrics import paired_bootstrap
    results_dir = Path(results_dir)
    levers = TRAIN_LEVERS if levers is None else levers
    cfgs = [lever_config({}, dataset, seed, base=base)] + [lever_config(ch, dataset, seed, base=base)
                                                           for _, _, ch in levers]
    metrics = _grid(cfgs, results_dir, workers)
    ref, singles = metrics[0], metrics[1:]
    mdir = recipe_dir(results_dir) / "metrics"
    ref_hits = load_hits(mdir, ref["run"])
    rows = [_row("reference", "reference", "-", ref, ref, None)]
    for (name, group, ch), m in zip(levers, singles):
        bs = paired_bootstrap([ref_hits], [load_hits(mdir, m["run"])], n_boot=n_boot)
        rows.append(_row("training (alone)", name, _change_str(ch), m, ref, bs))
    order = best_per_group([(n, g, val_mr(m) - val_mr(ref)) for (n, g, _), m in zip(levers, singles)])
    changes = {n: ch for n, _, ch in levers}

    def train_fn(change: dict) -> dict:
        return _grid([lever_config(change, dataset, seed, base=base)], results_dir, workers=1)[0]
    trace = greedy_train(order, ref, train_fn, changes)
    chosen = set(trace.chosen)
    for r in rows:
        r["chosen"] = r["lever"] in chosen
    return lever_table(rows), trace, combine([changes[n] for n in trace.chosen])


def _change_str(ch: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in ch.items()) or "-"


def _row(stage: str, lever: str, change: str, m: dict, ref: dict, bs: dict | None, **extra) -> dict:
    return {"stage": stage, "lever": lever, "change": change, "ref_val_mr": round(val_mr(ref), 2),
            "val_mr": round(val_mr(m), 2), "ref_test_mr": round(test_mr(ref), 2), "test_mr": round(test_mr(m), 2),
            "delta_rsum": None if bs is None else round(bs["delta_rsum"], 2),
            "ci_lo": None if bs is None else round(bs["ci_lo"], 2), "ci_hi": None if bs is None else round(bs["ci_hi"], 2),
            "train_min": round(m.get("train_seconds", 0) / 60, 1) if m.get("train_seconds") else None,
            "run": m.get("run"), **extra}


def trace_table(trace: GreedyTrace) -> pd.DataFrame:
    return pd.DataFrame(trace.steps, columns=["step", "levers", "val_mr", "test_mr", "kept", "run"])


def recipe_configs(change: dict, datasets: Sequence[str], seeds: Sequence[int],
                   variants: Sequence[str] = ("baseline", "lca+cra"), base: dict | None = None) -> list[TrainConfig]:
    """The chosen training recipe for every dataset x seed x variant (seed-major, so an interrupted grid leaves
    whole seeds)."""
    return [lever_config(change, ds, s, v, base=base) for ds in datasets for s in seeds for v in variants]
