"""What the study costs to rerun from scratch: core-hours per notebook and per method, measured from the records.

Every recorded run (``results/<profile>/metrics``, ``probe/**/metrics``, ``recipe/metrics``) carries its own
``train_seconds``, ``val_eval_seconds``, ``test_eval_seconds``, ``load_seconds`` and ``threads``; a run's core
seconds are their sum times its threads. A run is attributed to the notebook that trains it in the profile:

- ``recipe/metrics`` -> ``07_recipe``; ``probe/**/metrics`` -> ``02_ablations`` (its capacity probe);
- ``metrics/``: runs listed in the plans the study wrote (``tables/comparison_plan.csv``, ``tables/ablation_runs.csv``)
  -> ``02_ablations``; RSICD baseline runs of 10 epochs (the schedule probe) -> ``01_train``; every other record is
  *history* (earlier settings the profile no longer trains: counted apart, not in the rerun's cost).

Notebooks that train nothing are costed at the wall seconds ``study.json`` recorded for their executions (one
process each); ``00_data_prep`` adds the frozen feature extraction (``results/benchmarks/feature_extraction.csv``,
seconds x cores). The estimate with the speed levers divides each method's training seconds by its measured step
speed-up: this code with the study's defaults over the old code (``results/benchmarks/versions_<dataset>.csv``)
where timed, else its adopted levers' (``speed_levers.csv``, column ``train_speedup``); 1 where a method has none.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .config import dataset_name, method_key, variant_label
from .io import REPO_ROOT
from .recordio import read_record

HISTORY = "history (not in the profile)"
TIME_FIELDS = ("train_seconds", "val_eval_seconds", "test_eval_seconds", "load_seconds")


def _record_files(results_dir: Path) -> list[tuple[Path, str]]:
    out = [(f, "metrics") for f in sorted((results_dir / "metrics").glob("*.json"))]
    out += [(f, "probe") for f in sorted((results_dir / "probe").glob("**/metrics/*.json"))]
    out += [(f, "recipe") for f in sorted((results_dir / "recipe").glob("**/metrics/*.json"))]
    return out


def _planned_runs(results_dir: Path) -> set[str]:
    names: set[str] = set()
    for name in ("comparison_plan.csv", "ablation_runs.csv"):
        p = results_dir / "tables" / name
        if p.is_file():
            names |= set(pd.read_csv(p, usecols=["run"]).run)
    return names


def record_costs(results_dir: str | Path) -> pd.DataFrame:
    """One row per recorded run: run, folder, notebook, dataset, method, variant, seed, ``adapted`` (the image top
    trained), the time fields, threads and ``core_seconds``."""
    results_dir = Path(results_dir)
    planned = _planned_runs(results_dir)
    rows = []
    for f, folder in _record_files(results_dir):
        m = read_record(f)  # a damaged record stops the cost table with its name and the fix (recordio)
        if "config" not in m:
            continue  # not a run record
        cfg = m["config"]
        if folder == "recipe":
            nb = "07_recipe"
        elif folder == "probe" or f.stem in planned:
            nb = "02_ablations"
        elif cfg.get("method") == "baseline" and dataset_name(cfg.get("dataset", "")) == "rsicd" \
                and cfg.get("epochs") == 10:
            nb = "01_train"
        else:
            nb = HISTORY
        threads = int(m.get("threads") or 1)
        t = {k: float(m.get(k) or 0.0) for k in TIME_FIELDS}
        rows.append({"run": f.stem, "folder": folder, "notebook": nb, "dataset": dataset_name(cfg.get("dataset", "")),
                     "method": method_key(cfg), "variant": variant_label(cfg), "seed": cfg.get("seed"),
                     "adapted": bool(cfg.get("image_top_blocks")), "levered": trained_with_levers(m),
                     "threads": threads, **t, "core_seconds": threads * sum(t.values())})
    return pd.DataFrame(rows)


def trained_with_levers(record: dict) -> bool:
    """Whether a record ran with a speed lever already on (bf16 encoders, length buckets, a compiled or bf16 score
    kernel, bf16 loss matmuls): the old side of ``versions`` (float32, the records' kernels) did not, so part of its
    method's credited speed-up happened before this record was timed."""
    sk = record.get("score_kernel") or {}
    return (record.get("precision") == "bf16" or bool((record.get("config") or {}).get("length_buckets"))
            or bool(sk.get("compiled")) or "bf16" in (sk.get("matmul"), sk.get("loss_matmul"), sk.get("top_matmul")))


def lever_speedups(path: str | Path | None) -> dict[str, float]:
    """method -> measured training speed-up of the adopted levers (``speed_levers.csv``: rows with ``adopted`` true,
    column ``train_speedup``): per lever the mean over the datasets it was timed on, then the best adopted lever;
    empty when the file is missing."""
    if path is None or not Path(path).is_file():
        return {}
    t = pd.read_csv(path)
    if "adopted" in t:
        t = t[t.adopted.astype(bool)]
    if not {"method", "train_speedup"} <= set(t.columns) or t.empty:
        return {}
    t = t.dropna(subset=["train_speedup"])
    per_lever = t.groupby(["method", "lever"] if "lever" in t else ["method"]).train_speedup.mean()
    out = per_lever.groupby(level="method").max().to_dict()
    return {**out, **version_speedups(Path(path).parent)}


def version_speedups(bench_dir: str | Path) -> dict[str, float]:
    """method -> the 1-thread step speed-up of this code with the study's defaults over the old code with the recorded
    config (``versions_<dataset>.csv`` of ``python -m itr_lib.bench versions``, mean over the datasets timed): what
    a rerun gains, exact code changes included; it replaces the adopted levers' figure where measured."""
    frames = [pd.read_csv(p) for p in sorted(Path(bench_dir).glob("versions_*.csv"))]
    if not frames:
        return {}
    t = pd.concat(frames, ignore_index=True)
    t = t[t.threads == 1].dropna(subset=["step_speedup"])
    return t.groupby("method").step_speedup.mean().to_dict()


def _notebook_seconds(results_dir: Path) -> dict[str, float]:
    """notebook stem -> wall seconds of its executions in ``study.json`` (summed over runs of one notebook). An
    execution last run with ``-p`` overrides counts at the seconds of its last run without them (``full``)."""
    p = results_dir / "study.json"
    if not p.is_file():
        return {}
    out: dict[str, float] = {}
    for ex in json.loads(p.read_text()).get("executions", {}).values():
        stem = Path(ex.get("notebook", "")).stem
        secs = (ex.get("full") or ex).get("seconds") if ex.get("overrides") else ex.get("seconds")
        out[stem] = out.get(stem, 0.0) + float(secs or 0.0)
    return out


TRAINING_NOTEBOOKS = ("01_train", "02_ablations", "07_recipe")


ADAPTED = ", adapted top"  # the cost tables' method name of a run at the adapted point (and of its versions timing)


def cost_tables(results_dir: str | Path, speedups: dict[str, float] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per notebook, per method)`` core-hours of a rerun from scratch, from the records (module docstring).
    Columns: ``core_h`` (as recorded), ``core_h_levers`` (training seconds divided by the method's speed-up from
    ``speedups``; a run at the adapted point is method ``<method>, adapted top``, credited only with a speed-up timed
    there), ``runs``; the per-notebook table adds the non-training notebooks (``study.json`` seconds) and a
    ``total`` row; history runs are listed apart (``notebook`` = HISTORY) and left out of the total."""
    results_dir = Path(results_dir)
    speedups = speedups or {}
    rec = record_costs(results_dir)
    if rec.empty:
        raise ValueError(f"no run records under {results_dir} (metrics/, probe/, recipe/). Fix: pass the results "
                         f"folder of a study profile, e.g. results/full.")
    # a run at the adapted point (the image top trained) is its own operating point: the frozen path's speed-up is not
    # its speed-up (the top runs in float32), so it is credited only where it was timed there (ADAPTED)
    rec["method"] = [m + ADAPTED if a else m for m, a in zip(rec.method, rec.adapted)]
    sp = rec.method.map(lambda m: speedups.get(m, 1.0))
    rec["core_seconds_levers"] = rec.core_seconds - rec.train_seconds * rec.threads * (1 - 1 / sp)
    # the bound: a run recorded with levers on already ran at this code's speed (no credit)
    rec["core_seconds_bound"] = np.where(rec.levered, rec.core_seconds, rec.core_seconds_levers)
    rec["core_seconds_levered"] = np.where(rec.levered, rec.core_seconds, 0.0)
    agg = dict(runs=("run", "size"), core_h=("core_seconds", "sum"), core_h_levers=("core_seconds_levers", "sum"),
               train_h=("train_seconds", "sum"), core_h_bound=("core_seconds_bound", "sum"),
               levered_runs=("levered", "sum"), levered_core_h=("core_seconds_levered", "sum"))
    by_nb = rec.groupby("notebook").agg(**agg).reset_index()
    other = {k: v for k, v in _notebook_seconds(results_dir).items() if k not in TRAINING_NOTEBOOKS}
    feats = results_dir.parent / "benchmarks" / "feature_extraction.csv"
    if feats.is_file():  # the frozen encoders' caches, built once before 00_data_prep (seconds x the cores used)
        f = pd.read_csv(feats)
        other["00_data_prep"] = other.get("00_data_prep", 0.0) + float((f.seconds * f.get("cpus", 1)).sum())
    extra = pd.DataFrame([{"notebook": k, "runs": 0, "core_h": v, "core_h_levers": v, "train_h": 0.0,
                           "core_h_bound": v, "levered_runs": 0, "levered_core_h": 0.0}
                          for k, v in sorted(other.items())])
    by_nb = pd.concat([by_nb, extra], ignore_index=True)
    hours = ("core_h", "core_h_levers", "train_h", "core_h_bound", "levered_core_h")
    for c in hours:
        by_nb[c] = by_nb[c] / 3600
    scratch = by_nb[by_nb.notebook != HISTORY]
    total = {"notebook": "total (from scratch)", "runs": int(scratch.runs.sum()),
             "levered_runs": int(scratch.levered_runs.sum()), **{c: scratch[c].sum() for c in hours}}
    by_nb = pd.concat([by_nb.sort_values("notebook"), pd.DataFrame([total])], ignore_index=True)
    by_nb["levers_ratio"] = by_nb.core_h / by_nb.core_h_levers.replace(0, np.nan)
    live = rec[rec.notebook != HISTORY]
    by_m = live.groupby(["method"]).agg(**agg).reset_index()
    for c in hours:
        by_m[c] = by_m[c] / 3600
    by_m["train_speedup"] = by_m.method.map(lambda m: speedups.get(m, 1.0))
    return by_nb, by_m.sort_values("core_h", ascending=False, ignore_index=True)


def execution_estimates(todo: list[dict], results_dir: str | Path,
                        speedups: dict[str, float] | None = None) -> list[dict]:
    """The dry run's estimate per planned execution (``itr_lib.study.executions`` items): core-hours from scratch
    of the notebook it executes, split evenly over that notebook's executions, with and without the levers."""
    by_nb, _ = cost_tables(results_dir, speedups)
    cost = by_nb.set_index("notebook")
    n_exec: dict[str, int] = {}
    for t in todo:
        n_exec[Path(t["notebook"]).stem[:2]] = n_exec.get(Path(t["notebook"]).stem[:2], 0) + 1
    rows = []
    for t in todo:
        stem = Path(t["notebook"]).stem
        hit = [nb for nb in cost.index if nb[:2] == stem[:2] and nb[:1].isdigit()]
        share = 1 / n_exec[stem[:2]]
        core = float(cost.loc[hit, "core_h"].sum()) * share if hit else np.nan
        lev = float(cost.loc[hit, "core_h_levers"].sum()) * share if hit else np.nan
        rows.append({"execution": Path(t["output"]).stem, "core_h": core, "core_h_levers": lev})
    return rows


def notebook_defaults(nb: Path) -> dict:
    """The defaults of a notebook's ``parameters`` cell (papermill's inspection, values read as Python literals)."""
    import ast
    import papermill as pm
    return {k: ast.literal_eval(v["default"]) for k, v in pm.inspect_notebook(str(nb)).items()}


def missing_runs(todo: list[dict], results_dir: str | Path) -> pd.DataFrame:
    """What the planned 02_ablations executions would train now: their ablation grid and comparison plan
    (:func:`itr_lib.experiments.notebook_grids`, the notebook's own call) less the runs recorded under
    ``results_dir``, one row each (setting, dataset, method, seed, run) with ``est_core_h``: the mean core-hours of
    the recorded runs of the same dataset, method and operating point (image top trained or not), NaN where none is
    recorded. 07's recipe grids and the capacity probe are not listed."""
    from .experiments import notebook_grids
    from .runs import recorded
    results_dir = Path(results_dir)
    rec = record_costs(results_dir)
    mean_h = (rec.groupby(["dataset", "method", "adapted"]).core_seconds.mean() / 3600).to_dict() if len(rec) else {}
    rows, seen = [], set()
    for t in todo:
        if not Path(t["notebook"]).name.startswith("02_"):
            continue
        cfgs, plan = notebook_grids({**notebook_defaults(Path(t["notebook"])), **t["parameters"]})
        for setting, cfg in [("ablation", c) for c in cfgs] + [(st, c) for st, _, c in plan]:
            name = cfg.run_name()
            if name in seen or recorded(cfg, results_dir) is not None:
                continue
            seen.add(name)
            key = (dataset_name(cfg.dataset), method_key(vars(cfg)),
                   bool(cfg.image_top_blocks))
            rows.append({"setting": setting, "dataset": key[0], "method": key[1], "seed": cfg.seed, "run": name,
                         "est_core_h": mean_h.get(key, np.nan)})
    return pd.DataFrame(rows, columns=["setting", "dataset", "method", "seed", "run", "est_core_h"])


def dry_run_estimate(todo: list[dict], out_dir: Path, profile_dir: Path) -> dict:
    """The estimated cost of the planned executions from scratch (:func:`itr_lib.cost.execution_estimates`), from
    the records of ``out_dir`` or, when it has none, of the profile's folder ``profile_dir``; ``{}`` when neither has records."""
    speedups = lever_speedups(REPO_ROOT / "results" / "benchmarks" / "speed_levers.csv")
    miss = missing_runs(todo, out_dir)
    missing = {"missing": miss.to_dict("records")} if any(Path(t["notebook"]).name.startswith("02_")
                                                            for t in todo) else {}
    for src in (out_dir, profile_dir):
        try:
            return {"estimate_from": str(src), "estimates": execution_estimates(todo, src, speedups), **missing}
        except ValueError:
            continue
    return missing


def format_estimate(res: dict) -> str:
    """The dry run's estimate as lines: per execution and the total, core-hours as recorded and with the levers."""
    if not res.get("estimates"):
        return "no run records to estimate the cost from (results/<profile>/metrics is empty)"
    lines = [f"estimated cost from scratch (core-hours, from the records in {res['estimate_from']}; "
             f"'levers': training divided by the measured step speed-ups of results/benchmarks/versions_*.csv, "
             f"else speed_levers.csv):",
             f"  {'execution':<48} {'core-h':>8} {'levers':>8}"]
    import math
    tot, unknown = [0.0, 0.0], []
    for e in res["estimates"]:
        if math.isnan(e["core_h"]):
            unknown.append(e["execution"])
            lines.append(f"  {e['execution'][:48]:<48} {'-':>8} {'-':>8}")
            continue
        lines.append(f"  {e['execution'][:48]:<48} {e['core_h']:8.2f} {e['core_h_levers']:8.2f}")
        tot = [tot[0] + e["core_h"], tot[1] + e["core_h_levers"]]
    lines.append(f"  {'total':<48} {tot[0]:8.2f} {tot[1]:8.2f}" + (f"  (no record of {', '.join(unknown)})"
                                                                  if unknown else ""))
    if "missing" in res:  # what 02 would train now, in this results folder
        m = pd.DataFrame(res["missing"], columns=["setting", "dataset", "method", "seed", "run", "est_core_h"])
        if m.empty:
            lines.append("02_ablations would train nothing now: every run of its grids is recorded.")
        else:
            known = m.est_core_h.notna()
            lines.append(f"02_ablations would train {len(m)} run(s) now (not recorded here), about "
                         f"{m.est_core_h.sum():.2f} core-h from the recorded runs of the same dataset, method and "
                         f"operating point" + (f" ({(~known).sum()} with no such record: not estimated)"
                                                if (~known).any() else "") + ":")
            for (st, ds, meth), g in m.groupby(["setting", "dataset", "method"], sort=False):
                est = f"{g.est_core_h.sum():.2f}" if g.est_core_h.notna().all() else "?"
                lines.append(f"  {st:<28} {ds:<6} {meth:<9} seeds {','.join(map(str, sorted(g.seed))):<8} "
                             f"{est:>6} core-h")
    return "\n".join(lines)


def cost_markdown(results_dir: str | Path, speedups_csv: str | Path | None = None) -> list[str]:
    """RESULTS.md's cost section: the study from scratch in core-hours per notebook and per method
    (:func:`cost_tables` of the records, the adopted levers' speed-ups from ``speedups_csv``); ``[]`` without records.
    The same numbers as ``python -m itr_lib.study --profile <p> --dry-run``."""
    from .tables import to_markdown
    speedups_csv = speedups_csv or REPO_ROOT / "results" / "benchmarks" / "speed_levers.csv"
    try:
        speedups = lever_speedups(speedups_csv)
        by_nb, by_m = cost_tables(results_dir, speedups)
    except ValueError:
        return []
    untimed = sorted(m for m in by_m.method if m not in speedups)
    total = by_nb[by_nb.notebook == "total (from scratch)"].iloc[0]
    hist = by_nb[by_nb.notebook == HISTORY]
    keep = ["runs", "core_h", "core_h_levers", "train_h"]
    return ["### The study from scratch: core-hours (`itr_lib.cost`, the records)", "",
            f"Every recorded run's train + val + test + load seconds times its threads, attributed to the notebook "
            f"that trains it; notebooks that train nothing at their last full execution in `study.json` (a rerun "
            f"with `-p` overrides keeps the full one's seconds); `00_data_prep` adds the feature extraction. "
            f"`core_h_levers`: each method's training divided by its measured step speed-up: this code with the "
            f"study's defaults against the old code (`versions_<dataset>.csv`, `python -m itr_lib.bench versions`) "
            f"where timed, else the adopted speed levers' (`speed_levers.csv`, column `adopted`; none: equal; a run at "
            f"the adapted point (`, adapted top`: the image top trained, in float32) is its own operating point, "
            f"credited only with a speed-up timed there"
            + (f"; never timed, so counted at their recorded cost: {'; '.join(untimed)}" if untimed else "")
            + f"). From scratch: **{total.core_h:.1f} "
            f"core-hours** ({int(total.runs)} runs; with the adopted levers {total.core_h_levers:.1f})"
            + (f". {int(total.levered_runs)} of the runs ({total.levered_core_h:.1f} core-hours) were recorded with "
               f"some lever already on (bf16 encoders, length buckets: `cost.trained_with_levers`), so part of their "
               f"method's speed-up, credited in full, came before their record; crediting them none, the levers' "
               f"total is {total.core_h_bound:.1f} (a bound)" if total.levered_runs else "")
            + (f"; history runs the profile no longer trains, not counted: {float(hist.core_h.sum()):.1f} core-hours"
               if len(hist) else "") + ".", "",
            to_markdown(by_nb[["notebook"] + keep], index=False, floatfmt=".2f"), "",
            to_markdown(by_m[["method"] + keep + ["train_speedup"]], index=False, floatfmt=".2f"), ""]
