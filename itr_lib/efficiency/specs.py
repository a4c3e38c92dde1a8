"""The methods the efficiency study times (one :class:`MethodSpec` per row of the efficiency table) and the
retrieval modes / directions."""
from __future__ import annotations

from dataclasses import dataclass, field

MODES = ("vector", "two_stage", "exhaustive")
DIRECTIONS = ("t2i", "i2t")


STUDY = {"setting": "study loss"}  # the fair-comparison runs (comparison_plan.csv), not older "history" groups
# the same protocol with the image backbone's top trained (issue 28; experiments.ADAPTED_SETTING): its rows are
# labelled ADAPTED_SUFFIX and time the top in every image encode
ADAPTED = {"setting": "study loss, adapted top"}
ADAPTED_SUFFIX = ", adapted top"


@dataclass(frozen=True)
class MethodSpec:
    """One row of the efficiency table: a trained method and the way it retrieves."""

    label: str                       # row label
    method: str                      # TrainConfig.method of the run
    mode: str                        # vector | two_stage | exhaustive
    family: str                      # independent | global | two-stage | exhaustive | cross-attention
    stored: tuple[str, ...] | None = None   # gallery tensors a deployment keeps (None: the retrieval vector)
    mr_key: str = "test"             # "test": the run's test mR; else a mode key (global, two_stage, exhaustive)
    prefer: dict = field(default_factory=lambda: dict(STUDY))  # runs-frame columns preferred, in order
    interactive: bool = False        # the interactive reference the speed-ups are relative to
    strict: tuple[str, ...] = ()     # keys of ``prefer`` the chosen run must match (else the row is skipped)

    def mismatch(self, group) -> list[str]:
        """The :attr:`strict` keys the chosen group of runs (a runs frame) does not match (empty: it is this row's)."""
        def off(k):
            want, got = self.prefer[k], group[k].iloc[0]
            return bool(got) != want if isinstance(want, bool) else got != want
        return [k for k in self.strict if not group.empty and off(k)]



METHODS: tuple[MethodSpec, ...] = (
    MethodSpec("baseline", "baseline", "vector", "independent"),
    MethodSpec("SelfAlign", "selfalign", "vector", "independent", prefer={**STUDY, "lca": True, "cra": True}),
    # the README table's other SelfAlign rows (CRA is its top row): the same dot-product search, their own encoders
    MethodSpec("SelfAlign CRA", "selfalign", "vector", "independent", prefer={**STUDY, "lca": False, "cra": True},
               strict=("lca", "cra")),
    MethodSpec("SelfAlign LCA", "selfalign", "vector", "independent", prefer={**STUDY, "lca": True, "cra": False},
               strict=("lca", "cra")),
    MethodSpec("TGDT global", "tgdt", "vector", "global", stored=("global",), mr_key="global"),
    MethodSpec("TGDT two-stage", "tgdt", "two_stage", "two-stage", stored=("global", "locals"), mr_key="two_stage"),
    MethodSpec("TGDT exhaustive", "tgdt", "exhaustive", "exhaustive", stored=("global", "locals")),
    MethodSpec("ALADIN matching", "aladin", "vector", "independent"),
    MethodSpec("ALADIN two-stage", "aladin", "two_stage", "two-stage", stored=("emb", "tokens"), mr_key="two_stage"),
    MethodSpec("ALADIN alignment", "aladin", "exhaustive", "exhaustive", stored=("tokens",), mr_key="exhaustive"),
    MethodSpec("MrSw exhaustive", "mrsw", "exhaustive", "exhaustive", stored=("locals",)),
    MethodSpec("SCAN (cross-attention)", "scan", "exhaustive", "cross-attention", stored=("locals",),
               interactive=True),
    # the adapted operating point (issue 28): skipped where its runs are not recorded
    MethodSpec("baseline" + ADAPTED_SUFFIX, "baseline", "vector", "independent", prefer=dict(ADAPTED),
               strict=("setting",)),
    MethodSpec("SelfAlign" + ADAPTED_SUFFIX, "selfalign", "vector", "independent",
               prefer={**ADAPTED, "lca": True, "cra": True}, strict=("setting", "lca", "cra")),
    MethodSpec("SelfAlign CRA" + ADAPTED_SUFFIX, "selfalign", "vector", "independent",
               prefer={**ADAPTED, "lca": False, "cra": True}, strict=("setting", "lca", "cra")),
    MethodSpec("TGDT two-stage" + ADAPTED_SUFFIX, "tgdt", "two_stage", "two-stage", stored=("global", "locals"),
               mr_key="two_stage", prefer=dict(ADAPTED), strict=("setting",)),
    MethodSpec("ALADIN matching" + ADAPTED_SUFFIX, "aladin", "vector", "independent", prefer=dict(ADAPTED),
               strict=("setting",)),
)


def spec_by_label(label: str) -> MethodSpec:
    for s in METHODS:
        if s.label == label:
            return s
    raise KeyError(f"no method labelled {label!r}; choose one of {[s.label for s in METHODS]}")

