"""Experiment grids (used by 02_ablations; their tables are :mod:`itr_lib.tables`).

Variant keys of the SelfAlign ablation: ``baseline``, ``lca``, ``cra``, ``lca+cra``. The codebook sweep
trains ``lca+cra`` (or ``lca``) at several K. ``losses`` names base-loss settings:
``infonce`` (symmetric InfoNCE with in-batch false negatives masked, every caption of the batch's images
per step: the study's default), ``infonce-1cap`` (the same with one caption per image and step) and
``triplet-authors`` (hardest-negative triplet after a sum-of-violations warm-up epoch, no masking: the
authors' loss), ``triplet-fnmask`` (the authors' triplet with false negatives masked).
"""
from __future__ import annotations

from dataclasses import replace

from .config import RUNTIME_FIELDS, TrainConfig, method_key

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
    """A grid's config: ``base`` (shared by every variant of the grid) with the variant's ``overrides``. A field of
    ``base`` the variant's method does not read (the LCA rows' K on the baseline) stays at its default, so the
    record says what the run did; an override the method cannot use remains an error when the run starts."""
    import dataclasses
    from .models import unused_fields
    cfg = TrainConfig.from_dict({**base, **overrides})
    # a runtime field (it cannot change a result) the method does not read is reset even when given as an override:
    # a notebook applies such settings to every run it plans (SCORE_PRECISION, LENGTH_BUCKETS), the methods that read
    # them honour them, the others keep the default so their records say what they did
    reset = {name: default for name, _, default in unused_fields(cfg)
             if name not in overrides or name in RUNTIME_FIELDS}
    return dataclasses.replace(cfg, **reset) if reset else cfg


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


STUDY_SETTING, AUTHORS_SETTING = "study loss", "authors' loss"
# issue 28: the study's question again at the adapted operating point (the image backbone's top trained,
# itr_lib.models.adapt): the same study-loss protocol with ADAPTED_CHANGE, setting ADAPTED_SETTING
ADAPTED_SETTING = "study loss, adapted top"
ADAPTED_CHANGE = dict(image_top_blocks=6)  # the whole last stage + head from block 14's cache, lr factor 1.0 (the
# lever 07_recipe chose on val: recipe_rsicd.csv)


def adapted_entries(entries) -> list[tuple[str, list[int], list[str]]]:
    """The adapted comparison's ``[{dataset, seeds, methods}, ...]`` (02's ``ADAPTED_COMPARISON``) checked and
    normalised to ``(dataset, seeds, methods)``; an unknown key or method is an error naming the entry."""
    out = []
    for i, e in enumerate(entries or ()):
        if not isinstance(e, dict) or set(e) - {"dataset", "seeds", "methods"} or not {"dataset", "seeds", "methods"} <= set(e):
            raise ValueError(f"ADAPTED_COMPARISON[{i}] = {e!r}: each entry is {{dataset, seeds, methods}} "
                             f"(e.g. {{dataset: ucm, seeds: [0, 1, 2], methods: [baseline, lca+cra]}})")
        unknown = sorted(set(e["methods"]) - set(METHOD_VARIANTS))
        if unknown:
            raise ValueError(f"ADAPTED_COMPARISON[{i}]: unknown method(s) {unknown}; choose from "
                             f"{sorted(METHOD_VARIANTS)}")
        out.append((str(e["dataset"]), [int(s) for s in e["seeds"]], list(e["methods"])))
    return out


def comparison_plan(datasets, seeds, methods, authors_seeds=(), loss_ablation_seeds=(), loss_ablation_datasets=(),
                    base: dict | None = None, adapted=()) -> list[tuple[str, str, TrainConfig]]:
    """The fair-comparison grid as ``(setting, variant key, config)``, most informative runs first (so an
    interrupted grid leaves whole seeds): per seed, every method of ``methods`` (keys of :data:`METHOD_VARIANTS`)
    under the study loss on every dataset (setting :data:`STUDY_SETTING`); then the authors' losses on
    ``authors_seeds`` (:data:`AUTHORS_SETTING`); then the loss ablation (:data:`LOSS_ABLATION` on the baseline,
    setting ``"loss ablation: <loss>"``) on ``loss_ablation_datasets`` x ``loss_ablation_seeds``; then the
    adapted operating point (``adapted``: entries of :func:`adapted_entries`, seed-major per entry; the study loss
    with :data:`ADAPTED_CHANGE`, setting :data:`ADAPTED_SETTING`). ``base``
    (runtime fields, overrides such as a shorter schedule for tests) is applied last and recorded in each config."""
    unknown = sorted(set(methods) - set(METHOD_VARIANTS))
    if unknown:
        raise ValueError(f"unknown comparison method(s) {unknown}; choose from {sorted(METHOD_VARIANTS)}")
    base = dict(base or {})
    plan, seen = [], set()

    def add(setting: str, variant: str, ds: str, seed: int, loss: dict, change: dict | None = None) -> None:
        kw = dict(COMPARISON_BASE, **METHOD_VARIANTS[variant], **loss, **(change or {}))
        if kw["method"] in ("baseline", "selfalign"):
            kw.update(VSE_BASE)
            if not kw.get("lca"):
                kw.pop("codebook_size")
        cfg = make_config(kw, **base, dataset=ds, seed=seed)
        if cfg.run_name() not in seen:
            seen.add(cfg.run_name())
            plan.append((setting, variant, cfg))
    for s in seeds:
        for ds in datasets:
            for v in methods:
                add(STUDY_SETTING, v, ds, s, STUDY_LOSS)
    for s in authors_seeds:
        for ds in datasets:
            for v in methods:
                add(AUTHORS_SETTING, v, ds, s, AUTHORS_LOSS[v])
    for s in loss_ablation_seeds:
        for ds in loss_ablation_datasets:
            for loss in LOSS_ABLATION:
                add(f"loss ablation: {loss}", "baseline", ds, s, LOSSES[loss])
    for ds, ad_seeds, ad_methods in adapted_entries(adapted):
        for s in ad_seeds:
            for v in ad_methods:
                add(ADAPTED_SETTING, v, ds, s, STUDY_LOSS, ADAPTED_CHANGE)
    return plan


def runtime_fields(p: dict) -> dict:
    """The runtime TrainConfig fields of 02's parameters ``p`` (subset, data root, cache, device, precision, score
    kernel; not identity). A method that does not read ``score_precision`` gets the default (:func:`make_config`)."""
    from .io import repo_path
    return dict(max_train_images=p["MAX_TRAIN_IMAGES"] or None,
                data_root=str(repo_path(p["DATA_ROOT"])) if p["DATA_ROOT"] else None,
                cache_dir=p["CACHE_DIR"] or None, device=p["DEVICE"], precision=p["PRECISION"],
                compile_scores=p.get("COMPILE_SCORES", "off"), score_precision=p.get("SCORE_PRECISION", "fp32"),
                loss_precision=p.get("LOSS_PRECISION", "fp32"),
                length_buckets=p.get("LENGTH_BUCKETS") or None,
                progress=False)


def notebook_grids(p: dict) -> tuple[list[TrainConfig], list[tuple[str, str, TrainConfig]]]:
    """02_ablations' two grids from its parameters ``p`` (the notebook's names: ``DATASETS``, ``SEEDS``, ...,
    ``COMPARISON_*``, ``ADAPTED_COMPARISON``, ``MAX_TRAIN_IMAGES``, ``DATA_ROOT``, ``CACHE_DIR``, ``DEVICE``):
    ``(ablation configs, comparison plan)``. The notebook and the study runner's dry run both call this, so what the
    dry run says would train is what 02 trains."""
    runtime = runtime_fields(p)
    base = dict(runtime, dim=p["DIM"], pooling=p["POOLING"], epochs=p["EPOCHS"], codebook_size=p["CODEBOOK_SIZE"])
    cfgs = ablation_configs(p["DATASETS"], p["SEEDS"], p["VARIANTS"], p["LOSSES"], p["CODEBOOK_SIZES"],
                            sweep_seeds=p["SWEEP_SEEDS"], base=base, loss_variants=p["LOSS_VARIANTS"],
                            loss_seeds=p["LOSS_SEEDS"], sweep_epochs=p["SWEEP_EPOCHS"] or None,
                            lca_weights=p["LCA_WEIGHTS"])
    plan = comparison_plan(p["COMPARISON_DATASETS"], p["COMPARISON_SEEDS"], p["COMPARISON_METHODS"],
                           authors_seeds=p["AUTHORS_SEEDS"], loss_ablation_seeds=p["LOSS_ABLATION_SEEDS"],
                           loss_ablation_datasets=p["LOSS_ABLATION_DATASETS"],
                           base=dict(runtime, **p["COMPARISON_OVERRIDES"]), adapted=p["ADAPTED_COMPARISON"])
    # LENGTH_BUCKETS and SCORE_PRECISION reach only the methods listed in LENGTH_BUCKETS_METHODS /
    # SCORE_PRECISION_METHODS (those whose check passed); the others keep the field's default
    keep = set(p.get("LENGTH_BUCKETS_METHODS", ("tgdt", "aladin")))
    scored = set(p.get("SCORE_PRECISION_METHODS", ("scan", "mrsw", "tgdt")))
    # TOP_PRECISION reaches the runs that train the image top (the adapted point) of the variants in
    # TOP_PRECISION_METHODS only (keys of METHOD_VARIANTS: lca+cra, not every SelfAlign variant)
    top = p.get("TOP_PRECISION", "fp32")
    topped = set(p.get("TOP_PRECISION_METHODS", ("baseline", "lca+cra")))

    def per_method(c: TrainConfig) -> TrainConfig:
        if c.method not in keep and c.length_buckets is not None:
            c = replace(c, length_buckets=None)
        if c.method not in scored and c.score_precision != "fp32":
            c = replace(c, score_precision="fp32")
        if c.image_top_blocks:
            want = top if method_key(vars(c)) in topped else "fp32"
            if c.top_precision != want:
                c = replace(c, top_precision=want)
        return c
    return [per_method(c) for c in cfgs], [(a, b, per_method(c)) for a, b, c in plan]


def comparison_configs(*args, **kw) -> list[TrainConfig]:
    """The configs of :func:`comparison_plan`, in its order."""
    return [c for _, _, c in comparison_plan(*args, **kw)]


def plan_frame(plan: list[tuple[str, str, TrainConfig]]) -> "pd.DataFrame":
    """One row per planned run: setting, variant key, dataset, method, seed, run name (the join key with
    :func:`itr_lib.runs.runs_frame`)."""
    import pandas as pd
    return pd.DataFrame([{"setting": st, "key": v, "dataset": c.dataset, "method": c.method, "seed": c.seed,
                          "run": c.run_name()} for st, v, c in plan])


# ----------------------------------------------------------------------------------------------- capacity probe
# itr_lib.probe (02_ablations): the ablation's setting (configs/full.yaml: 02_ablations) and one-knob changes of it
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
PROBE_SECOND_ROUND = ("D = 1024 + residual MLP", "D = 1024 + 10 epochs")


def _probe_config(change: dict, dataset: str, seed: int, variant: str, base: dict | None = None) -> TrainConfig:
    """``variant`` with the default loss on PROBE_BASE with ``change`` (``base``: runtime fields, not identity)."""
    return make_config({**PROBE_BASE, **change, "progress": False, **(base or {}), "dataset": dataset, "seed": seed},
                       **VARIANTS[variant], **LOSSES["infonce"])


def probe_confirm_configs(dataset: str, seeds, variant: str, name: str, base: dict | None = None) -> list[TrainConfig]:
    """The follow-up of the probe ``name`` chosen on val: ``variant`` and the baseline, both with its change, over
    ``seeds`` (so the gain is measured against a baseline of the same capacity)."""
    change = dict(PROBES)[name]
    return [_probe_config(change, dataset, s, v, base) for s in seeds for v in ("baseline", variant)]


def probe_configs(dataset: str, seed: int, variant: str, names=None,
                  base: dict | None = None) -> list[tuple[str, dict, TrainConfig]]:
    """(probe name, its change, config) for every probe (or those in ``names``, always after the reference, the
    first probe): ``variant`` with the default loss, PROBE_BASE with the probe's change."""
    unknown = sorted(set(names or ()) - {n for n, _ in PROBES})
    if unknown:
        raise ValueError(f"unknown probe(s) {unknown}; choose from {[n for n, _ in PROBES]}")
    out = []
    for i, (name, change) in enumerate(PROBES):
        if names and i > 0 and name not in names:
            continue
        out.append((name, change, _probe_config(change, dataset, seed, variant, base)))
    return out


def study_config(variant: str, dataset: str, seed: int = 0, **overrides) -> TrainConfig:
    """The config the study trains for ``variant`` on ``dataset`` (the fair comparison under the study loss), with
    ``overrides`` (runtime fields, a shorter schedule for tests) recorded in it."""
    if variant not in METHOD_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {sorted(METHOD_VARIANTS)}")
    return comparison_configs([dataset], [seed], [variant], base=overrides)[0]
