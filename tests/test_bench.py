"""Training / encoding cost benchmarks (itr_lib.bench) and the capacity probe (itr_lib.probe): the step timed is the
training loop's own step, checkpoints are found by config, recorded probe runs are reused and never retrained.
Timed performance is NOT asserted."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from itr_lib import bench, probe
from itr_lib.config import TrainConfig
from itr_lib.experiments import PROBES, comparison_configs, probe_configs, probe_confirm_configs
from recorded_runs import record_run


def _mini(mini_cache, fixture_root, variant="baseline", **kw) -> TrainConfig:
    root, _ = mini_cache
    return bench.study_config(variant, "mini", data_root=str(fixture_root), cache_dir=str(root), dim=16,
                              batch_size=4, epochs=1, val_images_per_epoch=None, progress=False, **kw)


def test_study_config_is_the_comparison_plan_config():
    cfg = bench.study_config("lca+cra", "rsicd", seed=1)
    assert cfg.identity() == comparison_configs(["rsicd"], [1], ["lca+cra"])[0].identity()
    assert cfg.lca and cfg.cra and cfg.base_loss == "infonce" and cfg.captions_per_step == "all"
    with pytest.raises(ValueError, match="unknown variant 'lca-cra'"):
        bench.study_config("lca-cra", "rsicd")


def test_train_step_benchmark_times_the_training_loops_step(mini_cache, fixture_root, monkeypatch):
    import itr_lib.train as train_mod
    calls = []
    real = train_mod.train_step

    def counting(*a, **k):
        calls.append(k.get("lap") is not None)
        return real(*a, **k)
    monkeypatch.setattr(train_mod, "train_step", counting)
    row = bench.time_train_step(_mini(mini_cache, fixture_root, "lca+cra", codebook_size=8), threads=1, steps=3,
                                warmup=1, name="lca+cra")
    assert calls == [True] * 4  # warm-up + timed steps, every one through train.train_step with the phase timer
    parts = [row[f"{p}_s"] for p in bench.PARTS]
    assert all(p > 0 for p in parts) and row["step_s"] == pytest.approx(sum(parts), abs=5e-4)
    assert row["texts_per_step"] == 4 * 5  # every caption of the batch's 4 images (the mini fixture: 5 each)
    assert row["variant"] == "lca+cra" and row["config"].startswith("LCA+CRA K=8 | infonce +FN-mask")
    assert row["steps_per_epoch"] == 2  # the mini train split: 8 images, batch 4


def test_encode_benchmark_finds_the_checkpoint_by_config(tmp_path, mini_cache, fixture_root):
    from itr_lib.runs import run_grid
    cfg = _mini(mini_cache, fixture_root)
    with pytest.raises(FileNotFoundError, match="no finished run matching"):
        bench.checkpoint_for(cfg, tmp_path)
    run_grid([cfg], tmp_path)
    other = dataclasses.replace(cfg, seed=3, run_dir=None)  # another config: not found, even with a run beside it
    with pytest.raises(FileNotFoundError):
        bench.checkpoint_for(other, tmp_path)
    ck = bench.checkpoint_for(dataclasses.replace(cfg, run_dir=None), tmp_path)
    assert ck == tmp_path / "runs" / cfg.run_name() / "best.pt"
    row = bench.time_encode(ck, "test", threads=1, repeats=2)
    assert row["n_images"] == 2 and row["n_texts"] == 10 and row["vector_dim"] == 16  # mini test split
    assert 0 < row["encode_s_min"] <= row["encode_s_median"]


def test_benchmark_rows_replace_their_key_and_keep_the_rest(tmp_path):
    bench.write_benchmark([{"variant": "a", "threads": 1, "s": 1.0}, {"variant": "b", "threads": 1, "s": 2.0}],
                          "k", "ds", ["variant", "threads"], tmp_path)
    path = bench.write_benchmark([{"variant": "a", "threads": 1, "s": 3.0}], "k", "ds", ["variant", "threads"],
                                 tmp_path)
    df = pd.read_csv(path).set_index("variant")
    assert df.s.to_dict() == {"b": 2.0, "a": 3.0}
    bench.write_benchmark([{"variant": "a", "threads": 1, "s": 4.0}], "k", "ds", None, tmp_path)  # append
    assert list(pd.read_csv(path).s) == [2.0, 3.0, 4.0]


# ----------------------------------------------------------------------------------------------- capacity probe
def _record(folder, cfg: TrainConfig, val_mr: float, hits_seed: int) -> None:
    record_run(folder, cfg, val_mr, hits_seed, vector_dim=3 * cfg.dim)


def test_probe_reuses_recorded_runs_and_follows_up_each_rounds_val_choice(tmp_path, monkeypatch):
    import itr_lib.train as train_mod

    def no_training(*a, **k):
        raise AssertionError("a recorded probe run was retrained")
    monkeypatch.setattr(train_mod, "train", no_training)
    val = {"ablation setting": 14.0, "D = 1024 (authors)": 16.0, "GPO pooling (authors)": 14.5,
           "residual MLP encoders (VSE-inf basic)": 15.0, "lr 2e-4 (authors' alternative)": 12.0,
           "10 epochs": 15.5, "D = 1024 + residual MLP": 17.0, "D = 1024 + 10 epochs": 16.5}
    pdir = tmp_path / "probe"
    for i, (name, _, cfg) in enumerate(probe_configs("rsicd", 0, "lca+cra")):
        _record(pdir, cfg, val[name], i)
    for name in ("D = 1024 (authors)", "D = 1024 + residual MLP"):  # the follow-ups, except the probe's own run
        cdir = pdir / probe.confirm_slug(name)
        for j, cfg in enumerate(probe_confirm_configs("rsicd", [0, 1], "lca+cra", name)):
            if not (cfg.seed == 0 and cfg.method == "selfalign"):
                _record(cdir, cfg, 15.0, 100 + j)
    table, confirm = probe.capacity_probe("rsicd", tmp_path, confirm_seeds=[0, 1], n_boot=200)
    assert list(table.probe) == [n for n, _ in PROBES] and table.val_mr.tolist() == list(val.values())
    assert table.chosen_on_val.tolist() == [n == "D = 1024 + residual MLP" for n in val]
    assert probe.round_choices(table) == ["D = 1024 (authors)", "D = 1024 + residual MLP"]
    assert list(confirm.probe) == ["D = 1024 (authors)"] * 2 + ["D = 1024 + residual MLP"] * 2
    assert list(confirm.n_seeds) == [2, 2, 2, 2] and list(confirm.method) == ["baseline", "selfalign"] * 2
    assert confirm.delta_rsum.isna().tolist() == [True, False, True, False]  # gain vs the same-capacity baseline
    # the follow-up's seed-0 variant run is the probe's record, copied
    d1024 = [c for n, _, c in probe_configs("rsicd", 0, "lca+cra") if n == "D = 1024 (authors)"][0]
    assert (pdir / "confirm-d-1024-authors" / "metrics" / f"{d1024.run_name()}.json").is_file()


def test_probe_second_round_must_build_on_round_one():
    t = pd.DataFrame({"probe": [n for n, _ in PROBES], "val_mr": [14, 15, 14, 16.5, 12, 15, 16, 15]})
    with pytest.raises(ValueError, match="round 1 of the probe now chooses 'residual MLP"):
        probe.round_choices(t)
    t = pd.DataFrame({"probe": [n for n, _ in PROBES], "val_mr": [14, 16, 14, 15, 12, 15, 15.5, 15]})
    assert probe.round_choices(t) == ["D = 1024 (authors)"]  # the second round did not beat the first


def test_train_step_adapted_times_the_adapted_comparisons_config(monkeypatch, tmp_path):
    """``train-step --adapted`` adds, per variant, a row timed on the adapted comparison's own config (02's
    ``ADAPTED_COMPARISON`` run of that variant, seed and dataset), named '<variant>, adapted top'."""
    from itr_lib.experiments import comparison_plan
    seen = []

    def fake(cfg, threads, steps=8, warmup=2, name=None):
        seen.append((name, cfg))
        return {"dataset": cfg.dataset, "variant": name, "threads": threads, "step_s": 1.0}
    monkeypatch.setattr(bench, "time_train_step", fake)
    assert bench.main(["train-step", "--dataset", "rsicd", "--threads", "1", "--variants", "baseline", "tgdt",
                       "--adapted", "--out-dir", str(tmp_path)]) == 0
    names = [n for n, _ in seen]
    assert names == ["baseline", "baseline, adapted top", "tgdt", "tgdt, adapted top"]
    plan = {c.method: c for _, _, c in comparison_plan([], [], [], adapted=[{"dataset": "rsicd", "seeds": [0],
                                                                               "methods": ["baseline", "tgdt"]}])}
    for n, cfg in seen:
        if n.endswith("adapted top"):
            assert cfg.image_top_blocks == 6 and cfg.identity() == plan[cfg.method].identity()
        else:
            assert cfg.image_top_blocks == 0
    assert set(pd.read_csv(tmp_path / "train_step_rsicd.csv").variant) == set(names)
