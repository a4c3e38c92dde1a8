"""Checkpoint files that load without running code: tensors plus plain JSON data, written atomically.

A ``.pt`` file is a pickle, and unpickling runs whatever callables the file names. Every checkpoint of this study
is therefore read with ``torch.load(..., weights_only=True)``, which rebuilds tensors and plain containers only and
refuses any other object before creating it. What is not a tensor (the config, the epoch, the history, the best
score) is stored as one JSON string (``meta``), so no numpy scalar, dataclass or path ever enters the pickle; the
optimiser and scheduler state dicts are tensors and numbers, the torch RNG state a byte tensor.

A file that needs more than that (a checkpoint written before this format, or a crafted file) is refused with
:class:`UntrustedCheckpointError`. Loading it anyway is an explicit opt-in, for files whose origin you trust:
``trust=True``, ``--trust-checkpoint`` on the command lines that take a checkpoint, or ``ITR_TRUST_CHECKPOINTS=1``
in the environment (the notebooks and the runner); ``python -m itr_lib.checkpoints --convert FILE`` re-saves a
trusted old file in this format once. The opt-in unpickles the whole file, so it runs any code
the file carries, with your permissions. See docs/faults.md.
"""
from __future__ import annotations

import io
import json
import logging
import os
import pickle
from pathlib import Path

import torch

from .io import atomic_write_bytes, json_default

log = logging.getLogger(__name__)

TRUST_ENV = "ITR_TRUST_CHECKPOINTS"
FORMAT = 2  # 2: tensors + a JSON 'meta' string (loads with weights_only=True); older files have no 'format'


class UntrustedCheckpointError(ValueError):
    """A checkpoint that holds Python objects beyond tensors and plain data (refused unless trusted)."""


def trusted_by_env() -> bool:
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def save(path: str | os.PathLike, tensors: dict, meta: dict) -> None:
    """Write a checkpoint to ``path`` atomically: ``tensors`` (state dicts, tensors) as they are, ``meta`` (anything
    JSON-able: config, epoch, history) as one JSON string. On any failure the temp file is removed and ``path`` is
    left as it was; a full disk raises :class:`itr_lib.io.DiskFullError` (one line: the folder, the space needed)."""
    # serialised in memory first: a full disk then fails in a plain file write, with its errno, and not inside
    # torch's zip writer (whose "unexpected pos ..." names no cause)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **tensors, "meta": json.dumps(meta, default=json_default)}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load(path: str | os.PathLike, device: str = "cpu", trust: bool | None = None) -> dict:
    """The checkpoint at ``path`` as one dict (``meta`` decoded into it). Read with ``weights_only=True``; a file
    that needs more is refused (:class:`UntrustedCheckpointError`, naming the file and the fix) unless ``trust``
    (default: ``$ITR_TRUST_CHECKPOINTS``) says its origin is trusted. Any other unreadable file: ``ValueError``."""
    path = Path(path)
    trust = trusted_by_env() if trust is None else trust
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _refusal(str(err))
        if "Unsupported global" not in detail and not _looks_pickled(path):  # a JSON, a text file, ...
            raise _unreadable(path, detail) from None
        if not trust:
            raise UntrustedCheckpointError(
                f"{path} holds Python objects beyond tensors and plain data (an old-format checkpoint, or a crafted "
                f"file), and loading it could run code stored in it: refused ({detail}). "
                f"Fix: retrain the run (python -m itr_lib.study --retrain RUN) or, only if you trust where the file "
                f"came from, load it once with {TRUST_ENV}=1 (or --trust-checkpoint / trust=True) and re-save it "
                f"with python -m itr_lib.checkpoints --convert {path}.") from None
        log.warning("%s: loading with weights_only=False because trust was given (%s / trust=True): this runs "
                    "any code the file carries", path, TRUST_ENV)
        try:
            ck = torch.load(path, map_location=device, weights_only=False)
        except Exception as err2:  # noqa: BLE001 - reported with the file
            raise _unreadable(path, f"{type(err2).__name__}: {err2}") from None
    except Exception as err:  # not a torch file (a truncated download, ...)
        raise _unreadable(path, f"{type(err).__name__}: {err}") from None
    if not isinstance(ck, dict) or "model" not in ck:
        raise ValueError(f"{path} is a torch file but not a checkpoint of this study (no field 'model'). "
                         f"Fix: pass the best.pt or last.pt written by a training run.")
    if isinstance(ck.get("meta"), str):
        try:
            meta = json.loads(ck.pop("meta"))
        except ValueError as err:
            raise _unreadable(path, f"field 'meta': {err}") from None
        ck.update(meta)
    return ck


def _looks_pickled(path: Path) -> bool:
    """Whether the file starts like a torch zip container or a pickle (PROTO opcode)."""
    with open(path, "rb") as f:
        return f.read(2) in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _refusal(message: str) -> str:
    """The one line of torch's weights-only refusal that says what was refused ("Unsupported global: GLOBAL
    builtins.exec ...", "Unsupported operand 123")."""
    tail = message.split("WeightsUnpickler error:", 1)[-1].strip()
    return tail.split("\n")[0].split(". Please")[0].strip()[:160]


def _unreadable(path: Path, detail: str) -> ValueError:
    return ValueError(f"{path} is not a readable checkpoint ({detail[:160]}). "
                      f"Fix: pass the best.pt or last.pt written by a training run.")


def convert(path: str | os.PathLike) -> Path:
    """Re-save a trusted old-format checkpoint in this format (tensors + JSON meta), in place; loads it with
    ``weights_only=False``, so run it only on files whose origin you trust. Returns the path."""
    path = Path(path)
    ck = load(path, trust=True)
    tensors = {k: v for k, v in ck.items() if k in ("model", "optimizer", "scheduler", "torch_rng")}
    meta = {k: v for k, v in ck.items() if k not in tensors and k != "format"}
    if isinstance(meta.get("config"), dict):
        meta["config"] = dict(meta["config"])
    save(path, tensors, meta)
    load(path, trust=False)  # what was written loads without trust
    return path


def main(argv=None) -> int:
    import argparse
    import sys
    p = argparse.ArgumentParser(prog="python -m itr_lib.checkpoints",
                                description="Check that checkpoints load without running code, or convert trusted "
                                            "old-format ones (which unpickles them: only for files you trust).")
    p.add_argument("paths", nargs="+", help="best.pt / last.pt files")
    p.add_argument("--convert", action="store_true", help="re-save each file in the safe format (trusts it)")
    a = p.parse_args(argv)
    rc = 0
    for path in a.paths:
        try:
            if a.convert:
                convert(path)
            else:
                load(path, trust=False)
            print(f"{path}: {'converted; ' if a.convert else ''}loads with weights_only=True")
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            rc = 2
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
