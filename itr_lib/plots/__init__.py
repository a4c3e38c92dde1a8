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

from .backend import DPI, SVG_HASHSALT, plt, save
from .charts import (ablation_bars, caption_stats, codebook_sweep, comparison_bars, operating_point_shift,
                     results_overview, training_curves)
from .images import (crop_region, overlay_word_map, plot_caption_word_maps, plot_codebook_usage,
                     plot_concept_patches, plot_pointing_game, plot_retrieval_examples, plot_word_maps_compare,
                     sample_grid)

__all__ = ["plt", "save", "ablation_bars", "caption_stats", "codebook_sweep", "comparison_bars",
           "operating_point_shift", "results_overview", "training_curves", "crop_region", "overlay_word_map", "plot_caption_word_maps", "plot_codebook_usage",
           "plot_concept_patches", "plot_pointing_game", "plot_retrieval_examples", "plot_word_maps_compare",
           "sample_grid"]
