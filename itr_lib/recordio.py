"""The published record of a run, written complete or not at all and read whole or not at all.

A record is ``<results>/metrics/<run>.json`` (the metrics, what every table is built from) and
``<results>/metrics/<run>.ranks.npz`` (the per-query test ranks, what every paired comparison resamples).
:func:`publish_record` writes the ranks first and the JSON last, each by temp file + rename, so a JSON means a
complete record; :func:`record_problem` checks both before a rerun skips a run. Readers never skip a damaged file:
:func:`read_record` and :func:`read_ranks` stop with one line naming the file and the fix (a table built without a
seed would silently change a claim). Paths inside a record are relative to its results folder
(``config.run_dir`` is ``runs/<run>``), so a record means the same on any clone; :func:`run_dir_of` resolves it
and still accepts the absolute paths of older records, and :func:`relativize_records` rewrites those once.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .io import atomic_copy, read_json, write_json

RANKS = ".ranks.npz"


class RunStoreError(ValueError):
    pass


def _fix(path: Path) -> str:
    if path.name == "metrics.json":  # a run folder's own record
        return "Fix: delete it; the next run of the study scores the run's best.pt again and rewrites it"
    other = path.with_name(path.name[:-len(RANKS)] + ".json") if path.name.endswith(RANKS) else \
        path.with_name(path.stem + RANKS)
    return (f"Fix: restore it (git checkout -- {path}), or delete it and {other.name} and rerun the study, which "
            f"re-records the run (from its run folder, else by training it again)")


def read_record(path: str | Path) -> dict:
    """The record at ``path`` (a ``metrics/<run>.json`` or a run folder's ``metrics.json``), its
    ``config.run_dir`` resolved against the results folder; an unreadable file is a :class:`RunStoreError` naming
    it and the fix (never skipped)."""
    path = Path(path)
    try:
        rec = read_json(path)
    except (OSError, ValueError) as err:  # truncated, not UTF-8, unreadable
        raise RunStoreError(f"{path} cannot be read ({type(err).__name__}: {str(err)[:100]}). {_fix(path)}.") \
            from None
    if not isinstance(rec, dict):
        raise RunStoreError(f"{path} is not a run record (a JSON object with 'config' and 'test'). {_fix(path)}.")
    root = _results_dir_of(path)
    if root is not None and isinstance(rec.get("config"), dict) and rec["config"].get("run_dir"):
        rec["config"] = {**rec["config"], "run_dir": str(run_dir_of(rec, root))}
    return rec


def read_ranks(path: str | Path, required: tuple[str, ...] = ("i2t", "t2i")) -> dict[str, np.ndarray]:
    """Every array of a ranks file, read now (a damaged member fails here, not in the middle of a table) and
    without unpickling anything; an unreadable file, or one without the ``required`` arrays, is a
    :class:`RunStoreError` naming it and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the run's test ranks. {_fix(path)}.")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise RunStoreError(f"{path} is not a readable ranks file ({type(err).__name__}: {str(err)[:80]}). "
                            f"{_fix(path)}.") from None
    if not set(required) <= set(arrays):
        raise RunStoreError(f"{path} lacks the arrays {sorted(set(required) - set(arrays))} (holds "
                            f"{sorted(arrays)[:6]}). {_fix(path)}.")
    return arrays


def record_problem(json_path: str | Path) -> str | None:
    """Why the record at ``json_path`` is not complete (missing, unreadable JSON, ranks missing or unreadable),
    or None when both files are there and readable."""
    json_path = Path(json_path)
    if not json_path.is_file():
        return f"{json_path} is missing"
    try:
        read_record(json_path)
        read_ranks(json_path.with_name(json_path.stem + RANKS))
    except (RunStoreError, FileNotFoundError) as err:
        return str(err)
    return None


def publish_record(run_dir: str | Path, metrics_dir: str | Path) -> Path | None:
    """Copy a finished run's ``test_ranks.npz`` then its ``metrics.json`` into ``metrics_dir`` (each atomic; the
    JSON last, so it stands for a complete record), where the copy is missing, older or incomplete. Returns the
    record's JSON path, or None for a run that has not finished (no metrics.json)."""
    run, metrics_dir = Path(run_dir), Path(metrics_dir)
    src_json, src_ranks = run / "metrics.json", run / "test_ranks.npz"
    if not src_json.is_file():
        return None
    if not src_ranks.is_file():
        raise RunStoreError(f"{run} has a metrics.json but no test_ranks.npz, so its record would be incomplete. "
                            f"Fix: delete {src_json} and rerun the run (it scores its best.pt again).")
    dst_json, dst_ranks = metrics_dir / f"{run.name}.json", metrics_dir / f"{run.name}{RANKS}"
    stale = not dst_json.is_file() or dst_json.stat().st_mtime < src_json.stat().st_mtime or \
        record_problem(dst_json) is not None
    if stale:
        dst_json.unlink(missing_ok=True)  # from here until the JSON lands the record is absent, never half there
        atomic_copy(src_ranks, dst_ranks)
        atomic_copy(src_json, dst_json)
    return dst_json


# ----------------------------------------------------------------------------------------------- portable paths
def _results_dir_of(path: Path) -> Path | None:
    """The results folder of a record file (``<results>/metrics/<run>.json``, ``<results>/runs/<run>/metrics.json``)."""
    if path.name == "metrics.json" and path.parent.parent.name == "runs":
        return path.parent.parent.parent
    return path.parent.parent if path.parent.name == "metrics" else None


def portable_run_dir(run_dir: str | Path) -> str:
    """``run_dir`` as a record stores it: ``runs/<run>`` (relative to the results folder) for a run in a results
    folder's ``runs/``, else as given (an ad-hoc folder has no results folder to be relative to)."""
    run_dir = Path(run_dir)
    return f"runs/{run_dir.name}" if run_dir.parent.name == "runs" else str(run_dir)


def run_dir_of(rec: dict, results_dir: str | Path) -> Path:
    """The run folder of a record read from ``results_dir``: its relative ``config.run_dir`` resolved there; an
    absolute one (older records) as it was when it still exists, else ``<results_dir>/runs/<run>`` (the path of
    another machine)."""
    value = Path((rec.get("config") or {}).get("run_dir") or f"runs/{rec.get('run')}")
    if not value.is_absolute():
        return Path(results_dir) / value
    return value if value.exists() else Path(results_dir) / "runs" / value.name


def relativize_records(results_dir: str | Path) -> list[str]:
    """Rewrite every ``<results_dir>/metrics/*.json`` whose ``config.run_dir`` is absolute to ``runs/<run>``
    (one-off, for records written before paths were stored relative; nothing else in the record changes).
    Idempotent; returns the runs rewritten."""
    done = []
    for path in sorted((Path(results_dir) / "metrics").glob("*.json")):
        rec = read_json(path)
        cfg = rec.get("config") if isinstance(rec, dict) else None
        if not isinstance(cfg, dict) or not cfg.get("run_dir") or not Path(cfg["run_dir"]).is_absolute() or \
                Path(cfg["run_dir"]).parent.name != "runs":
            continue
        cfg["run_dir"] = portable_run_dir(cfg["run_dir"])
        write_json(path, rec)
        done.append(path.stem)
    return done
