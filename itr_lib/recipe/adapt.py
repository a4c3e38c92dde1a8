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

import pandas as pd

from .levers import lever_config, recipe_dir
from .records import _change_str, _row, lever_table

# (name, group, change): one group, alternatives
ADAPT_LEVERS: list[tuple[str, str, dict]] = [
    ("image top: block 20 + head (cut 19)", "image top", {"image_top_blocks": 1}),
    ("image top: last stage, blocks 15-20 + head (cut 14)", "image top", {"image_top_blocks": 6}),
]
ON = {"recipe": "the recipe without rotations", "reference": "the reference"}


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
    not recorded yet, in one forward pass per split; returns the cuts built or checked."""
    from ..features import ensure_features
    from ..runs import recorded
    mdir = recipe_dir(results_dir)
    cuts = sorted({c.image_cut for c in cfgs if c.image_cut is not None and recorded(c, mdir) is None})
    if cuts:
        ensure_features(dataset, None, data_root=data_root, root=cache_dir, progress=progress, cut=cuts)
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
        rows.append(_row(f"adapted top (alone, on {ON[on]})", name, _change_str(ch), m, ref, bs))
    return lever_table(rows).assign(chosen=False)
