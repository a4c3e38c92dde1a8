"""Rotation / flip invariance: the D4 transforms, their feature caches, training on random views, test-time
augmentation (itr_lib.dihedral, features, splits, train, scoring)."""
import dataclasses
import glob
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from itr_lib import checkpoints, dihedral
from itr_lib.config import TrainConfig, variant_label
from itr_lib.data import load_dataset, load_image
from itr_lib.features import CacheError, ImageEncoder, ensure_features, image_sidecar, load_image_grid
from itr_lib.metrics import evaluate_split
from itr_lib.scoring import encode_split, evaluate, evaluate_tta, tta_image_vectors
from itr_lib.splits import SplitTensors, load_split_tensors

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- the group
def test_rotation_is_counter_clockwise_and_flip_mirrors_left_right():
    a = np.array([[1, 2], [3, 4]])
    assert dihedral.apply_array(a, "r90").tolist() == [[2, 4], [1, 3]]
    assert dihedral.apply_array(a, "r270").tolist() == [[3, 1], [4, 2]]
    assert dihedral.apply_array(a, "f0").tolist() == [[2, 1], [4, 3]]
    assert dihedral.apply_array(a, "f90").tolist() == [[1, 3], [2, 4]]  # mirror, then rotate


def test_transforms_form_the_dihedral_group():
    a = np.random.default_rng(0).integers(0, 255, (5, 7, 3))  # not square: a wrong axis shows in the shape
    r = lambda x, n: dihedral.apply_array(x, n)
    assert np.array_equal(r(r(r(r(a, "r90"), "r90"), "r90"), "r90"), a)
    assert not np.array_equal(r(r(a, "r90"), "r90"), a)
    assert np.array_equal(r(r(a, "f0"), "f0"), a)  # the flip is an involution
    for k in (0, 90, 180, 270):
        assert np.array_equal(r(a, f"f{k}"), r(r(a, "f0"), f"r{k}"))
        assert np.array_equal(r(r(a, f"f{k}"), f"f{k}"), a)  # every reflection is an involution
    images = {n: r(a, n) for n in dihedral.TRANSFORMS}
    assert len({v.tobytes() + bytes(v.shape) for v in images.values()}) == 8  # eight distinct transforms
    for x in dihedral.TRANSFORMS:  # closed under composition
        for y in dihedral.TRANSFORMS:
            xy = r(r(a, x), y)
            assert any(v.shape == xy.shape and np.array_equal(v, xy) for v in images.values()), (x, y)


def test_pil_transforms_equal_numpy_transforms():
    a = np.random.default_rng(1).integers(0, 255, (6, 9, 3), dtype=np.uint8)
    for n in dihedral.TRANSFORMS:
        assert np.array_equal(np.asarray(dihedral.apply_pil(Image.fromarray(a), n)), dihedral.apply_array(a, n)), n


def test_unknown_repeated_or_empty_transforms_are_errors():
    with pytest.raises(ValueError, match=r"unknown image transform 'r45'; valid: r0, r90, r180, r270, f0"):
        TrainConfig(image_transforms=["r0", "r45"])
    with pytest.raises(ValueError, match=r"repeats \['r90'\]"):
        TrainConfig(image_transforms=["r90", "r90"])
    with pytest.raises(ValueError, match="is empty"):
        TrainConfig(image_transforms=[])
    with pytest.raises(ValueError, match="not the string"):
        TrainConfig(image_transforms="r90")


def test_variant_label_names_the_transforms():
    base = {"method": "baseline", "base_loss": "infonce", "false_negatives": "mask", "epochs": 6}
    assert variant_label(base) == "baseline | infonce +FN-mask | 6 ep"
    assert variant_label({**base, "image_transforms": None}) == "baseline | infonce +FN-mask | 6 ep"
    assert variant_label({**base, "image_transforms": list(dihedral.ROTATIONS)}) == \
        "baseline | infonce +FN-mask | 6 ep | rot4"
    assert variant_label({**base, "image_transforms": list(dihedral.TRANSFORMS)}).endswith("| d4")
    assert variant_label({**base, "image_transforms": ["r0", "f0"]}).endswith("| r0+f0")


def test_recorded_runs_keep_their_identity_and_name():
    """The new field enters a run's identity only when set: every recorded run's config still has the identity it
    was recorded with, and the name derived from it."""
    paths = sorted(glob.glob(str(REPO / "results" / "*" / "metrics" / "*.json")))
    recorded = [json.loads(Path(p).read_text()) for p in paths]
    recorded = [m for m in recorded if "config_identity" in m and "config" in m]
    if not recorded:
        pytest.skip("no recorded runs under results/*/metrics")
    for m in recorded:
        cfg = TrainConfig.from_dict(m["config"])
        assert "image_transforms" not in cfg.identity()
        assert cfg.identity() == m["config_identity"], m["run"]
        h = hashlib.sha1(json.dumps(m["config_identity"], sort_keys=True).encode()).hexdigest()[:8]
        if m["run"].endswith(h):  # names of the current scheme (older history runs were named otherwise)
            assert cfg.run_name() == m["run"]
    set_ = TrainConfig.from_dict({**recorded[0]["config"], "image_transforms": ["r0", "r90"]})
    assert set_.identity()["image_transforms"] == ["r0", "r90"] and set_.run_name() != recorded[0]["run"]


# ----------------------------------------------------------------------------------------------- caches
@pytest.fixture(scope="module")
def tf_cache(tmp_path_factory, mini_cache, fixture_root):
    """The mini caches copied, plus r90 and f0 image caches of train and test (12 images x 2 transforms)."""
    root = tmp_path_factory.mktemp("dihedral") / "cache"
    shutil.copytree(mini_cache[0], root)
    rows = ensure_features("mini", ["train", "test"], data_root=fixture_root, root=root, progress=False,
                           benchmark=False, transforms=["r0", "r90", "f0"])
    return root, rows


def test_transform_caches_are_built_beside_the_plain_one(tf_cache, fixture_root):
    root, rows = tf_cache
    built = {(r["split"], r["kind"]) for r in rows if r["built"]}
    assert built == {(s, k) for s in ("train", "test") for k in ("image.r90", "image.f0")}  # r0 and text reused
    assert all(r["items_per_s"] > 0 for r in rows if r["built"])  # the extraction cost is measured
    d = root / "mini"
    ds = load_dataset("mini", fixture_root)
    plain = json.loads((d / "test.image.efficientnet-lite2-224.json").read_text())
    assert "transform" not in plain and plain == image_sidecar(ds, ds.split("test"))  # today's sidecar, unchanged
    side = json.loads((d / "test.image.efficientnet-lite2-224.r90.json").read_text())
    assert side["transform"] == "r90" and {k: v for k, v in side.items() if not k.startswith("transform")} == plain
    assert np.load(d / "train.image.efficientnet-lite2-224.f0.npy").shape == (8, 49, 1280)


def test_cached_transform_equals_direct_extraction_of_the_transformed_image(tf_cache, fixture_root):
    root, _ = tf_cache
    ds = load_dataset("mini", fixture_root)
    paths = ds.split("test").image_paths
    enc = ImageEncoder()
    plain = load_image_grid(ds, "test", "r0", root=root).astype(np.float32)
    for name, k, flip in (("r90", 1, False), ("f0", 0, True)):
        grid = load_image_grid(ds, "test", name, root=root).astype(np.float32)
        imgs = []
        for p in paths:  # the transform done with numpy on the pixels, independently of dihedral.apply_pil
            a = np.asarray(load_image(p))
            a = a[:, ::-1] if flip else a
            imgs.append(Image.fromarray(np.ascontiguousarray(np.rot90(a, k))))
        np.testing.assert_allclose(grid, enc.encode(imgs, 224), atol=2e-2, rtol=1e-2)
        assert np.abs(grid - plain).max() > 0.5  # and it is not the untransformed grid


def test_cache_of_another_transform_is_rejected_with_the_field_named(tf_cache, fixture_root, tmp_path):
    root = tmp_path / "cache"
    shutil.copytree(tf_cache[0], root)
    d = root / "mini"
    for ext in ("npy", "json"):  # r90's cache where r180's belongs
        shutil.copy(d / f"test.image.efficientnet-lite2-224.r90.{ext}", d / f"test.image.efficientnet-lite2-224.r180.{ext}")
    with pytest.raises(CacheError, match=r"r180\.npy was built for another request: sidecar field 'transform' is "
                                         r"'r90', the request needs 'r180'.*--splits test --transforms r180"):
        load_image_grid("mini", "test", "r180", data_root=fixture_root, root=root)
    for ext in ("npy", "json"):  # the plain cache where r270's belongs
        shutil.copy(d / f"test.image.efficientnet-lite2-224.{ext}", d / f"test.image.efficientnet-lite2-224.r270.{ext}")
    with pytest.raises(CacheError, match=r"sidecar field 'transform' is None, the request needs 'r270'"):
        load_image_grid("mini", "test", "r270", data_root=fixture_root, root=root)
    with pytest.raises(CacheError, match=r"f90\.npy .*does not exist\. Fix: build it with `python -m itr_lib.features "
                                         r".*--dataset mini --splits test --transforms f90`"):
        load_image_grid("mini", "test", "f90", data_root=fixture_root, root=root)


def test_cli_rejects_an_unknown_transform_before_extracting(fixture_root, tmp_path, capsys):
    from itr_lib.features import main
    rc = main(["--data-root", str(fixture_root), "--dataset", "mini", "--cache-dir", str(tmp_path), "--splits", "test",
               "--transforms", "r0", "r45", "--no-progress"])
    assert rc == 2 and "unknown image transform 'r45'; valid: r0, r90" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.npy"))  # nothing was built


# ----------------------------------------------------------------------------------------------- training
def test_missing_transform_cache_stops_training_with_the_command(tf_cache, mini_cfg):
    from itr_lib.train import train
    cfg = mini_cfg(image_transforms=["r0", "r180"], cache_dir=str(tf_cache[0]), epochs=1)
    with pytest.raises(CacheError, match=r"r180\.npy .*does not exist.*--splits train --transforms r180"):
        train(cfg)


def test_train_batch_takes_each_image_from_its_view(tf_cache, mini_cfg):
    cfg = mini_cfg(cache_dir=str(tf_cache[0]))
    tr = load_split_tensors(cfg, "train", transforms=["r0", "r90", "f0"])
    assert tr.view_names == ["r0", "r90", "f0"] and tr.views["r0"] is tr.images
    ii, view = torch.tensor([5, 1, 2, 7]), torch.tensor([2, 0, 1, 2])
    b = tr.train_batch(ii, cfg, True, np.zeros(8, dtype=np.int64), view=view)
    grids = {n: np.load(Path(tf_cache[0]) / "mini" / f"train.image.efficientnet-lite2-224{dihedral.cache_suffix(n)}.npy")
             for n in tr.view_names}
    for row, i, v in zip(b.regions, ii.tolist(), view.tolist()):
        assert np.array_equal(row.numpy(), grids[tr.view_names[v]][i])
    with pytest.raises(ValueError, match=r"loaded with the views \['r0', 'r90', 'f0'\], not 'r180'"):
        tr.image_batch(ii, view="r180")


def _record_views(monkeypatch):
    seen = []
    orig = SplitTensors.train_batch

    def spy(self, ii, cfg, multi, one_caption, gen=None, vocab_size=None, view=None):
        seen.append(None if view is None else view.tolist())
        return orig(self, ii, cfg, multi, one_caption, gen, vocab_size, view)
    monkeypatch.setattr(SplitTensors, "train_batch", spy)
    return seen


def test_training_draws_views_per_image_and_step_reproducibly(tf_cache, mini_cfg, tmp_path, monkeypatch):
    from itr_lib.train import train
    seen = _record_views(monkeypatch)
    kw = dict(cache_dir=str(tf_cache[0]), image_transforms=["r0", "r90", "f0"], epochs=3, batch_size=4)
    out = train(dataclasses.replace(mini_cfg(**kw), run_dir=str(tmp_path / "a")))
    first = list(seen)
    assert len(first) == 6 and all(len(v) == 4 for v in first)  # 2 steps x 3 epochs, one draw per image
    flat = [x for v in first for x in v]
    assert set(flat) == {0, 1, 2}  # every view is drawn
    assert len({tuple(v) for v in first}) > 1  # and the draws change from step to step
    assert out["config"]["image_transforms"] == ["r0", "r90", "f0"]
    seen.clear()
    train(dataclasses.replace(mini_cfg(**kw), run_dir=str(tmp_path / "b")))
    assert seen == first  # deterministic under the seed
    seen.clear()
    train(dataclasses.replace(mini_cfg(**{**kw, "seed": 1}), run_dir=str(tmp_path / "c")))
    assert seen != first


def test_without_transforms_training_is_unchanged(tf_cache, mini_cfg, tmp_path, monkeypatch):
    """image_transforms=None draws nothing and leaves every other random stream alone: a run with the identity
    as its only transform trains bit-identically (it reads the same grid), a run with two transforms does not."""
    from itr_lib.train import train
    seen = _record_views(monkeypatch)
    kw = dict(cache_dir=str(tf_cache[0]), epochs=2, batch_size=4, region_drop=0.2, token_drop=0.2)
    none_cfg = mini_cfg(**kw)
    assert none_cfg.image_transforms is None and "image_transforms" not in none_cfg.identity()
    runs = {}
    for name, tf in (("none", None), ("r0", ["r0"]), ("two", ["r0", "r90"])):
        cfg = dataclasses.replace(mini_cfg(**kw, image_transforms=tf), run_dir=str(tmp_path / name))
        runs[name] = (train(cfg), checkpoints.load(tmp_path / name / "last.pt")["model"])
    assert seen[:4] == [None] * 4
    assert runs["r0"][0]["run"] != runs["none"][0]["run"]  # the field set: another run
    for k, v in runs["none"][1].items():
        assert torch.equal(v, runs["r0"][1][k]), k
    assert [h["loss_total"] for h in runs["none"][0]["history"]] == [h["loss_total"] for h in runs["r0"][0]["history"]]
    assert any(not torch.equal(v, runs["two"][1][k]) for k, v in runs["none"][1].items())


# ----------------------------------------------------------------------------------------------- TTA
@pytest.fixture
def tiny(tf_cache, mini_cfg):
    from itr_lib.train import make_model

    def make(**kw):
        cfg = mini_cfg(cache_dir=str(tf_cache[0]), **kw)
        torch.manual_seed(0)
        return make_model(cfg).eval(), load_split_tensors(cfg, "train", transforms=["r0", "r90", "f0"])
    return make


def test_tta_with_the_identity_alone_is_plain_evaluation(tiny):
    model, data = tiny()
    plain = evaluate(model, data, with_ranks=True)
    tta = evaluate_tta(model, data, ["r0"], with_ranks=True)
    assert set(tta) == set(plain)
    for k in plain:
        if k == "_ties":
            assert all(np.array_equal(a, b) for a, b in zip(tta[k][0].to_arrays("x").values(),
                                                            plain[k][0].to_arrays("x").values()))
        elif k == "_ranks":
            assert all(np.array_equal(a, b) for a, b in zip(tta[k], plain[k]))
        else:
            assert tta[k] == plain[k], k  # exactly, not approximately


@pytest.mark.parametrize("kw", [{}, {"method": "selfalign", "lca": True, "cra": True, "codebook_size": 8}])
def test_tta_vectors_are_the_renormalised_mean(tiny, kw):
    model, data = tiny(**kw)
    names = ["r0", "r90", "f0"]
    per_view = [encode_split(model, data, outputs="vectors", view=n)[0]["vec"].double() for n in names]
    mean = sum(per_view) / 3
    norm = sum(v.norm(dim=1, keepdim=True) for v in per_view) / 3  # 1 for the baseline, sqrt(1.5) with CRA
    ref = mean / mean.norm(dim=1, keepdim=True) * norm
    vec, secs = tta_image_vectors(model, data, names)
    np.testing.assert_allclose(vec.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(vec.numpy(), per_view[0].numpy(), atol=1e-3)  # the views do change the vectors
    # the metrics are those of the naive score matrix
    txt = encode_split(model, data, outputs="vectors")[1]["vec"].double()
    naive = evaluate_split((ref @ txt.t()).numpy(), data.img2txt, data.txt2img)
    res, info = evaluate_tta(model, data, names, return_details=True)
    assert res["standard"] == pytest.approx(naive["standard"])
    assert info["image_encodes_per_image"] == 3 and list(info["image_encode_seconds"]) == names
    assert info["image_encode_seconds_per_image"] > 0


def test_tta_refuses_scores_that_are_not_inner_products_and_missing_views(tiny, mini_cfg):
    model, data = tiny(method="tgdt", dim=32, extra={"heads": 2})
    with pytest.raises(ValueError, match="not an inner product"):
        evaluate_tta(model, data, ["r0", "r90"])
    model, data = tiny()
    with pytest.raises(ValueError, match=r"not 'r180'. Fix: load it with load_split_tensors"):
        evaluate_tta(model, data, ["r0", "r180"])
