"""Re-time some of 04's methods (its ``METHODS`` parameter) and merge their rows into the recorded efficiency tables.

A full 04 run times every method of :data:`~.specs.METHODS` (about 1.5 hours on the full profile). When a method is
added or re-trained, only its rows need timing: :func:`select_methods` checks the labels before anything is timed,
and :func:`merge_efficiency` writes the timed rows into ``efficiency_<dataset>.csv`` / ``_detail.csv`` of the
results folder: the rows of a re-timed ``method`` are replaced where they stand, the other rows are kept in their
order and byte for byte (the merge works on the CSV text, so no number is re-parsed and re-printed), a method new to
the table goes where :data:`~.specs.METHODS` puts it. The Markdown copies are re-rendered from the merged CSV.

A new row's speed-up over the interactive reference (SCAN) is taken against the reference row already in the table,
so the reference itself is only re-timed with every method (its time is every row's denominator). Rows timed on
another CPU than the recorded ``efficiency_hardware.json`` names say so in their ``device`` column, and the frontier
marks them."""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..io import atomic_write_text, read_json
from ..tables import CSV_FLOAT_FORMAT, write_markdown
from .specs import METHODS, MethodSpec

ORDER = tuple(s.label for s in METHODS)
SPEEDUPS = (("speedup_vs_interactive", "ms_per_query"), ("speedup_vs_interactive_t2i", "ms_per_query_t2i"),
            ("speedup_vs_interactive_i2t", "ms_per_query_i2t"))


def select_methods(labels: Sequence[str], parameter: str = "METHODS") -> tuple[MethodSpec, ...]:
    """The specs of ``labels`` in :data:`~.specs.METHODS` order (empty: every method). An unknown label, or the
    interactive reference without every other method, is a ``ValueError`` naming the parameter and the fix."""
    if not labels:
        return METHODS
    unknown = [lab for lab in labels if lab not in ORDER]
    if unknown:
        raise ValueError(f"{parameter}: unknown method label(s) {unknown}; the labels are {list(ORDER)} "
                         f"(itr_lib/efficiency/specs.py METHODS). Fix: use one of them, or [] for every method.")
    chosen = tuple(s for s in METHODS if s.label in set(labels))
    ref = [s.label for s in chosen if s.interactive]
    if ref and len(chosen) < len(METHODS):
        raise ValueError(f"{parameter}: {ref[0]!r} is the interactive reference, the denominator of every row's "
                         f"speed-up, so re-timing it alone would leave the other rows' speed-ups stale. Fix: drop it "
                         f"from {parameter}, or set {parameter}: [] to time every method.")
    return chosen


def merge_rows(old: pd.DataFrame, new: pd.DataFrame, order: Sequence[str] = ORDER) -> pd.DataFrame:
    """``old`` with the rows of every ``method`` of ``new`` replaced by ``new``'s rows (as a block, where the old
    block stood); the other old rows kept in their order; a method absent from ``old`` inserted after the last block
    that precedes it in ``order`` (a label not in ``order`` sorts last). Column union: ``old``'s columns first."""
    rank = {lab: i for i, lab in enumerate(order)}
    fresh = {m: new[new.method == m] for m in dict.fromkeys(new.method)}
    blocks = [(m, fresh.pop(m) if m in fresh else old[old.method == m]) for m in dict.fromkeys(old.method)]
    for m, block in fresh.items():
        r = rank.get(m, len(order))
        at = max((i + 1 for i, (om, _) in enumerate(blocks) if rank.get(om, len(order)) <= r), default=0)
        blocks.insert(at, (m, block))
    columns = list(old.columns) + [c for c in new.columns if c not in set(old.columns)]
    if not blocks:
        return pd.DataFrame(columns=columns)
    return pd.concat([b for _, b in blocks], ignore_index=True).reindex(columns=columns)


def with_speedups(new: pd.DataFrame, old: pd.DataFrame) -> pd.DataFrame:
    """``new``'s speed-up columns against the interactive reference row of ``old`` (``new``'s own when it has it,
    which :func:`~.benchmark.benchmark_dataset` already filled in)."""
    refs = [s.label for s in METHODS if s.interactive]
    if new.empty or new.method.isin(refs).any() or old.empty:
        return new
    ref = old[old.method.isin(refs)]
    if ref.empty:
        return new
    out = new.copy()
    for col, ms in SPEEDUPS:
        if ms in ref and ms in out:
            out[col] = float(ref[ms].iloc[0]) / out[ms].astype(float)
    return out


def _text_frame(text: str) -> pd.DataFrame:
    """A CSV as strings, exactly as written (no value parsed: empty stays empty)."""
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)


def merge_csv(path: str | Path, new: pd.DataFrame, order: Sequence[str] = ORDER) -> str:
    """The text of ``path`` (a table CSV; missing: none) with ``new``'s rows merged in (:func:`merge_rows`),
    ``new`` printed as :func:`itr_lib.tables.write_table` prints it. Untouched rows keep their bytes when the
    columns agree."""
    buf = io.StringIO()
    new.to_csv(buf, index=False, float_format=CSV_FLOAT_FORMAT)
    new_text = _text_frame(buf.getvalue())
    path = Path(path)
    old_text = _text_frame(path.read_text()) if path.is_file() else pd.DataFrame(columns=new_text.columns)
    if "method" not in old_text:
        raise ValueError(f"{path}: no 'method' column, so its rows cannot be matched to the re-timed methods. Fix: "
                         f"rerun 04_efficiency with METHODS: [] to rewrite it.")
    merged = merge_rows(old_text, new_text, order).fillna("")
    out = io.StringIO()
    merged.to_csv(out, index=False, quoting=csv.QUOTE_MINIMAL)
    return out.getvalue()


def on_this_machine(frame: pd.DataFrame, hw: dict | None, recorded: dict | None) -> pd.DataFrame:
    """``frame`` with its ``device`` naming this machine's CPU (``cpu (Intel Xeon ...)``) when the recorded hardware
    (``efficiency_hardware.json`` of the rows kept) names another CPU: the merged rows then say they were timed
    elsewhere, and :func:`itr_lib.plots.efficiency.frontier_figure` marks them."""
    here, there = (hw or {}).get("cpu"), (recorded or {}).get("cpu")
    if not here or not there or here == there or frame.empty or "device" not in frame:
        return frame
    out = frame.copy()
    out["device"] = [f"{d} ({here})" for d in out.device]
    return out


def merge_efficiency(tables_dir: str | Path, dataset: str, table: pd.DataFrame, detail: pd.DataFrame,
                     floatfmt: str = ".4g", hw: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge re-timed rows (``table``, ``detail`` of :func:`~.benchmark.benchmark_dataset`) into
    ``<tables_dir>/efficiency_<dataset>.csv`` and ``_detail.csv`` (atomic writes), re-render both ``.md``, and
    return the merged tables (as read back from the written CSVs). ``hw``: the hardware measured for the timed rows
    (:func:`~.hardware.measure_hardware`); when ``<tables_dir>/efficiency_hardware.json`` names another CPU, the
    timed rows' ``device`` names this one (:func:`on_this_machine`)."""
    tables_dir = Path(tables_dir)
    hw_path = tables_dir / "efficiency_hardware.json"
    recorded = read_json(hw_path) if hw_path.is_file() else None
    table, detail = on_this_machine(table, hw, recorded), on_this_machine(detail, hw, recorded)
    main = tables_dir / f"efficiency_{dataset}.csv"
    old = pd.read_csv(main) if main.is_file() else pd.DataFrame()
    merged = []
    for name, rows in ((f"efficiency_{dataset}", with_speedups(table, old)),
                       (f"efficiency_{dataset}_detail", detail)):
        text = merge_csv(tables_dir / f"{name}.csv", rows)
        atomic_write_text(tables_dir / f"{name}.csv", text)
        frame = pd.read_csv(io.StringIO(text))
        write_markdown(frame, name, tables_dir, floatfmt=floatfmt)
        merged.append(frame)
    return merged[0], merged[1]
