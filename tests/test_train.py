"""Training on real cached features of the mini fixture: overfitting, resume == uninterrupted, checkpoints."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from itr_lib.scoring import encode_split, evaluate, score_matrix
from itr_lib.splits import load_split_tensors
from itr_lib.train import load_checkpoint, train


@pytest.mark.parametrize("method,extra", [("baseline", {}), ("selfalign", {"lca": True, "cra": True,
                                                                          "codebook_size": 16})])
def test_tiny_model_overfits_tiny_real_subset(tmp_path, mini_cache, fixture_root, method, extra, mini_cfg):
    cfg = mini_cfg(method=method, epochs=40, base_loss="infonce", infonce_temperature=0.1, **extra)
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


def test_resume_equals_uninterrupted(tmp_path, mini_cfg):
    kw = dict(method="selfalign", lca=True, cra=True, codebook_size=8, epochs=3, region_drop=0.2, token_drop=0.2)
    a = dataclasses.replace(mini_cfg(**kw), run_dir=str(tmp_path / "a" / "run"))
    full = train(a)
    b = dataclasses.replace(mini_cfg(**kw), run_dir=str(tmp_path / "b" / "run"))
    assert train(b, stop_after_epochs=1) == {}  # "interrupted" after one epoch
    assert (tmp_path / "b" / "run" / "last.pt").is_file() and not (tmp_path / "b" / "run" / "metrics.json").exists()
    resumed = train(b)
    for h1, h2 in zip(full["history"], resumed["history"]):
        assert h1["loss_total"] == pytest.approx(h2["loss_total"], rel=1e-5)
        assert h1["val_rsum"] == pytest.approx(h2["val_rsum"], abs=1e-6)
    assert full["test"]["standard"] == pytest.approx(resumed["test"]["standard"])
    # bit-identical: the history, every test score and the per-query ranks (checkpoints round-trip exactly)
    assert full["history"] == [{**h, "train_seconds": f["train_seconds"], "eval_seconds": f["eval_seconds"]}
                               for f, h in zip(full["history"], resumed["history"])]
    assert full["test"] == resumed["test"]
    za, zb = np.load(tmp_path / "a" / "run" / "test_ranks.npz"), np.load(tmp_path / "b" / "run" / "test_ranks.npz")
    assert sorted(za.files) == sorted(zb.files) and all(np.array_equal(za[k], zb[k]) for k in za.files)
    lines = (tmp_path / "b" / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]
    # a finished run is not repeated
    again = train(b)
    assert again["git_commit"] == resumed["git_commit"] and again["history"] == resumed["history"]


def test_finished_run_of_other_config_is_an_error(tmp_path, mini_cache, fixture_root, mini_cfg):
    train(mini_cfg(epochs=1))
    with pytest.raises(ValueError, match="config_identity"):
        train(mini_cfg(epochs=2))


def test_faiss_search_equals_model_scoring(tmp_path, mini_cache, fixture_root, mini_cfg):
    from itr_lib.index import knn_search
    cfg = mini_cfg(method="selfalign", lca=True, cra=True, codebook_size=8,
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


def test_gru_text_encoder_trains(tmp_path, mini_cache, fixture_root, mini_cfg):
    out = train(mini_cfg(text_encoder="gru", epochs=2, token_drop=0.2))
    assert out["history"][-1]["loss_total"] > 0 and 0 <= out["test"]["standard"]["rsum"] <= 600


@pytest.mark.parametrize("method", ["tgdt", "aladin"])
def test_two_stage_models_record_every_inference_mode(tmp_path, mini_cache, fixture_root, method, mini_cfg):
    from itr_lib.runs import run_rows
    out = train(mini_cfg(method=method, epochs=1, dim=32,
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


def test_feature_summary_totals_the_benchmark_rows(tmp_path):
    from itr_lib.report import feature_summary
    csv = tmp_path / "fe.csv"
    csv.write_text("dataset,split,kind,items,seconds,items_per_s,model,device,cpus,machine,load_1min\n"
                   "x,train,image,100,10,10,m,cpu,2,m,1.0\nx,train,text,400,2,200,m,cpu,2,m,1.0\n"
                   "x,test,image,50,15,3.3,m,cpu,2,m,2.5\nx,test,text,100,2,50,m,cpu,2,m,2.5\n")
    lines = feature_summary(csv)
    assert "- X: 150 images and 500 captions in 29 s (6.0 images/s, 125 captions/s, 1-min load 2.5)" in lines
    assert feature_summary(tmp_path / "missing.csv") == []


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
