"""What a study needs before it starts: parameter values in range, datasets that exist, and the frozen feature
caches, built where missing, as 00_data_prep does.

A fresh clone has no caches. Every path that trains (a notebook's :func:`itr_lib.runs.run_grid`, the study runner's
``--only 01`` or ``--retrain``) calls :func:`ensure_caches` first: a cache that exists and matches its sidecar is
reused (a quick check), a missing one is built with a progress bar and one line saying so, and a dataset the data
root lacks is one :class:`~itr_lib.data.DataError` naming it and the fix.
"""
from __future__ import annotations

from pathlib import Path

from . import dihedral
from .data import load_dataset

# per notebook (its number), the parameters naming datasets it loads from the data root and trains or scores on (their
# feature caches must exist); 04, 05 and 06 find their datasets through the recorded runs' configs instead
DATASET_PARAMETERS = {"00": ("DATASET",), "01": ("DATASET",), "03": ("DATASET",),
                      "02": ("DATASETS", "COMPARISON_DATASETS", "LOSS_ABLATION_DATASETS", "PROBE_DATASETS"),
                      "07": ("LEVER_DATASET", "FINAL_DATASETS")}


# notebooks whose caches the runner builds up front; 02 and 07 train through runs.run_grid, which builds the caches of
# the runs it must train (none where every run is recorded: their tables rebuild from the records without caches)
PREBUILT = ("01", "03")


def datasets_named(notebook: Path, params: dict) -> list[str]:
    """The datasets a notebook execution loads from the data root (:data:`DATASET_PARAMETERS`)."""
    out = []
    for name in DATASET_PARAMETERS.get(notebook.name[:2], ()):
        value = params.get(name)
        out += [value] if isinstance(value, str) else list(value or [])
    return out


def missing_caches(dataset: str, data_root=None, cache_dir=None, transforms=(dihedral.IDENTITY,)) -> list[str]:
    """The caches of ``dataset`` that are missing or do not match their request (one entry per cache file):
    image (every split, and the train split once per extra transform) and text."""
    from .features import (TEXT_MAX_LEN, _image_tag, _paths, cache_status, image_sidecar, text_sidecar)
    ds = load_dataset(dataset, data_root)
    out = []
    for split in ds.split_names:
        sp = ds.split(split)
        for t in transforms if split == "train" else (dihedral.IDENTITY,):
            npy, side = _paths(ds.name, split, "image", _image_tag("efficientnet-lite2", 224, t), cache_dir)
            if cache_status(npy, side, image_sidecar(ds, sp, "efficientnet-lite2", 224, t)) != "ok":
                out.append(str(npy))
        npy, side = _paths(ds.name, split, "text", f"minilm-{TEXT_MAX_LEN}", cache_dir)
        if cache_status(npy, side, text_sidecar(ds, sp, TEXT_MAX_LEN)) != "ok":
            out.append(str(npy))
    return out


def ensure_caches(dataset: str, data_root=None, cache_dir=None, transforms=(dihedral.IDENTITY,),
                  progress: bool | None = None, say=print) -> int:
    """Build the missing caches of ``dataset`` (:func:`missing_caches`) with progress bars, saying so in one line
    first; returns how many were missing (0: nothing to do, nothing printed)."""
    from .features import cache_root, ensure_features
    missing = missing_caches(dataset, data_root, cache_dir, transforms)
    if missing:
        say(f"feature caches of {dataset}: {len(missing)} missing under {cache_root(cache_dir) / Path(dataset).stem}"
            f"; building them (as 00_data_prep does; minutes on a CPU)")
        ensure_features(dataset, data_root=data_root, root=cache_dir, progress=progress, benchmark=False)
        extra = [t for t in transforms if t != dihedral.IDENTITY]
        if extra:
            ensure_features(dataset, ["train"], data_root=data_root, root=cache_dir, progress=progress,
                            benchmark=False, transforms=extra)
    return len(missing)


def ensure_run_caches(configs, progress: bool | None = None, say=print) -> None:
    """:func:`ensure_caches` for every dataset / data root / cache the ``configs`` (TrainConfigs) train on."""
    needs: dict[tuple, set] = {}
    for cfg in configs:
        key = (cfg.dataset, cfg.data_root, cfg.cache_dir)
        needs.setdefault(key, {dihedral.IDENTITY}).update(cfg.image_transforms or ())
    for (dataset, data_root, cache_dir), transforms in needs.items():
        ensure_caches(dataset, data_root, cache_dir, tuple(sorted(transforms)), progress, say)


# ----------------------------------------------------------------------------------------------- the runner's checks
def value_problems(todo: list[dict]) -> str:
    """What the study runner refuses before anything starts (``""``: nothing): parameter values outside their range
    (:data:`itr_lib.params.RANGES`; the TrainConfig fields of ``OVERRIDES`` / ``COMPARISON_OVERRIDES``:
    :data:`itr_lib.config.FIELD_RANGES`) and datasets the data root lacks, in one line naming each parameter, its
    value and what is allowed. ``todo``: the runner's executions (``notebook`` path and ``parameters``)."""
    from .config import FIELD_RANGES
    from .data import DataError, resolve_json
    from .io import repo_path
    from .params import range_errors
    found: dict[tuple[str, str], list[str]] = {}  # (what, why) -> the notebooks it concerns
    for t in todo:
        params, where = t["parameters"], t["notebook"].stem
        bad = [tuple(line.split(": ", 1)) for line in range_errors(params)]
        for name in ("OVERRIDES", "COMPARISON_OVERRIDES"):
            for key, value in (params.get(name) or {}).items():
                if key in FIELD_RANGES and not FIELD_RANGES[key][0](value):
                    bad.append((f"{name}.{key} = {value!r}", f"must be {FIELD_RANGES[key][1]}"))
        root = repo_path(params["DATA_ROOT"]) if params.get("DATA_ROOT") else None
        for ds in datasets_named(t["notebook"], params):
            try:
                resolve_json(ds, root)
            except DataError as err:
                bad.append((f"dataset {ds!r}", str(err).rstrip(".")))
        for key in bad:
            found.setdefault(key, []).append(where)
    if not found:
        return ""
    ranges = any(why.startswith("must be") for _, why in found)
    return ("; ".join(f"{what} ({', '.join(dict.fromkeys(nbs))}): {why}" for (what, why), nbs in found.items())
            + (". Fix: pass allowed values (-p NAME VALUE, or the profile)" if ranges else "")
            + "; nothing was started.")


def build_missing_caches(todo: list[dict], say=print) -> None:
    """Build, here and with progress, the feature caches the selected notebooks of :data:`PREBUILT` need that are
    missing (a fresh clone running ``--only 01``), as 00_data_prep does; datasets a selected 00_data_prep builds are
    left to it."""
    from .io import repo_path

    def where(p: dict) -> tuple:
        return p.get("DATA_ROOT") or "", p.get("CACHE_DIR") or ""
    prepped = {(t["parameters"].get("DATASET"), *where(t["parameters"])) for t in todo
               if t["notebook"].name.startswith("00_") and t["parameters"].get("BUILD_FEATURES", True)}
    seen = set(prepped)
    for t in todo:
        p = t["parameters"]
        if not t["notebook"].name.startswith(PREBUILT):
            continue
        for ds in datasets_named(t["notebook"], p):
            if (ds, *where(p)) in seen:
                continue
            seen.add((ds, *where(p)))
            root, cache = where(p)
            ensure_caches(ds, repo_path(root) if root else None, repo_path(cache) if cache else None, say=say)
