"""The trainable backbone top (itr_lib.models.adapt) and its activation caches (features --cut)."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from itr_lib.config import TrainConfig
from itr_lib.features import CacheError, ImageEncoder, ensure_features, load_features
from itr_lib.models import BUILDERS, _load_plugins, build_model
from itr_lib.models.adapt import ImageTop, attach_image_top
from itr_lib.models.base import RetrievalModel

REPO = Path(__file__).resolve().parents[1]
_load_plugins()  # the registry in full (tgdt, aladin, scan, mrsw) before the tests are parametrised over it


@pytest.fixture(scope="module")
def cut_cache(tmp_path_factory, fixture_root):
    """The mini dataset's grids plus the block-14 and block-19 activation caches, in one cache root."""
    root = tmp_path_factory.mktemp("cutcache")
    ensure_features("mini", data_root=fixture_root, root=root, progress=False, threads=1)
    rows = ensure_features("mini", data_root=fixture_root, root=root, progress=False, cut=[19, 14], threads=1)
    return root, rows


@pytest.fixture
def top_cfg(tmp_path, cut_cache, fixture_root):
    from conftest import tiny_config_factory
    return tiny_config_factory(tmp_path, cut_cache[0], fixture_root)


def test_cut_caches_are_named_by_their_cut(cut_cache, fixture_root):
    root, rows = cut_cache
    built = {(r["split"], r["kind"]): Path(r["path"]) for r in rows}
    assert {k for _, k in built} == {"image.cut14", "image.cut19", "text"}
    path = built[("test", "image.cut14")]
    assert path.name == "test.image.efficientnet-lite2-224.cut14.npy"
    side = json.loads(path.with_suffix(".json").read_text())
    assert (side["cut"], side["grid"], side["dim"], side["dtype"]) == (14, [14, 14], 120, "float16")
    a14 = np.load(path)
    a19 = np.load(built[("test", "image.cut19")])
    assert a14.shape == (2, 196, 120) and a19.shape == (2, 49, 208) and a14.dtype == np.float16
    feats = load_features("mini", "test", data_root=fixture_root, root=root, cut=19)
    assert feats.images.shape == (2, 49, 208) and feats.grid_cells == 49
    with pytest.raises(CacheError, match="--cut 13"):  # never built: the error names the command
        load_features("mini", "test", data_root=fixture_root, root=root, cut=13)


def test_one_pass_fills_each_cut_as_its_own_build_would(cut_cache, fixture_root, tmp_path):
    root, _ = cut_cache
    ensure_features("mini", ["test"], data_root=fixture_root, root=tmp_path, progress=False, cut=19, threads=1)
    own = np.load(tmp_path / "mini" / "test.image.efficientnet-lite2-224.cut19.npy")
    np.testing.assert_array_equal(own, np.load(root / "mini" / "test.image.efficientnet-lite2-224.cut19.npy"))
    assert json.loads((tmp_path / "mini" / "test.image.efficientnet-lite2-224.cut19.json").read_text()) == \
        json.loads((root / "mini" / "test.image.efficientnet-lite2-224.cut19.json").read_text())


@pytest.mark.parametrize("blocks,cut", [(6, 14), (1, 19)])
def test_cached_activation_forward_equals_full_backbone(cut_cache, fixture_root, blocks, cut):
    """The top on the float16 activation cache reproduces the backbone's grid on the same images: the float16
    rounding of the activations moves the grid by about as much as the float16 rounding of the grid cache itself
    (measured: max |diff| 0.002 on values up to 6, relative L2 2e-4); tolerance: 1e-2 absolute, 1e-3 relative."""
    from itr_lib.data import load_dataset, load_image
    root, _ = cut_cache
    ds = load_dataset("mini", fixture_root)
    acts = load_features(ds, "test", root=root, cut=cut).images
    with torch.no_grad():
        grid = ImageTop(blocks)(torch.from_numpy(np.array(acts))).numpy()
    full = ImageEncoder().encode([load_image(p) for p in ds.split("test").image_paths])
    assert grid.shape == full.shape == (2, 49, 1280)
    np.testing.assert_allclose(grid, full, atol=1e-2)
    assert np.linalg.norm(grid - full) / np.linalg.norm(full) < 1e-3


def _nchw_forward(top, x):
    """The top's forward as the EfficientNet code lays it out: NCHW activations (ImageTop runs channels-last)."""
    b, r, c = x.shape
    side = int(round(r ** 0.5))
    x = x.float().transpose(1, 2).reshape(b, c, side, side)
    for block in top.blocks:
        x = block(x)
    x = top.act(top.bn1(top.conv_head(x)))
    return x.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("blocks", [6, 1])
def test_the_tops_padding_and_layout_are_bit_identical_to_the_efficientnet_forward(blocks):
    """ImageTop gives its stride-1 'same' convolutions their own zero padding instead of the EfficientNet code's
    F.pad on every call, and runs its activations channels-last instead of NCHW: outputs, input gradients and
    parameter gradients bit-identical to the original forward (NCHW, explicit pads)."""
    import copy
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding
    top = ImageTop(blocks)
    # one depthwise convolution per block; the stage's first block (block 15) has stride 2: it keeps its explicit pad
    assert top.symmetric_convs == {6: 5, 1: 1}[blocks]
    assert top.pointwise_convs == {6: 13, 1: 3}[blocks]  # expand + project per block, and the head (default rule:
    orig = copy.deepcopy(top)                            # the same call as the EfficientNet code's, compared below)
    for m in orig.modules():
        if isinstance(m, Conv2dDynamicSamePadding):
            m.__class__ = Conv2dDynamicSamePadding  # back to the explicit pad
    assert not any(hasattr(m, "same_pad") and type(m) is not Conv2dDynamicSamePadding for m in orig.modules())
    g = torch.Generator().manual_seed(0)
    side = 14 if blocks == 6 else 7
    x0 = torch.randn(3, side * side, top.in_channels, generator=g)
    w = torch.randn(3, 49, 1280, generator=g)
    out = []
    for t in (top, orig):
        x = x0.clone().requires_grad_()
        y = t(x) if t is top else _nchw_forward(t, x)
        assert y.shape == (3, 49, 1280)
        (y * w).sum().backward()
        out.append([y.detach(), x.grad] + [p.grad for p in t.parameters()])
    assert len(out[0]) > 10 and all(torch.equal(a, b) for a, b in zip(*out))
    assert list(top.state_dict()) == list(orig.state_dict())  # checkpoints keep their keys
    import pickle
    again = pickle.loads(pickle.dumps(top))  # a model holding the top still pickles (a module-level class)
    assert torch.equal(again(x0), top(x0))


def test_zero_blocks_is_todays_path(mini_cfg):
    """0 trainable blocks: identity, run name, model and optimiser of today's frozen path."""
    from itr_lib.train import make_optimizer
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {
        "image_top_blocks", "image_top_lr_factor", "precision", "text_top_layers", "text_top_lr_factor",
        "compile_scores", "score_precision", "loss_precision", "top_precision"}
    recorded = [r for r in (json.loads(p.read_text()) for p in sorted((REPO / "results" / "full").glob(
        "**/metrics/rsicd-baseline-*.json"))) if set(r["config"]) == fields]  # records of the current schema
    assert len(recorded) >= 3
    for rec in recorded:  # the recorded runs keep their names (the new fields stay out of the identity)
        assert TrainConfig.from_dict(rec["config"]).run_name() == rec["run"]
    cfg = mini_cfg()
    assert not {"image_top_blocks", "image_top_lr_factor"} & set(cfg.identity())
    model = build_model(cfg)
    assert getattr(model, "image_top", None) is None and not any(k.startswith("image_top") for k in model.state_dict())
    opt, _ = make_optimizer(cfg, model)
    assert len(opt.param_groups) == 1
    assert mini_cfg(image_top_blocks=1).run_name() != cfg.run_name()
    with pytest.raises(ValueError, match="image_top_lr_factor"):
        mini_cfg(image_top_lr_factor=0.3)
    with pytest.raises(ValueError, match="image_top_blocks"):
        mini_cfg(image_top_blocks=21)


def test_gradients_reach_only_the_unfrozen_top(top_cfg):
    from itr_lib.splits import load_split_tensors
    from itr_lib.train import make_optimizer, multi_caption, train_step
    cfg = top_cfg(image_top_blocks=1, image_top_lr_factor=0.5)
    model = build_model(cfg)
    top = model.image_top
    # block 20 (715,808 weights) + conv head (450,560) + its BatchNorm (2 x 1,280)
    assert sum(p.numel() for p in top.parameters()) == 715808 + 450560 + 2560
    opt, _ = make_optimizer(cfg, model)
    assert [g["lr"] for g in opt.param_groups] == [cfg.lr, cfg.lr * 0.5]
    stats = {k: v.clone() for k, v in top.state_dict().items() if "running" in k}
    before = {k: v.clone() for k, v in top.named_parameters()}
    tr = load_split_tensors(cfg, "train")
    assert tr.images.shape[1:] == (49, 208)
    model.train()
    assert not top.training  # frozen BatchNorm statistics, no drop-connect
    batch = tr.train_batch(torch.arange(8), cfg, multi_caption(cfg, model), np.zeros(8, dtype=np.int64))
    assert batch.region_mask.shape == (8, 49)
    train_step(model, opt, batch, 0, cfg.grad_clip)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in top.named_parameters() if "bn" not in n)
    assert all(not torch.equal(p, before[n]) for n, p in top.named_parameters())  # every top weight moved
    assert all(torch.equal(v, top.state_dict()[k]) for k, v in stats.items())  # statistics did not
    assert not batch.regions.requires_grad  # the cached activations below the cut are inputs, never trained


@pytest.mark.parametrize("method", sorted(set(BUILDERS) - {"selfalign"}))
def test_every_method_consumes_the_adapted_grid(top_cfg, method):
    cfg = top_cfg(method=method, image_top_blocks=1, **({} if method == "baseline" else {"pooling": "gpo"}))
    model = build_model(cfg).eval()
    acts = torch.randn(2, 49, 208)
    mask = torch.ones(2, 49, dtype=torch.bool)
    with torch.no_grad():
        via_top = model.encode_images(acts, mask)
        direct = model.encode_grid(model.image_top(acts), mask)
    for k, v in direct.items():
        if torch.is_tensor(v):
            torch.testing.assert_close(via_top[k], v)


def test_a_model_that_bypasses_the_top_is_refused():
    class Own(RetrievalModel):
        def encode_images(self, regions, region_mask):
            return {}
    with pytest.raises(ValueError, match="overrides encode_images"):
        attach_image_top(Own(), 1)


def test_checkpoint_carries_the_adapted_top_and_rescores(top_cfg, tmp_path):
    from itr_lib.scoring import evaluate
    from itr_lib.splits import load_split_tensors
    from itr_lib.train import load_checkpoint, train
    cfg = top_cfg(image_top_blocks=1, epochs=2, lr=1e-2)
    out = train(cfg)
    assert out["image_top"]["blocks"] == 1 and out["image_top"]["cut"] == 19
    assert out["config_identity"]["image_top_blocks"] == 1
    ck = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    w = ck["model"]["image_top.conv_head.weight"]
    assert not torch.equal(w, ImageTop(1).conv_head.weight.detach())  # adapted, not the ImageNet weights
    model, cfg2 = load_checkpoint(tmp_path / "run" / "best.pt")
    torch.testing.assert_close(model.image_top.conv_head.weight, w)
    te = load_split_tensors(cfg2, "test")
    assert te.images.shape[1:] == (49, 208)  # the deployed path reads the activations, not the frozen grid
    res = evaluate(model, te)["standard"]
    assert res["rsum"] == pytest.approx(out["test"]["standard"]["rsum"])
    assert dataclasses.asdict(cfg2)["image_top_blocks"] == 1


def test_deployed_inference_runs_through_the_adapted_top(top_cfg, tmp_path, fixture_root, cut_cache):
    """`python -m itr_lib.evaluate` and the word -> region maps read the checkpoint's cut, not the frozen grid."""
    from itr_lib.evaluate import evaluate_checkpoint
    from itr_lib.features import TextEncoder
    from itr_lib.splits import load_split_tensors
    from itr_lib.train import load_checkpoint, train
    from itr_lib.wordobj import word_maps
    out = train(top_cfg(image_top_blocks=6, epochs=1, lr=1e-2))
    ck = tmp_path / "run" / "best.pt"
    scored = evaluate_checkpoint(str(ck), "mini", "test", str(fixture_root), str(cut_cache[0]), progress=False)
    assert scored["standard"]["rsum"] == pytest.approx(out["test"]["standard"]["rsum"])
    model, cfg = load_checkpoint(ck)
    regions = load_split_tensors(cfg, "test").images[0]
    assert regions.shape == (196, 120)
    maps = word_maps(model, regions, "many buildings near a river", TextEncoder())
    assert maps and all(m.sim_map.shape == (7, 7) for m in maps)


def test_adapt_levers_measure_each_top_on_the_recipe_without_rotations(cut_cache, fixture_root, tmp_path):
    """07's adapted-top levers: the reference is the recipe without rotations on the frozen grid; each lever is that
    recipe with the top; rows in the lever table's format, recorded runs reused on a second call."""
    from itr_lib import recipe
    root, _ = cut_cache
    base = dict(data_root=str(fixture_root), cache_dir=str(root), dim=32, batch_size=8, progress=False)
    change = {"image_transforms": ["r0", "r90"], "epochs": 1}
    t = recipe.adapt_levers(change, "mini", tmp_path, base=base, n_boot=50)
    assert list(t.lever) == ["frozen backbone"] + [n for n, _, _ in recipe.ADAPT_LEVERS]
    assert t.change.iloc[0] == "epochs=1" and not t.chosen.any()
    recs = [json.loads((tmp_path / "recipe" / "metrics" / f"{r}.json").read_text()) for r in t.run]
    assert [r["config"]["image_top_blocks"] for r in recs] == [0, 1, 6, 0, 0]
    assert [r["config"].get("text_top_layers", 0) for r in recs] == [0, 0, 0, 1, 2]
    assert all(r["config"]["image_transforms"] is None and r["epochs"] == 1 for r in recs)
    assert t.val_mr.iloc[1] == pytest.approx(recs[1]["val"]["standard"]["rsum"] / 6, abs=0.01)
    assert t.ref_val_mr.iloc[2] == pytest.approx(recs[0]["val"]["standard"]["rsum"] / 6, abs=0.01)
    for r in t.run:  # a second call reuses the records, even with the run folders gone
        import shutil
        shutil.rmtree(tmp_path / "recipe" / "runs" / r)
    again = recipe.adapt_levers(change, "mini", tmp_path, base=base, n_boot=50)
    assert list(again.run) == list(t.run)
    on_ref = recipe.adapt_configs(change, "mini", base=base, on="reference")
    assert [c.epochs for c in on_ref] == [recipe.REFERENCE["epochs"]] * 5 and on_ref[0].image_transforms is None


def test_adapt_plan_names_what_each_lever_changes():
    from itr_lib import recipe
    cut14 = recipe.ADAPT_LEVERS[1][0]
    plan = recipe.adapt_plan({"reference": [n for n, _, _ in recipe.ADAPT_LEVERS], "recipe": [cut14]})
    assert [(on, [n for n, _, _ in lv]) for on, lv in plan] == [
        ("reference", [n for n, _, _ in recipe.ADAPT_LEVERS]), ("recipe", [cut14])]
    assert recipe.adapt_plan({}) == [] and recipe.adapt_plan({"recipe": []}) == []
    with pytest.raises(ValueError, match="unknown key.*'recipe'"):
        recipe.adapt_plan({"recipes": [cut14]})
    with pytest.raises(ValueError, match="unknown lever"):
        recipe.adapt_plan({"recipe": ["image top: everything"]})
    with pytest.raises(ValueError, match="must map"):
        recipe.adapt_plan([cut14])  # the old list form: which point it changes is not said


def test_the_adapted_final_levers_are_combined_greedily_on_val_among_those_on_the_recipe(monkeypatch):
    """The training levers' rule: levers measured alone on the recipe that gain on val, the best of each group
    first, kept while the combined run's val mR rises; the reference's gains and test mR never choose."""
    import pandas as pd
    from itr_lib import recipe
    from itr_lib.recipe import stages
    (n19, _, ch19), (n14, _, ch14), (t1, _, cht1), (t2, _, cht2) = recipe.ADAPT_LEVERS[:4]
    on_ref, on_rec = "adapted top (alone, on the reference)", "adapted top (alone, on the recipe without rotations)"
    t = pd.DataFrame({"stage": [on_ref] * 2 + [on_rec] * 4, "lever": [n19, n14, n19, n14, t1, t2],
                      "val_gain": [9.0, 1.0, 0.5, 2.0, 0.3, 0.4], "test_mr": [0.0, 0.0, 99.0, 1.0, 0.0, 0.0],
                      "chosen": False})
    change = {"epochs": 10, "image_transforms": ["r0", "r90"]}
    trained = []

    def fake_grid(cfgs, results_dir, workers):  # val mR 10 + what each part adds; the two tops add 1.5 together
        (c,) = cfgs
        trained.append((c.image_top_blocks, c.text_top_layers, c.epochs, c.image_transforms))
        v = 10 + {0: 0.0, 1: 0.5, 6: 2.0}[c.image_top_blocks] + {0: 0.0, 1: 0.3, 2: 0.4}[c.text_top_layers] * bonus
        return [{"run": f"r{len(trained)}", "tie_rule": "pessimistic", "val": {"standard": {"rsum": 6 * v}},
                 "test": {"standard": {"mr": v}}}]
    monkeypatch.setattr(stages, "_grid", fake_grid)
    bonus = 1.0  # the text top still adds on top of the image top: both kept, cut 14 first (larger gain)
    trace, (label, ch) = recipe.adapt_greedy(change, t, "mini", "unused")
    assert trace.chosen == [n14, t2] and label == f"{n14} + {t2}" and ch == {**ch14, **cht2}
    assert trained == [(0, 0, 10, None), (6, 0, 10, None), (6, 2, 10, None)]  # never rotations (no view caches)
    assert [s["kept"] for s in trace.steps] == [True, True]
    marked = recipe.mark_chosen(t, trace.chosen)
    assert list(marked.chosen) == [False, False, False, True, False, True]
    bonus, trained[:] = -1.0, []  # together they lose val: the image top alone is carried, under its own name
    trace, (label, ch) = recipe.adapt_greedy(change, t, "mini", "unused")
    assert trace.chosen == [n14] and (label, ch) == (n14, ch14) and [s["kept"] for s in trace.steps] == [True, False]
    with pytest.raises(ValueError, match="no adapted lever raised val"):
        recipe.adapt_greedy(change, t.assign(val_gain=[9.0, 1.0, -0.5, 0.0, 0.0, -1.0]), "mini", "unused")
    with pytest.raises(ValueError, match="measured on the recipe"):
        recipe.adapt_greedy(change, t[t.stage == on_ref], "mini", "unused")


def test_adapted_final_trains_the_recipe_with_the_top_and_scores_views_through_it(cut_cache, fixture_root, tmp_path):
    """The recipe at the adapted operating point: no train rotations, the lever's top; a test-time view is scored
    from its own activation cache (built by the evaluator), and the rows land in the main tables under their own
    setting and on the frontier under their own label."""
    import pandas as pd
    from itr_lib import recipe
    from itr_lib.features import cache_status, image_sidecar
    from itr_lib.data import load_dataset
    from itr_lib.splits import load_split_tensors
    root, _ = cut_cache
    base = dict(data_root=str(fixture_root), cache_dir=str(root), dim=32, batch_size=8, progress=False)
    lever = (recipe.ADAPT_LEVERS[0][0], recipe.ADAPT_LEVERS[0][2])  # block 20 + head: cut 19
    spec = recipe.InferenceSpec(tta=("r0", "r90"))
    f = recipe.adapted_final({"image_transforms": ["r0", "r90"], "epochs": 1}, spec, lever, ["mini"], tmp_path,
                             seeds=[0], variants=["baseline"], base=base, n_boot=20, latency=False)
    assert list(f.scoring) == ["plain", "recipe"] and set(f.operating_point) == {recipe.operating_point(lever[0])}
    rec = json.loads((tmp_path / "recipe" / "metrics" / f"{f.runs.iloc[0]}.json").read_text())
    assert rec["config"]["image_top_blocks"] == 1 and rec["config"]["image_transforms"] is None
    ds = load_dataset("mini", str(fixture_root))
    tag = "efficientnet-lite2-224.cut19.r90"
    for split in ("val", "test"):  # the view's cut cache, sidecar-checked: not the frozen r90 grid
        paths = (root / "mini" / f"{split}.image.{tag}.npy", root / "mini" / f"{split}.image.{tag}.json")
        assert cache_status(*paths, image_sidecar(ds, ds.split(split), "efficientnet-lite2", 224, "r90", 19)) == "ok"
    cfg = recipe.lever_config({**lever[1], "epochs": 1}, "mini", 0, base=base)
    views = load_split_tensors(cfg, "test", transforms=["r0", "r90"])
    assert views.views["r90"].shape == views.images.shape and views.images.shape[1:] == (49, 208)
    assert not torch.equal(views.views["r90"], views.images)  # the rotated image's activations, not a copy
    model, _ = __import__("itr_lib.train", fromlist=["x"]).load_checkpoint(
        tmp_path / "recipe" / "runs" / f.runs.iloc[0] / "best.pt")
    from itr_lib.scoring import tta_image_vectors
    with torch.no_grad():  # the scored vectors: each view through the top, averaged (not the frozen r90 grid)
        by_hand = torch.nn.functional.normalize(sum(
            model.image_vectors(model.encode_images(v, torch.ones(v.shape[:2], dtype=torch.bool))).float()
            for v in (views.images, views.views["r90"])), dim=-1)
    torch.testing.assert_close(tta_image_vectors(model, views, ["r0", "r90"], "cpu", 8)[0], by_hand)
    main = recipe.main_rows(tmp_path, f)
    assert list(main.setting) == ["recipe, adapted top"] and main.variant.iloc[0].endswith(recipe.operating_point(lever[0]))
    # a table written before operating points: its rows stay the frozen "recipe"
    assert list(recipe.main_rows(tmp_path, f.drop(columns="operating_point")).setting) == ["recipe"]
    fr = recipe.frontier_rows(f.assign(ms_per_query=1.0, bytes_per_item=8.0), pd.DataFrame())
    assert list(fr.method) == ["recipe: baseline (plain), adapted top", "recipe: baseline (recipe), adapted top"]


def test_adapt_final_plan_fills_defaults_and_refuses_unknowns():
    from itr_lib import recipe
    plan = recipe.adapt_final_plan([{"dataset": "ucm"}, {"dataset": "rsicd", "seeds": [0, 1], "variants": ["baseline"]}],
                                   [0, 1, 2], ["baseline", "lca+cra"])
    assert plan == [{"dataset": "ucm", "seeds": [0, 1, 2], "variants": ["baseline", "lca+cra"], "levers": None},
                    {"dataset": "rsicd", "seeds": [0, 1], "variants": ["baseline"], "levers": None}]
    (n14, _, ch14), (t2, _, ch2) = recipe.ADAPT_LEVERS[1], recipe.ADAPT_LEVERS[3]
    pinned = recipe.adapt_final_plan([{"dataset": "ucm", "levers": [n14]}, {"dataset": "rsicd", "levers": [t2, n14]}],
                                     [0], ["baseline"])
    assert pinned[0]["levers"] == (n14, ch14)  # the label of the greedy choice when it is that lever alone
    assert pinned[1]["levers"] == (f"{n14} + {t2}", {**ch14, **ch2})  # ADAPT_LEVERS order, changes combined
    with pytest.raises(ValueError, match="unknown lever"):
        recipe.adapt_final_plan([{"dataset": "ucm", "levers": ["image top: everything"]}], [0], ["baseline"])
    with pytest.raises(ValueError, match="non-empty list"):
        recipe.adapt_final_plan([{"dataset": "ucm", "levers": n14}], [0], ["baseline"])
    with pytest.raises(ValueError, match="unknown variant"):
        recipe.adapt_final_plan([{"dataset": "ucm", "variants": ["lca+crx"]}], [0], ["baseline"])
    with pytest.raises(ValueError, match="entries are"):
        recipe.adapt_final_plan([{"datasets": "ucm"}], [0], ["baseline"])


def test_the_image_top_runs_in_float32_under_bf16_autocast(top_cfg):
    """Under precision bf16 the heads autocast, the adapted top does not: its grid equals the float32 top's exactly."""
    from itr_lib import precision as prec
    cfg = top_cfg(image_top_blocks=1)
    model = build_model(cfg).eval()
    acts = torch.randn(2, 49, 208)
    seen = {}
    model.image_top.register_forward_hook(lambda m, i, o: seen.update(dtype=o.dtype, grid=o.detach().clone()))
    with torch.no_grad():
        ref = model.image_top(acts)
        with prec.policy("bf16"), prec.autocast():
            model.encode_images(acts, torch.ones(2, 49, dtype=torch.bool))
    assert seen["dtype"] == torch.float32
    torch.testing.assert_close(seen["grid"], ref, rtol=0, atol=0)


def test_two_adapted_points_get_distinct_labels_in_the_tables_and_the_frontier():
    """The image top alone and the image + text top are two operating points of one dataset: the README's backbone
    column, the frontier's method names and the side-by-side gain table keep them apart."""
    import pandas as pd
    from itr_lib import recipe
    from itr_lib.recipe.records import point_label
    from itr_lib.recipe.summary import operating_point_lines
    img, txt = recipe.ADAPT_LEVERS[1][0], recipe.ADAPT_LEVERS[3][0]
    ops = [recipe.FROZEN, recipe.operating_point(img), recipe.operating_point(f"{img} + {txt}")]
    assert [point_label(o) for o in ops] == ["frozen", "adapted top", "adapted image + text top"]
    f = pd.DataFrame({"dataset": "ucm", "variant": ["baseline", "lca+cra"] * 3, "scoring": "recipe",
                      "operating_point": [o for o in ops for _ in range(2)], "test_mr": 50.0, "test_mr_std": 1.0,
                      "ms_per_query": 2.0, "bytes_per_item": 8.0, "n_seeds": 3,
                      "delta_rsum_vs_baseline": [None, 1.0, None, -2.0, None, 3.0], "ci_lo": [None, -1.0, None, -4.0, None, 1.0],
                      "ci_hi": [None, 3.0, None, -0.5, None, 5.0]})
    fr = recipe.frontier_rows(f, pd.DataFrame())
    assert list(fr.method) == ["recipe: baseline (recipe)", "recipe: lca+cra (recipe)",
                               "recipe: baseline (recipe), adapted top", "recipe: lca+cra (recipe), adapted top",
                               "recipe: baseline (recipe), adapted image + text top",
                               "recipe: lca+cra (recipe), adapted image + text top"]
    text = "\n".join(operating_point_lines(f))
    assert "seeds (frozen / adapted top / adapted image + text top)" in text
    assert "+1.00 [-1.00, +3.00] inconclusive" in text and "-2.00 [-4.00, -0.50] does not hold" in text
    assert "+3.00 [+1.00, +5.00] holds" in text


def test_point_gains_pair_the_seeds_of_two_adapted_points_and_bootstrap_their_hits(monkeypatch, tmp_path):
    """The later adapted point against the first, seed-matched by run name, on the inference records' hits: equal to
    the study's paired bootstrap called by hand; ensemble rows, the frozen point and one-point groups are skipped."""
    import numpy as np
    import pandas as pd
    from itr_lib import recipe
    from itr_lib.metrics import paired_bootstrap
    from itr_lib.recipe import records
    rng = np.random.default_rng(0)
    hits = {}

    def fake(path):
        if path.name not in hits:
            hits[path.name] = (rng.integers(0, 2, (20, 3)).astype(float), rng.integers(0, 2, (100, 3)).astype(float))
        return hits[path.name]
    monkeypatch.setattr(records, "load_spec_hits", fake)
    img, both = recipe.operating_point("image top"), recipe.operating_point("image top + text top")
    f = pd.DataFrame({"dataset": "ucm", "variant": "baseline",
                      "scoring": ["recipe", "recipe", "recipe", "recipe + 3-seed ensemble", "recipe"],
                      "spec": "tta+qb", "tie_rule": "pessimistic", "test_mr": [50.0, 52.0, 51.0, 53.0, 49.0],
                      "operating_point": [recipe.FROZEN, img, both, both, recipe.FROZEN],
                      "runs": ["f-s0-a,f-s1-b", "ucm-baseline-minilm-s0-aa,ucm-baseline-minilm-s1-bb,x-s2-cc",
                               "ucm-baseline-minilm-s1-dd,ucm-baseline-minilm-s0-ee", "e-s0-z", "g-s0-y"]})
    p = recipe.point_gains(tmp_path, f, n_boot=200)
    assert len(p) == 1 and p.iloc[0][["point_a", "point_b", "n_seeds", "test_mr_a", "test_mr_b"]].tolist() == [
        img, both, 2, 52.0, 51.0]
    by_hand = paired_bootstrap([fake(tmp_path / f"tta+qb--ucm-baseline-minilm-s{s}-{h}") for s, h in ((0, "aa"), (1, "bb"))],
                               [fake(tmp_path / f"tta+qb--ucm-baseline-minilm-s{s}-{h}") for s, h in ((0, "ee"), (1, "dd"))],
                               n_boot=200)
    assert p.iloc[0].delta_rsum == round(by_hand["delta_rsum"], 2) and p.iloc[0].ci_lo == round(by_hand["ci_lo"], 2)
    assert p.iloc[0].verdict in ("holds", "does not hold", "inconclusive")
    assert recipe.point_gains(tmp_path, f[f.operating_point != both]).empty  # one adapted point: nothing to compare


def test_the_tops_learning_rate_factor_is_kept_only_when_val_rises_over_the_combination(monkeypatch):
    """The third stage: val's combination retrained with each factor on every top it trains; the best val factor
    is carried only when it beats the combination (trained at 1); test never chooses; the paired gain is the
    study's bootstrap against the combination's hits; the steps extend the greedy trace."""
    import numpy as np
    from itr_lib import metrics, recipe, runs
    from itr_lib.recipe import stages
    (n14, _, ch14), (t2, _, cht2) = recipe.ADAPT_LEVERS[1], recipe.ADAPT_LEVERS[3]
    lever = (f"{n14} + {t2}", {**ch14, **cht2})
    change = {"epochs": 10, "image_transforms": ["r0", "r90"]}
    val_at, test_at, trained = {}, {1.0: 30.0, 0.5: 99.0, 2.0: 10.0}, []

    def fake_grid(cfgs, results_dir, workers):
        (c,) = cfgs
        assert c.image_top_lr_factor == c.text_top_lr_factor and c.image_transforms is None
        f = c.image_top_lr_factor
        trained.append(f)
        return [{"run": f"lr{f:g}", "tie_rule": "pessimistic", "val": {"standard": {"rsum": 6 * val_at[f]}},
                 "test": {"standard": {"mr": test_at[f]}}}]
    rng = np.random.default_rng(0)
    hits = {f"lr{f:g}": (rng.random((20, 3)), rng.random((100, 3))) for f in (1, 0.5, 2)}
    monkeypatch.setattr(stages, "_grid", fake_grid)
    monkeypatch.setattr(runs, "load_hits", lambda d, run: hits[run])
    val_at.update({1.0: 20.0, 0.5: 19.0, 2.0: 21.0})  # 2 beats the combination on val (0.5 has the best test)
    trace = recipe.GreedyTrace(steps=[{"step": 1, "levers": lever[0], "kept": True}], chosen=[n14, t2])
    table, (label, ch) = recipe.adapt_lr(change, lever, [0.5, 2.0], trace, "mini", "unused", n_boot=50)
    assert trained == [1.0, 0.5, 2.0]
    assert label == f"{lever[0]} + tops' learning-rate factor 2"
    assert ch == {**lever[1], "image_top_lr_factor": 2.0, "text_top_lr_factor": 2.0}
    assert list(table.chosen) == [False, True] and list(table.val_gain) == [-1.0, 1.0]
    want = metrics.paired_bootstrap([hits["lr1"]], [hits["lr2"]], n_boot=50)
    assert table.delta_rsum.iloc[1] == round(want["delta_rsum"], 2) and table.ci_lo.iloc[1] == round(want["ci_lo"], 2)
    assert [s["kept"] for s in trace.steps] == [True, False, True] and trace.steps[-1]["step"] == 3
    assert trace.chosen == [n14, t2]  # the catalogue's levers are unchanged (mark_chosen reads them)
    val_at.update({0.5: 20.0, 2.0: 20.0})  # a tie with the combination keeps it, under its own name
    table, kept = recipe.adapt_lr(change, lever, [0.5, 2.0], recipe.GreedyTrace(), "mini", "unused", n_boot=50)
    assert kept == lever and not table.chosen.any()
    for bad in ([1.0], [0.0], [-2.0], [2.0, 2.0], ["2"]):
        with pytest.raises(ValueError, match="ADAPT_LR_FACTORS"):
            recipe.adapt_lr(change, lever, bad, recipe.GreedyTrace(), "mini", "unused")
    with pytest.raises(ValueError, match="trains no backbone top"):
        recipe.adapt_lr(change, ("10 epochs", {"epochs": 10}), [2.0], recipe.GreedyTrace(), "mini", "unused")


def test_top_precision_bf16_moves_the_top_by_rounding_only_and_needs_a_top(top_cfg):
    """TrainConfig.top_precision='bf16' (not adopted): the top's 1 x 1 convolutions take bf16 inputs under the run's
    rule, so the grid moves by bf16 rounding only (not by nothing), gradients reach every top parameter in float32;
    the frozen grid (image_top_blocks=0) cannot honour it; outside the run identity."""
    from itr_lib import precision as prec
    from itr_lib import scorekernel as sk
    if not prec.bf16_support()[0]:
        pytest.skip("no native bf16 here")
    top = ImageTop(1)
    x = torch.randn(2, 49, top.in_channels, generator=torch.Generator().manual_seed(0))
    out = {}
    for name in ("fp32", "bf16"):
        top.zero_grad()
        with sk.policy(sk.resolve("baseline", "off", "fp32", top_precision=name, image_top_blocks=1)):
            y = top(x)
        y.square().mean().backward()
        out[name] = (y.detach(), [p.grad.clone() for p in top.parameters()])
    diff = (out["bf16"][0] - out["fp32"][0]).abs().max().item()
    assert out["bf16"][0].dtype == torch.float32 and 0 < diff < 0.1 * out["fp32"][0].abs().max().item()
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in out["bf16"][1])
    assert sum(int(g.abs().sum() > 0) for g in out["bf16"][1]) == sum(int(g.abs().sum() > 0) for g in out["fp32"][1])
    with pytest.raises(ValueError, match="image_top_blocks=0"):
        TrainConfig(method="baseline", top_precision="bf16")
    with pytest.raises(ValueError, match="top_precision must be one of"):
        TrainConfig(method="baseline", image_top_blocks=1, top_precision="fp16")
    cfg = top_cfg(image_top_blocks=1)
    assert dataclasses.replace(cfg, top_precision="bf16").run_name() == cfg.run_name()
