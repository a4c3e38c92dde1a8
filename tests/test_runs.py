"""The run store: finding runs and checkpoints by config, rows per inference mode, hits, relabelling records."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from itr_lib import runs
from itr_lib.metrics import Ties


def _record(tmp_path, name, mtime=None, checkpoint=True, **cfg):
    d = tmp_path / "runs" / name
    d.mkdir(parents=True)
    cfg = {"text_encoder": "minilm", "seed": 0, **cfg}
    (d / "metrics.json").write_text(json.dumps({"config": cfg, "test": {}, "run": name}))
    if checkpoint:
        (d / "best.pt").write_bytes(b"")
        if mtime:
            os.utime(d / "best.pt", (mtime, mtime))
        return d / "best.pt"
    return d


def test_find_checkpoint_by_query(tmp_path):
    old = _record(tmp_path, "a", 1000, dataset="ucm", method="selfalign", lca=True, cra=False)
    new = _record(tmp_path, "b", 2000, dataset="ucm", method="selfalign", lca=True, cra=True)
    s1 = _record(tmp_path, "b1", 3000, dataset="ucm", method="selfalign", lca=True, cra=True, seed=1)
    _record(tmp_path, "c", 3000, dataset="rsicd", method="selfalign", lca=True)
    base = _record(tmp_path, "e", 500, dataset="ucm", method="baseline")
    _record(tmp_path, "f", 5000, dataset="ucm", method="baseline", text_encoder="gru")
    assert runs.find_checkpoint(tmp_path, dataset="ucm", method="selfalign", lca=True, cra=False) == old
    # among matching runs: the lowest seed, then the newest
    assert runs.find_checkpoint(tmp_path, dataset="ucm", method="selfalign", cra=True) == new != s1
    assert runs.find_checkpoint(tmp_path, dataset="ucm", method="selfalign", seed=1) == s1
    assert runs.find_checkpoint(tmp_path, dataset="ucm", method="baseline", text_encoder="minilm") == base
    # a newer run with a trained image top is not the frozen-backbone run a query (or a config's identity, which
    # leaves image_top_blocks=0 out) asks for; naming the field finds it
    top = _record(tmp_path, "g", 6000, dataset="ucm", method="baseline", image_top_blocks=6)
    assert runs.find_checkpoint(tmp_path, dataset="ucm", method="baseline", text_encoder="minilm") == base
    assert runs.find_checkpoint(tmp_path, dataset="ucm", method="baseline", image_top_blocks=6) == top
    with pytest.raises(FileNotFoundError, match=r"no finished run matching .*'rsicd'.*Fix: train it first"):
        runs.find_checkpoint(tmp_path, dataset="rsicd", method="baseline")
    # a run recorded in metrics/ without its checkpoint: the error says how to retrain it
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "rsicd-baseline-x.json").write_text(json.dumps(
        {"config": {"dataset": "rsicd", "method": "baseline", "seed": 0}, "test": {}}))
    with pytest.raises(FileNotFoundError, match=r"--retrain 'rsicd-baseline-x'"):
        runs.find_checkpoint(tmp_path, dataset="rsicd", method="baseline")


def _metrics(run, **extra):
    cfg = {"method": "tgdt", "dataset": "ucm", "seed": 0, "base_loss": "infonce", "false_negatives": "mask",
           "captions_per_step": "all", "epochs": 6, "extra": {}}
    bundle = {k: float(v) for k, v in zip(runs.METRICS, range(1, 9))}
    return {"run": run, "dataset": "ucm", "config": cfg, "test": {"standard": bundle,
            "standard_optimistic": {**bundle, "mr": 9.0}, "standard_pessimistic": {**bundle, "mr": 7.0}},
            "val": {"standard": bundle}, "best_epoch": 1, "epochs": 6, "train_seconds": 1.0,
            "retrieval_vector_dim": 8, "tie_rule": "expected", **extra}


def test_run_rows_one_per_mode_with_tie_bounds():
    m = _metrics("r", extra_eval={"global": {"standard": {k: 0.0 for k in runs.METRICS},
                                             "standard_optimistic": {"mr": 1.0}, "standard_pessimistic": {"mr": 0.0}},
                                  "details": {"k_i2t": 50}})
    rows = runs.run_rows(m)
    assert [r["mode"] for r in rows] == ["global"] and rows[0]["variant"].endswith("[global]")
    assert rows[0]["mr"] == 0.0 and rows[0]["mr_optimistic"] == 1.0 and rows[0]["tie_rule"] == "expected"
    plain = runs.run_rows(_metrics("p"))
    assert len(plain) == 1 and plain[0]["mr_pessimistic"] == 7.0 and plain[0]["captions_per_step"] == "all"
    old = _metrics("o", tie_rule="index")
    old.pop("tie_rule")
    del old["test"]["standard_optimistic"]
    row = runs.run_rows(old)[0]
    assert row["tie_rule"] == "index" and np.isnan(row["mr_optimistic"])


def test_load_hits_reads_ties_and_legacy_ranks(tmp_path):
    d = tmp_path / "metrics"
    d.mkdir()
    ti = Ties(np.array([0, 3]), np.array([1, 0]), np.array([1, 1]))
    tt = Ties(np.array([0, 0, 9]), np.array([0, 0, 0]), np.array([1, 1, 1]))
    np.savez(d / "new.ranks.npz", i2t=np.array([0, 3]), t2i=np.array([0, 0, 9]), **ti.to_arrays("i2t"),
             **tt.to_arrays("t2i"), **ti.to_arrays("global/i2t"), **tt.to_arrays("global/t2i"))
    hi, ht = runs.load_hits(tmp_path, "new")
    assert hi.tolist() == [[0.5, 1.0, 1.0], [0.0, 1.0, 1.0]]  # a tie of 2 at the top: R@1 is 1/2
    assert ht[:, 0].tolist() == [1.0, 1.0, 0.0]
    assert runs.load_hits(tmp_path, "new", rule="optimistic")[0][0, 0] == 1.0
    assert runs.load_hits(tmp_path, "new", mode="global")[0][0, 0] == 0.5
    np.savez(d / "old.ranks.npz", i2t=np.array([0, 3]), t2i=np.array([0, 12, 1]))
    oi, ot = runs.load_hits(tmp_path, "old")
    assert oi.tolist() == [[1, 1, 1], [0, 1, 1]] and ot[:, 2].tolist() == [1, 0, 1]
    with pytest.raises(KeyError, match="mode 'global'"):
        runs.load_hits(tmp_path, "old", mode="global")


def test_relabel_fine_records_says_what_they_ran(tmp_path):
    d = tmp_path / "metrics"
    d.mkdir()
    fine = {"config": {"method": "tgdt", "base_loss": "infonce", "captions_per_step": "auto", "warmup_epochs": 1,
                       "extra": {"warmup_epochs": 1, "layers": 1}, "seed": 0, "codebook_size": 256,
                       "pooling": "meanmax"}, "test": {}}
    plain = {"config": {"method": "tgdt", "base_loss": "infonce", "captions_per_step": "auto", "warmup_epochs": 1,
                        "extra": {}, "seed": 0}, "test": {}}
    vse = {"config": {"method": "baseline", "base_loss": "infonce", "captions_per_step": "auto"}, "test": {}}
    for name, rec in (("diag", fine), ("plain", plain), ("vse", vse)):
        (d / f"{name}.json").write_text(json.dumps(rec))
    assert runs.relabel_fine_records(tmp_path) == ["diag", "plain"]
    diag = json.loads((d / "diag.json").read_text())
    assert diag["config"]["base_loss"] == "triplet" and diag["config"]["captions_per_step"] == "one"
    assert diag["config"]["warmup_epochs"] == 1 and diag["config"]["extra"] == {"layers": 1}
    assert diag["config_identity"]["base_loss"] == "triplet" and diag["relabelled"]["before"]["base_loss"] == "infonce"
    # fields TGDT never read go back to their defaults; the record keeps what they held
    assert diag["config"]["codebook_size"] == 1024 and diag["config"]["pooling"] == "gpo"
    assert diag["relabelled"]["before"]["codebook_size"] == 256
    assert json.loads((d / "plain.json").read_text())["config"]["warmup_epochs"] == 0  # the authors' default it ran
    assert json.loads((d / "vse.json").read_text()) == vse  # the VSE models always read base_loss
    assert runs.relabel_fine_records(tmp_path) == []  # idempotent


def test_retrain_rebuilds_a_missing_checkpoint_from_the_recorded_config(tmp_path, mini_cache, fixture_root, mini_cfg):
    import shutil
    from itr_lib.runs import RunStoreError as StudyError, retrain, run_grid
    from itr_lib.tables import retrain_check
    out = tmp_path / "results"
    cfg = mini_cfg(epochs=2)
    cfg.run_dir = None  # run_grid names it runs/<run_name>
    recorded = run_grid([cfg], out, progress=False)[0]
    name = cfg.run_name()
    shutil.rmtree(out / "runs")  # a fresh clone: metrics/ committed, checkpoints not
    # rerunning the grid reuses the record instead of training the run again
    cfg2 = mini_cfg(epochs=2)
    cfg2.run_dir = None
    again = run_grid([cfg2], out, progress=False)[0]
    assert again == recorded and not (out / "runs").exists()
    with pytest.raises(StudyError, match="no run"):
        retrain(out, ["nothing-*"])
    assert retrain(out, ["*"], dry_run=True) == [{"run": name, "recorded_mr": recorded["test"]["standard"]["mr"],
                                                   "retrained_mr": None}]
    before = (out / "metrics" / f"{name}.json").read_bytes()
    rows = retrain(out, ["*"])
    assert (out / "runs" / name / "best.pt").is_file()
    assert rows[0]["retrained_mr"] == pytest.approx(rows[0]["recorded_mr"])  # same config and seed: same scores
    assert (out / "metrics" / f"{name}.json").read_bytes() == before  # the record is left as it was
    assert retrain(out, ["*"]) == []  # checkpoint present: nothing to do
    check = retrain_check(out)
    assert list(check.run) == [name] and check.diff_mr.iloc[0] == pytest.approx(0.0)
    assert (out / "tables" / "retrain_check.csv").is_file()
    # a later clone that rebuilds nothing new keeps the earlier clone's rows; a row whose record is gone is dropped
    shutil.copy(out / "metrics" / f"{name}.json", out / "metrics" / "other-run.json")
    with open(out / "tables" / "retrain_check.csv", "a") as f:
        f.write("other-run,10.0,11.0,1.0,60.0,66.0\nvanished-run,1.0,1.0,0.0,6.0,6.0\n")
    check = retrain_check(out)
    assert list(check.run) == sorted([name, "other-run"]) and check.set_index("run").diff_mr["other-run"] == 1.0
    (out / "metrics" / "other-run.json").unlink()
    # a record whose config does not name the run is refused
    rec = json.loads(before)
    rec["config"]["epochs"] = 3
    (out / "metrics" / "tampered.json").write_text(json.dumps(rec))
    with pytest.raises(StudyError, match="field 'config'"):
        retrain(out, ["tampered"])


def test_records_store_run_dir_relative_and_old_absolute_ones_are_still_read(tmp_path, mini_cfg):
    from itr_lib.io import read_json, write_json
    from itr_lib.recordio import read_record, relativize_records, run_dir_of
    out = tmp_path / "results"
    cfg = mini_cfg(epochs=1)
    cfg.run_dir = None
    got = runs.run_grid([cfg], out, progress=False, workers=1)[0]
    name = cfg.run_name()
    for path in (out / "metrics" / f"{name}.json", out / "runs" / name / "metrics.json"):
        assert read_json(path)["config"]["run_dir"] == f"runs/{name}"  # what is stored: the same on any clone
        assert read_record(path)["config"]["run_dir"] == str(out / "runs" / name) == got["config"]["run_dir"]
    # an older record with another machine's absolute path: still read; rewritten once, only that field changes
    old = read_json(out / "metrics" / f"{name}.json")
    old["config"]["run_dir"] = f"/elsewhere/results/full/runs/{name}"
    write_json(out / "metrics" / f"{name}.json", old)
    assert run_dir_of(read_record(out / "metrics" / f"{name}.json"), out) == out / "runs" / name
    assert runs.recorded(cfg, out)["test"] == got["test"]
    before = (out / "metrics" / f"{name}.json").read_text().splitlines()
    assert relativize_records(out) == [name] and relativize_records(out) == []
    after = (out / "metrics" / f"{name}.json").read_text().splitlines()
    assert [(a, b) for a, b in zip(before, after) if a != b] == [
        (f'    "run_dir": "/elsewhere/results/full/runs/{name}",', f'    "run_dir": "runs/{name}",')]
