"""The capacity probe (``02_ablations``, section "Capacity probe"): does any one knob the study scaled down (joint size
D, pooling, encoder MLP, learning rate, epochs) move a SelfAlign variant's *val* mR enough to matter? One change at a
time from the ablation's setting (:data:`itr_lib.experiments.PROBES`, round 1), then the greedy second round (round
1's val winner with the next-best knobs on top); seed 0, chosen on val, test mR reported beside it, never used to
choose. The val choice of each round is then followed up over several seeds together with a baseline of the same
change, so its gain is measured against equal capacity.

Runs live in ``<results>/probe/`` (the probe) and ``<results>/probe/confirm-<slug>/`` (each follow-up), trained or
reused through :func:`itr_lib.runs.run_grid`: a run recorded in a folder's ``metrics/`` is never retrained, and a
follow-up's seed-0 run of the variant is the probe's own run (the same config), copied, not retrained.
"""
from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .experiments import PROBE_SECOND_ROUND, PROBES, probe_configs, probe_confirm_configs
from .runs import run_grid, runs_frame
from .tables import ablation_table, probe_table


def confirm_slug(probe: str) -> str:
    """The follow-up folder of a probe: 'D = 1024 (authors)' -> 'confirm-d-1024-authors'."""
    return "confirm-" + re.sub(r"[^a-z0-9]+", "-", probe.lower()).strip("-")


def round_choices(table: pd.DataFrame) -> list[str]:
    """The val choice of each round of a probe table (:func:`itr_lib.tables.probe_table`): round 1 among the one-knob
    probes, round 2 among every probe (the greedy round only wins when it beats round 1). The second round's changes
    are fixed in :data:`~itr_lib.experiments.PROBES` on top of round 1's winner: an error when round 1 now chooses
    another probe (the second round would no longer be greedy)."""
    first = table[~table.probe.isin(PROBE_SECOND_ROUND)]
    choice1 = first.loc[first.val_mr.idxmax(), "probe"]
    second = table[table.probe.isin(PROBE_SECOND_ROUND)]
    if second.empty:
        return [choice1]
    base = dict(PROBES)[choice1]
    off = [n for n in second.probe if any(dict(PROBES)[n].get(k) != v for k, v in base.items())]
    if off:
        raise ValueError(f"round 1 of the probe now chooses {choice1!r} on val, but the second round's probes {off} "
                         f"are not built on its change {base}. Fix: update PROBES / PROBE_SECOND_ROUND in "
                         f"itr_lib/experiments.py to the new winner.")
    choice2 = table.loc[table.val_mr.idxmax(), "probe"]
    return [choice1] if choice2 == choice1 else [choice1, choice2]


def _copy_recorded(src_dir: Path, dst_dir: Path, run: str) -> None:
    """Copy a run's record (``<run>.json``, ``<run>.ranks.npz``) into another folder's ``metrics/`` (atomically)."""
    for suffix in (".json", ".ranks.npz"):
        src, dst = src_dir / "metrics" / f"{run}{suffix}", dst_dir / "metrics" / f"{run}{suffix}"
        if src.is_file() and not dst.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)  # an interrupted copy never looks like a recorded run


def capacity_probe(dataset: str, results_dir: str | Path, *, variant: str = "lca+cra", seed: int = 0,
                   confirm_seeds: Sequence[int] = (0, 1, 2), workers: int = 1, base: dict | None = None,
                   n_boot: int = 2000, confirm: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run (or reuse) the probe of ``variant`` on ``dataset`` under ``<results_dir>/probe`` and the follow-up of each
    round's val choice over ``confirm_seeds``; returns (probe table, follow-up table). ``base``: runtime fields of
    every config (data root, cache, device; not part of a run's identity). The follow-up table stacks, in probe
    order, the ablation table (:func:`itr_lib.tables.ablation_table`: mean +- std, paired bootstrap rsum gain over the
    baseline of the same capacity) of each chosen probe, with its name in column ``probe``."""
    probe_dir = Path(results_dir) / "probe"
    cfgs = probe_configs(dataset, seed, variant, base=base)
    metrics = run_grid([c for _, _, c in cfgs], probe_dir, workers=workers, threads=1)
    table = probe_table([(n, ch, m) for (n, ch, _), m in zip(cfgs, metrics)])
    if not confirm:
        return table, pd.DataFrame()
    chosen = round_choices(table)
    parts = []
    for name, _ in PROBES:
        if name not in chosen:
            continue
        cdir = probe_dir / confirm_slug(name)
        ccfgs = probe_confirm_configs(dataset, confirm_seeds, variant, name, base=base)
        for c in ccfgs:  # the probe's own run of this config (same name, same identity) is reused, not retrained
            _copy_recorded(probe_dir, cdir, c.run_name())
        run_grid(ccfgs, cdir, workers=workers, threads=1)
        names = {c.run_name() for c in ccfgs}
        frame = runs_frame(cdir / "metrics")
        t = ablation_table(frame[frame.run.isin(names)], dataset, cdir / "metrics", n_boot=n_boot)
        t.insert(0, "probe", name)
        parts.append(t)
    return table, (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame())
