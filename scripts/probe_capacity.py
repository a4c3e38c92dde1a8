"""Capacity probe for the best SelfAlign configuration: does any one of the knobs the study scaled down (joint size D,
pooling, encoder MLP, learning rate, epochs) move LCA+CRA's *val* mR enough to matter (the issue's goal: RSICD test
mR > 24.46, PIR)? One change at a time from the ablation's setting, then (second round, greedy) the next-best knobs on
top of the first round's winner; seed 0, chosen on val; test mR is reported beside it, not used to choose. Runs live in ``results/<profile>/probe/`` (metrics committed, checkpoints not), the table in
``results/<profile>/tables/probe_<dataset>.csv``; runs already recorded are reused.

    python scripts/probe_capacity.py --dataset rsicd --workers 2
    python scripts/probe_capacity.py --dataset rsicd --confirm chosen --seeds 0 1 2     # or --confirm "<probe name>"

``--confirm NAME`` follows up the probe chosen on val: the variant and the baseline, both with that change, over
``--seeds``, in ``results/<profile>/probe/confirm-<slug>/``; the ablation table of those runs (mean +- std, paired
bootstrap rsum gain over the baseline of the same capacity) of every follow-up done so far goes to
``tables/probe_confirm_<dataset>.csv``.
"""
from __future__ import annotations

import argparse

import re
import shutil

import pandas as pd

from itr_lib.experiments import (PROBES, VARIANTS, ablation_table, probe_configs, probe_confirm_configs, probe_table,
                                 runs_frame)
from itr_lib.io import REPO_ROOT, atomic_write_text
from itr_lib.study import run_grid


def _slug(probe: str) -> str:
    """The follow-up folder of a probe: 'D = 1024 (authors)' -> 'confirm-d-1024-authors'."""
    return "confirm-" + re.sub(r"[^a-z0-9]+", "-", probe.lower()).strip("-")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="rsicd")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", default="lca+cra", choices=sorted(VARIANTS))
    ap.add_argument("--profile", default="full")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None, help="probe names to run (default: all)")
    ap.add_argument("--confirm", default=None, choices=[n for n, _ in PROBES] + ["chosen"],
                    help="train this probe's change over --seeds, with its baseline ('chosen': the probe table's "
                         "choice on val)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    a = ap.parse_args()
    res = REPO_ROOT / "results" / a.profile
    if a.confirm == "chosen":
        table = res / "tables" / f"probe_{a.dataset}.csv"
        if not table.is_file():
            raise SystemExit(f"{table} not found. Fix: run the probe first (without --confirm).")
        t = pd.read_csv(table)
        a.confirm = t.loc[t.val_mr.idxmax(), "probe"]
        print("chosen on val:", a.confirm)
    if a.confirm:
        cdir = res / "probe" / _slug(a.confirm)
        cfgs = probe_confirm_configs(a.dataset, a.seeds, a.variant, a.confirm)
        (cdir / "metrics").mkdir(parents=True, exist_ok=True)
        for c in cfgs:  # the probe's own run of this config (same name, same identity) is reused, not retrained
            for suffix in (".json", ".ranks.npz"):
                src, dst = res / "probe" / "metrics" / f"{c.run_name()}{suffix}", cdir / "metrics" / f"{c.run_name()}{suffix}"
                if src.is_file() and not dst.is_file():
                    tmp = dst.with_name(f".{dst.name}.tmp")
                    shutil.copyfile(src, tmp)
                    tmp.replace(dst)  # atomic: an interrupted copy never looks like a recorded run
        run_grid(cfgs, cdir, workers=a.workers, threads=1)
        parts = []  # every follow-up done so far (one folder each), in probe order
        for name, _ in PROBES:
            d = res / "probe" / _slug(name)
            if (d / "metrics").is_dir():
                t = ablation_table(runs_frame(d / "metrics"), a.dataset, d / "metrics")
                t.insert(0, "probe", name)
                parts.append(t)
        df = pd.concat(parts, ignore_index=True)
        out = res / "tables" / f"probe_confirm_{a.dataset}.csv"
        atomic_write_text(out, df.to_csv(index=False))
        print(df.to_string(index=False))
        print("->", out)
        return
    cfgs = probe_configs(a.dataset, a.seed, a.variant, a.only)
    metrics = run_grid([c for _, _, c in cfgs], res / "probe", workers=a.workers, threads=1)
    df = probe_table([(n, ch, m) for (n, ch, _), m in zip(cfgs, metrics)])
    out = res / "tables" / f"probe_{a.dataset}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, df.to_csv(index=False))
    print(df.to_string(index=False))
    print("->", out)


if __name__ == "__main__":
    main()
