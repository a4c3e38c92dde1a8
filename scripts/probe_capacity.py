"""Capacity probe for the best SelfAlign configuration: does any one of the knobs the study scaled down (joint size D,
pooling, encoder MLP, learning rate, epochs) move LCA+CRA's *val* mR enough to matter (the issue's goal: RSICD test
mR > 24.46, PIR)? One change at a time from the ablation's setting, seed 0, chosen on val; test mR is reported beside
it, not used to choose. Runs live in ``results/<profile>/probe/`` (metrics committed, checkpoints not), the table in
``results/<profile>/tables/probe_<dataset>.csv``; runs already recorded are reused.

    python scripts/probe_capacity.py --dataset rsicd --workers 2
"""
from __future__ import annotations

import argparse

from itr_lib.experiments import VARIANTS, probe_configs, probe_table
from itr_lib.io import REPO_ROOT, atomic_write_text
from itr_lib.study import run_grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="rsicd")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", default="lca+cra", choices=sorted(VARIANTS))
    ap.add_argument("--profile", default="full")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None, help="probe names to run (default: all)")
    a = ap.parse_args()
    res = REPO_ROOT / "results" / a.profile
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
