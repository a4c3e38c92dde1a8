"""docs/extending.md executed as written: the method its "Add a method" section registers trains on the 12-image
fixture, refuses what it cannot honour, is scored like every method and appears in the tables."""
import re
from pathlib import Path

import pandas as pd
import pytest

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def guide_blocks(section: str) -> list[str]:
    """The ```python blocks of one ``## section`` of the guide, in order."""
    text = GUIDE.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.fixture
def meanpool():
    """The guide's method, registered as the guide says (and unregistered afterwards)."""
    from itr_lib import models
    blocks = guide_blocks("Add a method")
    assert len(blocks) == 2                                      # the model, then its registration
    ns: dict = {}
    for b in blocks:
        exec(compile(b, str(GUIDE), "exec"), ns)                 # noqa: S102 - the guide's own code
    assert "meanpool" in models.BUILDERS
    yield ns
    models.BUILDERS.pop("meanpool", None)
    models.USES.pop("meanpool", None)


def test_the_guides_method_trains_on_the_fixture_and_appears_in_the_tables(meanpool, tmp_path, mini_cache,
                                                                           fixture_root):
    from itr_lib import tables
    from itr_lib.config import TrainConfig
    from itr_lib.experiments import STUDY_LOSS
    from itr_lib.runs import find_runs, run_grid, runs_frame
    root, _ = mini_cache
    cfg = TrainConfig(method="meanpool", dataset="mini", data_root=str(fixture_root), cache_dir=str(root), dim=32,
                      batch_size=8, epochs=2, lr=2e-3, progress=False, threads=1, **STUDY_LOSS)
    out = tmp_path / "results"
    [m] = run_grid([cfg], out, workers=1)
    assert m["method"] == "meanpool" and m["exact_vectors"] is True and len(m["history"]) == 2
    assert m["captions_per_step"] == "all"                       # the study loss: every caption of the batch's images
    run = cfg.run_name()
    assert run.startswith("mini-meanpool-minilm-s0-") and (out / "metrics" / f"{run}.json").is_file()
    assert (out / "runs" / run / "best.pt").is_file()
    df = runs_frame(out)
    main = tables.main_table(df, "mini", include_published=False)
    row = main[main.method == "meanpool"]
    assert len(row) == 1 and row.variant.iloc[0].startswith("meanpool | infonce +FN-mask | 2 ep | D=32")
    assert 0 < row.mr.iloc[0] < 100 and row.rsum.iloc[0] == pytest.approx(6 * row.mr.iloc[0], abs=0.05)
    assert find_runs(out).method.tolist() == ["meanpool"]


def test_the_guides_method_refuses_what_it_cannot_honour(meanpool, mini_cache, fixture_root):
    from itr_lib.config import TrainConfig
    from itr_lib.models import build_model
    root, _ = mini_cache
    base = dict(method="meanpool", dataset="mini", data_root=str(fixture_root), cache_dir=str(root), dim=32)
    with pytest.raises(ValueError, match=r"does not use pooling='meanmax'"):      # a field it does not read
        build_model(TrainConfig(**base, pooling="meanmax"))
    with pytest.raises(ValueError, match=r"averages MiniLM token states.*Fix: text_encoder='minilm'"):
        build_model(TrainConfig(**base, text_encoder="gru"))
    with pytest.raises(ValueError, match=r"unknown cfg.extra key\(s\) \['scael'\]"):  # a typo in its extras
        build_model(TrainConfig(**base, extra={"scael": 2.0}))
    assert build_model(TrainConfig(**base, extra={"scale": 2.0})).hp["scale"] == 2.0
