"""Notebook parameters that fail fast, whoever executes the notebook (the study runner, papermill by hand,
JupyterLab).

papermill only warns about a parameter the notebook does not declare and runs on with the default, so a
misspelled ``-p EPOCH 1`` trains with the default ``EPOCHS``. Every notebook of the study therefore:

1. ends its imports cell with ``guard = params.Guard(globals())`` (the names defined before the parameters);
2. declares its parameters with annotations in the cell tagged ``parameters`` (``EPOCHS: int = 2  # ...``);
   papermill injects its overrides as plain assignments in the next cell;
3. calls ``guard.check(globals())`` first thing after: every name defined since the guard must be an annotated
   parameter (an injected name without an annotation is unknown: an error naming it and the declared ones), and
   every parameter's value must have its annotated type (an int where a float is declared is accepted) and lie
   in its allowed range (:data:`RANGES`: ``EPOCHS >= 1``, seeds non-negative, ...). The study runner checks the
   same ranges before it starts anything (:func:`range_errors`).
"""
from __future__ import annotations

import difflib

_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": list, "dict": dict}


class ParameterError(ValueError):
    pass


class Guard:
    def __init__(self, namespace: dict):
        self.before = set(namespace)

    def check(self, namespace: dict) -> dict:
        """Raise :class:`ParameterError` for unknown or ill-typed parameters; returns the parameters' values."""
        declared = dict(namespace.get("__annotations__", {}))
        new = set(namespace) - self.before - {"guard", "__annotations__"}
        unknown = sorted(n for n in new if n not in declared and not n.startswith("_"))
        if unknown:
            hints = [f"{n} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(n, declared, 1)) else n
                     for n in unknown]
            raise ParameterError(f"unknown notebook parameter(s) {', '.join(hints)}; this notebook takes "
                                 f"{sorted(declared)}. Fix: correct the name (papermill -p NAME VALUE).")
        bad = []
        for name, ann in declared.items():
            want = _TYPES.get(ann if isinstance(ann, str) else getattr(ann, "__name__", ""))
            value = namespace.get(name)
            if want is None or value is None:
                continue
            if isinstance(value, bool) and want in (int, (int, float)):  # bool is an int subclass: not a number here
                bad.append((name, ann, value))
            elif not isinstance(value, want):
                bad.append((name, ann, value))
        if bad:
            desc = "; ".join(f"{n} is declared {a if isinstance(a, str) else a.__name__} but got {v!r}"
                             for n, a, v in bad)
            raise ParameterError(f"ill-typed notebook parameter(s): {desc}. Fix: pass a value of the declared type.")
        out_of_range = range_errors({n: namespace.get(n) for n in declared})
        if out_of_range:
            raise ParameterError(f"notebook parameter(s) out of range: {'; '.join(out_of_range)}. Fix: pass an "
                                 f"allowed value.")
        return {n: namespace[n] for n in declared if n in namespace}


# ----------------------------------------------------------------------------------------------- value ranges
def _int_at_least(lo: int):
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo), f"an integer >= {lo}"


def _ints_at_least(lo: int):
    return (lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= lo
                                                  for x in v)), f"a list of integers >= {lo}"


def _positive_number():
    return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0), "a number > 0"


def _fraction():
    return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1), "a number in [0, 1]"


# the allowed values of the study's notebook parameters (a name a notebook declares is checked wherever it appears)
RANGES = {
    **{n: _int_at_least(1) for n in ("EPOCHS", "BATCH_SIZE", "DIM", "N_BOOT", "K", "REPEATS", "WORKERS", "NPROBE",
                                     "MIN_GALLERY", "MAX_GALLERY", "RECALL_QUERIES", "N_MOSAICS", "EF_SEARCH",
                                     "HNSW_M", "GEMM_N", "SIZES_PER_DECADE", "BANDWIDTH_MB")},
    **{n: _int_at_least(0) for n in ("SEED", "SWEEP_EPOCHS", "THREADS", "MAX_TRAIN_IMAGES", "VAL_IMAGES_PER_EPOCH",
                                     "CODEBOOK_SIZE", "N_SAMPLES", "BANK_SIZE", "INTERACTIVE_SUBSET", "WARMUP",
                                     "HUGE_GALLERY", "HUGE_NLIST", "N_CONCEPTS", "N_QUERIES", "N_WORD_EXAMPLES")},
    **{n: _ints_at_least(0) for n in ("SEEDS", "SWEEP_SEEDS", "COMPARISON_SEEDS", "AUTHORS_SEEDS",
                                      "LOSS_ABLATION_SEEDS", "LOSS_SEEDS", "PROBE_CONFIRM_SEEDS")},
    "CODEBOOK_SIZES": _ints_at_least(1),
    "LENGTH_BUCKETS_METHODS": ((lambda v: isinstance(v, list) and all(x in ("tgdt", "aladin") for x in v)),
                               'a list of "tgdt" / "aladin" (the methods with a text transformer)'),
    "SCORE_PRECISION_METHODS": ((lambda v: isinstance(v, list) and all(x in ("scan", "mrsw", "tgdt") for x in v)),
                                'a list of "scan" / "mrsw" / "tgdt" (the methods with an MrSw / SCAN score matmul)'),
    "TOP_PRECISION": ((lambda v: v in ("fp32", "bf16")), '"fp32" or "bf16" (TrainConfig.top_precision)'),
    "LR": _positive_number(), "SCALING_BUDGET_S": _positive_number(), "MAX_MEASURE_S": _positive_number(),
    "TARGET_RECALL": _fraction(),
    "BETAS": ((lambda v: isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                      and x > 0 for x in v)), "a list of numbers > 0"),
    "STALE_BETA": ((lambda v: v in ("rescore", "keep")), '"rescore" or "keep"'),
    # 04's METHODS: labels of itr_lib/efficiency/specs.py (the notebook checks them by name before timing anything:
    # efficiency.select_methods; importing the efficiency package here would make an import circle)
    "METHODS": ((lambda v: isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v)),
                "a list of method labels of itr_lib/efficiency/specs.py METHODS ([] for every method)"),
    "DEVICE": ((lambda v: isinstance(v, str) and (v in ("cpu", "auto") or v.split(":")[0] == "cuda")),
               '"cpu", "cuda" (or "cuda:N") or "auto"'),
}


def _method_rule():
    """METHOD: a registered model (:data:`itr_lib.models.BUILDERS`, read when checked, so a method registered as
    docs/extending.md says is accepted)."""
    from .models import BUILDERS, _load_plugins
    _load_plugins()
    known = sorted(BUILDERS)
    return (lambda v: v in known), "one of " + " | ".join(known)


def _field_rule(field: str):
    """A notebook parameter that sets one TrainConfig field: that field's rule (:mod:`itr_lib.config`)."""
    from .config import FIELD_RANGES
    return FIELD_RANGES[field]


def _variants_rule():
    """TOP_PRECISION_METHODS: a list of the study's variants (:data:`itr_lib.experiments.METHOD_VARIANTS`)."""
    from .experiments import METHOD_VARIANTS
    known = sorted(METHOD_VARIANTS)
    return (lambda v: isinstance(v, list) and all(x in known for x in v)), "a list of " + " / ".join(known)


# parameters whose allowed values live elsewhere (read when checked)
LATE_RULES = {"METHOD": _method_rule, "BASE_LOSS": lambda: _field_rule("base_loss"),
              "TEXT_ENCODER": lambda: _field_rule("text_encoder"), "TOP_PRECISION_METHODS": _variants_rule}


def range_errors(values: dict) -> list[str]:
    """One line per value outside its allowed range (:data:`RANGES`, :data:`LATE_RULES`): ``EPOCHS = -1: must be an
    integer >= 1``, ``METHOD = 'nosuch': must be one of aladin | baseline | ...``."""
    bad = []
    for name, value in values.items():
        rule = RANGES.get(name) or (LATE_RULES[name]() if name in LATE_RULES else None)
        if rule is not None and value is not None and not rule[0](value):
            bad.append(f"{name} = {value!r}: must be {rule[1]}")
    return bad
