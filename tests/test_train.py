"""Training on real cached features of the mini fixture: overfitting, resume == uninterrupted, checkpoints."""
import json

import numpy as np
import pytest
import torch

from itr_lib.config import TrainConfig
from itr_lib.scoring import encode_split, evaluate, score_matrix
from itr_lib.splits import load_split_tensors
from itr_lib.train import load_checkpoint, train


def _cfg(tmp_path, mini_cache, fixture_root, **kw):
    root, _ = mini_cache
    base = dict(dataset="mini", data_root=str(fixture_root), cache_dir=str(root), dim=64, batch_size=8,
                epochs=3, lr=2e-3, progress=False, region_drop=0.0, token_drop=0.0, pooling="gpo")
    base.update(kw)
    return TrainConfig(**base, run_dir=str(tmp_path / "run"))


@pytest.mark.parametrize("method,extra", [("baseline", {}), ("selfalign", {"lca": True, "cra": True,
                                                                          "codebook_size": 16})])
def test_tiny_model_overfits_tiny_real_subset(tmp_path, mini_cache, fixture_root, method, extra):
    cfg = _cfg(tmp_path, mini_cache, fixture_root, method=method, epochs=40, base_loss="infonce",
               infonce_temperature=0.1, **extra)
    train(cfg)
    model, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    data = load_split_tensors(cfg, "train")
    with torch.no_grad():
        m = evaluate(model, data)["standard"]
    assert m["i2t_r1"] >= 87.5 and m["t2i_r1"] >= 80.0, m
    # and not because of a trivial score matrix: a fresh model is far from it
    from itr_lib.train import make_model
    torch.manual_seed(0)
    fresh = evaluate(make_model(cfg), data)["standard"]
    assert fresh["rsum"] < m["rsum"] - 100


def test_resume_equals_uninterrupted(tmp_path, mini_cache, fixture_root):
    kw = dict(method="selfalign", lca=True, cra=True, codebook_size=8, epochs=3, region_drop=0.2, token_drop=0.2)
    a = _cfg(tmp_path / "a", mini_cache, fixture_root, **kw)
    full = train(a)
    b = _cfg(tmp_path / "b", mini_cache, fixture_root, **kw)
    assert train(b, stop_after_epochs=1) == {}  # "interrupted" after one epoch
    assert (tmp_path / "b" / "run" / "last.pt").is_file() and not (tmp_path / "b" / "run" / "metrics.json").exists()
    resumed = train(b)
    for h1, h2 in zip(full["history"], resumed["history"]):
        assert h1["loss_total"] == pytest.approx(h2["loss_total"], rel=1e-5)
        assert h1["val_rsum"] == pytest.approx(h2["val_rsum"], abs=1e-6)
    assert full["test"]["standard"] == pytest.approx(resumed["test"]["standard"])
    lines = (tmp_path / "b" / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]
    # a finished run is not repeated
    again = train(b)
    assert again["git_commit"] == resumed["git_commit"] and again["history"] == resumed["history"]


def test_finished_run_of_other_config_is_an_error(tmp_path, mini_cache, fixture_root):
    train(_cfg(tmp_path, mini_cache, fixture_root, epochs=1))
    with pytest.raises(ValueError, match="config_identity"):
        train(_cfg(tmp_path, mini_cache, fixture_root, epochs=2))


def test_faiss_search_equals_model_scoring(tmp_path, mini_cache, fixture_root):
    from itr_lib.index import knn_search
    cfg = _cfg(tmp_path, mini_cache, fixture_root, method="selfalign", lca=True, cra=True, codebook_size=8,
               epochs=1)
    train(cfg)
    model, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    data = load_split_tensors(cfg, "train")
    img, txt = encode_split(model, data)
    sims = score_matrix(model, img, txt)
    scores, ids = knn_search(img["vec"].numpy(), txt["vec"].numpy(), k=5, normalize=False)
    ref = np.argsort(-sims.T, axis=1, kind="stable")[:, :5]
    assert np.array_equal(ids, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(sims.T, ref, 1), rtol=1e-5, atol=1e-5)


def test_gru_text_encoder_trains(tmp_path, mini_cache, fixture_root):
    out = train(_cfg(tmp_path, mini_cache, fixture_root, text_encoder="gru", epochs=2, token_drop=0.2))
    assert out["history"][-1]["loss_total"] > 0 and 0 <= out["test"]["standard"]["rsum"] <= 600


@pytest.mark.parametrize("method", ["tgdt", "aladin"])
def test_two_stage_models_record_every_inference_mode(tmp_path, mini_cache, fixture_root, method):
    from itr_lib.runs import run_rows
    out = train(_cfg(tmp_path, mini_cache, fixture_root, method=method, epochs=1, dim=32,
                     extra={"heads": 2}))
    modes = out["extra_eval"]
    assert {"global", "two_stage", "exhaustive"} <= set(modes)
    assert modes["details"]["k_i2t"] == 50
    rows = run_rows(out)
    assert sorted(r["variant"].rsplit("[", 1)[1] for r in rows) == ["exhaustive]", "global]", "two_stage]"]
    for r in rows:
        assert 0 <= r["mr"] <= 100
    if method == "tgdt":  # the exhaustive mode is the model's own score
        assert modes["exhaustive"]["standard"]["rsum"] == pytest.approx(out["test"]["standard"]["rsum"])


def test_evaluate_cli_scores_a_checkpoint_and_reports_bad_paths(tmp_path, mini_cache, fixture_root, capsys):
    from itr_lib.evaluate import main
    cfg = _cfg(tmp_path, mini_cache, fixture_root, epochs=1)
    out = train(cfg)
    root, _ = mini_cache
    rc = main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--data-root", str(fixture_root),
               "--dataset", "mini", "--split", "test", "--cache-dir", str(root)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["standard"] == pytest.approx(out["test"]["standard"])
    assert printed["n_images"] == 2 and printed["n_texts"] == 10
    rc = main(["--checkpoint", str(tmp_path / "nope.pt"), "--dataset", "mini", "--data-root", str(fixture_root)])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and "results/<profile>/runs/" in err
    (tmp_path / "notes.pt").write_text('{"not": "a checkpoint"}')
    rc = main(["--checkpoint", str(tmp_path / "notes.pt"), "--dataset", "mini", "--data-root", str(fixture_root)])
    err = capsys.readouterr().err
    assert rc == 2 and "is not a readable checkpoint" in err and "Traceback" not in err
    rc = main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--dataset", "nosuch", "--data-root",
               str(fixture_root), "--cache-dir", str(root)])
    err = capsys.readouterr().err
    assert rc == 2 and "datasets under" in err and "mini" in err  # the datasets that do exist are listed


def test_retrain_rebuilds_a_missing_checkpoint_from_the_recorded_config(tmp_path, mini_cache, fixture_root):
    import shutil
    from itr_lib.runs import RunStoreError as StudyError, retrain, run_grid
    from itr_lib.tables import retrain_check
    out = tmp_path / "results"
    cfg = _cfg(tmp_path, mini_cache, fixture_root, epochs=2)
    cfg.run_dir = None  # run_grid names it runs/<run_name>
    recorded = run_grid([cfg], out, progress=False)[0]
    name = cfg.run_name()
    shutil.rmtree(out / "runs")  # a fresh clone: metrics/ committed, checkpoints not
    # rerunning the grid reuses the record instead of training the run again
    cfg2 = _cfg(tmp_path, mini_cache, fixture_root, epochs=2)
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
    # a record whose config does not name the run is refused
    rec = json.loads(before)
    rec["config"]["epochs"] = 3
    (out / "metrics" / "tampered.json").write_text(json.dumps(rec))
    with pytest.raises(StudyError, match="field 'config'"):
        retrain(out, ["tampered"])


def test_variant_label_separates_method_hyper_parameters():
    from itr_lib.config import variant_label as variant_name
    base = {"method": "tgdt", "base_loss": "infonce", "false_negatives": "mask", "extra": {}}
    assert variant_name(base) == "tgdt | infonce +FN-mask"  # every method trains under its config's base loss
    diag = {**base, "base_loss": "triplet", "extra": {"warmup_epochs": 1, "margin": 0.1}}
    assert variant_name(diag) == "tgdt | triplet +FN-mask | margin=0.1,warmup_epochs=1"
    assert variant_name({**base, "method": "baseline"}) == "baseline | infonce +FN-mask"
    # the schedule is part of the label: runs of 3 and 6 epochs are never pooled
    assert variant_name({**base, "method": "baseline", "epochs": 6}) == "baseline | infonce +FN-mask | 6 ep"
    assert variant_name({**diag, "epochs": 3}) == "tgdt | triplet +FN-mask | 3 ep | margin=0.1,warmup_epochs=1"
    assert variant_name({**base, "captions_per_step": "one"}) == "tgdt | infonce +FN-mask 1cap"
    sa = {**base, "method": "selfalign", "lca": True, "cra": False, "codebook_size": 64, "epochs": 6}
    assert variant_name({**sa, "lca_weight": 1.0, "cra_weight": 0.5}) == "LCA K=64 | infonce +FN-mask | 6 ep"
    assert variant_name({**sa, "lca_weight": 0.3}) == "LCA K=64 w_lca=0.3 | infonce +FN-mask | 6 ep"


def test_feature_summary_totals_the_benchmark_rows(tmp_path):
    from itr_lib.report import feature_summary
    csv = tmp_path / "fe.csv"
    csv.write_text("dataset,split,kind,items,seconds,items_per_s,model,device,cpus,machine,load_1min\n"
                   "x,train,image,100,10,10,m,cpu,2,m,1.0\nx,train,text,400,2,200,m,cpu,2,m,1.0\n"
                   "x,test,image,50,15,3.3,m,cpu,2,m,2.5\nx,test,text,100,2,50,m,cpu,2,m,2.5\n")
    lines = feature_summary(csv)
    assert "- X: 150 images and 500 captions in 29 s (6.0 images/s, 125 captions/s, 1-min load 2.5)" in lines
    assert feature_summary(tmp_path / "missing.csv") == []


def test_markdown_tables_escape_pipes_in_labels():
    import pandas as pd
    from itr_lib.tables import to_markdown
    md = to_markdown(pd.DataFrame({"variant": ["tgdt | triplet"], "mr": [1.5]}), index=False)
    row = md.splitlines()[-1]
    assert "tgdt \\| triplet" in row and row.count("|") - row.count("\\|") == 3  # 2 cells: 3 unescaped pipes


def test_schedule_table_compares_common_seeds_on_val():
    import pandas as pd
    from itr_lib.tables import schedule_table
    rows = [dict(dataset="x", method="baseline", base_loss="infonce", epochs=e, seed=s, val_rsum=v, mr=m,
                 best_epoch=b, train_seconds=t)
            for e, s, v, m, b, t in [(3, 0, 60.0, 10.0, 2, 60), (6, 0, 72.0, 11.0, 5, 120), (6, 1, 90.0, 15.0, 4, 120),
                                     (3, 1, 66.0, 12.0, 2, 60)]]
    rows.append(dict(rows[0], method="selfalign", val_rsum=600.0))  # another method: ignored
    rows.append(dict(rows[0], epochs=10, seed=2))  # a schedule no seed shares: leaves no common seed -> empty
    t = schedule_table(pd.DataFrame(rows[:5]), "x")
    assert list(t.epochs) == [3, 6] and list(t.seeds) == ["0,1", "0,1"]
    assert list(t.val_mr) == [10.5, 13.5]  # mean val rsum / 6
    assert list(t.test_mr) == [11.0, 13.0] and list(t.best_epoch) == ["3,3", "6,5"]
    assert schedule_table(pd.DataFrame(rows), "x").empty


def test_step_cost_summary_tabulates_the_benchmark(tmp_path):
    from itr_lib.report import step_cost_summary
    csv = tmp_path / "ts.csv"
    csv.write_text("variant,threads,texts_per_step,batch_s,encode_s,loss_s,backward_s,optimizer_s,step_s,"
                   "steps_per_epoch,train_s_per_epoch,load_1min\nlca+cra,1,640,0.01,0.2,0.4,0.5,0.01,1.12,62,69.4,1.0\n")
    lines = step_cost_summary(csv)
    row = [ln for ln in "\n".join(lines).splitlines() if ln.startswith("| lca+cra")][0]
    assert "1.12" in row and "69.4" in row and "62" in row
    assert step_cost_summary(tmp_path / "missing.csv") == []


def test_run_time_summary_tabulates_the_benchmark(tmp_path):
    from itr_lib.report import run_time_summary
    csv = tmp_path / "tr.csv"
    csv.write_text("dataset,variant,epochs,threads,wall_s,train_s,val_select_s,final_eval_s,load_s,test_mr,load_1min,"
                   "git_commit\nrsicd,lca+cra,6,2,263.5,240.1,15.2,6.1,2.0,20.9,1.0,1274858bc793a9af-dirty\n")
    table = "\n".join(run_time_summary(csv))
    row = [ln for ln in table.splitlines() if "lca+cra" in ln][0]
    assert row.startswith("| `1274858` ")  # the code each row timed
    assert "263.5" in row and "240.1" in row and "20.9" in row
    assert run_time_summary(tmp_path / "missing.csv") == []


def test_capacity_probe_changes_one_knob_at_a_time_and_tables_val_gain():
    from itr_lib.experiments import PROBE_BASE, probe_configs
    from itr_lib.tables import probe_table
    cfgs = probe_configs("rsicd", 0, "lca+cra")
    assert cfgs[0][1] == {} and len({c.run_name() for _, _, c in cfgs}) == len(cfgs)  # distinct runs
    ref = cfgs[0][2]
    for name, change, cfg in cfgs[1:]:
        diff = {k for k in PROBE_BASE if getattr(cfg, k) != getattr(ref, k)}
        assert diff == set(change), name
    assert ref.lca and ref.cra and ref.base_loss == "infonce" and ref.dim == PROBE_BASE["dim"]

    def metrics(val_rsum, mr):
        return {"val": {"standard": {"rsum": val_rsum}}, "test": {"standard": {"mr": mr}}, "best_epoch": 5,
                "train_seconds": 120.0, "retrieval_vector_dim": 1536, "run": "r"}
    df = probe_table([("a", {}, metrics(60.0, 20.0)), ("b", {"dim": 1024}, metrics(66.0, 19.0))])
    assert list(df.val_mr) == [10.0, 11.0] and list(df.val_gain) == [0.0, 1.0]
    assert list(df.chosen_on_val) == [False, True]  # chosen on val, whatever test says
    assert list(df.change) == ["-", "dim=1024"] and list(df.best_epoch) == [6, 6]
    from itr_lib.experiments import probe_confirm_configs
    conf = probe_confirm_configs("rsicd", [0, 1], "lca+cra", "D = 1024 (authors)")
    assert [(c.seed, c.method, c.dim) for c in conf] == [(0, "baseline", 1024), (0, "selfalign", 1024),
                                                         (1, "baseline", 1024), (1, "selfalign", 1024)]
    probe_d1024 = [c for n, _, c in cfgs if n == "D = 1024 (authors)"][0]
    assert conf[1].run_name() == probe_d1024.run_name()  # the probe's seed-0 run is the follow-up's, not retrained
    only = probe_configs("rsicd", 0, "lca+cra", ["10 epochs"])
    assert [n for n, _, _ in only] == ["ablation setting", "10 epochs"]  # the reference row always comes first
    with pytest.raises(ValueError, match="unknown probe"):
        probe_configs("rsicd", 0, "lca+cra", ["20 epochs"])


def test_encode_summary_tabulates_the_benchmark(tmp_path):
    from itr_lib.report import encode_summary
    csv = tmp_path / "enc.csv"
    csv.write_text("dataset,split,variant,dim,threads,n_images,n_texts,vector_dim,encode_s_median,encode_s_min,repeats\n"
                   "rsicd,test,baseline | infonce,512,2,1093,5465,512,0.734,0.712,5\n")
    row = [ln for ln in "\n".join(encode_summary(csv)).splitlines() if "1093" in ln][0]
    assert "5465" in row and "0.734" in row and "0.712" in row
    assert encode_summary(tmp_path / "missing.csv") == []
