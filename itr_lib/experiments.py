"""Experiment grids and the tables built from them (used by 02_ablations and 05_results).

Variant keys of the SelfAlign ablation: ``baseline``, ``lca``, ``cra``, ``lca+cra``. The codebook sweep
trains ``lca+cra`` (or ``lca``) at several K. ``losses`` names base-loss settings:
``infonce`` (symmetric InfoNCE with in-batch false negatives masked, every caption of the batch's images
per step: the study's default), ``infonce-1cap`` (the same with one caption per image and step) and
``triplet-authors`` (hardest-negative triplet after a sum-of-violations warm-up epoch, no masking: the
authors' loss), ``triplet-fnmask`` (the authors' triplet with false negatives masked).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .tables import aggregate, collect_runs, paired_bootstrap_seeds, published_rows
from .train import TrainConfig

VARIANTS = {"baseline": dict(method="baseline", lca=False, cra=False),
            "lca": dict(method="selfalign", lca=True, cra=False),
            "cra": dict(method="selfalign", lca=False, cra=True),
            "lca+cra": dict(method="selfalign", lca=True, cra=True)}
LOSSES = {"infonce": dict(base_loss="infonce", false_negatives="mask", captions_per_step="auto"),
          "infonce-1cap": dict(base_loss="infonce", false_negatives="mask", captions_per_step="one"),
          "infonce-nomask": dict(base_loss="infonce", false_negatives="none", captions_per_step="all"),
          "triplet-all": dict(base_loss="triplet", false_negatives="mask", captions_per_step="all"),
          "triplet-authors": dict(base_loss="triplet", false_negatives="none", captions_per_step="one"),
          "triplet-fnmask": dict(base_loss="triplet", false_negatives="mask", captions_per_step="one")}

# The fair comparison (METHODS.md, "Comparing methods on equal terms"): every method under the study loss
# (LOSSES["infonce"]: FN-masked InfoNCE, all captions of the batch's images per step) and under its authors' loss
# (hardest-negative triplet, one caption per image and step, no masking; the warm-up epoch of summed hinges is
# VSE-infinity's, the other authors start with the hardest negative), with one optimiser, lr rule, batch,
# augmentation, schedule and val set for all (COMPARISON_BASE; the VSE models add their pooling).
STUDY_LOSS = dict(base_loss="infonce", false_negatives="mask", captions_per_step="all")
METHOD_VARIANTS = {**VARIANTS, **{m: dict(method=m) for m in ("tgdt", "aladin", "scan", "mrsw")}}
AUTHORS_LOSS = {"baseline": dict(LOSSES["triplet-authors"], warmup_epochs=1),
                **{v: dict(LOSSES["triplet-authors"], warmup_epochs=1) for v in ("lca", "cra", "lca+cra")},
                **{m: dict(LOSSES["triplet-authors"], warmup_epochs=0) for m in ("tgdt", "aladin", "scan", "mrsw")}}
COMPARISON_BASE = dict(dim=512, epochs=6, lr=5e-4, batch_size=128, val_images_per_epoch=1000)
VSE_BASE = dict(pooling="meanmax", codebook_size=1024)
# the loss ablation: each knob of the study loss changed alone, on the baseline
LOSS_ABLATION = ("triplet-all", "infonce-nomask", "infonce-1cap")  # the reference is the STUDY_LOSS baseline


def make_config(base: dict, **overrides) -> TrainConfig:
    return TrainConfig.from_dict({**base, **overrides})


def ablation_configs(datasets, seeds, variants=("baseline", "lca", "cra", "lca+cra"), losses=("infonce",),
                     codebook_sizes=(), sweep_variant: str = "lca+cra", sweep_seeds=None, base: dict | None = None,
                     loss_variants=None, loss_seeds=None, sweep_epochs: int | None = None,
                     lca_weights=(), weight_variant: str = "lca") -> list[TrainConfig]:
    """The ablation grid: datasets x variants x seeds with the first loss; the other losses for the
    ``loss_variants`` only (default: every variant) and the ``loss_seeds`` only (default: ``seeds``); plus the codebook sweep (K values, on ``sweep_variant``
    with the first loss) over ``sweep_seeds`` (default: ``seeds``). ``sweep_epochs`` trains the sweep on a schedule
    of its own (default: the grid's), then with the baseline of that schedule beside it so its rows have a reference.
    ``lca_weights``: the LCA loss weight's sensitivity, ``weight_variant`` trained at each weight (the grid's schedule,
    first loss, ``sweep_seeds``)."""
    base = dict(base or {})
    sweep_base = dict(base, epochs=sweep_epochs) if sweep_epochs else base
    cfgs, seen = [], set()

    def add(cfg: TrainConfig):
        key = cfg.run_name()
        if key not in seen:
            seen.add(key)
            cfgs.append(cfg)

    for ds in datasets:  # seed-major within a dataset: an interrupted grid leaves whole seeds behind
        for s in seeds:
            for li, loss in enumerate(losses):
                for v in variants:
                    if li > 0 and ((loss_variants is not None and v not in loss_variants)
                                   or (loss_seeds is not None and s not in loss_seeds)):
                        continue
                    add(make_config(base, dataset=ds, seed=s, **VARIANTS[v], **LOSSES[loss]))
        for k in codebook_sizes:
            for s in (sweep_seeds if sweep_seeds is not None else seeds):
                if sweep_base is not base:
                    add(make_config(sweep_base, dataset=ds, seed=s, **VARIANTS["baseline"], **LOSSES[losses[0]]))
                add(make_config(sweep_base, dataset=ds, seed=s, codebook_size=k, **VARIANTS[sweep_variant],
                                **LOSSES[losses[0]]))
        for w in lca_weights:
            for s in (sweep_seeds if sweep_seeds is not None else seeds):
                add(make_config(base, dataset=ds, seed=s, lca_weight=float(w), **VARIANTS[weight_variant],
                                **LOSSES[losses[0]]))
    return cfgs


def comparison_configs(datasets, seeds, methods, authors_seeds=(), loss_ablation_seeds=(), loss_ablation_datasets=(),
                       base: dict | None = None) -> list[TrainConfig]:
    """The fair-comparison grid, most informative runs first (so an interrupted grid leaves whole seeds): per seed,
    every method of ``methods`` (keys of :data:`METHOD_VARIANTS`) under the study loss on every dataset; then the
    authors' losses on ``authors_seeds``; then the loss ablation (:data:`LOSS_ABLATION` on the baseline) on
    ``loss_ablation_datasets`` x ``loss_ablation_seeds``. ``base`` (runtime fields, overrides) is applied last."""
    base = dict(base or {})
    cfgs, seen = [], set()

    def add(variant: str, ds: str, seed: int, loss: dict) -> None:
        kw = dict(COMPARISON_BASE, **METHOD_VARIANTS[variant], **loss)
        if kw["method"] in ("baseline", "selfalign"):
            kw.update(VSE_BASE)
        cfg = make_config(kw, **base, dataset=ds, seed=seed)
        if cfg.run_name() not in seen:
            seen.add(cfg.run_name())
            cfgs.append(cfg)
    for s in seeds:
        for ds in datasets:
            for v in methods:
                add(v, ds, s, STUDY_LOSS)
    for s in authors_seeds:
        for ds in datasets:
            for v in methods:
                add(v, ds, s, AUTHORS_LOSS[v])
    for s in loss_ablation_seeds:
        for ds in loss_ablation_datasets:
            for loss in LOSS_ABLATION:
                add("baseline", ds, s, LOSSES[loss])
    return cfgs


def runs_frame(metrics_dir: Path, protocol: str = "standard") -> pd.DataFrame:
    df = collect_runs(sorted(Path(metrics_dir).glob("*.json")), protocol)
    return df


def ablation_table(df: pd.DataFrame, dataset: str, metrics_dir: Path, n_boot: int = 2000) -> pd.DataFrame:
    """Mean +- std per variant, with the paired bootstrap of rsum vs the baseline of the same loss."""
    d = df[df.dataset == dataset]
    if d.empty:
        return pd.DataFrame()
    agg = aggregate(d)
    agg["loss"] = [v.split(" | ")[1] if " | " in v else "" for v in agg.variant]
    rows = []
    for _, r in agg.iterrows():
        runs = d[(d.method == r.method) & (d.variant == r.variant)]
        base = d[(d.method == "baseline") & (d.variant.str.split(" | ", regex=False).str[1] == r.loss)
                 & d.epochs.isin(set(runs.epochs))]
        out = r.to_dict()
        out.update({"delta_rsum": np.nan, "ci_lo": np.nan, "ci_hi": np.nan, "seeds": ",".join(map(str, sorted(runs.seed)))})
        if r.method != "baseline" and not base.empty:
            pairs = [(base[base.seed == s].run.iloc[0], runs[runs.seed == s].run.iloc[0])
                     for s in sorted(set(runs.seed) & set(base.seed))]
            if pairs:
                a = [load_ranks_any(metrics_dir, p[0]) for p in pairs]
                b = [load_ranks_any(metrics_dir, p[1]) for p in pairs]
                bs = paired_bootstrap_seeds(a, b, n_boot=n_boot)
                out.update({"delta_rsum": bs["delta_rsum"], "ci_lo": bs["ci_lo"], "ci_hi": bs["ci_hi"]})
        rows.append(out)
    return pd.DataFrame(rows)


def load_ranks_any(metrics_dir: Path, run: str):
    z = np.load(Path(metrics_dir) / f"{run}.ranks.npz")
    return z["i2t"], z["t2i"]


def main_table(df: pd.DataFrame, dataset: str, include_published: bool = True) -> pd.DataFrame:
    """Every method/variant of ours (mean +- std over seeds) beside the published numbers."""
    d = df[df.dataset == dataset]
    ours = aggregate(d) if not d.empty else pd.DataFrame()
    parts = [ours]
    if include_published:
        parts.append(published_rows(dataset))
    out = pd.concat([p for p in parts if not p.empty], ignore_index=True)
    if "source" not in out:
        out["source"] = ""
    out["source"] = out["source"].fillna("this study")
    return out


def schedule_table(df: pd.DataFrame, dataset: str, method: str = "baseline", loss: str = "infonce") -> pd.DataFrame:
    """How the number of epochs was chosen: per schedule (epochs) of ``method`` with ``loss``, the val mR of the
    selected checkpoint (what the choice is made on), the test mR (reported, not used to choose), the seeds, and the
    training minutes per run. Only seeds trained on every schedule are compared."""
    d = df[(df.dataset == dataset) & (df.method == method) & (df.base_loss == loss)]
    if d.empty or d.epochs.nunique() < 2:
        return pd.DataFrame()
    common = set.intersection(*(set(g.seed) for _, g in d.groupby("epochs")))
    d = d[d.seed.isin(common)]
    if d.empty:
        return pd.DataFrame()
    g = d.groupby("epochs")
    return pd.DataFrame({"epochs": list(g.groups), "seeds": [",".join(map(str, sorted(x.seed))) for _, x in g],
                         "best_epoch": [",".join(str(int(b) + 1) for b in x.sort_values("seed").best_epoch) for _, x in g],
                         "val_mr": (g.val_rsum.mean() / 6).round(2).values, "test_mr": g.mr.mean().round(2).values,
                         "train_min_per_run": (g.train_seconds.mean() / 60).round(1).values}).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- capacity probe
# scripts/probe_capacity.py: the ablation's setting (configs/full.yaml: 02_ablations) and one-knob changes of it
# (the authors' values where the study scaled them down)
PROBE_BASE = dict(dim=512, pooling="meanmax", mlp=False, lr=5e-4, epochs=6, codebook_size=1024)
PROBES = [("ablation setting", {}),
          ("D = 1024 (authors)", {"dim": 1024}),
          ("GPO pooling (authors)", {"pooling": "gpo"}),
          ("residual MLP encoders (VSE-inf basic)", {"mlp": True}),
          ("lr 2e-4 (authors' alternative)", {"lr": 2e-4}),
          ("10 epochs", {"epochs": 10}),
          # second round, greedy: the first round's val winner (D = 1024) with the next-best knobs on top
          ("D = 1024 + residual MLP", {"dim": 1024, "mlp": True}),
          ("D = 1024 + 10 epochs", {"dim": 1024, "epochs": 10})]


def _probe_config(change: dict, dataset: str, seed: int, variant: str) -> TrainConfig:
    """``variant`` with the default loss on PROBE_BASE with ``change``."""
    return make_config(dict(PROBE_BASE, **change, dataset=dataset, seed=seed, progress=False), **VARIANTS[variant],
                       **LOSSES["infonce"])


def probe_confirm_configs(dataset: str, seeds, variant: str, name: str) -> list[TrainConfig]:
    """The follow-up of the probe ``name`` chosen on val: ``variant`` and the baseline, both with its change, over
    ``seeds`` (so the gain is measured against a baseline of the same capacity)."""
    change = dict(PROBES)[name]
    return [_probe_config(change, dataset, s, v) for s in seeds for v in ("baseline", variant)]


def probe_configs(dataset: str, seed: int, variant: str, names=None) -> list[tuple[str, dict, TrainConfig]]:
    """(probe name, its change, config) for every probe (or those in ``names``, always after the reference, the
    first probe): ``variant`` with the default loss, PROBE_BASE with the probe's change."""
    unknown = sorted(set(names or ()) - {n for n, _ in PROBES})
    if unknown:
        raise ValueError(f"unknown probe(s) {unknown}; choose from {[n for n, _ in PROBES]}")
    out = []
    for i, (name, change) in enumerate(PROBES):
        if names and i > 0 and name not in names:
            continue
        out.append((name, change, _probe_config(change, dataset, seed, variant)))
    return out


def probe_table(rows: list[tuple[str, dict, dict]]) -> pd.DataFrame:
    """One row per probe from (name, change, run metrics), the first row the reference: the change, val mR and its
    gain over the reference (what the choice is made on), test mR (reported, not used), best epoch, training
    minutes, retrieval-vector size."""
    recs = []
    for name, change, m in rows:
        recs.append({"probe": name, "change": ", ".join(f"{k}={v}" for k, v in change.items()) or "-",
                     "val_mr": round(m["val"]["standard"]["rsum"] / 6, 2),
                     "test_mr": round(m["test"]["standard"]["mr"], 2),
                     "best_epoch": m["best_epoch"] + 1, "train_min": round(m["train_seconds"] / 60, 1),
                     "vector_dim": m["retrieval_vector_dim"], "run": m["run"]})
    df = pd.DataFrame(recs)
    ref = df.val_mr.iloc[0]
    df.insert(3, "val_gain", (df.val_mr - ref).round(2))
    df["chosen_on_val"] = df.val_mr == df.val_mr.max()
    return df
