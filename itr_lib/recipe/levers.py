"""The recipe's levers, its reference and the greedy rule on val (see :mod:`itr_lib.recipe`)."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..experiments import LOSSES, PROBE_BASE, VARIANTS, make_config

log = logging.getLogger(__name__)


def recipe_dir(results_dir: str | Path) -> Path:
    """Where the recipe's runs (``runs/``, ``metrics/``) and inference records (``inference/``) live."""
    return Path(results_dir) / "recipe"



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


BETAS = (10.0, 20.0, 50.0, 100.0, 200.0)  # a real RSICD model chose 100 on val (10-30 made val mR worse)
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
    of the reference, e.g. a shorter schedule in tests; the lever's ``change`` wins over them). A ``top_precision``
    in ``base`` (07's ``TOP_PRECISION``) reaches only the configs that train the image top, and with
    ``top_precision_methods`` in ``base`` (07's ``TOP_PRECISION_METHODS``, not a config field) only those of the
    variants listed."""
    kw = {**REFERENCE, "progress": False, **(base or {}), **change, "dataset": dataset, "seed": seed}
    topped = kw.pop("top_precision_methods", None)
    if not kw.get("image_top_blocks") or (topped is not None and variant not in topped):
        kw.pop("top_precision", None)
    return make_config(kw, **VARIANTS[variant], **LOSSES["infonce"])


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


def needed_transforms(change_or_levers, specs) -> dict[str, list[str]]:
    """Transform caches a stage needs, per split: the training split's for training levers / a chosen change
    (``image_transforms``), val and test for test-time augmentation. ``change_or_levers``: a change dict or a list
    of (name, group, change); ``specs``: InferenceSpecs."""
    changes = [change_or_levers] if isinstance(change_or_levers, dict) else [ch for _, _, ch in change_or_levers]
    train = sorted({t for ch in changes for t in (ch.get("image_transforms") or ())}, key=list(D4).index)
    tta = sorted({t for sp in specs for t in sp.tta}, key=list(D4).index)
    return {k: v for k, v in (("train", train), ("val", tta), ("test", tta)) if v}


def unrecorded(levers, dataset: str, results_dir: str | Path, seed: int = 0, base: dict | None = None) -> list:
    """The training levers of ``levers`` (name, group, change) whose seed-``seed`` run is not recorded in the
    recipe's ``metrics/`` yet: only these need their transform caches (a recorded run is never retrained, so a
    rerun of the lever table does not rebuild the rotation grids, ~40 min on one core)."""
    from ..runs import recorded
    mdir = recipe_dir(results_dir)
    return [lv for lv in levers if recorded(lever_config(lv[2], dataset, seed, base=base), mdir) is None]


def ensure_caches(dataset: str, needs: dict[str, list[str]], data_root=None, cache_dir=None,
                  progress: bool | None = None, cut: int | None = None) -> None:
    """Build (or reuse, sidecar-checked) the transform caches of :func:`needed_transforms`; ``cut``: the block
    activation caches of those views (a model with a trainable image top, ``TrainConfig.image_cut``) instead of
    the grids."""
    from ..features import ensure_features
    for split, transforms in needs.items():
        ensure_features(dataset, [split], data_root=data_root, root=cache_dir, progress=progress,
                        transforms=list(transforms), cut=cut)


def lever_names(levers, names: Sequence[str] | None):
    """The levers named in ``names`` (None: all); an unknown name is an error listing the known ones."""
    if names is None:
        return list(levers)
    known = [n for n, _, _ in levers]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown lever(s) {unknown}; choose from {known}")
    return [lv for lv in levers if lv[0] in names]
