"""Which methods the explorer offers for a dataset, in which order, and how to get the ones whose checkpoint is absent.

A results folder records many configurations per dataset (RSICD of the full profile: 36 with seed 0); a first visit
needs the few the study deploys. :func:`trained_methods` gives one row per configuration (its lowest seed with a
checkpoint, else its lowest seed), with a ``tier``:

- ``deployed``: the fair comparison's runs under the study loss (``setting == "study loss"`` in
  ``<results_dir>/tables/comparison_plan.csv``, written by 02_ablations); the README's table rows. Ordered by the
  recorded test mR of their deployed inference mode (:data:`itr_lib.tables.DEPLOYED_MODES`), mean over the
  seeds, best first, and labelled by the method alone ("CRA", "baseline", "tgdt"), as in the README's table.
- ``authors' loss`` and ``other`` (earlier runs, ablations, probes): offered behind the page's toggle, labelled
  with their whole variant.

Without a comparison plan (a results folder of hand-run training, the test fixture) every configuration is
``deployed``. :func:`missing_summary` folds the configurations without a checkpoint into one line and one command;
:func:`cheapest_to_train` picks what a first visit trains when nothing is trained (the deployed baseline), and
:func:`train_progress` reads a training run's progress from its ``log.jsonl``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .config import dataset_name

DEPLOYED, AUTHORS, OTHER = "deployed", "authors' loss", "other"
TIER_ORDER = {DEPLOYED: 0, AUTHORS: 1, OTHER: 2}
PLAN = Path("tables") / "comparison_plan.csv"


def profile_of(results_dir: str | Path) -> str:
    return Path(results_dir).name


def retrain_command(results_dir: str | Path, runs: list[str], dataset: str | None = None) -> str:
    """The command that retrains ``runs`` (recorded, checkpoint absent) and then serves the explorer on them."""
    ds = f" --datasets {dataset}" if dataset else ""
    names = " ".join(f"'{r}'" for r in runs)
    return f"python -m itr_lib.explore --profile {profile_of(results_dir)}{ds} --retrain {names}"


def retrain_hint(results_dir: str | Path, run: str) -> str:
    return f"python -m itr_lib.study --profile {profile_of(results_dir)} --retrain '{run}'"


def plan_settings(results_dir: str | Path) -> dict[str, str]:
    """``{run: setting}`` of the comparison plan under ``results_dir`` (empty without one)."""
    path = Path(results_dir) / PLAN
    if not path.is_file():
        return {}
    plan = pd.read_csv(path)
    return dict(zip(plan.run, plan.setting))


def _deployed_mr(metrics_path: str, method: str) -> float:
    """Recorded test mR of a run in its deployed inference mode (NaN when unreadable)."""
    from .runs import mode_mr
    from .tables import DEPLOYED_MODES
    try:
        m = json.loads(Path(metrics_path).read_text())
    except (OSError, ValueError):
        return np.nan
    mr = mode_mr(m, DEPLOYED_MODES.get(method, "test"))
    mr = mr if mr is not None else mode_mr(m, "test")
    return float(mr) if mr is not None else np.nan


def _tier(runs: list[str], settings: dict[str, str]) -> str:
    if not settings:
        return DEPLOYED
    got = {settings.get(r) for r in runs}
    return DEPLOYED if "study loss" in got else AUTHORS if "authors' loss" in got else OTHER


def trained_methods(results_dir: str | Path, dataset: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(available, missing)``: one row per trained configuration of ``dataset`` under ``results_dir`` (lowest
    seed with a checkpoint, else lowest seed), split by whether a checkpoint is present; deployed configurations
    first, best recorded mR first (module doc). Columns of :func:`itr_lib.runs.find_runs` plus ``tier``, ``mr``
    (mean over the configuration's seeds), ``train_minutes`` (recorded, the row's run) and ``label``."""
    from .runs import find_runs
    runs = find_runs(results_dir)
    d = runs[runs.dataset.map(lambda x: dataset_name(str(x))) == dataset] if not runs.empty else runs
    settings = plan_settings(results_dir)
    rows = []
    for _, gd in d.groupby("group", sort=False):
        gd = gd.sort_values("seed")
        with_ck = gd[gd.checkpoint.notna()]
        row = (with_ck if not with_ck.empty else gd).iloc[0].copy()
        row["tier"] = _tier(list(gd.run), settings)
        row["mr"] = float(np.nanmean([_deployed_mr(p, row.method) for p in gd.metrics_path]) if len(gd) else np.nan)
        row["train_minutes"] = row.train_s_per_epoch * max(int(row.epochs_run or 0), 1) / 60
        rows.append(row)
    cols = list(d.columns) + ["tier", "mr", "train_minutes", "label"]
    f = pd.DataFrame(rows, columns=cols[:-1]) if rows else pd.DataFrame(columns=cols[:-1])
    labels = []
    for m, v, t in zip(f.method, f.variant, f.tier):
        short = v.split(" |")[0]
        labels.append(short if t == DEPLOYED else v if short == m or m == "selfalign" else f"{m}: {v}")
    f["label"] = [lab if labels.count(lab) == 1 else f"{lab} ({run})" for lab, run in zip(labels, f.run)]
    f["_tier"] = f.tier.map(TIER_ORDER)
    f["_mr"] = -pd.to_numeric(f.mr, errors="coerce").fillna(-np.inf)
    f = f.sort_values(["_tier", "_mr", "label"]).drop(columns=["_tier", "_mr"]).reset_index(drop=True)[cols]
    has = f.checkpoint.notna()
    return f[has].reset_index(drop=True), f[~has].reset_index(drop=True)


def default_methods(available: pd.DataFrame, n: int = 3) -> list[str]:
    """Up to ``n`` labels to show side by side: the best deployed configuration (highest recorded mR), the
    baseline beside it, then one per other method family by mR, then anything else."""
    if available.empty:
        return []
    rows = list(available.itertuples())  # already in the catalog's order: deployed first, best mR first
    picked = [rows[0].label]
    base = [r for r in rows if r.method == "baseline" and r.tier == rows[0].tier]
    if base and base[0].label not in picked:
        picked.append(base[0].label)
    seen = {r.method for r in rows if r.label in picked}
    for r in rows:
        if r.method not in seen:
            picked.append(r.label)
            seen.add(r.method)
    picked += [r.label for r in rows if r.label not in picked]
    return picked[:n]


def missing_summary(results_dir: str | Path, dataset: str, missing: pd.DataFrame) -> tuple[str, str] | None:
    """``(line, command)`` folding every configuration without a checkpoint into one line; the command retrains
    the deployed ones (or, when every deployed one is there, the rest). None when nothing is missing."""
    if missing.empty:
        return None
    dep = missing[missing.tier == DEPLOYED]
    rest = len(missing) - len(dep)
    parts = []
    if len(dep):
        parts.append(f"{len(dep)} deployed method(s) without a checkpoint ({', '.join(dep.label)})")
    if rest:
        parts.append(f"{rest} {'more ' if len(dep) else ''}recorded configuration(s) without one "
                     f"(authors' loss, earlier runs, ablations)")
    todo = dep if len(dep) else missing
    return "; ".join(parts), retrain_command(results_dir, list(todo.run), dataset)


def cheapest_to_train(missing: pd.DataFrame) -> pd.Series | None:
    """What a first visit trains when nothing of the dataset is trained: the deployed baseline (the cheapest
    deployed model), else the deployed configuration with the shortest recorded training, else None."""
    dep = missing[missing.tier == DEPLOYED]
    if dep.empty:
        return None
    base = dep[dep.method == "baseline"]
    pick = base if len(base) else dep
    return pick.sort_values("train_minutes", na_position="last").iloc[0]


def train_progress(results_dir: str | Path, run: str) -> tuple[int, dict | None]:
    """``(epochs done, last epoch's record)`` of a (re)training run, read from ``runs/<run>/log.jsonl``."""
    path = Path(results_dir) / "runs" / run / "log.jsonl"
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return 0, None
    return len(lines), (json.loads(lines[-1]) if lines else None)
