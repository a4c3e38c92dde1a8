"""The explorer's logic on runs trained on the 12-image fixture: rankings against brute force, ground truth,
bad input (empty / long / unknown-words queries, no checkpoint, missing image file)."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from itr_lib.explore import Explorer, ExploreError, default_methods, trained_methods


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mini_cache, fixture_root):
    """A results folder with a baseline and a TGDT run of the fixture (2 epochs each, D=32)."""
    from itr_lib.config import TrainConfig
    from itr_lib.runs import run_grid
    root, _ = mini_cache
    out = tmp_path_factory.mktemp("explore") / "results"
    base = dict(dataset="mini", data_root=str(fixture_root), cache_dir=str(root), dim=32, batch_size=8, epochs=2,
                progress=False, region_drop=0.0, token_drop=0.0, threads=1)
    cfgs = [TrainConfig(method="baseline", **base), TrainConfig(method="tgdt", val_images_per_epoch=2, **base)]
    run_grid(cfgs, out, progress=False)
    return out, str(fixture_root), str(root)


@pytest.fixture(scope="module")
def explorer(trained):
    out, data_root, cache = trained
    return Explorer(out, "mini", data_root=data_root, cache_dir=cache)


def label_of(ex, method):
    return next(lab for lab, e in ex.entries.items() if e.method == method)


def test_methods_found_by_config(explorer):
    methods = sorted(e.method for e in explorer.entries.values())
    assert methods == ["baseline", "tgdt"]
    # side by side: the best recorded mR first, the baseline beside it
    picks = default_methods(explorer.available)
    assert picks[0] == explorer.available.sort_values("mr", ascending=False).label.iloc[0]
    assert sorted(picks) == sorted([label_of(explorer, "baseline"), label_of(explorer, "tgdt")])


def test_text_to_image_equals_brute_force_of_the_model_vectors(explorer):
    from itr_lib.index import brute_force_topk
    from itr_lib.scoring import encode_split
    lab = label_of(explorer, "baseline")
    e = explorer.entry(lab)
    data = explorer._data("minilm")
    img, _ = encode_split(e.model, data, outputs="vectors")           # the gallery, encoded independently
    query = "many buildings and green trees"
    q = e.model.text_vectors(explorer.encode_query(e, query))
    ref_scores, ref_ids = brute_force_topk(img["vec"].numpy(), q.numpy(), 2, normalize=False)
    res = explorer.text_to_image(query, lab, k=5)
    assert len(res.hits) == data.n_images == 2                         # k capped at the gallery
    assert [h.index for h in res.hits] == list(ref_ids[0])
    np.testing.assert_allclose([h.score for h in res.hits], ref_scores[0], rtol=1e-4, atol=1e-5)
    assert res.seconds > 0 and res.search == "faiss"


def test_query_of_a_test_caption_marks_its_image(explorer):
    sp = explorer.split
    for j in (0, len(sp.captions) - 1):
        res = explorer.text_to_image(sp.captions[j], label_of(explorer, "baseline"), k=2)
        own = int(sp.txt2img[j])
        key = " ".join(sp.tokens[j]).lower()
        truth = {int(sp.txt2img[t]) for t in range(len(sp.captions)) if " ".join(sp.tokens[t]).lower() == key}
        assert own in truth
        assert {h.index for h in res.hits if h.truth} == truth & {h.index for h in res.hits}
    res = explorer.text_to_image("a plane on the runway of an airport", label_of(explorer, "baseline"), k=2)
    expected = {h.index for h in res.hits} & explorer.truth_images("a plane on the runway of an airport")
    assert {h.index for h in res.hits if h.truth} == expected


def test_query_encoding_matches_the_cached_caption(explorer):
    """The query path (live MiniLM, float16 like the cache) gives the caption's cached vector."""
    from itr_lib.scoring import encode_split
    lab = label_of(explorer, "baseline")
    e = explorer.entry(lab)
    data = explorer._data("minilm")
    _, txt = encode_split(e.model, data, texts=np.array([0]), outputs="vectors")
    q = e.model.text_vectors(explorer.encode_query(e, explorer.split.captions[0]))
    torch.testing.assert_close(q, txt["vec"], rtol=2e-3, atol=2e-3)


def test_two_stage_equals_the_rescorer_over_the_gallery(explorer):
    from itr_lib.scoring import score_matrix
    lab = label_of(explorer, "tgdt")
    e = explorer.entry(lab)
    assert e.search == "two-stage"
    query = "some buildings near a road"
    q = explorer.encode_query(e, query)
    full = score_matrix(e.model, e.gallery["img"], q, fn=e.model.rescore_similarity)[:, 0]
    res = explorer.text_to_image(query, lab, k=2)
    assert [h.index for h in res.hits] == list(np.lexsort((np.arange(len(full)), -full)))
    np.testing.assert_allclose([h.score for h in res.hits], np.sort(full)[::-1], rtol=1e-4, atol=1e-5)


def test_image_to_text_ranks_distinct_captions_and_marks_own(explorer):
    lab = label_of(explorer, "baseline")
    e = explorer.entry(lab)
    sp = explorer.split
    res = explorer.image_to_text(1, lab, k=100)
    iv, tv = e.gallery["image_vectors"][1], e.gallery["text_vectors"]
    ref = np.lexsort((np.arange(len(tv)), -(tv @ iv).astype(np.float64)))
    assert [h.index for h in res.hits] == [int(e.gallery["uniq"][u]) for u in ref]
    own = {" ".join(sp.tokens[j]).lower() for j in sp.img2txt[1]}
    assert [h.truth for h in res.hits] == [" ".join(sp.tokens[h.index]).lower() in own for h in res.hits]
    assert sum(h.truth for h in res.hits) == len(own)
    with pytest.raises(ExploreError, match="not in the mini test split"):
        explorer.image_to_text(99, lab)


def test_compare_two_methods_each_with_its_latency(explorer):
    res = explorer.compare("a large building", default_methods(explorer.available), k=2)
    assert [r.method for r in res] == default_methods(explorer.available)
    assert all(r.seconds > 0 and len(r.hits) == 2 for r in res)


def test_word_maps_for_the_query(explorer):
    maps = explorer.why("green trees and buildings", 0, label_of(explorer, "baseline"))
    assert [m.word for m in maps] == ["green", "trees", "and", "buildings"]
    assert all(m.sim_map.shape == (7, 7) and 0 <= m.region < 49 for m in maps)
    with pytest.raises(ExploreError, match="baseline and SelfAlign"):
        explorer.why("green trees", 0, label_of(explorer, "tgdt"))
    png = explorer.heatmap_png("green trees", 0, label_of(explorer, "baseline"))
    assert png[:4] == b"\x89PNG"


@pytest.mark.parametrize("query,msg", [("", "empty"), ("   ", "empty"), ("word " * 100, "characters long"),
                                       ("xqzvv plorbt", "None of the words"), ("?!.", "no words"),
                                       ("trees " * 35, "word pieces long")])
def test_bad_queries_give_a_message(explorer, query, msg):
    with pytest.raises(ExploreError, match=msg):
        explorer.text_to_image(query, label_of(explorer, "baseline"))


def test_dataset_without_runs_names_the_fix(tmp_path, trained):
    out, data_root, cache = trained
    with pytest.raises(ExploreError, match="No trained run of dataset 'ucm'"):
        Explorer(out, "ucm", data_root=data_root, cache_dir=cache)
    # recorded runs whose checkpoints are absent (a fresh clone): the retrain command of each
    fresh = tmp_path / "full"
    shutil.copytree(out / "metrics", fresh / "metrics")
    avail, missing = trained_methods(fresh, "mini")
    assert avail.empty and sorted(missing.method) == ["baseline", "tgdt"]
    with pytest.raises(ExploreError, match=r"--profile full --retrain 'mini-baseline-"):
        Explorer(fresh, "mini", data_root=data_root, cache_dir=cache)


def test_missing_image_file_is_a_message(tmp_path, trained):
    out, data_root, cache = trained
    shutil.copytree(Path(data_root) / "mini", tmp_path / "mini")
    ex = Explorer(out, "mini", data_root=str(tmp_path), cache_dir=cache)
    assert ex.thumbnail(0)[:4] == b"\x89PNG"
    ex.image_path(0).unlink()
    with pytest.raises(ExploreError, match=f"image file .*{ex.image_path(0).name} is missing"):
        ex.thumbnail(0)


def _find(widget, cls):
    """Every descendant widget carrying CSS class ``cls``."""
    out = [widget] if cls in getattr(widget, "_dom_classes", ()) else []
    for child in getattr(widget, "children", ()):
        out += _find(child, cls)
    return out


def test_app_search_shows_k_cards_and_the_truth_marker(trained):
    from itr_lib.explore_app import ExplorerApp
    out, data_root, cache = trained
    app = ExplorerApp(out, ["mini", "ucm"], data_root=data_root, cache_dir=cache, k=2)
    ex = app.explorer()
    assert app.query.value == ex.split.captions[0]                  # the default query: a test caption
    app.search.click()
    cards = _find(app.t2i_out, "itr-result")
    assert len(cards) == 2 and len(_find(app.t2i_out, "itr-score")) == 2
    truth = _find(app.t2i_out, "itr-truth")
    assert len(truth) == len(ex.truth_images(ex.split.captions[0])) >= 1
    app.query.value = ""
    app.search.click()
    assert "empty" in _find(app.t2i_out, "itr-message")[0].value and not _find(app.t2i_out, "itr-result")
    app.side_go.click()
    assert len(app.side_out.children) == 1 and "empty" in app.side_out.children[0].value
    app.dataset.value = "ucm"                                        # no run of ucm: a message, no exception
    assert "No trained run of dataset &#x27;ucm&#x27;" in _find(app.status, "itr-message")[0].value
    app.search.click()
    assert "No trained run" in _find(app.t2i_out, "itr-message")[0].value


def test_serve_command_names_missing_checkpoints_and_retrains_them(tmp_path, trained, capsys):
    from itr_lib.explore import main
    out, data_root, cache = trained
    fresh = tmp_path / "full"
    shutil.copytree(out / "metrics", fresh / "metrics")             # a fresh clone: records, no checkpoints
    assert main(["--results-dir", str(fresh), "--datasets", "mini", "--check"]) == 2
    cap = capsys.readouterr()
    assert "mini: 0 method(s) with a checkpoint" in cap.out
    assert "--profile full --retrain 'mini-tgdt-" in cap.out and "make explore RETRAIN=mini-baseline-" in cap.err
    assert main(["--results-dir", str(fresh), "--datasets", "mini", "--check", "--retrain", "mini-baseline-*"]) == 0
    cap = capsys.readouterr()
    assert "mini: 1 method(s) with a checkpoint: baseline" in cap.out
    assert (fresh / "runs").is_dir() and len(list((fresh / "runs").glob("mini-baseline-*/best.pt"))) == 1


def test_explore_benchmark_times_every_method_and_counts_ground_truth(trained):
    from itr_lib.bench import time_explore
    out, data_root, cache = trained
    rows = time_explore(out, "mini", n_queries=3, k=1, data_root=data_root, cache_dir=cache)
    assert sorted(r["method"].split(" | ")[0] for r in rows) == ["baseline", "tgdt"]
    ex = Explorer(out, "mini", data_root=data_root, cache_dir=cache)
    queries = [" ".join(t) for t in ex.split.tokens[:6:2]]
    for r in rows:
        assert r["queries"] == 3 and r["gallery_images"] == 2 and 0 < r["ms_median"] <= r["ms_max"]
        top1 = [ex.text_to_image(q, r["method"], k=1).hits[0].truth for q in queries]
        assert r["queries_with_truth_in_top_k"] == sum(top1)


# ----------------------------------------------------------------------------------------------- a first visit
def _with_plan(tmp_path, out, settings: dict, checkpoints=("baseline", "tgdt")) -> Path:
    """A copy of the fixture results whose comparison plan gives each method a setting, keeping the checkpoints
    of ``checkpoints`` only."""
    import pandas as pd
    dst = tmp_path / "full"
    shutil.copytree(out / "metrics", dst / "metrics")
    for run in (out / "runs").iterdir():
        if run.name.split("-")[1] in checkpoints:
            shutil.copytree(run, dst / "runs" / run.name)
    rows = [{"setting": settings[p.stem.split("-")[1]], "key": p.stem.split("-")[1], "dataset": "mini",
             "method": p.stem.split("-")[1], "seed": 0, "run": p.stem, "recorded": True}
            for p in (out / "metrics").glob("*.json")]
    (dst / "tables").mkdir()
    pd.DataFrame(rows).to_csv(dst / "tables" / "comparison_plan.csv", index=False)
    return dst


def test_deployed_methods_first_the_rest_behind_the_toggle(tmp_path, trained):
    from itr_lib.explore_app import ExplorerApp
    out, data_root, cache = trained
    res = _with_plan(tmp_path, out, {"baseline": "study loss", "tgdt": "authors' loss"})
    avail, missing = trained_methods(res, "mini")
    assert list(avail.tier) == ["deployed", "authors' loss"] and missing.empty
    assert avail.label[0] == "baseline"                               # deployed: the method's name alone
    assert avail.label[1].startswith("tgdt | ")                       # the rest: the whole variant
    app = ExplorerApp(res, ["mini"], data_root=data_root, cache_dir=cache, k=2)
    assert app.method.options == ("baseline",) and app.side.options == ("baseline",)
    assert "1 more behind the toggle" in _find(app.status, "itr-message")[0].value
    app.more.value = True
    assert app.method.options == tuple(avail.label) and app.method.value == "baseline"


def test_missing_checkpoints_are_one_collapsed_line_with_the_command(tmp_path, trained):
    from itr_lib.explore_app import ExplorerApp
    out, data_root, cache = trained
    res = _with_plan(tmp_path, out, {"baseline": "study loss", "tgdt": "study loss"}, checkpoints=("baseline",))
    app = ExplorerApp(res, ["mini"], data_root=data_root, cache_dir=cache, k=2)
    lines = _find(app.status, "itr-missing")
    assert len(lines) == 1 and len(app.status.children) == 2            # the status line and the folded one
    html = lines[0].value
    assert html.startswith("<details><summary") and "1 deployed method(s) without a checkpoint (tgdt)" in html
    tgdt = next(p.stem for p in (res / "metrics").glob("mini-tgdt-*.json"))
    assert f"python -m itr_lib.explore --profile full --datasets mini --retrain &#x27;{tgdt}&#x27;" in html
    assert "checkpoint missing" not in str([w.value for w in app.status.children])


def test_nothing_trained_offers_the_baseline_trains_it_then_searches(tmp_path, trained):
    from itr_lib.explore_app import ExplorerApp
    out, data_root, cache = trained
    res = _with_plan(tmp_path, out, {"baseline": "study loss", "tgdt": "study loss"}, checkpoints=())
    app = ExplorerApp(res, ["mini"], data_root=data_root, cache_dir=cache, k=2)
    assert app.train_box.children and app.train_go.description.startswith("Train baseline now")
    assert "Nothing of mini is trained" in _find(app.status, "itr-message")[0].value
    assert not _find(app.t2i_out, "itr-result")
    app.train_cheapest(wait=True)
    assert app.train_bar.value == app.train_bar.max == 2                # the recorded 2 epochs, shown as done
    assert len(list((res / "runs").glob("mini-baseline-*/best.pt"))) == 1
    assert not list((res / "runs").glob("mini-tgdt-*"))                 # only the cheapest deployed model
    assert app.method.options == ("baseline",) and len(_find(app.t2i_out, "itr-result")) == 2
