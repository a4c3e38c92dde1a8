"""The backend policy and ``save`` of :mod:`itr_lib.plots` (see the package docstring); every plotting module
imports ``plt`` from here, so the policy is applied before pyplot is imported and the package's ``__init__``
imports its modules one way."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import matplotlib

if ("ipykernel" not in sys.modules and not os.environ.get("MPLBACKEND")
        and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from ..io import atomic_target  # noqa: E402

SVG_HASHSALT = "itr_lib"
DPI = 110


def save(fig, path: str | os.PathLike, dpi: int = DPI, formats: Sequence[str] = ("png", "svg"),
         close: bool = False) -> list[Path]:
    """Write ``fig`` as ``<path>.png`` and ``<path>.svg`` (a suffix on ``path`` is replaced), each through a
    temp file in the same folder and an atomic rename (:func:`itr_lib.io.atomic_target`: the permissions a plain
    write would give, nothing left behind on failure). SVG ids use a fixed hash salt and no date, so the same
    figure gives the same bytes. ``close`` closes the figure afterwards. Returns the written paths."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix.lower() in (".png", ".svg", ".pdf") else path
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    with plt.rc_context({"svg.hashsalt": SVG_HASHSALT}):
        for fmt in formats:
            out = stem.with_name(f"{stem.name}.{fmt}")
            with atomic_target(out, ".tmp") as tmp, open(tmp, "wb") as f:  # 0644 under umask 022, like a plain write
                meta = {"Date": None} if fmt in ("svg", "pdf") else {"Software": None}
                fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight", metadata=meta)
            written.append(out)
    if close:
        plt.close(fig)
    return written
