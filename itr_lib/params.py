"""Notebook parameters that fail fast, whoever executes the notebook (the study runner, papermill by hand,
JupyterLab).

papermill only warns about a parameter the notebook does not declare and runs on with the default, so a
misspelled ``-p EPOCH 1`` trains with the default ``EPOCHS``. Every notebook of the study therefore:

1. ends its imports cell with ``guard = params.Guard(globals())`` (the names defined before the parameters);
2. declares its parameters with annotations in the cell tagged ``parameters`` (``EPOCHS: int = 2  # ...``);
   papermill injects its overrides as plain assignments in the next cell;
3. calls ``guard.check(globals())`` first thing after: every name defined since the guard must be an annotated
   parameter (an injected name without an annotation is unknown: an error naming it and the declared ones), and
   every parameter's value must have its annotated type (an int where a float is declared is accepted).
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
        return {n: namespace[n] for n in declared if n in namespace}
