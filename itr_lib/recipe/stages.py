"""The recipe's stages: training levers, inference levers, the chosen recipe over seeds, its main-table rows."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import TrainConfig
from ..experiments import VARIANTS
from .inference import _Evaluator
from .latency import measure_recipe
from .levers import (BETAS, D4, INFERENCE_LEVERS, TRAIN_LEVERS, TRANSDUCTIVE_LEVERS, GreedyTrace, InferenceSpec,
                     best_per_group, combine, greedy_train, lever_config, recipe_dir, val_mr)
from .records import _change_str, _row, _spec_row, beta_note, lever_table, load_spec_hits, read_record

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- running the levers
def _reuse_recorded(results_dir: Path, dest: Path, cfgs: Sequence[TrainConfig]) -> None:
    """Copy the records of runs already made elsewhere in ``results_dir`` (the probe's follow-up trained the
    reference on 3 seeds) into ``dest/metrics``: the same config (same name, same identity) is never retrained."""
    from ..probe import _copy_recorded
    for c in cfgs:
        name = c.run_name()
        for src in sorted(results_dir.glob(f"probe/**/metrics/{name}.json")):
            _copy_recorded(src.parent.parent, dest, name)
            break


def _grid(cfgs: list[TrainConfig], results_dir: Path, workers: int) -> list[dict]:
    from ..runs import run_grid
    rdir = recipe_dir(results_dir)
    _reuse_recorded(Path(results_dir), rdir, cfgs)
    return run_grid(cfgs, rdir, workers=workers, threads=1)


def combination_trainer(ref: dict, config_of, results_dir: Path, what: str):
    """A greedy combination's ``train_fn`` (:func:`~itr_lib.recipe.levers.greedy_train`): trains (or reads) the
    run of ``config_of(change)`` and refuses it when its val tie rule differs from the reference run ``ref``'s
    (their val mR would not compare); ``what`` names the comparison in that error."""
    from ..metrics import require_same_tie_rule

    def train_fn(change: dict) -> dict:
        m = _grid([config_of(change)], Path(results_dir), workers=1)[0]
        require_same_tie_rule({ref["run"]: ref.get("tie_rule"), m["run"]: m.get("tie_rule")}, what)
        return m
    return train_fn


def training_levers(dataset: str, results_dir: str | Path, *, seed: int = 0, levers=None, workers: int = 1,
                    base: dict | None = None, n_boot: int = 2000,
                    greedy: bool = True) -> tuple[pd.DataFrame, GreedyTrace, dict]:
    """Stages 1 and 2: each training lever alone (seed 0) against the reference, then the greedy combination.
    Returns (lever rows as a table, the greedy trace, the chosen change). ``greedy=False`` stops after stage 1
    (a study split over several sittings): nothing is combined or chosen (empty trace, change ``{}``, ``chosen``
    False everywhere)."""
    from ..metrics import paired_bootstrap, require_same_tie_rule
    from ..runs import load_hits
    results_dir = Path(results_dir)
    levers = TRAIN_LEVERS if levers is None else levers
    cfgs = [lever_config({}, dataset, seed, base=base)] + [lever_config(ch, dataset, seed, base=base)
                                                           for _, _, ch in levers]
    metrics = _grid(cfgs, results_dir, workers)
    ref, singles = metrics[0], metrics[1:]
    require_same_tie_rule({m["run"]: m.get("tie_rule") for m in metrics},
                          f"the {dataset} training levers (val gains and paired tests against the reference)")
    mdir = recipe_dir(results_dir) / "metrics"
    ref_hits = load_hits(mdir, ref["run"])
    rows = [_row("reference", "reference", "-", ref, ref, None)]
    for (name, group, ch), m in zip(levers, singles):
        bs = paired_bootstrap([ref_hits], [load_hits(mdir, m["run"])], n_boot=n_boot)
        rows.append(_row("training (alone)", name, _change_str(ch), m, ref, bs))
    order = best_per_group([(n, g, val_mr(m) - val_mr(ref)) for (n, g, _), m in zip(levers, singles)])
    changes = {n: ch for n, _, ch in levers}

    train_fn = combination_trainer(ref, lambda ch: lever_config(ch, dataset, seed, base=base), results_dir,
                                   f"the {dataset} greedy combination (val mR against the reference)")
    trace = greedy_train(order, ref, train_fn, changes) if greedy else GreedyTrace()
    chosen = set(trace.chosen)
    for r in rows:
        r["chosen"] = r["lever"] in chosen
    return lever_table(rows), trace, combine([changes[n] for n in trace.chosen])


def recipe_configs(change: dict, datasets: Sequence[str], seeds: Sequence[int],
                   variants: Sequence[str] = ("baseline", "lca+cra"), base: dict | None = None) -> list[TrainConfig]:
    """The chosen training recipe for every dataset x seed x variant (seed-major, so an interrupted grid leaves
    whole seeds)."""
    return [lever_config(change, ds, s, v, base=base) for ds in datasets for s in seeds for v in variants]


def inference_levers(change: dict, dataset: str, results_dir: str | Path, *, seeds: Sequence[int] = (0, 1, 2),
                     levers=None, transductive=None, base: dict | None = None, device: str = "cpu",
                     betas: Sequence[float] = BETAS, bank_size: int | None = None, n_boot: int = 2000,
                     workers: int = 1, stale_beta: str = "rescore") -> tuple[pd.DataFrame, GreedyTrace, InferenceSpec]:
    """Stage 3: each inference lever alone on the chosen training recipe's seed-``seeds[0]`` model (an ensemble
    lever: the first m seeds' models), against the plain score of the same checkpoint; then the greedy
    combination on val; the transductive levers reported beside, never chosen. Returns (rows, trace, spec).
    ``stale_beta``: ``"rescore"`` or ``"keep"`` a record whose beta predates the grid's extension
    (:class:`~itr_lib.recipe.inference._Evaluator`)."""
    from ..metrics import paired_bootstrap
    results_dir = Path(results_dir)
    levers = INFERENCE_LEVERS if levers is None else levers
    transductive = TRANSDUCTIVE_LEVERS if transductive is None else transductive
    cfgs = [lever_config(change, dataset, s, base=base) for s in seeds]
    levers = [(n, g, sp.resolved(len(cfgs))) for n, g, sp in levers]
    transductive = [(n, g, sp.resolved(len(cfgs))) for n, g, sp in transductive]
    m_max = max([1] + [sp.ensemble for _, _, sp in [*levers, *transductive]])
    _grid(cfgs[:m_max], results_dir, workers)
    views = sorted({t for _, _, sp in [*levers, *transductive] for t in sp.tta}, key=list(D4).index)
    ev = _Evaluator(cfgs, results_dir, views, device, betas, bank_size, workers, stale_beta)
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
               bank_size: int | None = None, n_boot: int = 2000, workers: int = 1,
               latency: bool = True, stale_beta: str = "rescore") -> pd.DataFrame:
    """Stage 4: the chosen recipe (training ``change``, inference ``spec``) on every dataset x variant x seed. Each
    seed's model is scored with ``spec`` without its ensemble (beta chosen on that run's val), and, when ``spec``
    ensembles m models, the ensemble of the first m seeds is one more row (one number: no spread over seeds).
    Returns one row per dataset x variant x scoring: mean +- std of val and test mR, and for SelfAlign the paired
    bootstrap (over seeds and test queries, :func:`selfalign_gains`) of its test rsum gain over the baseline of the
    same recipe and seeds. ``latency``: each row's per-query cost on its first seed's model
    (:mod:`itr_lib.recipe.latency`: 04's protocol, batch 1, one thread; the ensemble row times the ensemble), in
    ``ms_per_query`` (mean of t2i and i2t) and ``bytes_per_item``. ``stale_beta``: as :func:`inference_levers`."""
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
                recs, cost = [], None
                for c in vc:
                    ev = _Evaluator([c], results_dir, views, device, betas, bank_size, workers, stale_beta)
                    rec, path = ev(sp)
                    recs.append(rec)
                    hits[(ds, v, label, c.seed)] = load_spec_hits(path)
                    if latency and c is vc[0]:  # timed on the first seed's model (04's protocol)
                        cost = measure_recipe(lambda ev=ev: ev.models(1), [c], sp, rec, results_dir, device=device)
                rows.append(_final_row(ds, v, label, sp, recs, cost if latency else None))
            if spec.ensemble > 1:
                ev = _Evaluator(vc, results_dir, views, device, betas, bank_size, workers, stale_beta)
                rec, _ = ev(spec)
                cost = measure_recipe(lambda: ev.models(spec.ensemble), vc[:spec.ensemble], spec, rec, results_dir,
                                      device=device) if latency else None
                rows.append(_final_row(ds, v, f"recipe + {spec.ensemble}-seed ensemble", spec, [rec], cost))
    return selfalign_gains(pd.DataFrame(rows), hits, seeds, n_boot)


def selfalign_gains(final: pd.DataFrame, hits: dict, seeds: Sequence[int], n_boot: int = 2000) -> pd.DataFrame:
    """``final`` with, on each non-baseline single-model row, the test rsum gain over the baseline of the same
    dataset and scoring (``delta_rsum_vs_baseline``, ``ci_lo``, ``ci_hi``): the study's one paired bootstrap over
    seeds and test queries (:func:`itr_lib.metrics.paired_bootstrap`, the claims' interval), on the seeds both have.
    ``hits``: ``{(dataset, variant, scoring, seed): per-query test hits}``."""
    from ..metrics import paired_bootstrap
    out = final.copy()
    out["delta_rsum_vs_baseline"] = out["ci_lo"] = out["ci_hi"] = np.nan
    for i, r in out.iterrows():
        if r.variant == "baseline" or "ensemble" in r.scoring:
            continue
        common = [s for s in seeds if (r.dataset, "baseline", r.scoring, s) in hits
                  and (r.dataset, r.variant, r.scoring, s) in hits]
        if not common:
            continue
        bs = paired_bootstrap([hits[(r.dataset, "baseline", r.scoring, s)] for s in common],
                              [hits[(r.dataset, r.variant, r.scoring, s)] for s in common], n_boot=n_boot)
        out.loc[i, ["delta_rsum_vs_baseline", "ci_lo", "ci_hi"]] = [round(bs[k], 2) for k in ("delta_rsum", "ci_lo", "ci_hi")]
    return out


def _final_row(ds: str, variant: str, label: str, spec: InferenceSpec, recs: list[dict],
               cost: dict | None = None) -> dict:
    val = np.array([r["val"]["standard"]["mr"] for r in recs])
    test = np.array([r["test"]["standard"]["mr"] for r in recs])
    sd = lambda a: round(float(a.std(ddof=1)), 2) if len(a) > 1 else 0.0  # noqa: E731
    betas = sorted({r["spec"]["beta"] for r in recs if r["spec"].get("beta") is not None})
    notes = sorted({beta_note(r) for r in recs} - {""})
    return {"dataset": ds, "variant": variant, "scoring": label, "spec": spec.slug(), "betas": ",".join(f"{b:g}" for b in betas),
            "beta_grid": "; ".join(notes),
            "n_seeds": len(recs) if spec.ensemble == 1 else 1, "val_mr": round(float(val.mean()), 2),
            "test_mr": round(float(test.mean()), 2), "test_mr_std": sd(test), **tie_bracket(recs),
            **{f"{k}": round(float(np.mean([r["test"]["standard"][k] for r in recs])), 2)
               for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")},
            **{k: (round(float(cost[k]), 4) if cost else np.nan)
               for k in ("ms_per_query_t2i", "ms_per_query_i2t", "ms_per_query", "bytes_per_item")},
            "runs": ",".join(",".join(r["key"]["runs"]) for r in recs)}


def tie_bracket(recs: list[dict]) -> dict:
    """The tie bracket of inference records' test mR (means over ``recs``): ``tie_rule`` (the study's: the records
    hold tie counts), ``test_mr_optimistic`` and ``test_mr_pessimistic`` (ties resolved for / against the query)."""
    from ..metrics import STUDY_TIE_RULE
    out = {"tie_rule": STUDY_TIE_RULE}
    for rule in ("optimistic", "pessimistic"):
        vals = [r["test"].get(f"standard_{rule}", {}).get("mr") for r in recs]
        out[f"test_mr_{rule}"] = round(float(np.mean(vals)), 2) if vals and None not in vals else np.nan
    return out


RECORD_COLUMNS = ["tie_rule", "test_mr_optimistic", "test_mr_pessimistic", "beta_grid"]


def _from_records(results_dir: Path, d: pd.DataFrame) -> pd.DataFrame:
    """The tie bracket and beta note (:data:`RECORD_COLUMNS`) of each final row, read from its inference records
    (``recipe/inference/<spec>--<run>``: one per seed, or the ensemble's one), for a ``recipe_final.csv`` written
    before it carried them."""
    rows = []
    for spec, runs, scoring in zip(d.spec, d.runs, d.scoring):
        runs = str(runs).split(",")
        paths = [recipe_dir(results_dir) / "inference" / f"{spec}--{r}"
                 for r in (runs[:1] if "ensemble" in scoring else runs)]
        recs = [read_record(p, None, check_key=False) for p in paths]
        if None in recs:
            rows.append(dict.fromkeys(RECORD_COLUMNS, np.nan))
            continue
        rows.append({**tie_bracket(recs), "beta_grid": "; ".join(sorted({beta_note(r) for r in recs} - {""}))})
    return pd.DataFrame(rows, index=d.index, columns=RECORD_COLUMNS)


def with_record_columns(results_dir: str | Path, final: pd.DataFrame) -> pd.DataFrame:
    """``final`` (``recipe_final.csv``) with its tie bracket and beta note (:data:`RECORD_COLUMNS`); read from the
    inference records when the table was written before it carried them."""
    if set(RECORD_COLUMNS) <= set(final.columns) or final.empty or not {"spec", "runs"} <= set(final.columns):
        return final
    return pd.concat([final.drop(columns=RECORD_COLUMNS, errors="ignore"), _from_records(Path(results_dir), final)],
                     axis=1)


def main_rows(results_dir: str | Path, final: pd.DataFrame | None = None) -> pd.DataFrame:
    """The recipe's rows for the main tables (``tables/recipe_final.csv``): one per dataset x variant under the
    recipe's scoring, in the main table's columns (setting ``recipe``; ``recipe, adapted top`` for the rows of an
    adapted operating point, :func:`itr_lib.recipe.adapt.adapted_final`), with its tie bracket (``tie_rule``,
    ``mr_optimistic``, ``mr_pessimistic``: from the final table, or from its inference records when the table
    predates them), per-query latency (``ms_per_query``, 04's protocol) and ``bytes_per_item``."""
    path = Path(results_dir) / "tables" / "recipe_final.csv"
    if final is None:
        if not path.is_file():
            return pd.DataFrame()
        final = pd.read_csv(path)
    final = with_record_columns(results_dir, final)
    d = final[final.scoring != "plain"] if (final.scoring != "plain").any() else final
    from .records import FROZEN, operating_points
    op = operating_points(d)
    adapted = op != FROZEN  # the adapted operating point (issue 28): its own setting, its point in the label
    out = pd.DataFrame({"dataset": d.dataset, "setting": np.where(adapted, "recipe, adapted top", "recipe"),
                        "method": d.variant.map(lambda v: VARIANTS[v]["method"]),
                        "variant": "recipe: " + d.variant + " | " + d.scoring + " [" + d.spec + "]"
                        + np.where(adapted, " | " + op, ""),
                        "n_seeds": d.n_seeds, "mr": d.test_mr, "mr_std": d.test_mr_std, "published": False,
                        "tie_rule": d.tie_rule, "mr_optimistic": d.test_mr_optimistic,
                        "mr_pessimistic": d.test_mr_pessimistic,
                        **{k: d[k] for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")},
                        **{k: d[k] if k in d else np.nan for k in ("ms_per_query", "bytes_per_item")}})
    return out.reset_index(drop=True)
