"""One colour per method family across every figure (STYLE.md, "Figures a reader meets first"), and the helpers
that keep row labels short: the protocol every row shares goes once, into a caption."""
from __future__ import annotations

import re

FAMILY_COLOURS = {
    "independent embeddings": "#7f7f7f",   # the baseline (VSE)
    "SelfAlign": "#2a9d8f",                # LCA / CRA on the baseline: still one dot product
    "two-stage / distilled": "#e9a13b",    # TGDT, ALADIN
    "interactive references": "#c8553d",   # SCAN, MrSw
    "recipe (07)": "#264653",              # the frozen-feature recipe's rows
    "published": "#b0b0b0",                # other papers, other backbones
}
_FAMILY_OF = {"baseline": "independent embeddings", "selfalign": "SelfAlign", "tgdt": "two-stage / distilled",
              "aladin": "two-stage / distilled", "scan": "interactive references", "mrsw": "interactive references"}


def family_of(method: str) -> str:
    """The family of a method name (``baseline``, ``selfalign``, ``tgdt``, ``SelfAlign CRA``, ``recipe: ...``,
    ``PIR (published)``); unknown names are their own family (drawn in the default grey)."""
    m = str(method)
    if m.endswith("(published)"):
        return "published"
    if m.startswith("recipe"):
        return "recipe (07)"
    key = m.split()[0].lower() if m.split() else m
    return _FAMILY_OF.get(key, m)


def colour_of(method: str) -> str:
    return FAMILY_COLOURS.get(family_of(method), "#555555")


def family_legend(ax, families, **kw):
    """A legend of the given families' colours (patches), in :data:`FAMILY_COLOURS` order."""
    from matplotlib.patches import Patch
    present = [f for f in FAMILY_COLOURS if f in set(families)]
    handles = [Patch(facecolor=FAMILY_COLOURS[f], edgecolor="k", lw=0.5, label=f) for f in present]
    return ax.legend(handles=handles, **kw) if handles else None


_MODE = re.compile(r"\s*(\[[^\]]*\])\s*$")


def split_shared(labels: list[str], sep: str = " | ") -> tuple[list[str], str]:
    """``(short labels, shared)``: the ``sep``-separated parts every label carries (after its first part, which names
    the row), removed from each label and joined as ``shared``; a trailing ``[mode]`` stays on the short label.
    ``["CRA | infonce | 6 ep", "tgdt | infonce | 6 ep [global]"]`` -> ``(["CRA", "tgdt [global]"], "infonce | 6 ep")``."""
    heads, modes, parts = [], [], []
    for lab in labels:
        mode = _MODE.search(lab)
        core = lab[:mode.start()] if mode else lab
        modes.append(f" {mode.group(1)}" if mode else "")
        p = core.split(sep)
        heads.append(p[0])
        parts.append(p[1:])
    if not parts:
        return [], ""
    shared = [p for p in parts[0] if all(p in q for q in parts[1:])]
    short = [sep.join([h] + [p for p in q if p not in shared]) + m for h, q, m in zip(heads, parts, modes)]
    return short, sep.join(shared)
