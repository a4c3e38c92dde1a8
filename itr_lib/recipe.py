"""The strongest frozen-feature recipe (issue 15, notebook ``07_recipe``): levers measured one at a time against one
reference, chosen greedily on val, then the chosen recipe over seeds for the baseline and SelfAlign (LCA+CRA).

The reference is the capacity probe's best RSICD model (:mod:`itr_lib.probe`): the baseline at D = 1024 with residual-MLP
encoders (:data:`REFERENCE`), under the study loss (FN-masked InfoNCE, all captions per step), 6 epochs, the
checkpoint chosen on the full val split.

Levers (:data:`TRAIN_LEVERS`, :data:`INFERENCE_LEVERS`):

- **training levers** change the run's config (schedule, rotation sampling of the cached grids, InfoNCE
  temperature, region/token dropout); each lever is one run of seed 0, compared with the reference's seed-0 run.
  (Training on all 8 rotations + flips is left out: 8 RSICD train grids are 8 GB of RAM per run, too much for two
  runs side by side in 24 GB; flips enter at test time.)
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
    ("InfoNCE temperature 0.03", "temperature", {"infonce_temperature": 0.03}),
    ("InfoNCE temperature 0.07", "temperature", {"infonce_temperature": 0.07}),
    ("region/token drop 0.1", "dropout", {"region_drop": 0.1, "token_drop": 0.1}),
    ("region/token drop 0.3", "dropout", {"region_drop": 0.3, "token_drop": 0.3}),
]


@dataclass(frozen=True)
class InferenceSpec:
    """How a trained model (or several) scores at inference. ``tta``: image transforms whose retrieval vectors are
    averaged (the image side; () = the plain grid); ``ensemble``: how many seeds' models are concatenated (1 = the
    model alone; 0 in a lever list = every seed of the stage, resolved by :meth:`resolved`); ``hubness``: None | "inverted_softmax" | "qb_norm" (querybank of training items) |
    "dual_softmax_transductive" (:mod:`itr_lib.hubness`); ``beta``: the correction's inverse temperature (None: chosen on val from
    :data:`BETAS`)."""
    tta: tuple = ()
    ensemble: int = 1
    hubness: str | None = None
    beta: float | None = None

    def merged(self, other: "InferenceSpec") -> "InferenceSpec":
        return InferenceSpec(tta=other.tta or self.tta, ensemble=max(self.ensemble, other.ensemble),
                             hubness=other.hubness or self.hubness,
                             beta=other.beta if other.hubness else self.beta)

    def resolved(self, n_seeds: int) -> "InferenceSpec":
        return InferenceSpec(self.tta, n_seeds, self.hubness, self.beta) if self.ensemble == 0 else self

    @property
    def transductive(self) -> bool:
        return self.hubness == "dual_softmax_transductive"

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
    ("querybank normalisation (training bank)", "hubness", InferenceSpec(hubness="qb_norm")),
    ("seed ensemble (all seeds)", "ensemble", InferenceSpec(ensemble=0)),  # 0: one model per seed of the stage
]
TRANSDUCTIVE_LEVERS = [("dual softmax (transductive: whole test query set)", "transductive",
                        InferenceSpec(hubness="dual_softmax_transductive"))]


def lever_config(change: dict, dataset: str, seed: int, variant: str = "baseline", base: dict | None = None
                 ) -> TrainConfig:
    """The reference with ``change`` for ``variant`` under the study loss (``base``: runtime fields and overrides
    of the reference, e.g. a shorter schedule in tests; the lever's ``change`` wins over them)."""
    return make_config({**REFERENCE, "progress": False, **(base or {}), **change, "dataset": dataset, "seed": seed},
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
        atomic_write_bytes(path.parent / f"{path.name}.ranks.npz", buf.getvalue())
    write_json(path.parent / f"{path.name}.json", record)


def read_record(path: Path, key: dict) -> dict | None:
    """The record at ``<path>.json`` when its ``key`` (runs, spec, split sizes) equals ``key``; else None (rebuilt)."""
    from .io import read_json
    js = path.parent / f"{path.name}.json"
    if not js.is_file():
        return None
    rec = read_json(js)
    return rec if json.dumps(rec.get("key"), sort_keys=True) == json.dumps(key, sort_keys=True) else None


def lever_table(rows: list[dict]) -> pd.DataFrame:
    """The lever table: one row per lever (stage, name, change), its val / test mR beside the reference's, the
    val gain (what decides), the paired bootstrap of its test rsum gain (reported, never used to choose) and whether
    the greedy rule kept it."""
    cols = ["stage", "lever", "change", "ref_val_mr", "val_mr", "val_gain", "ref_test_mr", "test_mr",
            "delta_rsum", "ci_lo", "ci_hi", "chosen", "extra_query_ms", "image_encodes_per_image", "train_min", "run"]
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


# ----------------------------------------------------------------------------------------------- inference levers
def checkpoints(cfgs: Sequence[TrainConfig], results_dir: str | Path, workers: int = 1) -> list[Path]:
    """The ``best.pt`` of each recipe run, retrained from its recorded config where it is missing (checkpoints
    are not committed; :func:`itr_lib.runs.retrain`). An inference lever is always compared with the plain score of
    the same checkpoint, so a retrained checkpoint's small difference from the record cannot enter a gain."""
    from .runs import retrain
    rdir = recipe_dir(results_dir)
    paths = [rdir / "runs" / c.run_name() / "best.pt" for c in cfgs]
    missing = [c.run_name() for c, p in zip(cfgs, paths) if not p.is_file()]
    if missing:
        log.info("retraining %d recipe checkpoint(s): %s", len(missing), missing)
        retrain(rdir, missing, workers=workers)
    return paths


def _vectors(models: Sequence, data, transforms: Sequence[str], device: str, batch_size: int,
             texts: np.ndarray | None = None, image_idx: np.ndarray | None = None):
    """(image vectors, text vectors of ``texts``) of one model or a seed ensemble: each model's vectors (images
    averaged over ``transforms`` when given: :func:`itr_lib.scoring.tta_image_vectors`), concatenated and scaled by
    1/sqrt(m), so one inner product is the mean of the models' similarities. Also the image-encode seconds."""
    import time
    import torch
    from .scoring import encode_split, tta_image_vectors
    imgs, txts, secs = [], [], 0.0
    for model in models:
        t0 = time.perf_counter()
        img, txt = encode_split(model, data, device, batch_size, texts=texts, outputs="vectors")
        iv = img["vec"].float()
        if transforms and tuple(transforms) != ("r0",):
            t0 = time.perf_counter()
            iv, _ = tta_image_vectors(model, data, transforms, device, batch_size)
        secs += time.perf_counter() - t0
        imgs.append(iv if image_idx is None else iv[torch.as_tensor(image_idx)])
        txts.append(txt["vec"].float())
    scale = 1.0 / np.sqrt(len(models))
    return (torch.cat(imgs, 1) * scale).numpy(), (torch.cat(txts, 1) * scale).numpy(), secs


def prepare_vectors(models: Sequence, data, bank, transforms: Sequence[str] = (), device: str = "cpu",
                    batch_size: int = 256, bank_size: int | None = None, seed: int = 0):
    """A :class:`itr_lib.hubness.Prepared` (the split's scores and the querybank's) for one model or an ensemble,
    images averaged over ``transforms``; ``bank``: the training split (None: no bank)."""
    from .hubness import Prepared, check_bank
    uniq, inverse = data.text_groups()
    iv, tv, secs = _vectors(models, data, transforms, device, batch_size, texts=uniq)
    prep = Prepared(sims=iv @ tv.T, inverse=inverse, text_counts=np.bincount(inverse, minlength=len(uniq)))
    prep.info.update(score="inner product of retrieval vectors", image_encode_seconds=secs,
                     models=len(models), transforms=list(transforms) or ["r0"])
    if bank is None:
        return prep
    check_bank(data, bank)
    rng = np.random.default_rng(seed)
    b_uniq, b_inv = bank.text_groups()
    caps, imgs = np.arange(bank.n_texts), None
    if bank_size is not None:
        caps = np.sort(rng.choice(bank.n_texts, min(bank_size, bank.n_texts), replace=False))
        imgs = np.sort(rng.choice(bank.n_images, min(bank_size, bank.n_images), replace=False))
    counts = np.bincount(b_inv[caps], minlength=len(b_uniq))
    groups = np.flatnonzero(counts)
    # the bank's images are encoded untransformed (the training split's transform caches are not needed; stated)
    biv, btv, _ = _vectors(models, bank, (), device, batch_size, texts=b_uniq[groups], image_idx=imgs)
    prep.bank_t2i = btv @ iv.T                      # (bank captions, split images)
    prep.bank_t2i_w = counts[groups].astype(np.float64)
    prep.bank_i2t = biv @ tv.T                      # (bank images, split captions)
    prep.info["bank"] = {"split": bank.split.name, "n_texts": int(len(caps)), "n_distinct_texts": int(len(groups)),
                         "n_images": int(len(biv)), "bank_size": bank_size, "bank_image_transforms": ["r0"]}
    return prep


def score_spec(prep, data, spec: InferenceSpec, beta: float | None) -> dict:
    """The metrics bundle (with ``_ties``) of ``prep`` under ``spec``'s hubness correction at ``beta``."""
    from .hubness import score_prepared
    return score_prepared(prep, data, spec.hubness or "none", beta if spec.hubness else None, with_ranks=True)


@dataclass
class SpecResult:
    spec: InferenceSpec
    beta: float | None
    val: dict
    test: dict
    beta_table: pd.DataFrame | None = None


def evaluate_spec(models: Sequence, val, test, bank, spec: InferenceSpec, betas: Sequence[float] = BETAS,
                  device: str = "cpu", batch_size: int = 256, bank_size: int | None = None) -> SpecResult:
    """``spec`` on val (its beta chosen there among ``betas`` when it corrects hubness and fixes none) and on test
    with that beta. ``models``: one model, or the ensemble's models (``spec.ensemble`` of them)."""
    if spec.ensemble != len(models):
        raise ValueError(f"the spec asks for an ensemble of {spec.ensemble} model(s), {len(models)} given")
    needs_bank = spec.hubness in ("inverted_softmax", "qb_norm")
    pv = prepare_vectors(models, val, bank if needs_bank else None, spec.tta, device, batch_size, bank_size)
    beta, table = spec.beta, None
    if spec.hubness and beta is None:
        rows = []
        for b in betas:
            rows.append({"beta": float(b), "val_mr": score_spec(pv, val, spec, b)["standard"]["mr"]})
        table = pd.DataFrame(rows)
        beta = float(table.beta[table.val_mr.idxmax()])
        table["chosen"] = table.beta == beta
    v = score_spec(pv, val, spec, beta)
    pt = prepare_vectors(models, test, bank if needs_bank else None, spec.tta, device, batch_size, bank_size)
    t = score_spec(pt, test, spec, beta)
    t.setdefault("_cost", {})["image_encode_seconds_per_image"] = pt.info["image_encode_seconds"] / test.n_images
    return SpecResult(spec, beta, v, t, table)


def spec_hits(res_bundle: dict):
    """Per-query hits (i2t, t2i) at K = 1, 5, 10 of a bundle's ``_ties`` under the study's tie rule."""
    from .metrics import RECALL_KS
    return tuple(t.hits(RECALL_KS) for t in res_bundle["_ties"])


def save_spec(path: Path, key: dict, res: SpecResult, meta: dict) -> dict:
    """Write an inference record (metrics of val and test, beta and its val table, cost, per-query test ties)."""
    from .scoring import ties_arrays
    clean = {k: v for k, v in res.test.items() if not k.startswith("_")}
    rec = {"key": key, **meta, "spec": {"tta": list(res.spec.tta), "ensemble": res.spec.ensemble,
                                         "hubness": res.spec.hubness, "beta": res.beta,
                                         "transductive": res.spec.transductive, "slug": res.spec.slug()},
           "val": {k: v for k, v in res.val.items() if not k.startswith("_")}, "test": clean,
           "hubness": res.test.get("_hubness"), "cost": res.test.get("_cost"),
           "beta_table": None if res.beta_table is None else res.beta_table.to_dict("records")}
    write_record(path, rec, ties_arrays(res.test["_ties"]))
    return rec


def load_spec_hits(path: Path):
    from .metrics import RECALL_KS
    from .scoring import load_ties
    z = np.load(path.parent / f"{path.name}.ranks.npz")
    return tuple(t.hits(RECALL_KS) for t in load_ties(z))


def _record_key(cfgs: Sequence[TrainConfig], spec: InferenceSpec, betas, bank_size) -> dict:
    return {"runs": [c.run_name() for c in cfgs], "spec": InferenceSpec(spec.tta, spec.ensemble, spec.hubness,
                                                                          spec.beta).slug(),
            "betas": [float(b) for b in betas] if spec.hubness and spec.beta is None else None,
            "bank_size": bank_size if spec.hubness in ("inverted_softmax", "qb_norm") else None}


class _Evaluator:
    """Evaluates specs on the checkpoints of some recipe runs, each result cached as an inference record
    (``<results>/recipe/inference/<spec>--<first run>``) and reused while its key (runs, spec, betas, bank) matches."""

    def __init__(self, cfgs: Sequence[TrainConfig], results_dir: Path, transforms: Sequence[str], device: str,
                 betas, bank_size, workers: int):
        from .splits import load_split_tensors
        self.cfgs, self.results_dir, self.device = list(cfgs), Path(results_dir), device
        self.betas, self.bank_size, self.workers = betas, bank_size, workers
        self.dir = recipe_dir(results_dir) / "inference"
        views = list(transforms) if transforms else None
        c0 = cfgs[0]
        self.val = load_split_tensors(c0, "val", transforms=views)
        self.test = load_split_tensors(c0, "test", transforms=views)
        self._bank, self._models = None, {}

    def bank(self):
        from .splits import load_split_tensors
        if self._bank is None:
            self._bank = load_split_tensors(self.cfgs[0], "train")
        return self._bank

    def models(self, n: int) -> list:
        from .train import load_checkpoint
        if n > len(self.cfgs):
            raise ValueError(f"an ensemble of {n} needs {n} seeds' runs, {len(self.cfgs)} given")
        paths = checkpoints(self.cfgs[:n], self.results_dir, self.workers)
        for p in paths:
            if p not in self._models:
                self._models[p] = load_checkpoint(p, self.device)[0]
        return [self._models[p] for p in paths]

    def __call__(self, spec: InferenceSpec) -> tuple[dict, Path]:
        cfgs = self.cfgs[:spec.ensemble]
        key = _record_key(cfgs, spec, self.betas, self.bank_size)
        path = self.dir / f"{key['spec']}--{cfgs[0].run_name()}"
        rec = read_record(path, key)
        if rec is None:
            needs_bank = spec.hubness in ("inverted_softmax", "qb_norm")
            res = evaluate_spec(self.models(spec.ensemble), self.val, self.test, self.bank() if needs_bank else None,
                                spec, self.betas, self.device, bank_size=self.bank_size)
            meta = {"dataset": cfgs[0].dataset, "method": cfgs[0].method, "seeds": [c.seed for c in cfgs],
                    "config": {k: v for k, v in cfgs[0].identity().items() if k != "seed"}}
            rec = save_spec(path, key, res, meta)
        return rec, path


def _spec_row(stage: str, name: str, rec: dict, ref: dict, bs: dict | None, chosen: bool = False) -> dict:
    cost = rec.get("cost") or {}
    hub = (rec.get("hubness") or {}).get("cost") or {}
    extra = max(hub.get("extra_us_per_query_i2t", 0.0), hub.get("extra_us_per_query_t2i", 0.0)) / 1000
    return {"stage": stage, "lever": name, "change": rec["spec"]["slug"] + (f" (beta {rec['spec']['beta']:g})"
                                                                           if rec["spec"].get("beta") else ""),
            "ref_val_mr": round(ref["val"]["standard"]["mr"], 2), "val_mr": round(rec["val"]["standard"]["mr"], 2),
            "ref_test_mr": round(ref["test"]["standard"]["mr"], 2), "test_mr": round(rec["test"]["standard"]["mr"], 2),
            "delta_rsum": None if bs is None else round(bs["delta_rsum"], 2),
            "ci_lo": None if bs is None else round(bs["ci_lo"], 2), "ci_hi": None if bs is None else round(bs["ci_hi"], 2),
            "chosen": chosen, "extra_query_ms": round(extra, 4) if extra else None,
            "image_encodes_per_image": len(rec["spec"]["tta"]) * rec["spec"]["ensemble"] or rec["spec"]["ensemble"],
            "run": ",".join(rec["key"]["runs"])}


def inference_levers(change: dict, dataset: str, results_dir: str | Path, *, seeds: Sequence[int] = (0, 1, 2),
                     levers=None, transductive=None, base: dict | None = None, device: str = "cpu",
                     betas: Sequence[float] = BETAS, bank_size: int | None = None, n_boot: int = 2000,
                     workers: int = 1) -> tuple[pd.DataFrame, GreedyTrace, InferenceSpec]:
    """Stage 3: each inference lever alone on the chosen training recipe's seed-``seeds[0]`` model (an ensemble
    lever: the first m seeds' models), against the plain score of the same checkpoint; then the greedy
    combination on val; the transductive levers reported beside, never chosen. Returns (rows, trace, spec)."""
    from .metrics import paired_bootstrap
    results_dir = Path(results_dir)
    levers = INFERENCE_LEVERS if levers is None else levers
    transductive = TRANSDUCTIVE_LEVERS if transductive is None else transductive
    cfgs = [lever_config(change, dataset, s, base=base) for s in seeds]
    levers = [(n, g, sp.resolved(len(cfgs))) for n, g, sp in levers]
    transductive = [(n, g, sp.resolved(len(cfgs))) for n, g, sp in transductive]
    m_max = max([1] + [sp.ensemble for _, _, sp in [*levers, *transductive]])
    _grid(cfgs[:m_max], results_dir, workers)
    views = sorted({t for _, _, sp in [*levers, *transductive] for t in sp.tta}, key=list(D4).index)
    ev = _Evaluator(cfgs, results_dir, views, device, betas, bank_size, workers)
    plain, plain_path = ev(InferenceSpec())
    plain_hits = load_spec_hits(plain_path)
    rows = [_spec_row("inference (alone)", "plain score (reference)", plain, plain, None)]
    gains, specs = [], {}
    for stage, group_list in (("inference (alone)", levers), ("transductive (reported, never chosen)", transductive)):
        for name, group, spec in group_list:
            if spec.ensemble > len(cfgs):
                raise ValueError(f"lever {name!r} needs {spec.ensemble} seeds; seeds={list(seeds)}")
            rec, path = ev(spec)
            bs = paired_bootstrap([plain_hits], [load_spec_hits(path)], n_boot=n_boot)
            rows.append(_spec_row(stage, name, rec, plain, bs))
            if not spec.transductive:
                gains.append((name, group, rec["val"]["standard"]["mr"] - plain["val"]["standard"]["mr"]))
                specs[name] = spec
    trace, current, best = GreedyTrace(), InferenceSpec(), plain["val"]["standard"]["mr"]
    for name in best_per_group(gains):
        cand = current.merged(specs[name])
        rec, _ = ev(cand)
        v = rec["val"]["standard"]["mr"]
        kept = v > best
        trace.steps.append({"step": len(trace.steps) + 1, "levers": " + ".join(trace.chosen + [name]),
                            "val_mr": round(v, 2), "test_mr": round(rec["test"]["standard"]["mr"], 2), "kept": kept,
                            "run": rec["spec"]["slug"]})
        if kept:
            trace.chosen.append(name)
            current, best = cand, v
    for r in rows:
        r["chosen"] = r["lever"] in trace.chosen
    return lever_table(rows), trace, current


# ----------------------------------------------------------------------------------------------- the chosen recipe
def final_runs(change: dict, spec: InferenceSpec, datasets: Sequence[str], results_dir: str | Path, *,
               seeds: Sequence[int] = (0, 1, 2), variants: Sequence[str] = ("baseline", "lca+cra"),
               base: dict | None = None, device: str = "cpu", betas: Sequence[float] = BETAS,
               bank_size: int | None = None, n_boot: int = 2000, workers: int = 1) -> pd.DataFrame:
    """Stage 4: the chosen recipe (training ``change``, inference ``spec``) on every dataset x variant x seed. Each
    seed's model is scored with ``spec`` without its ensemble (beta chosen on that run's val), and, when ``spec``
    ensembles m models, the ensemble of the first m seeds is one more row (one number: no spread over seeds).
    Returns one row per dataset x variant x scoring: mean +- std of val and test mR, and for SelfAlign the paired
    bootstrap of its test rsum gain over the baseline of the same recipe and seeds."""
    from .metrics import paired_bootstrap
    results_dir = Path(results_dir)
    cfgs = recipe_configs(change, datasets, seeds, variants, base)
    _grid(cfgs, results_dir, workers)
    single = InferenceSpec(spec.tta, 1, spec.hubness, spec.beta)
    rows, hits = [], {}
    for ds in datasets:
        for v in variants:
            vc = [c for c in cfgs if c.dataset == ds and c.method == VARIANTS[v]["method"]
                  and c.lca == VARIANTS[v]["lca"] and c.cra == VARIANTS[v]["cra"]]
            views = list(spec.tta)
            scorings = [("plain", InferenceSpec())] + ([("recipe", single)] if single != InferenceSpec() else [])
            for label, sp in scorings:
                recs = []
                for c in vc:
                    rec, path = _Evaluator([c], results_dir, views, device, betas, bank_size, workers)(sp)
                    recs.append(rec)
                    hits[(ds, v, label, c.seed)] = load_spec_hits(path)
                rows.append(_final_row(ds, v, label, sp, recs))
            if spec.ensemble > 1:
                rec, _ = _Evaluator(vc, results_dir, views, device, betas, bank_size, workers)(spec)
                rows.append(_final_row(ds, v, f"recipe + {spec.ensemble}-seed ensemble", spec, [rec]))
    out = pd.DataFrame(rows)
    out["delta_rsum_vs_baseline"] = out["ci_lo"] = out["ci_hi"] = np.nan
    for i, r in out.iterrows():
        if r.variant == "baseline" or "ensemble" in r.scoring:
            continue
        common = [s for s in seeds if (r.dataset, "baseline", r.scoring, s) in hits and (r.dataset, r.variant, r.scoring, s) in hits]
        if not common:
            continue
        bs = paired_bootstrap([hits[(r.dataset, "baseline", r.scoring, s)] for s in common],
                              [hits[(r.dataset, r.variant, r.scoring, s)] for s in common], n_boot=n_boot)
        out.loc[i, ["delta_rsum_vs_baseline", "ci_lo", "ci_hi"]] = [round(bs[k], 2) for k in ("delta_rsum", "ci_lo", "ci_hi")]
    return out


def _final_row(ds: str, variant: str, label: str, spec: InferenceSpec, recs: list[dict]) -> dict:
    val = np.array([r["val"]["standard"]["mr"] for r in recs])
    test = np.array([r["test"]["standard"]["mr"] for r in recs])
    sd = lambda a: round(float(a.std(ddof=1)), 2) if len(a) > 1 else 0.0  # noqa: E731
    betas = sorted({r["spec"]["beta"] for r in recs if r["spec"].get("beta") is not None})
    return {"dataset": ds, "variant": variant, "scoring": label, "spec": spec.slug(), "betas": ",".join(f"{b:g}" for b in betas),
            "n_seeds": len(recs) if spec.ensemble == 1 else 1, "val_mr": round(float(val.mean()), 2),
            "test_mr": round(float(test.mean()), 2), "test_mr_std": sd(test),
            **{f"{k}": round(float(np.mean([r["test"]["standard"][k] for r in recs])), 2)
               for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")},
            "runs": ",".join(",".join(r["key"]["runs"]) for r in recs)}


def main_rows(results_dir: str | Path, final: pd.DataFrame | None = None) -> pd.DataFrame:
    """The recipe's rows for the main tables (``tables/recipe_final.csv``): one per dataset x variant under the
    recipe's scoring, in the main table's columns (setting ``recipe``)."""
    path = Path(results_dir) / "tables" / "recipe_final.csv"
    if final is None:
        if not path.is_file():
            return pd.DataFrame()
        final = pd.read_csv(path)
    d = final[final.scoring != "plain"] if (final.scoring != "plain").any() else final
    out = pd.DataFrame({"dataset": d.dataset, "setting": "recipe",
                        "method": d.variant.map(lambda v: VARIANTS[v]["method"]),
                        "variant": "recipe: " + d.variant + " | " + d.scoring + " [" + d.spec + "]",
                        "n_seeds": d.n_seeds, "mr": d.test_mr, "mr_std": d.test_mr_std, "published": False,
                        **{k: d[k] for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")}})
    return out.reset_index(drop=True)


def needed_transforms(change_or_levers, specs) -> dict[str, list[str]]:
    """Transform caches a stage needs, per split: the training split's for training levers / a chosen change
    (``image_transforms``), val and test for test-time augmentation. ``change_or_levers``: a change dict or a list
    of (name, group, change); ``specs``: InferenceSpecs."""
    changes = [change_or_levers] if isinstance(change_or_levers, dict) else [ch for _, _, ch in change_or_levers]
    train = sorted({t for ch in changes for t in (ch.get("image_transforms") or ())}, key=list(D4).index)
    tta = sorted({t for sp in specs for t in sp.tta}, key=list(D4).index)
    return {k: v for k, v in (("train", train), ("val", tta), ("test", tta)) if v}


def ensure_caches(dataset: str, needs: dict[str, list[str]], data_root=None, cache_dir=None,
                  progress: bool | None = None) -> None:
    """Build (or reuse, sidecar-checked) the transform caches of :func:`needed_transforms`."""
    from .features import ensure_features
    for split, transforms in needs.items():
        ensure_features(dataset, [split], data_root=data_root, root=cache_dir, progress=progress,
                        transforms=list(transforms))


def lever_names(levers, names: Sequence[str] | None):
    """The levers named in ``names`` (None: all); an unknown name is an error listing the known ones."""
    if names is None:
        return list(levers)
    known = [n for n, _, _ in levers]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown lever(s) {unknown}; choose from {known}")
    return [lv for lv in levers if lv[0] in names]
