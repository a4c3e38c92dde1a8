"""Small I/O helpers: atomic writes, JSON, seeding, devices, git commit."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent


def umask_mode(base: int = 0o666) -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp's temp files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


class DiskFullError(OSError):
    """No space left (or quota exceeded) where a result was being written. Deterministic: retrying the task
    fills the same disk again, so runners must not retry it. The message is one line: the folder, the space the
    write needed and what is free; the temp file of the failed write is already removed."""

    def __init__(self, folder: str | os.PathLike, needed: int | None):
        folder = Path(folder)
        free = _free_bytes(folder)
        need = f"about {_mb(needed)}" if needed else "more space"
        fix = f"free at least {_mb(needed - free)} there" if needed and free is not None and needed > free \
            else "free space there"
        super().__init__(f"no space left in {folder}: the write needed {need}, {_mb(free)} free. Fix: {fix} "
                         f"(or move the results folder to a larger disk) and rerun; nothing was half written, and "
                         f"a training run resumes from its last.pt")
        self.errno = errno.ENOSPC
        self.folder, self.needed, self.free = folder, needed, free


def _mb(n: int | None) -> str:
    return "? MB" if n is None else f"{n / 1e6:.1f} MB"


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _write_all(f, data: bytes) -> None:
    """Write and sync ``data`` to the open file ``f`` (one place, so tests can inject a failing disk)."""
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and an atomic rename."""
    with atomic_target(path, ".tmp", len(data)) as tmp:
        with open(tmp, "wb") as f:
            _write_all(f, data)


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike, suffix: str, size: int | None = None):
    """A temp path beside ``path``; once the block succeeds it gets the umask's permissions and replaces ``path``
    in one rename, and on any error it is removed (``path`` is never half written). A full disk (ENOSPC, EDQUOT)
    becomes :class:`DiskFullError`, with ``size`` (the bytes to write, when known) as the space needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, DiskFullError) and \
                err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(path.parent, size) from None
        raise


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to ``dst`` atomically (temp file + rename; nothing left behind on failure)."""
    atomic_write_bytes(dst, Path(src).read_bytes())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_default(o: Any):
    """``json.dumps``'s ``default``: numpy scalars and arrays, paths."""
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def atomic_save_npy(path: str | os.PathLike, arr: np.ndarray) -> None:
    with atomic_target(path, ".tmp.npy", arr.nbytes) as tmp:
        np.save(tmp, arr)


def atomic_savez(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` to ``path`` atomically (the size needed is bounded by the arrays' bytes)."""
    with atomic_target(path, ".tmp.npz", sum(np.asarray(a).nbytes for a in arrays.values())) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch from one place."""
    import torch
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def resolve_device(device: str = "cpu") -> str:
    """'auto' picks CUDA when present; anything else is passed through (validated by torch)."""
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    torch.device(device)
    return device


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def progress_enabled(flag: bool | None = None) -> bool:
    """tqdm bars on unless switched off by argument or ITR_PROGRESS=0 (papermill logs every update)."""
    if flag is not None:
        return flag
    return os.environ.get("ITR_PROGRESS", "1") not in ("0", "false", "no")


def repo_path(p: str | os.PathLike) -> Path:
    """A path as given when absolute, else relative to the repository root (not to the kernel's working
    directory, which is notebooks/ under nbval and JupyterLab)."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p
