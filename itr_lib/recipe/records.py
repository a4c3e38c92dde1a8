"""Inference records (metrics JSON + per-query tie counts, written atomically) and the recipe's table rows."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .levers import GreedyTrace, test_mr, val_mr


def write_record(path: Path, record: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    """An inference record: ``<path>.json`` (metrics, spec, costs) and ``<path>.ranks.npz`` (tie counts), atomically
    (the JSON last, so a record with a JSON is complete)."""
    from ..io import atomic_write_bytes, write_json
    import io as _io
    path.parent.mkdir(parents=True, exist_ok=True)
    if arrays:
        buf = _io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(path.parent / f"{path.name}.ranks.npz", buf.getvalue())
    write_json(path.parent / f"{path.name}.json", record)


def read_record(path: Path, key: dict | None, check_key: bool = True) -> dict | None:
    """The record at ``<path>.json`` when its ``key`` (runs, spec, split sizes) equals ``key`` (or, ``check_key``
    False, whatever its key: reading a table's own records back); else None (rebuilt)."""
    from ..io import read_json
    js = path.parent / f"{path.name}.json"
    if not js.is_file():
        return None
    rec = read_json(js)
    if not check_key:
        return rec
    return rec if json.dumps(rec.get("key"), sort_keys=True) == json.dumps(key, sort_keys=True) else None


def beta_stale(rec: dict) -> bool:
    """An inference record whose beta was chosen at the edge of its grid before grids were extended there
    (:func:`itr_lib.hubness.search_beta`): its val table has no ``added_at_edge`` column, so it is re-scored."""
    table = rec.get("beta_table")
    if not table or "added_at_edge" in table[0]:
        return False
    betas = [r["beta"] for r in table]
    chosen = [r["beta"] for r in table if r.get("chosen")]
    return len(betas) > 1 and bool(chosen) and chosen[0] in (min(betas), max(betas))


STALE_NOTE = "at the grid's edge; chosen before the extension rule, not re-chosen"


def beta_note(rec: dict) -> str:
    """How a record's beta was found on val: ``""`` (inside the grid given, or fixed), ``"grid extended to 5"``,
    ``"at the grid's edge"`` (the extensions ran out), or, for a record chosen before grids were extended and kept
    as recorded (07's ``STALE_BETA="keep"``), :data:`STALE_NOTE`."""
    table = rec.get("beta_table") or []
    added = [r["beta"] for r in table if r.get("added_at_edge")]
    if beta_stale(rec):
        return STALE_NOTE
    if any(r.get("at_grid_edge") for r in table):
        return "at the grid's edge" + (f" (extended to {', '.join(f'{b:g}' for b in added)})" if added else "")
    return f"grid extended to {', '.join(f'{b:g}' for b in added)}" if added else ""


def lever_table(rows: list[dict]) -> pd.DataFrame:
    """The lever table: one row per lever (stage, name, change), its val / test mR beside the reference's, the
    val gain (what decides), the paired bootstrap of its test rsum gain (reported, never used to choose) and whether
    the greedy rule kept it."""
    cols = ["stage", "lever", "change", "ref_val_mr", "val_mr", "val_gain", "ref_test_mr", "test_mr",
            "delta_rsum", "ci_lo", "ci_hi", "chosen", "extra_query_ms", "image_encodes_per_image", "train_min", "run"]
    df = pd.DataFrame(rows)
    for c in cols:
        if c not in df:
            df[c] = np.nan
    df["val_gain"] = (df.val_mr - df.ref_val_mr).round(2)
    return df[cols]


def _change_str(ch: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in ch.items()) or "-"


def _row(stage: str, lever: str, change: str, m: dict, ref: dict, bs: dict | None, **extra) -> dict:
    return {"stage": stage, "lever": lever, "change": change, "ref_val_mr": round(val_mr(ref), 2),
            "val_mr": round(val_mr(m), 2), "ref_test_mr": round(test_mr(ref), 2), "test_mr": round(test_mr(m), 2),
            "delta_rsum": None if bs is None else round(bs["delta_rsum"], 2),
            "ci_lo": None if bs is None else round(bs["ci_lo"], 2), "ci_hi": None if bs is None else round(bs["ci_hi"], 2),
            "train_min": round(m.get("train_seconds", 0) / 60, 1) if m.get("train_seconds") else None,
            "run": m.get("run"), **extra}


def trace_table(trace: GreedyTrace) -> pd.DataFrame:
    return pd.DataFrame(trace.steps, columns=["step", "levers", "val_mr", "test_mr", "kept", "run"])


def load_spec_hits(path: Path):
    from ..metrics import RECALL_KS
    from ..scoring import load_ties
    from ..recordio import read_ranks
    z = read_ranks(path.parent / f"{path.name}.ranks.npz", required=("i2t_above", "t2i_above"))
    return tuple(t.hits(RECALL_KS) for t in load_ties(z))


def _beta_str(rec: dict) -> str:
    """`` (beta 20)``, with how it was found on val when the grid's edge was involved (:func:`beta_note`)."""
    if not rec["spec"].get("beta"):
        return ""
    note = beta_note(rec)
    return f" (beta {rec['spec']['beta']:g}" + (f"; {note})" if note else ")")


def _spec_row(stage: str, name: str, rec: dict, ref: dict, bs: dict | None, chosen: bool = False) -> dict:
    hub = (rec.get("hubness") or {}).get("cost") or {}
    extra = max(hub.get("extra_us_per_query_i2t", 0.0), hub.get("extra_us_per_query_t2i", 0.0)) / 1000
    return {"stage": stage, "lever": name, "change": rec["spec"]["slug"] + _beta_str(rec),
            "ref_val_mr": round(ref["val"]["standard"]["mr"], 2), "val_mr": round(rec["val"]["standard"]["mr"], 2),
            "ref_test_mr": round(ref["test"]["standard"]["mr"], 2), "test_mr": round(rec["test"]["standard"]["mr"], 2),
            "delta_rsum": None if bs is None else round(bs["delta_rsum"], 2),
            "ci_lo": None if bs is None else round(bs["ci_lo"], 2), "ci_hi": None if bs is None else round(bs["ci_hi"], 2),
            "chosen": chosen, "extra_query_ms": round(extra, 4) if extra else None,
            "image_encodes_per_image": len(rec["spec"]["tta"]) * rec["spec"]["ensemble"] or rec["spec"]["ensemble"],
            "run": ",".join(rec["key"]["runs"])}


FROZEN = "frozen"  # the operating point of every final row trained on the frozen grid (:mod:`itr_lib.recipe.adapt`)


def point_label(op: str) -> str:
    """A final row's operating point in a table cell: ``frozen``, ``adapted top`` (the image top, the study's
    adapted point), ``adapted image + text top`` or ``adapted text top`` (:func:`itr_lib.recipe.adapt.operating_point`
    names the levers in full)."""
    if op == FROZEN:
        return FROZEN
    if "text top" in op:
        return "adapted image + text top" if "image top" in op else "adapted text top"
    return "adapted top"


def operating_points(final: pd.DataFrame) -> pd.Series:
    """Each final row's operating point (:data:`FROZEN` for a table written before it carried one)."""
    op = final["operating_point"] if "operating_point" in final else pd.Series(FROZEN, index=final.index)
    return op.fillna(FROZEN).astype(str)
