"""Which runs the efficiency study times (issue 18): the fair-comparison ("study loss") group before older history
groups, and a group whose checkpoints are gone timed with fresh weights (labelled, never seeding the scaling
galleries)."""
import json

import pandas as pd
import pytest
import torch

from itr_lib import efficiency as eff
from itr_lib.config import TrainConfig
from itr_lib.models import build_model
from test_efficiency import HW, _fake_run, synthetic_split


def _plan(root, settings: dict) -> None:
    (root / "tables").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"setting": list(settings.values()), "run": list(settings)}).to_csv(
        root / "tables" / "comparison_plan.csv", index=False)


def _history_and_study(root, study_ckpt: bool = True):
    """A 3-seed history group (authors' triplet, 3 epochs, checkpoints) and a 1-seed study-loss group of the
    baseline on ucm."""
    for s in range(3):
        _fake_run(root, f"hist{s}", "baseline", s, 10.0 + s, n_epochs=3, base_loss="triplet")
    _fake_run(root, "study0", "baseline", 0, 20.0, n_epochs=2, ckpt=study_ckpt)
    _plan(root, {"study0": "study loss", "hist0": "authors' loss"})


def test_the_study_loss_group_is_timed_before_a_larger_history_group(tmp_path):
    _history_and_study(tmp_path)
    runs = eff.benchmark.with_settings(eff.find_runs(tmp_path), tmp_path)
    setting = runs.set_index("run").setting
    assert setting["study0"] == "study loss" and setting["hist0"] == "authors' loss"
    assert setting[["hist1", "hist2"]].isna().all()                 # runs the plan does not list: NaN
    spec = eff.spec_by_label("baseline")
    assert spec.prefer == {"setting": "study loss"}
    assert list(eff.spec_by_label("SelfAlign").prefer) == ["setting", "lca", "cra"]
    timed, group = eff.select_runs(runs, "baseline", "ucm", spec.prefer)
    assert timed.run == "study0" and list(group.run) == ["study0"]
    # without the setting (as before issue 18) the 3-seed history group wins: the reason for the column
    timed, _ = eff.select_runs(eff.find_runs(tmp_path), "baseline", "ucm")
    assert timed.run == "hist0"
    # no plan on disk: the column is there, all NaN, and selection falls back to the old order
    (tmp_path / "tables" / "comparison_plan.csv").unlink()
    runs = eff.benchmark.with_settings(eff.find_runs(tmp_path), tmp_path)
    assert runs.setting.isna().all()
    assert eff.select_runs(runs, "baseline", "ucm", spec.prefer)[0].run == "hist0"


def _record_n_params(root, run: str) -> int:
    """Write the n_params a training run records (the model of its config) into the fake record."""
    path = root / "runs" / run / "metrics.json"
    m = json.loads(path.read_text())
    n = sum(p.numel() for p in build_model(TrainConfig.from_dict(m["config"])).parameters())
    m["n_params"] = n
    path.write_text(json.dumps(m))
    return n


@pytest.fixture
def fake_split(monkeypatch):
    monkeypatch.setattr(eff.benchmark, "load_test_split", lambda cfg, split="test": synthetic_split())


def test_a_group_without_checkpoint_is_timed_untrained_only_when_asked(tmp_path, fake_split):
    _history_and_study(tmp_path, study_ckpt=False)
    n_params = _record_n_params(tmp_path, "study0")
    spec = [eff.spec_by_label("baseline")]
    kw = dict(hw=HW, specs=spec, repeats=2, warmup=0, batch_size=4, max_seconds=5.0)
    off = eff.benchmark_dataset(eff.find_runs(tmp_path), "ucm", tmp_path, **kw)
    assert off.table.empty and "no checkpoint" in off.notes[0] and "TIME_UNTRAINED" in off.notes[0]
    res = eff.benchmark_dataset(eff.find_runs(tmp_path), "ucm", tmp_path, time_untrained=True, **kw)
    row = res.table.set_index("method").loc["baseline"]
    assert row.weights == "untrained (timing only)" and row.run == "study0"
    assert row.n_params == n_params                      # the recorded config's model, fresh weights
    assert row.mr == 20.0 and row.ms_per_query_t2i > 0   # mR from the record
    assert set(res.detail.weights) == {"untrained (timing only)"}
    assert res.untrained == {"baseline"} and any("timed untrained" in n and "baseline" in n for n in res.notes)
    # the same model twice: seeded from the record's seed
    m1, _ = eff.benchmark.untrained_run_model(json.loads((tmp_path / "runs/study0/metrics.json").read_text()))
    m2, _ = eff.benchmark.untrained_run_model(json.loads((tmp_path / "runs/study0/metrics.json").read_text()))
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert not m1.training


def test_scaling_entries_refuse_an_untrained_vector_seed(caplog):
    models = {lab: (tiny_model, None, None, ("img", "txt")) for lab in ("baseline", "SelfAlign", "TGDT two-stage")}
    vec, fine = eff.scaling_entries(models, ["TGDT two-stage"], untrained={"baseline"})
    assert vec[0] == "SelfAlign"                                    # the first TRAINED vector model
    assert "baseline" in caplog.text and "untrained" in caplog.text
    assert list(fine) == ["TGDT two-stage"]
    vec, fine = eff.scaling_entries(models, ["TGDT two-stage"], untrained={"baseline", "SelfAlign",
                                                                           "TGDT two-stage"})
    assert vec is None                                              # none trained: no vector series at all
    assert list(fine) == ["TGDT two-stage"]                         # fine-grained timing may use untrained models


tiny_model = object()  # scaling_entries only passes the model on
