"""Scoring trained recipe models under an :class:`~itr_lib.recipe.levers.InferenceSpec`: TTA, seed ensembles and
querybank corrections on their vectors, cached as inference records."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import TrainConfig
from ..dihedral import IDENTITY
from ..hubness import BANK_METHODS, search_beta
from .levers import BETAS, InferenceSpec, recipe_dir
from .records import STALE_NOTE, beta_stale, read_record, write_record

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- inference levers
def checkpoints(cfgs: Sequence[TrainConfig], results_dir: str | Path, workers: int = 1) -> list[Path]:
    """The ``best.pt`` of each recipe run, retrained from its recorded config where it is missing (checkpoints
    are not committed; :func:`itr_lib.runs.retrain`). An inference lever is always compared with the plain score of
    the same checkpoint, so a retrained checkpoint's small difference from the record cannot enter a gain."""
    from ..runs import retrain
    rdir = recipe_dir(results_dir)
    paths = [rdir / "runs" / c.run_name() / "best.pt" for c in cfgs]
    missing = [c.run_name() for c, p in zip(cfgs, paths) if not p.is_file()]
    for run in missing:  # a run folder without its best.pt (deleted by hand) would be skipped as finished: set aside
        folder = rdir / "runs" / run
        if folder.is_dir():
            import time
            stale = folder.with_name(f"{run}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
            log.warning("%s has no best.pt: moved to %s, retraining", folder, stale.name)
            folder.rename(stale)
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
    from ..scoring import encode_images, encode_texts, tta_image_vectors
    imgs, txts, secs = [], [], 0.0
    for model in models:
        t0 = time.perf_counter()
        iv = (tta_image_vectors(model, data, transforms, device, batch_size)[0] if transforms
              else encode_images(model, data, device, batch_size))  # each image encoded once per view, no more
        secs += time.perf_counter() - t0
        txt = encode_texts(model, data, texts, device, batch_size)
        imgs.append(iv if image_idx is None else iv[torch.as_tensor(image_idx)])
        txts.append(txt.float())
    scale = 1.0 / np.sqrt(len(models))
    return (torch.cat(imgs, 1) * scale).numpy(), (torch.cat(txts, 1) * scale).numpy(), secs


def prepare_vectors(models: Sequence, data, bank, transforms: Sequence[str] = (), device: str = "cpu",
                    batch_size: int = 256, bank_size: int | None = None, seed: int = 0):
    """A :class:`itr_lib.hubness.Prepared` (the split's scores and the querybank's) for one model or an ensemble,
    images averaged over ``transforms``; ``bank``: the training split (None: no bank). The bank is sampled and
    scored by :func:`itr_lib.querybank.prepare` (the study's one bank path), with this module's vector function."""
    from ..querybank import prepare
    secs = []

    def vectors(d, texts, images):
        # the split's images averaged over its views; the bank's images untransformed (the training split's
        # transform caches are not needed; stated in the record)
        iv, tv, s = _vectors(models, d, transforms if images is None else (), device, batch_size, texts=texts,
                             image_idx=images)
        if images is None:
            secs.append(s)
        return iv, tv
    prep = prepare(None, data, bank, device, batch_size, bank_size, seed, vectors=vectors)
    prep.info.update(image_encode_seconds=secs[0], models=len(models), transforms=list(transforms) or ["r0"])
    if bank is not None:
        prep.info["bank"] = {**prep.info["bank"], "bank_image_transforms": ["r0"]}
    return prep


def score_spec(prep, data, spec: InferenceSpec, beta: float | None) -> dict:
    """The metrics bundle (with ``_ties``) of ``prep`` under ``spec``'s hubness correction at ``beta``."""
    from ..hubness import score_prepared
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
    """``spec`` on val (its beta chosen there among ``betas`` when it corrects hubness and fixes none, the grid
    extended past an edge the best value sits on: :func:`itr_lib.hubness.search_beta`) and on test with that beta.
    ``models``: one model, or the ensemble's models (``spec.ensemble`` of them)."""
    if spec.ensemble != len(models):
        raise ValueError(f"the spec asks for an ensemble of {spec.ensemble} model(s), {len(models)} given")
    needs_bank = spec.hubness in BANK_METHODS
    pv = prepare_vectors(models, val, bank if needs_bank else None, spec.tta, device, batch_size, bank_size)
    beta, table = spec.beta, None
    if spec.hubness and beta is None:  # chosen on val, the grid extended past an edge the best sits on
        beta, table = search_beta(lambda b: {"val_mr": score_spec(pv, val, spec, b)["standard"]["mr"]}, betas,
                                  key="val_mr")
    v = score_spec(pv, val, spec, beta)
    pt = prepare_vectors(models, test, bank if needs_bank else None, spec.tta, device, batch_size, bank_size)
    t = score_spec(pt, test, spec, beta)
    t.setdefault("_cost", {})["image_encode_seconds_per_image"] = pt.info["image_encode_seconds"] / test.n_images
    return SpecResult(spec, beta, v, t, table)


def _record_key(cfgs: Sequence[TrainConfig], spec: InferenceSpec, betas, bank_size) -> dict:
    return {"runs": [c.run_name() for c in cfgs], "spec": spec.slug(),
            "betas": [float(b) for b in betas] if spec.hubness and spec.beta is None else None,
            "bank_size": bank_size if spec.hubness in BANK_METHODS else None}


STALE_BETA = ("rescore", "keep")  # what an inference record whose beta predates the grid's extension gets


def check_stale_beta(value: str) -> str:
    """``value`` when it is one of :data:`STALE_BETA`, else one error naming the parameter and its choices."""
    if value not in STALE_BETA:
        raise ValueError(f"STALE_BETA must be one of {list(STALE_BETA)} (\"rescore\": re-choose a beta chosen on the "
                         f"edge of a grid that was not extended, the rule; \"keep\": reuse it as recorded, flagged), "
                         f"got {value!r}")
    return value


class _Evaluator:
    """Evaluates specs on the checkpoints of some recipe runs, each result cached as an inference record
    (``<results>/recipe/inference/<spec>--<first run>``) and reused while its key (runs, spec, betas, bank) matches.
    The split tensors (and the transform caches of ``transforms``, built where missing) are loaded only when a
    record must be (re)computed, so tables rebuild from the records without checkpoints or caches.
    ``stale_beta``: a record whose beta was chosen on the edge of a grid that was not extended
    (:func:`~itr_lib.recipe.records.beta_stale`) is re-scored (``"rescore"``, the rule) or reused as recorded
    (``"keep"``; its tables say so: :data:`~itr_lib.recipe.records.STALE_NOTE`)."""

    def __init__(self, cfgs: Sequence[TrainConfig], results_dir: Path, transforms: Sequence[str], device: str,
                 betas, bank_size, workers: int, stale_beta: str = "rescore"):
        self.cfgs, self.results_dir, self.device = list(cfgs), Path(results_dir), device
        self.betas, self.bank_size, self.workers = betas, bank_size, workers
        self.stale_beta = check_stale_beta(stale_beta)
        self.dir = recipe_dir(results_dir) / "inference"
        self.views = list(transforms) if transforms else None
        self._splits, self._bank, self._models = {}, None, {}

    def split(self, name: str):
        """The ``val`` or ``test`` split's tensors with this evaluator's views (their caches built where missing),
        loaded on first use."""
        if name not in self._splits:
            from ..splits import load_split_tensors
            from .levers import ensure_caches
            c0 = self.cfgs[0]
            if self.views and set(self.views) - {IDENTITY}:
                ensure_caches(c0.dataset, {name: self.views}, c0.data_root, c0.cache_dir, cut=c0.image_cut)
            self._splits[name] = load_split_tensors(c0, name, transforms=self.views)
        return self._splits[name]

    def bank(self):
        from ..splits import load_split_tensors
        if self._bank is None:
            self._bank = load_split_tensors(self.cfgs[0], "train")
        return self._bank

    def models(self, n: int) -> list:
        from ..train import load_checkpoint
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
        if rec is not None and beta_stale(rec):
            if self.stale_beta == "keep":
                log.warning("%s: beta chosen on the edge of a grid that was not extended; kept as recorded "
                            "(STALE_BETA=keep), flagged %r", path.name, STALE_NOTE)
            else:
                log.info("%s: beta chosen on the edge of a grid that was not extended; re-scoring", path.name)
                rec = None
        if rec is None:
            needs_bank = spec.hubness in BANK_METHODS
            res = evaluate_spec(self.models(spec.ensemble), self.split("val"), self.split("test"),
                                self.bank() if needs_bank else None, spec, self.betas, self.device,
                                bank_size=self.bank_size)
            meta = {"dataset": cfgs[0].dataset, "method": cfgs[0].method, "seeds": [c.seed for c in cfgs],
                    "config": {k: v for k, v in cfgs[0].identity().items() if k != "seed"}}
            rec = save_spec(path, key, res, meta)
        return rec, path


def save_spec(path: Path, key: dict, res: SpecResult, meta: dict) -> dict:
    """Write an inference record (metrics of val and test, beta and its val table, cost, per-query test ties)."""
    from ..scoring import ties_arrays
    clean = {k: v for k, v in res.test.items() if not k.startswith("_")}
    rec = {"key": key, **meta, "spec": {"tta": list(res.spec.tta), "ensemble": res.spec.ensemble,
                                         "hubness": res.spec.hubness, "beta": res.beta,
                                         "transductive": res.spec.transductive, "slug": res.spec.slug()},
           "val": {k: v for k, v in res.val.items() if not k.startswith("_")}, "test": clean,
           "hubness": res.test.get("_hubness"), "cost": res.test.get("_cost"),
           "beta_table": None if res.beta_table is None else res.beta_table.to_dict("records")}
    write_record(path, rec, ties_arrays(res.test["_ties"]))
    return rec
