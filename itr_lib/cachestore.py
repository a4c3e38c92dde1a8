"""The feature caches' store: where caches live, their sidecar check and the resumable chunked builder.

Every cache (:mod:`itr_lib.features`'s image, activation and text caches, :mod:`itr_lib.glove`'s vocabulary) is an
``.npy`` (or ``.json``) under ``<cache root>/<dataset>/`` with a JSON sidecar naming what it was built for; it is
reused only when the sidecar equals the request (:func:`cache_status`), and built chunk by chunk into a
``*.partial.npy`` whose progress survives an interruption (:func:`build_array`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .data import DataError
from .io import REPO_ROOT, progress_enabled, read_json, write_json

log = logging.getLogger("itr_lib.features")

CACHE_ENV = "ITR_CACHE_DIR"
FORMAT_VERSION = 1


class CacheError(DataError):
    """A feature cache is missing, incomplete, or was built for another request."""


def cache_root(root: str | os.PathLike | None = None) -> Path:
    """Feature cache root: argument > $ITR_CACHE_DIR > <repo>/cache/features."""
    if root is not None:
        return Path(root).expanduser().resolve()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    return REPO_ROOT / "cache" / "features"


def row_order_sha(items: list) -> str:
    return hashlib.sha256("\n".join(map(str, items)).encode()).hexdigest()


def sidecar_diff(expected: dict, found: dict) -> list[str]:
    keys = sorted(set(expected) | set(found))
    return [k for k in keys if expected.get(k) != found.get(k)]


def cache_status(npy: Path, sidecar: Path, expected: dict) -> str:
    """'ok', 'missing', or a description of why the cache does not match the request."""
    if not sidecar.is_file() or not npy.is_file():
        return "missing"
    try:
        found = read_json(sidecar)
    except ValueError:
        return f"sidecar {sidecar} is not valid JSON"
    diff = sidecar_diff(expected, found)
    if diff:
        k = diff[0]
        return f"sidecar field '{k}' is {found.get(k)!r}, the request needs {expected.get(k)!r}"
    return "ok"


def check_cache(npy: Path, sidecar: Path, expected: dict, build_hint: str) -> None:
    status = cache_status(npy, sidecar, expected)
    if status == "missing":
        raise CacheError(f"feature cache {npy} (or its sidecar {sidecar.name}) does not exist. Fix: build it "
                         f"with `{build_hint}`.")
    if status != "ok":
        raise CacheError(f"feature cache {npy} was built for another request: {status}. Fix: rebuild it with "
                         f"`{build_hint}` (a stale cache is never reused).")


def build_array(npy: Path, sidecar_path: Path, sidecar: dict, shape: tuple, dtype, n_items: int, chunk: int,
                compute: Callable[[int, int], tuple[np.ndarray, np.ndarray | slice]], desc: str,
                progress: bool | None = None) -> float:
    """Fill ``npy`` chunk by chunk; resumable. ``compute(start, stop)`` returns (rows, destination index).

    Progress lives in ``<npy>.partial.json`` next to ``<npy>.partial.npy`` and names the sidecar it was
    started for, so a partial file of another request is discarded, never continued. Returns seconds spent.
    """
    from tqdm.auto import tqdm
    partial = npy.with_name(npy.name.replace(".npy", ".partial.npy"))
    prog_path = npy.with_name(npy.name.replace(".npy", ".partial.json"))
    done = 0
    mm = None
    if partial.is_file() and prog_path.is_file():
        try:
            prog = read_json(prog_path)
            if prog.get("sidecar") == sidecar and tuple(prog.get("shape", ())) == tuple(shape):
                mm = np.lib.format.open_memmap(partial, mode="r+")
                done = int(prog["done"])
                log.info("resuming %s at %d/%d", npy.name, done, n_items)
        except (ValueError, OSError):
            mm, done = None, 0
    if mm is None:
        npy.parent.mkdir(parents=True, exist_ok=True)
        for p in (npy, sidecar_path):  # a new build invalidates what was there before it starts
            if p.exists():
                p.unlink()
        mm = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=shape)
    t0 = time.perf_counter()
    with tqdm(total=n_items, initial=done, desc=desc, disable=not progress_enabled(progress),
              mininterval=2.0) as bar:
        for start in range(done, n_items, chunk):
            stop = min(start + chunk, n_items)
            rows, dest = compute(start, stop)
            mm[dest] = rows.astype(dtype)
            mm.flush()
            write_json(prog_path, {"sidecar": sidecar, "shape": list(shape), "done": stop})
            bar.update(stop - start)
    mm.flush()
    del mm
    os.replace(partial, npy)
    write_json(sidecar_path, sidecar)  # the sidecar last: only now is the cache complete
    prog_path.unlink(missing_ok=True)
    return time.perf_counter() - t0


@dataclass
class BuildReport:
    path: Path
    built: bool
    seconds: float
    items: int
    also: list = field(default_factory=list)  # reports of caches filled by the same pass (also_cuts)
