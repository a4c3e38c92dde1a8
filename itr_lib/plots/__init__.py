"""The one plotting home: a single matplotlib backend policy and a single ``save``.

Backend policy (applied on import of any ``itr_lib.plots`` module): without a display and outside a Jupyter
kernel (tests, papermill workers, servers) matplotlib is switched to Agg, unless a backend was chosen already
(``MPLBACKEND``); in a kernel the inline backend is left alone. :func:`save` writes PNG + SVG atomically with a
fixed SVG hash salt and no date, so a rerun that draws the same figure writes the same bytes.

Modules: :mod:`~itr_lib.plots.charts` (data and results charts: caption statistics, training curves, ablation
and codebook bars, results overview), :mod:`~itr_lib.plots.images` (image figures: sample grids, word -> region
maps, concept patches, retrieval examples, the pointing game), :mod:`~itr_lib.plots.efficiency` (frontier and
scaling). Every function takes plain data and returns a Figure.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import matplotlib

if ("ipykernel" not in sys.modules and not os.environ.get("MPLBACKEND")
        and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

SVG_HASHSALT = "itr_lib"
DPI = 110


def save(fig, path: str | os.PathLike, dpi: int = DPI, formats: Sequence[str] = ("png", "svg"),
         close: bool = False) -> list[Path]:
    """Write ``fig`` as ``<path>.png`` and ``<path>.svg`` (a suffix on ``path`` is replaced), each through a
    temp file in the same folder and an atomic rename. SVG ids use a fixed hash salt and no date, so the same
    figure gives the same bytes. ``close`` closes the figure afterwards. Returns the written paths."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix.lower() in (".png", ".svg", ".pdf") else path
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    with plt.rc_context({"svg.hashsalt": SVG_HASHSALT}):
        for fmt in formats:
            out = stem.with_name(f"{stem.name}.{fmt}")
            fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    meta = {"Date": None} if fmt in ("svg", "pdf") else {"Software": None}
                    fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight", metadata=meta)
                os.replace(tmp, out)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
            written.append(out)
    if close:
        plt.close(fig)
    return written


from .charts import (ablation_bars, caption_stats, codebook_sweep, comparison_bars, results_overview,  # noqa: E402
                     training_curves)
from .images import (crop_region, overlay_word_map, plot_caption_word_maps, plot_codebook_usage,  # noqa: E402
                     plot_concept_patches, plot_pointing_game, plot_retrieval_examples, plot_word_maps_compare,
                     sample_grid)

__all__ = ["plt", "save", "ablation_bars", "caption_stats", "codebook_sweep", "comparison_bars", "results_overview",
           "training_curves", "crop_region", "overlay_word_map", "plot_caption_word_maps", "plot_codebook_usage",
           "plot_concept_patches", "plot_pointing_game", "plot_retrieval_examples", "plot_word_maps_compare",
           "sample_grid"]
