"""itr_lib.report: the README headline block and RESULTS.md."""
import pandas as pd

from itr_lib.report import _drop_shared_parts


def test_shared_label_parts_are_said_once_and_modes_kept():
    labels = pd.Series(["aladin | infonce +FN-mask | 6 ep | val 1000 [two_stage]",
                        "LCA+CRA K=1024 | infonce +FN-mask | 6 ep | val 1000",
                        "baseline | infonce +FN-mask | 3 ep | val 1000"])
    short, shared = _drop_shared_parts(labels)
    assert shared == ["infonce +FN-mask", "val 1000"]
    assert list(short) == ["aladin | 6 ep [two_stage]", "LCA+CRA K=1024 | 6 ep", "baseline | 3 ep"]


def test_compact_markdown_escapes_pipes_aligns_numbers_and_leaves_nan_blank():
    from itr_lib.tables import to_markdown
    df = pd.DataFrame({"variant": ["a | b", "c"], "mr": [19.534, float("nan")], "n": [3, 1]})
    assert to_markdown(df, compact=True, floatfmt=".2f", index=False).splitlines() == [
        "| variant | mr | n |", "|:---|---:|---:|", "| a \\| b | 19.53 | 3 |", "| c |  | 1 |"]
