"""The speed levers of issue 29, measured old vs new in one process, and their accuracy check.

``python -m itr_lib.bench levers --dataset ucm --threads 1 2`` (:func:`time_levers`): per method and thread count,
the study's config as recorded (float32, one padded caption group: *old*) against the same config with bf16
autocast (:mod:`itr_lib.precision`) and, for the methods with a text transformer (TGDT, ALADIN), length buckets
(*new*). They are timed step by step in alternation on the same training batches (each config training its own
copy of one initial model, :func:`itr_lib.train.train_step` under its precision) and on the per-epoch validation
score (:func:`itr_lib.scoring.evaluate` with ``selection=True``: the two-stage score of TGDT / MrSw / ALADIN's
teacher, the exhaustive one of SCAN, as the training loop runs it) of the same weights, so the machine's load
(recorded as ``load_1min``) falls on old and new alike: the *ratios* (medians of paired ratios) are what count.
``run_speedup`` is the ratio of one epoch (steps x step time + the validation score).

:func:`accuracy_check`: old records (``results/<profile>/metrics``) against new runs of the same configs
(identical identity, so identical run names) trained with the lever: the paired bootstrap of test mR
(:func:`itr_lib.metrics.paired_bootstrap`, seeds and queries resampled) must include zero and have a half-width
under 1 mR (:data:`BAR_HALF_WIDTH`).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import precision as prec
from .cost import ADAPTED
from .scorekernel import COMPILED_METHODS, LOW_PRECISION_METHODS
from .experiments import METHOD_VARIANTS, study_config
from .io import REPO_ROOT, atomic_write_text, git_commit

BUCKETED = ("tgdt", "aladin")  # methods with a text transformer (TrainConfig.length_buckets)
BUCKETS = 8
COMPILED = COMPILED_METHODS    # a score block to compile (TrainConfig.compile_scores, itr_lib.scorekernel)
SCORED = LOW_PRECISION_METHODS  # a score matmul that may take bf16 inputs (TrainConfig.score_precision)
SCORE_LEVER = "bf16+scores"    # bf16 encoders + the score kernel levers (compiled where it applies, bf16 matmul)
LOSS_LEVER = "bf16+losses"     # bf16 encoders + SelfAlign's loss matmuls from bf16 inputs (TrainConfig.loss_precision)
LOSSED = ("lca+cra",)          # the SelfAlign variant its check trains (it holds both losses the lever changes)
TGDT_LEVER = "bf16+buckets+scores"  # TGDT: bf16 encoders + length buckets + its MrSw term's score matmul in bf16
TGDT_SCORED = ("tgdt",)
TOP_LEVER = "bf16+top"         # the adapted point: the study's adopted levers + the image top's 1 x 1 convolutions
TOPPED = ("baseline", "lca+cra", "tgdt")  # in bf16 (TrainConfig.top_precision), checked there on these methods
ADAPTED_LEVERS = (TOP_LEVER,)  # levers checked at the adapted operating point (experiments.ADAPTED_CHANGE)
BAR_HALF_WIDTH = 1.0
MAX_SEED = 9  # the seeds a check looks for: 0..MAX_SEED


def lever_configs(variant: str, dataset: str, adapted: bool = False) -> dict:
    """name -> config: ``fp32`` (the study's, old), ``bf16``; for TGDT / ALADIN ``bf16+buckets``; for SCAN
    ``bf16+compiled`` (its score block compiled: the same function up to rounding); for SCAN / MrSw
    :data:`SCORE_LEVER` (bf16 + compiled where it applies + the bf16 score matmul). ``adapted``: at the adapted
    operating point (:data:`itr_lib.experiments.ADAPTED_CHANGE`): ``fp32``, ``bf16`` and :data:`TOP_LEVER` (bf16 +
    the image top's 1 x 1 convolutions in bf16, ``TrainConfig.top_precision``)."""
    if adapted:
        from .experiments import ADAPTED_CHANGE
        out = {"fp32": study_config(variant, dataset, 0, precision="fp32", **ADAPTED_CHANGE),
               "bf16": study_config(variant, dataset, 0, precision="bf16", **ADAPTED_CHANGE)}
        out[TOP_LEVER] = (lever_config(TOP_LEVER, variant, dataset, 0) if variant in TOPPED else
                          study_config(variant, dataset, 0, precision="bf16", top_precision="bf16", **ADAPTED_CHANGE))
        return out
    out = {"fp32": study_config(variant, dataset, 0, precision="fp32"),
           "bf16": study_config(variant, dataset, 0, precision="bf16")}
    if variant in BUCKETED:
        out["bf16+buckets"] = study_config(variant, dataset, 0, precision="bf16", length_buckets=BUCKETS)
    if variant in COMPILED:
        out["bf16+compiled"] = study_config(variant, dataset, 0, precision="bf16", compile_scores="auto")
    if variant in SCORED:
        out[SCORE_LEVER] = score_lever_config(variant, dataset, 0)
    if out["fp32"].method == "selfalign":
        out[LOSS_LEVER] = study_config(variant, dataset, 0, precision="bf16", loss_precision="bf16")
    if variant in TGDT_SCORED:
        out[TGDT_LEVER] = lever_config(TGDT_LEVER, variant, dataset, 0)
    return out


def new_default_kw(variant: str, adapted: bool = False) -> dict:
    """The runtime fields 02_ablations (the study's comparison) now trains ``variant`` with: its parameters'
    defaults PRECISION, COMPILE_SCORES, SCORE_PRECISION (for the methods in SCORE_PRECISION_METHODS), for TGDT /
    ALADIN LENGTH_BUCKETS (when on and the method is in LENGTH_BUCKETS_METHODS),
    for SelfAlign LOSS_PRECISION; ``adapted`` (a run that trains the image top): TOP_PRECISION too (for the variants
    in TOP_PRECISION_METHODS; float32 for the others)."""
    from .cost import notebook_defaults
    p = notebook_defaults(REPO_ROOT / "notebooks" / "02_ablations.ipynb")
    kw = {"precision": p["PRECISION"], "compile_scores": p["COMPILE_SCORES"]}
    if variant in p["SCORE_PRECISION_METHODS"]:
        kw["score_precision"] = p["SCORE_PRECISION"]
    if variant in BUCKETED and p["LENGTH_BUCKETS"] > 1 and variant in p["LENGTH_BUCKETS_METHODS"]:
        kw["length_buckets"] = p["LENGTH_BUCKETS"]
    if METHOD_VARIANTS[variant]["method"] == "selfalign":
        kw["loss_precision"] = p["LOSS_PRECISION"]
    if adapted:
        kw["top_precision"] = p["TOP_PRECISION"] if variant in p["TOP_PRECISION_METHODS"] else "fp32"
    return kw


def score_lever_config(variant: str, dataset: str, seed: int, **kw):
    """The study config of ``variant`` under :data:`SCORE_LEVER` (what its accuracy reruns train)."""
    return study_config(variant, dataset, seed, precision="bf16", compile_scores="auto", score_precision="bf16", **kw)


# where each lever's accuracy reruns keep their records (metrics/: the run's JSON and its test ranks), so the check
# is recomputed from a clone (levers-report's defaults); the checkpoints stay in the reruns' own results folder
LEVER_RECORDS = {"bf16": "precision_bf16", SCORE_LEVER: "lever_bf16+scores", "bf16+buckets": "lever_bf16+buckets",
                 LOSS_LEVER: "lever_bf16+losses", TGDT_LEVER: "lever_bf16+buckets+scores", TOP_LEVER: "lever_bf16+top"}
LEVER_METHODS = {"bf16": ("baseline", "lca+cra", "tgdt"), SCORE_LEVER: SCORED, "bf16+buckets": BUCKETED,
                 LOSS_LEVER: LOSSED, TGDT_LEVER: TGDT_SCORED, TOP_LEVER: TOPPED}


def lever_config(lever: str, variant: str, dataset: str, seed: int, **kw):
    """The study config of ``variant`` with ``lever`` on: what the lever's accuracy reruns train (the same run name
    as the float32 record, since precision and the kernels are runtime fields)."""
    if lever not in LEVER_METHODS:
        raise ValueError(f"unknown lever {lever!r}; choose from {sorted(LEVER_METHODS)}")
    if variant not in LEVER_METHODS[lever]:
        raise ValueError(f"the lever {lever!r} is checked on {', '.join(LEVER_METHODS[lever])}, not {variant!r}: "
                         f"it changes nothing else")
    if lever == SCORE_LEVER:
        return score_lever_config(variant, dataset, seed, **kw)
    if lever == TOP_LEVER:  # at the adapted point, on top of what 02 trains the method with today (its adopted levers)
        from .experiments import ADAPTED_CHANGE
        kw = {**new_default_kw(variant), "precision": "bf16", "top_precision": "bf16", **ADAPTED_CHANGE, **kw}
        return study_config(variant, dataset, seed, **kw)
    if lever in ("bf16+buckets", TGDT_LEVER):
        kw["length_buckets"] = BUCKETS
    if lever == TGDT_LEVER:
        kw["score_precision"] = "bf16"
    if lever == LOSS_LEVER:
        kw["loss_precision"] = "bf16"
    return study_config(variant, dataset, seed, precision="bf16", **kw)


def reference_config(lever: str, variant: str, dataset: str, seed: int):
    """The float32 config of ``lever``'s operating point as the study's records trained it (precision and every
    kernel float32; the adapted point for :data:`ADAPTED_LEVERS`): the old side of a check for a seed the records
    lack (the run name of :func:`lever_config`'s)."""
    from .experiments import ADAPTED_CHANGE
    return study_config(variant, dataset, seed, precision="fp32", **(ADAPTED_CHANGE if lever in ADAPTED_LEVERS else {}))


REFERENCE = "reference"  # a lever's records folder: its float32 reference reruns for seeds beyond the records'


def lever_reruns(lever: str, datasets, variants, seeds, results_dir: str | Path, workers: int = 2,
                 threads: int = 1, reference: bool = False) -> list[dict]:
    """Train the accuracy reruns of ``lever`` (:func:`lever_config`) into ``results_dir`` through
    :func:`itr_lib.runs.run_grid` (``workers`` single-threaded runs side by side; resumable, a recorded run is
    reused). Per dataset, the seeds in order, the methods alternating within a seed. ``reference``: also the float32
    runs of those seeds (:func:`reference_config`) into ``results_dir/reference``, the old side for seeds beyond the
    study's records (more seeds narrow a check that run-to-run noise leaves inconclusive at three). Copy
    ``results_dir/metrics`` (and ``reference/metrics``) to ``results/benchmarks/<LEVER_RECORDS[lever]>/`` to commit
    the check's records."""
    from .runs import run_grid
    cfgs = [lever_config(lever, v, ds, s) for ds in datasets for s in seeds for v in variants]
    out = run_grid(cfgs, results_dir, workers=workers, threads=threads)
    if reference:
        refs = [reference_config(lever, v, ds, s) for ds in datasets for s in seeds for v in variants]
        out += run_grid(refs, Path(results_dir) / REFERENCE, workers=workers, threads=threads)
    return out


def _val_data(cfg):
    from .splits import load_split_tensors
    return load_split_tensors(cfg, "val", cfg.val_images_per_epoch or cfg.max_eval_images)


def interleaved_timings(cfgs: dict, threads: int, steps: int = 4, warmup: int = 1, val_repeats: int = 2) -> dict:
    """Per config name: seconds of each training step and of each per-epoch validation score, the configs
    alternating step by step on the same batches (a busy machine's load falls on all of them alike; the paired
    per-step ratios are what :func:`time_levers` reports). Each config trains its own copy of one initial model."""
    import copy
    import torch
    from . import scorekernel as sk
    from .scoring import evaluate
    from .splits import load_split_tensors
    from .train import make_model, make_optimizer, multi_caption, train_step
    torch.set_num_threads(threads)
    first = next(iter(cfgs.values()))
    tr = load_split_tensors(first, "train", first.max_train_images)
    torch.manual_seed(first.seed)
    model0 = make_model(first)
    state = {}
    for name, cfg in cfgs.items():
        model = make_model(cfg)
        model.load_state_dict(model0.state_dict())
        state[name] = (cfg, model.train(), make_optimizer(cfg, model)[0], prec.resolve(cfg.precision, cfg.device)[0],
                       sk.resolve_config(cfg))
    multi = multi_caption(first, model0)
    rng = np.random.default_rng(0)
    order = rng.permutation(tr.n_images)
    cap_choice = np.array([c[rng.integers(len(c))] for c in tr.img2txt])
    n_batches = max(1, tr.n_images // first.batch_size)
    out = {name: {"step": [], "val": [], "texts": []} for name in cfgs}
    for s in range(warmup + steps):
        b = s % n_batches
        ii = torch.from_numpy(order[b * first.batch_size:(b + 1) * first.batch_size])
        batch = tr.train_batch(ii, first, multi, cap_choice, torch.Generator().manual_seed(s))
        for name, (cfg, model, opt, used, rule) in state.items():
            t0 = time.perf_counter()
            with prec.policy(used), sk.policy(rule):
                train_step(model, opt, batch, epoch=1, grad_clip=cfg.grad_clip)
            if s >= warmup:
                out[name]["step"].append(time.perf_counter() - t0)
                out[name]["texts"].append(batch.text.shape[0])
    va = _val_data(first)
    for name, (cfg, model, _, used, rule) in state.items():
        if rule["compiled"]:  # compile the scoring graph before timing (a run compiles it once, at its first val)
            with prec.policy(used), sk.policy(rule):
                evaluate(copy.deepcopy(model0), va, cfg.device, cfg.eval_batch_size, selection=True)
    for _ in range(val_repeats):
        for name, (cfg, model, _, used, rule) in state.items():
            m = copy.deepcopy(model0)  # the same weights for every config: the same scoring work
            with prec.policy(used), sk.policy(rule):
                t0 = time.perf_counter()
                evaluate(m, va, cfg.device, cfg.eval_batch_size, selection=True)
                out[name]["val"].append(time.perf_counter() - t0)
    out["_steps_per_epoch"] = (tr.n_images + first.batch_size - 1) // first.batch_size
    return out


def time_levers(variants, dataset: str, threads=(1, 2), steps: int = 4, adapted: bool = False) -> list[dict]:
    """One row per (method, threads, lever config): median step and validation seconds, and the speed-ups over
    ``fp32`` of the same method and thread count: medians of the paired per-step (per-repeat) ratios
    (:func:`interleaved_timings`); ``run_speedup``: one epoch, steps x step time + the validation score.
    ``adapted``: at the adapted operating point (:func:`lever_configs`), rows named ``<method>, adapted top``."""
    rows = []
    for th in threads:
        for v in variants:
            cfgs = lever_configs(v, dataset, adapted)
            t = interleaved_timings(cfgs, th, steps)
            n = t.pop("_steps_per_epoch")
            base = t["fp32"]
            for name, r in t.items():
                step, val = float(np.median(r["step"])), float(np.median(r["val"]))
                b_step, b_val = float(np.median(base["step"])), float(np.median(base["val"]))
                rows.append({"dataset": dataset, "method": v + (ADAPTED if adapted else ""), "lever": name,
                             "threads": th, "steps": len(r["step"]),
                             "texts_per_step": float(np.mean(r["texts"])), "step_s": round(step, 4),
                             "val_s": round(val, 4),
                             "step_speedup": float(np.median(np.array(base["step"]) / np.array(r["step"]))),
                             "val_speedup": float(np.median(np.array(base["val"]) / np.array(r["val"]))),
                             "run_speedup": (b_step * n + b_val) / (step * n + val), "steps_per_epoch": n,
                             "load_1min": os.getloadavg()[0],
                             "precision_used": prec.resolve(cfgs[name].precision)[0], "git_commit": git_commit()})
                print({k: rows[-1][k] for k in ("method", "lever", "threads", "step_s", "val_s", "step_speedup",
                                                  "val_speedup", "run_speedup", "load_1min")}, flush=True)
    return rows


def accuracy_check(old_dir: str | Path, new_dir: str | Path, dataset: str, variants, seeds=range(MAX_SEED + 1),
                   lever: str = "bf16", n_boot: int = 2000) -> list[dict]:
    """Per method: old records vs the lever's reruns of the same configs, seed-matched (every seed of ``seeds`` with
    both; a seed the records in ``old_dir`` lack is read from the lever's float32 reference reruns in
    ``new_dir/reference``, :func:`lever_reruns`, column ``reference_seeds``); the paired bootstrap of test mR (seeds
    and queries resampled) and whether it passes the bar (interval includes 0, half-width < 1 mR). Methods with a
    re-scorer are compared on their own recorded score (the run's test metrics)."""
    from .recordio import read_record
    from .metrics import paired_bootstrap
    from .runs import load_hits
    from .experiments import ADAPTED_CHANGE
    point, label = (ADAPTED_CHANGE, ADAPTED) if lever in ADAPTED_LEVERS else ({}, "")
    rows = []
    for v in variants:
        old_dirs, have = [], []
        for s in seeds:
            n = study_config(v, dataset, s, **point).run_name()
            src = next((d for d in (Path(old_dir), Path(new_dir) / REFERENCE)
                        if (d / "metrics" / f"{n}.json").is_file()), None)
            if src is not None and (Path(new_dir) / "metrics" / f"{n}.json").is_file():
                old_dirs.append(src)
                have.append(n)
        if not have:
            rows.append({"dataset": dataset, "method": v + label, "lever": lever, "n_seeds": 0, "verdict": "not run"})
            continue
        old = [read_record(d / "metrics" / f"{n}.json") for d, n in zip(old_dirs, have)]
        new = [read_record(Path(new_dir) / "metrics" / f"{n}.json") for n in have]
        bs = paired_bootstrap([load_hits(d, n) for d, n in zip(old_dirs, have)], [load_hits(new_dir, n) for n in have],
                              n_boot=n_boot)
        lo, hi, d = bs["ci_lo"] / 6, bs["ci_hi"] / 6, bs["delta_rsum"] / 6
        half = (hi - lo) / 2
        passed = lo <= 0 <= hi and half < BAR_HALF_WIDTH
        rows.append({"dataset": dataset, "method": v + label, "lever": lever, "n_seeds": len(have),
                     "seeds": ",".join(str(m["seed"]) for m in new),
                     "mr_old": float(np.mean([m["test"]["standard"]["mr"] for m in old])),
                     "mr_new": float(np.mean([m["test"]["standard"]["mr"] for m in new])),
                     "delta_mr": d, "ci_lo_mr": lo, "ci_hi_mr": hi, "half_width_mr": half,
                     "seed_std_mr_old": float(np.std([m["test"]["standard"]["mr"] for m in old], ddof=1))
                     if len(old) > 1 else np.nan,
                     "train_s_old": float(np.mean([m["train_seconds"] for m in old])),
                     "train_s_new": float(np.mean([m["train_seconds"] for m in new])),
                     "precision_new": ",".join(sorted({str(m.get("precision")) for m in new})),
                     "reference_seeds": ",".join(str(m["seed"]) for d, m in zip(old_dirs, old) if d != Path(old_dir)),
                     "verdict": "passes" if passed else ("fails: interval excludes 0" if not lo <= 0 <= hi
                                                         else "inconclusive: half-width >= 1 mR")})
    return rows


REQUIRED_CHECKS = [(ds, m) for ds in ("ucm", "rsicd") for m in ("baseline", "lca+cra", "tgdt")]
# a lever that changes only some methods is checked on those (the others' numbers cannot change: the model registry
# resets or refuses the field for them); every other lever needs REQUIRED_CHECKS
# (a lever of the adapted point is checked there: its methods' rows are named "<method>, adapted top")
LEVER_CHECKS = {lv: [(ds, m + (ADAPTED if lv in ADAPTED_LEVERS else "")) for ds in ("ucm", "rsicd")
                     for m in LEVER_METHODS[lv]]
                for lv in (SCORE_LEVER, "bf16+buckets", LOSS_LEVER, TGDT_LEVER, TOP_LEVER)}
MIN_SEEDS = 3


def adoptable(table: pd.DataFrame, lever: str, method: str | None = None) -> bool:
    """The bar of a speed lever: each of its required checks (:data:`LEVER_CHECKS`, else :data:`REQUIRED_CHECKS`) has
    an accuracy check of ``lever`` that ran on at least :data:`MIN_SEEDS` seeds and passes (a missing or partial
    check keeps the lever off by default). A lever that changes only some methods (:data:`LEVER_CHECKS`) is judged
    per ``method`` when one is given: that method's checks on every dataset (each method's numbers are changed by
    its own setting only, so one method's missing check need not hold back another's)."""
    t = table[table.lever == lever]
    checks = LEVER_CHECKS.get(lever, REQUIRED_CHECKS)
    if method is not None and lever in LEVER_CHECKS:
        checks = [(ds, m) for ds, m in checks if m == method]
        if not checks:
            return False
    for ds, m in checks:
        row = t[(t.dataset == ds) & (t.method == m)]
        if row.empty or row.verdict.iloc[0] != "passes" or not (row.n_seeds.fillna(0).iloc[0] >= MIN_SEEDS):
            return False
    return True


def levers_table(steps: pd.DataFrame, accuracy: pd.DataFrame) -> pd.DataFrame:
    """speed_levers.csv: per (dataset, method, lever) the step / validation / epoch speed-ups over float32 at each
    thread count measured (columns ``*_speedup_<n>t``), the load average during the timing, and the accuracy check
    of that lever (``accuracy`` rows of :func:`accuracy_check`, matched on dataset, method and lever; a lever without
    its own check is ``not checked``); ``adopted``: :func:`adoptable` (bf16: baseline, LCA+CRA and TGDT on both datasets, 3 seeds
    each, all passing, then every method's default; a lever of some methods: per method, its own checks on both
    datasets); ``train_speedup`` = the 1-thread
    step speed-up (what :mod:`itr_lib.cost` applies)."""
    new = steps[steps.lever != "fp32"]
    wide = new.pivot_table(index=["dataset", "method", "lever"], columns="threads",
                           values=["step_speedup", "val_speedup", "run_speedup"], aggfunc="mean")
    wide.columns = [f"{v}_{t}t" for v, t in wide.columns]
    wide = wide.reset_index()
    wide["load_1min"] = wide.apply(lambda r: steps[(steps.method == r.method) & (steps.dataset == r.dataset)]
                                   .load_1min.mean(), axis=1)
    acc = accuracy.drop(columns=[c for c in ("train_s_old", "train_s_new") if c in accuracy]) if len(accuracy) else \
        pd.DataFrame(columns=["dataset", "method", "lever", "verdict"])
    out = wide.merge(acc, on=["dataset", "method", "lever"], how="outer")
    out["verdict"] = out.verdict.fillna("not checked")
    # a lever is adopted only when the bar is met: every required (dataset, method) check ran on MIN_SEEDS
    # seeds and passes (per method for a lever that changes only some methods); a check not run blocks adoption
    out["adopted"] = [adoptable(out, lv, m) for lv, m in zip(out.lever, out.method)]
    out["train_speedup"] = out.get("step_speedup_1t", np.nan)
    return out


def write_table(df: pd.DataFrame, path: Path, title: str) -> None:
    """``df`` as ``<path>.csv`` and a Markdown table ``<path>.md`` under a title line (atomic writes)."""
    atomic_write_text(path.with_suffix(".csv"), df.to_csv(index=False))
    atomic_write_text(path.with_suffix(".md"), f"{title}\n\n" + df.to_markdown(index=False, floatfmt=".3g") + "\n")


NOTES = """Step, validation and epoch speed-ups are ratios of float32 (old) over the lever (new), measured in one
process with old and new alternating (`python -m itr_lib.bench levers`); `load_1min` is the machine's load during the
timing (a shared 2-core machine: absolute seconds are not comparable between rows, ratios within a row are).
The accuracy check compares the committed float32 records with reruns of the same configs (same run names) under
the lever: paired bootstrap of test mR over seeds and queries; the bar is an interval that includes 0 with a
half-width under 1 mR. `bf16+buckets` adds length buckets (TGDT, ALADIN) to bf16 (checked on those two methods where
its reruns exist), and `bf16+compiled` SCAN's score block through torch.compile (the same function up to rounding,
tests; not trained for a check of its own: `bf16+scores` includes it).
`bf16+scores` (SCAN, MrSw; `itr_lib.scorekernel`) adds the compiled block (SCAN) and a bf16 cosine matmul in the
score: checked on SCAN and MrSw, the only methods it changes. `bf16+losses` (SelfAlign; `TrainConfig.loss_precision`)
adds bf16 inputs to the LCA codebook and CRA score matmuls of the loss: checked on LCA+CRA. `bf16+buckets+scores`
(TGDT) adds length buckets and the bf16 cosine matmul of its MrSw term (training loss and two-stage re-score) to bf16:
checked on TGDT. `bf16+top` (the adapted point: the image top trained, `experiments.ADAPTED_CHANGE`) adds the image
top's 1 x 1 convolutions from bf16 inputs (`TrainConfig.top_precision`) to the levers 02 trains each method with:
checked there on baseline, LCA+CRA and TGDT against the float32 records of that point (rows `<method>, adapted top`)."""


def levers_report(steps_csvs, old_dir, new_dir, datasets, variants=("baseline", "lca+cra", "tgdt"),
                  out_dir: str | Path = "results/benchmarks", n_boot: int = 2000,
                  lever_dirs: dict | None = None) -> pd.DataFrame:
    """Write ``speed_levers.csv`` / ``.md`` (:func:`levers_table` of the step timings in ``steps_csvs`` and the
    accuracy check of ``new_dir``'s bf16 runs of ``variants`` against ``old_dir``'s records, and of each other
    lever's reruns of the methods it changes (:data:`LEVER_METHODS`) in ``lever_dirs[lever]``, default
    ``out_dir / LEVER_RECORDS[lever]``, the committed records; a lever checked at the adapted point,
    :data:`ADAPTED_LEVERS`, against the records of that point). The study's cost with the adopted levers is
    RESULTS.md's cost section and the dry run's estimate (:func:`itr_lib.cost.cost_markdown`), read from this table.

    Column ``records``: the folder whose reruns a check was computed from. A check whose reruns are in none of the
    folders given, but that the previous ``speed_levers.csv`` holds, keeps its previous row, marked ``previous table
    (reruns' records not kept)``: an earlier session's reruns whose records were not committed (so the table does
    not silently drop a check, and says which rows cannot be recomputed from the repository)."""
    out_dir = Path(out_dir)
    unknown = sorted(set(lever_dirs or {}) - (set(LEVER_RECORDS) - {"bf16"}))
    if unknown:
        raise ValueError(f"lever_dirs: unknown lever(s) {unknown} (bf16's reruns are new_dir); choose from "
                         f"{sorted(set(LEVER_RECORDS) - {'bf16'})}")
    dirs = {lv: Path((lever_dirs or {}).get(lv, out_dir / rec)) for lv, rec in LEVER_RECORDS.items() if lv != "bf16"}
    steps = pd.concat([pd.read_csv(p) for p in steps_csvs if Path(p).is_file()], ignore_index=True)

    def checked(folder, vs, lever) -> list[dict]:
        rows = [r for ds in datasets for r in accuracy_check(old_dir, folder, ds, vs, lever=lever, n_boot=n_boot)]
        return [{**r, "records": _shown(folder)} if r["verdict"] != "not run" else r for r in rows]
    acc = checked(new_dir, variants, "bf16")
    for lever, folder in dirs.items():
        acc += checked(folder, LEVER_METHODS[lever], lever)
    acc = _keep_previous_checks(pd.DataFrame(acc), out_dir / "speed_levers.csv")
    table = levers_table(steps, acc)
    write_table(table, out_dir / "speed_levers", "# Speed levers (issue 29): speed-ups and accuracy check\n\n" + NOTES)
    return table


KEPT = "previous table (reruns' records not kept)"
_ACC_COLS = ("n_seeds", "seeds", "mr_old", "mr_new", "delta_mr", "ci_lo_mr", "ci_hi_mr", "half_width_mr",
             "seed_std_mr_old", "precision_new", "reference_seeds", "verdict")


def _shown(folder) -> str:
    path = Path(folder).resolve()
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _keep_previous_checks(acc: pd.DataFrame, previous_csv: Path) -> pd.DataFrame:
    """``acc`` with each "not run" check replaced by the previous table's row of that (dataset, method, lever) where
    that row had a verdict (see :func:`levers_report`); rows the previous table lacks stay "not run"."""
    if not previous_csv.is_file() or acc.empty:
        return acc
    prev = pd.read_csv(previous_csv, dtype={"seeds": str})
    prev = prev[~prev.verdict.isin(["not run", "not checked"]) & prev.verdict.notna()]
    rows = []
    for r in acc.to_dict("records"):
        if r["verdict"] == "not run":
            hit = prev[(prev.dataset == r["dataset"]) & (prev.method == r["method"]) & (prev.lever == r["lever"])]
            if len(hit):
                h = hit.iloc[0]
                r = {**r, **{c: h[c] for c in _ACC_COLS if c in h}, "records": KEPT}
        rows.append(r)
    return pd.DataFrame(rows)
