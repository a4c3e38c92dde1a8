"""Efficiency of every method of the study: per-query cost, memory per gallery item, the hardware floor,
scaling with the gallery size, and the accuracy / latency frontier (notebook ``04_efficiency``).

What is timed (``measure_method``), per query, median over ``repeats`` after ``warmup`` untimed runs:

- **encode**: the trainable query encoder on the cached frozen features (``model.encode_texts`` /
  ``encode_images``, plus the retrieval vector). The frozen backbones (MiniLM, EfficientNet-Lite2) are NOT
  included: they cost the same for every method (see ``results/benchmarks/feature_extraction.csv``).
  Fetching the query's cached features is done before the clock starts.
- **search**: ``vector`` mode (independent embeddings, TGDT global, ALADIN student): a faiss exact flat
  inner-product search over the gallery's retrieval vectors (top ``k``). ``two_stage``: the same global search
  for a shortlist of ``k_t2i`` images / ``k_i2t`` captions. ``exhaustive``: the full score of the query against
  every gallery item (``model.rescore_similarity`` when the model has it, e.g. ALADIN's alignment teacher,
  otherwise ``model.similarity``) and a top-``k``.
- **rerank** (``two_stage`` only): gather the shortlist's stored features, re-score them
  (``model.rescore_pairs``), sort.

The gallery is encoded once beforehand (offline, not counted). Times are taken at batch 1 and for a batch of
queries (reported per query). Cross-attention (or any exhaustive) search may be timed against the first
``exhaustive_subset`` gallery items and scaled linearly to the whole gallery (column ``extrapolated_from``).

Memory per gallery item (``bytes_per_item``): what a deployment keeps for each gallery item, float32 as stored:
one retrieval vector (4 * dim bytes) for vector search; every valid region / word feature for fine-grained scoring
(4 * 49 * dim for a 7x7-region image), plus the global vector for TGDT. Masks (one length per item) are ignored.

The floor (:mod:`.hardware`): bytes read / the read bandwidth of a streaming reduction over an array of the same
size (a gallery in cache is held to the cache's bandwidth, a large one to DRAM's; one thread for batch 1, all threads
for a batch), or FLOPs / the float32 GEMM rate, whichever is larger: ``max(B / bandwidth(B) / q, F / rate)`` per
query for ``q`` queries sharing one pass. Exact flat search: ``B = 4 N d``, ``F = 2 N d``; IVF / HNSW: the vectors
the search compared (faiss's statistics) instead of ``N``. Every measured search is reported as a multiple of its
floor, and ``check_targets`` reports any that ran below it.

Scaling (``scaling_study``): galleries from ``min`` to ``max`` items grown from the real test embeddings: the first
``n0`` rows are the real vectors, every further row a copy of real row ``j % n0`` plus Gaussian noise of norm
about ``noise`` times the vector's norm, rescaled to that norm (:func:`grow_gallery`). Queries are real caption
vectors (text-to-image). Latency of faiss flat / IVF / HNSW and recall@10 of the approximate indexes against
exact search; fine-grained two-stage and exhaustive scoring on galleries that repeat the real test gallery
(every copy is scored, none skipped). Each series stops when the next size is predicted to exceed its time
budget; the remaining sizes are extrapolated with the log-log slope fitted to the last measured points
(``extrapolated=True``).

Modules (one concern each; imports run one way, leaves first): :mod:`.specs` (the methods), :mod:`.hardware`
(bandwidth, GEMM rate, floors), :mod:`.memory` (bytes per item), :mod:`.timing` (phase timers), :mod:`.gallery`
(grown galleries), :mod:`.series` (sizes, budgets, extrapolation), :mod:`.pareto`, :mod:`.synthetic` (the fitted
synthetic
gallery), :mod:`.indexes` (faiss indexes, their floors and tuning); then :mod:`.methods` (per-query
cost of one method), :mod:`.benchmark` (a dataset's table), :mod:`.scaling` (``scaling.csv``), :mod:`.targets` and
:mod:`.query_cost` (encode vs search by gallery size); :mod:`.streamed` (a size past memory: IVF-PQ at 10M items,
streamed in chunks, before :mod:`.scaling`); :mod:`.merge` (some methods re-timed, their rows merged into the
recorded tables); :mod:`.atscale` (one large size, no checkpoint) is a CLI.
Figures are in :mod:`itr_lib.plots.efficiency`. Everything notebooks and tests use is re-exported here.
"""
from __future__ import annotations

from ..runs import find_runs, mode_mr, select_runs
from .benchmark import (TABLE_COLUMNS, TRAINED, UNTRAINED, DatasetResult, benchmark_dataset, evaluate_modes,
                        load_run_model, load_test_split, real_image_vectors, speedup_table, untrained_run_model,
                        with_settings)
from .gallery import FINE_GALLERY_METHOD, SCALING_GALLERY_METHOD, GrowingGallery, grow_gallery
from .hardware import (ensure_read_bandwidth, flat_floor_ms, measure_hardware, measure_read_bandwidth, read_bandwidth,
                       roofline_ms, set_threads)
from .memory import _local_stats, bytes_per_item
from .merge import merge_efficiency, merge_rows, select_methods
from .methods import _rescore_topk, _score_fn, _search_floor, _take, _to, encode_gallery, measure_method
from .pareto import pareto_front
from .indexes import (KINDS, build_faiss, index_bytes_per_item, index_floor_ms, make_index, recall_at_k, search_work,
                      sweep_table, time_index, train_items, tune_search_param)
from .query_cost import minilm_ms_per_caption, query_side_table
from .scaling import (FINE_SERIES, VECTOR_SEED_ORDER, fine_series_measure, index_series_measure, scaling_entries,
                      scaling_study)
from .series import extrapolate, fit_loglog, run_series, scaling_sizes
from .specs import DIRECTIONS, METHODS, MODES, STUDY, MethodSpec, spec_by_label
from .streamed import (STREAMABLE, KnnMerge, build_streamed, check_streamed_memory, chunked_knn, flat_extrapolated,
                       streamed_index_measure)
from .synthetic import EmbeddingMixture, SyntheticGallery, nn_distance_check, nn_distances
from .targets import check_targets, format_targets, primary_gallery
from .timing import _median_ms, _sync, time_phases

__all__ = ["MethodSpec", "METHODS", "MODES", "DIRECTIONS", "spec_by_label", "measure_hardware", "roofline_ms",
           "flat_floor_ms", "bytes_per_item", "measure_method", "encode_gallery", "find_runs", "select_runs",
           "mode_mr", "benchmark_dataset", "evaluate_modes", "load_run_model", "load_test_split", "speedup_table",
           "TABLE_COLUMNS", "pareto_front", "scaling_sizes", "grow_gallery", "GrowingGallery", "fit_loglog",
           "extrapolate", "run_series", "build_faiss", "index_series_measure", "fine_series_measure",
           "scaling_study", "check_targets", "format_targets", "set_threads", "time_phases", "scaling_entries",
           "DatasetResult", "SCALING_GALLERY_METHOD", "FINE_GALLERY_METHOD", "VECTOR_SEED_ORDER", "FINE_SERIES",
           "real_image_vectors", "EmbeddingMixture", "SyntheticGallery", "nn_distance_check", "nn_distances",
           "primary_gallery", "ensure_read_bandwidth", "read_bandwidth", "measure_read_bandwidth", "KINDS",
           "index_bytes_per_item", "index_floor_ms", "recall_at_k", "search_work", "tune_search_param", "sweep_table",
           "minilm_ms_per_caption", "query_side_table", "with_settings", "untrained_run_model", "TRAINED",
           "UNTRAINED", "STUDY", "make_index", "time_index", "train_items", "STREAMABLE", "KnnMerge", "chunked_knn",
           "build_streamed", "check_streamed_memory", "streamed_index_measure", "flat_extrapolated",
           "select_methods", "merge_rows", "merge_efficiency"]
