"""The adapted backbone as levers of the recipe (issue 28): EfficientNet-Lite2's top trained from cached activations
(:mod:`itr_lib.models.adapt`), each lever alone on the chosen training recipe, seed 0, against the same recipe on the
frozen grid. Val decides, test is reported beside it (the rule of :mod:`itr_lib.recipe`).

The rotated views of the training images have no activation caches yet (each cut x 4 views of the RSICD train split
is ~1.5 GB and a forward pass to the cut per view), so the levers are measured on the recipe *without* rotations, and
their reference is that recipe on the frozen grid (its own run, not the recipe's chosen run). ``on="reference"``
measures them on stage 1's reference instead (6 epochs, its frozen seed-0 run already recorded), as the training
levers were: the cheaper first look when the machine cannot afford the recipe's 10 epochs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from .levers import GreedyTrace, best_per_group, combine, greedy_train, lever_config, recipe_dir, test_mr, val_mr
from .records import FROZEN, _change_str, _row, lever_table, operating_points  # noqa: F401 (re-exported)

# (name, group, change): one group, alternatives
ADAPT_LEVERS: list[tuple[str, str, dict]] = [
    ("image top: block 20 + head (cut 19)", "image top", {"image_top_blocks": 1}),
    ("image top: last stage, blocks 15-20 + head (cut 14)", "image top", {"image_top_blocks": 6}),
    ("text top: last MiniLM layer", "text top", {"text_top_layers": 1}),
    ("text top: last two MiniLM layers", "text top", {"text_top_layers": 2}),
]
ON = {"recipe": "the recipe without rotations", "reference": "the reference"}


def lever_stage(on: str) -> str:
    """The lever table's stage of the adapted levers measured on ``on`` (a key of :data:`ON`)."""
    return f"adapted top (alone, on {ON[on]})"


def without_rotations(change: dict) -> dict:
    """The training change without ``image_transforms`` (no activation caches of rotated views)."""
    return {k: v for k, v in change.items() if k != "image_transforms"}


def _base_change(change: dict, on: str) -> dict:
    if on not in ON:
        raise ValueError(f"adapted levers are measured on one of {sorted(ON)}, not {on!r}")
    return without_rotations(change) if on == "recipe" else {}


def adapt_configs(change: dict, dataset: str, seed: int = 0, levers=None, base: dict | None = None,
                  on: str = "recipe") -> list:
    """[reference, lever 1, ...]: the recipe without rotations (``on="reference"``: stage 1's reference) on the
    frozen grid, then with each lever."""
    on = _base_change(change, on)
    levers = ADAPT_LEVERS if levers is None else levers
    return [lever_config(on, dataset, seed, base=base)] + [lever_config({**on, **ch}, dataset, seed, base=base)
                                                           for _, _, ch in levers]


def ensure_cut_caches(cfgs, dataset: str, results_dir: str | Path, data_root=None, cache_dir=None,
                      progress: bool | None = None) -> list[int]:
    """Build (or reuse, sidecar-checked) the activation caches of every split for the cuts of the configs that are
    not recorded yet, in one forward pass per split, and the MiniLM hidden-state caches of their text cuts
    (:mod:`itr_lib.models.text_top`); returns the image cuts built or checked."""
    from ..features import ensure_features
    from ..runs import recorded
    mdir = recipe_dir(results_dir)
    todo = [c for c in cfgs if recorded(c, mdir) is None]
    cuts = sorted({c.image_cut for c in todo if c.image_cut is not None})
    text_cuts = sorted({c.text_cut for c in todo if c.text_cut is not None})
    if cuts or text_cuts:
        ensure_features(dataset, None, data_root=data_root, root=cache_dir, progress=progress, cut=cuts or None,
                        text_cut=text_cuts or None)
    return cuts


def adapt_levers(change: dict, dataset: str, results_dir: str | Path, *, seed: int = 0, levers=None,
                 workers: int = 1, base: dict | None = None, n_boot: int = 2000, on: str = "recipe") -> pd.DataFrame:
    """Each adapted-top lever alone on the training recipe ``change`` (without rotations; ``on="reference"``: on
    stage 1's reference), seed 0, against the same run on the frozen grid: rows of
    :func:`~itr_lib.recipe.records.lever_table` (nothing is chosen here)."""
    from ..metrics import paired_bootstrap
    from ..runs import load_hits
    from .stages import _grid
    levers = ADAPT_LEVERS if levers is None else levers
    cfgs = adapt_configs(change, dataset, seed, levers, base, on)
    ensure_cut_caches(cfgs, dataset, results_dir, (base or {}).get("data_root"), (base or {}).get("cache_dir"))
    metrics = _grid(cfgs, Path(results_dir), workers)
    ref = metrics[0]
    mdir = recipe_dir(results_dir) / "metrics"
    ref_hits = load_hits(mdir, ref["run"])
    rows = [_row(f"adapted top: reference ({ON[on]}, frozen grid)", "frozen backbone",
                 _change_str(_base_change(change, on)), ref, ref, None)]
    for (name, _, ch), m in zip(levers, metrics[1:]):
        bs = paired_bootstrap([ref_hits], [load_hits(mdir, m["run"])], n_boot=n_boot)
        rows.append(_row(lever_stage(on), name, _change_str(ch), m, ref, bs))
    return lever_table(rows).assign(chosen=False)


# ----------------------------------------------------------------------------------------------- the adapted recipe


def adapt_plan(levers_by_on: dict) -> list[tuple[str, list]]:
    """07's ``ADAPT_LEVERS`` (``{"recipe" | "reference": [lever names]}``) as ``[(on, levers)]``; an unknown key or
    lever name is an error naming the known ones."""
    from .levers import lever_names
    if not isinstance(levers_by_on, dict):
        raise ValueError(f"ADAPT_LEVERS must map what the levers change ({sorted(ON)}) to lever names, e.g. "
                         f"{{'recipe': [{ADAPT_LEVERS[-1][0]!r}]}}; got {levers_by_on!r}")
    bad = sorted(set(levers_by_on) - set(ON))
    if bad:
        raise ValueError(f"ADAPT_LEVERS: unknown key(s) {bad}; the levers are measured on one of {sorted(ON)}")
    return [(on, lever_names(ADAPT_LEVERS, names)) for on, names in levers_by_on.items() if names]


def _on_recipe(change: dict, dataset: str, seed: int, base: dict | None):
    """``config_of(adapted change)``: the recipe ``change`` without rotations plus that change (the point every
    adapted combination trains at)."""
    start = without_rotations(change)
    return lambda ch: lever_config({**start, **ch}, dataset, seed, base=base)


def adapt_greedy(change: dict, table: pd.DataFrame, dataset: str, results_dir: str | Path, *, seed: int = 0,
                 base: dict | None = None) -> tuple[GreedyTrace, tuple[str, dict]]:
    """The adapted levers' stage 2, the training levers' rule (:func:`~itr_lib.recipe.levers.greedy_train`): those
    measured alone on the recipe without rotations (the point the final runs train at) that raised val mR, the best
    of each group first (:func:`~itr_lib.recipe.levers.best_per_group`), are added one by one while the combined
    run's val mR rises. Returns the trace and what the final runs carry, ``(label, change)``: the chosen levers
    joined by " + " and their combined change. An error when no lever was measured on the recipe or none gains."""
    from .stages import _grid, combination_trainer
    on = table[table.stage == lever_stage("recipe")] if "stage" in table else table.iloc[0:0]
    if on.empty:
        raise ValueError("ADAPT_FINAL needs an adapted lever measured on the recipe: set ADAPT_LEVERS = "
                         "{'recipe': [...]} (names in recipe.ADAPT_LEVERS)")
    groups = {n: g for n, g, _ in ADAPT_LEVERS}
    order = best_per_group([(r.lever, groups[r.lever], r.val_gain) for r in on.itertuples()])
    if not order:
        best = on.sort_values("val_gain").iloc[-1]
        raise ValueError(f"ADAPT_FINAL: no adapted lever raised val mR over the frozen recipe (best: {best.lever}, "
                         f"{best.val_gain:+.2f}); nothing to carry to the final runs")
    config_of = _on_recipe(change, dataset, seed, base)
    ref = _grid([config_of({})], Path(results_dir), workers=1)[0]  # the recipe without rotations, frozen grid:
    # recorded by adapt_levers
    train_fn = combination_trainer(ref, config_of, Path(results_dir), f"the {dataset} adapted levers' greedy "
                                   f"combination (val mR against the frozen recipe)")
    changes = {n: ch for n, _, ch in ADAPT_LEVERS}
    trace = greedy_train(order, ref, train_fn, changes)
    return trace, (" + ".join(trace.chosen), combine([changes[n] for n in trace.chosen]))


LR_STAGE = "adapted top: learning-rate factor (on the combination)"


def lr_change(change: dict, factor: float) -> dict:
    """``change`` (an adapted lever's) with ``factor`` as the learning-rate factor of every top it trains."""
    out = dict(change)
    if out.get("image_top_blocks"):
        out["image_top_lr_factor"] = float(factor)
    if out.get("text_top_layers"):
        out["text_top_lr_factor"] = float(factor)
    return out


def lr_label(factor: float) -> str:
    return f"tops' learning-rate factor {factor:g}"


def adapt_lr(change: dict, lever: tuple[str, dict], factors: Sequence[float], trace: GreedyTrace, dataset: str,
             results_dir: str | Path, *, seed: int = 0, base: dict | None = None,
             n_boot: int = 2000) -> tuple[pd.DataFrame, tuple[str, dict]]:
    """The adapted tops' third stage: val's greedy combination ``lever`` (:func:`adapt_greedy`, trained at the
    factor 1.0 of every top) retrained with each learning-rate factor of ``factors``, applied to every top it
    trains (image and text alike), seed 0, on the recipe without rotations. Val decides, as in the greedy rule:
    the factor with the highest val mR is kept when it beats the combination's (ties keep 1.0); test is reported
    beside it (paired bootstrap against the combination's run, never used to choose). Appends one step per factor
    to ``trace`` (stage ``adapted top``) and returns lever-table rows (stage :data:`LR_STAGE`, ``chosen`` on the
    kept factor) and what the final runs carry, ``(label, change)``. A factor that is not a positive number other
    than 1, or a lever that trains no top, is an error."""
    from ..metrics import paired_bootstrap
    from ..runs import load_hits
    from .stages import _grid, combination_trainer
    bad = [f for f in factors if isinstance(f, bool) or not isinstance(f, (int, float)) or not f > 0 or f == 1]
    if bad or len(set(factors)) != len(factors):
        raise ValueError(f"ADAPT_LR_FACTORS: positive learning-rate factors other than 1 (the combination's own), "
                         f"each once; got {list(factors)!r}")
    name, ch = lever
    if not (ch.get("image_top_blocks") or ch.get("text_top_layers")):
        raise ValueError(f"ADAPT_LR_FACTORS: the chosen adapted lever {name!r} trains no backbone top")
    config_of = _on_recipe(change, dataset, seed, base)
    ref = _grid([config_of(ch)], Path(results_dir), workers=1)[0]
    train_fn = combination_trainer(ref, config_of, Path(results_dir), f"the {dataset} adapted tops' learning-rate "
                                   f"factors (val mR against the combination at 1)")
    mdir = recipe_dir(results_dir) / "metrics"
    ref_hits = load_hits(mdir, ref["run"])
    runs = [(f, train_fn(lr_change(ch, f))) for f in factors]
    best = max(runs, key=lambda t: val_mr(t[1]), default=None)
    kept = best[0] if best is not None and val_mr(best[1]) > val_mr(ref) else None
    rows = []
    for f, m in runs:
        bs = paired_bootstrap([ref_hits], [load_hits(mdir, m["run"])], n_boot=n_boot)
        rows.append({**_row(LR_STAGE, lr_label(f), _change_str({k: v for k, v in lr_change(ch, f).items()
                                                                if k.endswith("_lr_factor")}), m, ref, bs),
                     "chosen": f == kept})
        trace.steps.append({"step": len(trace.steps) + 1, "levers": f"{name} + {lr_label(f)}",
                            "val_mr": round(val_mr(m), 2), "test_mr": round(test_mr(m), 2), "kept": f == kept,
                            "run": m.get("run")})
    table = lever_table(rows)
    if kept is None:
        return table, lever
    return table, (f"{name} + {lr_label(kept)}", lr_change(ch, kept))


def mark_chosen(table: pd.DataFrame, levers: Sequence[str]) -> pd.DataFrame:
    """The lever table with the rows of ``levers`` measured on the recipe marked ``chosen`` (the final runs carry
    them)."""
    return table.assign(chosen=table.chosen | ((table.stage == lever_stage("recipe")) & table.lever.isin(list(levers))))


def adapt_final_plan(entries: list, seeds, variants) -> list[dict]:
    """07's ``ADAPT_FINAL``: the adapted operating point's final runs, one entry per dataset (or per part of one),
    ``{"dataset": D, "seeds": [...], "variants": [...], "levers": [...]}`` (seeds and variants default to the
    recipe's ``seeds`` and ``variants``; ``levers``, names in :data:`ADAPT_LEVERS`, pins the adapted levers the runs
    carry instead of :func:`adapt_greedy`'s choice: the rows' label names what they carry, the lever table's
    ``chosen`` what val chose), as a list of complete dicts
    (``levers`` None where not pinned); an unknown key, variant, lever or a missing dataset is an error."""
    from ..experiments import VARIANTS
    from .levers import lever_names
    out = []
    for e in entries:
        if not isinstance(e, dict) or "dataset" not in e or set(e) - {"dataset", "seeds", "variants", "levers"}:
            raise ValueError(f"ADAPT_FINAL entries are {{'dataset': D, 'seeds': [...], 'variants': [...], 'levers': "
                             f"[...]}} (seeds, variants and levers optional); got {e!r}")
        vs = list(e.get("variants", variants))
        bad = sorted(set(vs) - set(VARIANTS))
        if bad:
            raise ValueError(f"ADAPT_FINAL: unknown variant(s) {bad}; choose from {sorted(VARIANTS)}")
        levers = e.get("levers")
        if levers is not None:
            if not isinstance(levers, list) or not levers:
                raise ValueError(f"ADAPT_FINAL[{e['dataset']!r}]: levers is a non-empty list of names in "
                                 f"recipe.ADAPT_LEVERS (or leave it out: the greedy choice); got {levers!r}")
            found = lever_names(ADAPT_LEVERS, levers)  # an unknown name is an error listing the known ones
            levers = (" + ".join(n for n, _, _ in found), combine([ch for _, _, ch in found]))
        out.append({"dataset": e["dataset"], "seeds": [int(x) for x in e.get("seeds", seeds)], "variants": vs,
                    "levers": levers})
    return out


def operating_point(lever: str) -> str:
    """The final rows' label of an adapted operating point."""
    return f"adapted: {lever}, no train rotations"


def adapted_final(change: dict, spec, lever: tuple[str, dict], datasets, results_dir: str | Path,
                  **final_kw) -> pd.DataFrame:
    """The chosen recipe at the adapted operating point: its training change without rotations (no activation
    caches of rotated training views) plus the chosen adapted ``lever`` (:func:`adapt_greedy`), trained and
    scored as :func:`~itr_lib.recipe.stages.final_runs` does (same seeds, variants and inference ``spec``; test-time
    views score through the top from their own activation caches, built where missing). Rows carry
    ``operating_point`` (:func:`operating_point`); SelfAlign's paired gain is against the baseline of the same point."""
    from .stages import final_runs
    name, ch = lever
    final = final_runs({**without_rotations(change), **ch}, spec, datasets, results_dir, **final_kw)
    return final.assign(operating_point=operating_point(name))


def point_gains(results_dir: str | Path, final: pd.DataFrame, n_boot: int = 2000) -> pd.DataFrame:
    """The adapted operating points of one dataset against each other: for every dataset x variant x single-model
    scoring of ``final`` (``recipe_final.csv``) trained at two or more adapted points, each later point against the
    first (in ``ADAPT_FINAL``'s order: the image top alone, then val's combination), seed-matched over the seeds
    both have: the study's paired bootstrap of test rsum (:func:`itr_lib.metrics.paired_bootstrap`, seeds and test
    queries resampled) on the per-query hits of their inference records, and the claims' verdict. One row each:
    ``point_a``, ``point_b``, their test mR, ``delta_rsum`` (B - A), ``ci_lo``, ``ci_hi``, ``verdict``."""
    from ..claims import _verdict
    from ..metrics import paired_bootstrap, require_same_tie_rule
    from .records import load_spec_hits
    cols = ["dataset", "variant", "scoring", "point_a", "point_b", "n_seeds", "test_mr_a", "test_mr_b",
            "delta_rsum", "ci_lo", "ci_hi", "verdict"]
    if final.empty or "runs" not in final:
        return pd.DataFrame(columns=cols)
    f = final.assign(operating_point=operating_points(final))
    f = f[(f.operating_point != FROZEN) & ~f.scoring.str.contains("ensemble")]
    inf = recipe_dir(Path(results_dir)) / "inference"
    def by_seed(runs: str) -> dict:  # run names end in '-s<seed>-<hash>'
        return {r.rsplit("-s", 1)[1].split("-")[0]: r for r in runs.split(",")}
    rows = []
    for (ds, v, sc), g in f.groupby(["dataset", "variant", "scoring"], sort=False):
        if g.operating_point.nunique() < 2:
            continue
        a = g.iloc[0]
        for _, b in g.iloc[1:].iterrows():
            by_a, by_b = by_seed(a.runs), by_seed(b.runs)
            seeds = [s for s in by_a if s in by_b]
            if not seeds:
                continue
            require_same_tie_rule({f"{a.operating_point}": a.tie_rule, f"{b.operating_point}": b.tie_rule},
                                  f"{ds} {v} ({sc}) at two adapted points")
            bs = paired_bootstrap([load_spec_hits(inf / f"{a.spec}--{by_a[s]}") for s in seeds],
                                  [load_spec_hits(inf / f"{b.spec}--{by_b[s]}") for s in seeds], n_boot=n_boot)
            rows.append({"dataset": ds, "variant": v, "scoring": sc, "point_a": a.operating_point,
                         "point_b": b.operating_point, "n_seeds": len(seeds), "test_mr_a": a.test_mr,
                         "test_mr_b": b.test_mr, "delta_rsum": round(bs["delta_rsum"], 2),
                         "ci_lo": round(bs["ci_lo"], 2), "ci_hi": round(bs["ci_hi"], 2),
                         "verdict": _verdict(bs["ci_lo"], bs["ci_hi"], "better", 0.0, 0.0)})
    return pd.DataFrame(rows, columns=cols)
