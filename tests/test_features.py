"""Feature caches: shapes and sidecars, reuse, rebuild on mismatch, errors, resumable chunked builds."""
import json

import numpy as np
import pytest

from itr_lib.data import DataError, load_dataset, load_image
from itr_lib.features import (CacheError, ImageEncoder, TextEncoder, build_array, ensure_features,
                              ensure_image_features, load_features)


def test_caches_have_expected_shapes_and_sidecars(mini_cache, fixture_root):
    root, rows = mini_cache
    assert {(r["split"], r["kind"]) for r in rows} == {(s, k) for s in ("train", "val", "test")
                                                       for k in ("image", "text")}
    f = load_features("mini", "train", data_root=fixture_root, root=root)
    assert f.images.shape == (8, 49, 1280) and f.images.dtype == np.float16
    assert f.text.shape == (40, 32, 384) and f.text.dtype == np.float16
    assert f.text_lengths.min() >= 3 and f.text_lengths.max() <= 32
    side = json.loads((root / "mini" / "train.image.efficientnet-lite2-224.json").read_text())
    assert side["model_id"] == "efficientnet-lite2" and side["input_size"] == 224 and len(side["weights_sha256"]) == 64
    assert side["dataset_json_sha256"] == load_dataset("mini", fixture_root).json_sha256
    # padding rows of the token states are zero
    L = int(f.text_lengths[0])
    assert np.all(f.text[0, L:] == 0) and np.any(f.text[0, :L] != 0)


def test_cached_rows_equal_fresh_encoding(mini_cache, fixture_root):
    root, _ = mini_cache
    f = load_features("mini", "test", data_root=fixture_root, root=root)
    enc = ImageEncoder()
    fresh = enc.encode([load_image(p) for p in f.split.image_paths], 224)
    np.testing.assert_allclose(f.images.astype(np.float32), fresh, atol=2e-2, rtol=1e-2)
    tenc = TextEncoder()
    ids, lens = tenc.tokenize(f.split.captions[:3])
    states = tenc.encode_ids(ids, lens)
    np.testing.assert_allclose(f.text[:3].astype(np.float32), states, atol=2e-2, rtol=1e-2)
    assert np.array_equal(f.text_ids[:3], ids) and np.array_equal(f.text_lengths[:3], lens)


def test_second_call_reuses_and_stale_sidecar_rebuilds(mini_cache, fixture_root):
    root, _ = mini_cache
    rows = ensure_features("mini", ["test"], data_root=fixture_root, root=root, progress=False, benchmark=False)
    assert not any(r["built"] for r in rows)
    side = root / "mini" / "test.image.efficientnet-lite2-224.json"
    meta = json.loads(side.read_text())
    meta["weights_sha256"] = "0" * 64  # as if built with other weights
    side.write_text(json.dumps(meta))
    with pytest.raises(CacheError, match=r"built for another request: sidecar field 'weights_sha256'.*Fix: rebuild"):
        load_features("mini", "test", data_root=fixture_root, root=root)
    ds = load_dataset("mini", fixture_root)
    rep = ensure_image_features(ds, "test", root=root, progress=False)
    assert rep.built
    assert json.loads(side.read_text())["weights_sha256"] != "0" * 64
    load_features("mini", "test", data_root=fixture_root, root=root)


def test_missing_cache_error_names_the_command(tmp_path, fixture_root):
    with pytest.raises(CacheError, match=r"does not exist\. Fix: build it with `python -m itr_lib.features"):
        load_features("mini", "val", data_root=fixture_root, root=tmp_path)


def test_corrupt_image_stops_the_build_with_its_name(tmp_path, fixture_root):
    import shutil
    d = tmp_path / "data" / "mini"
    shutil.copytree(fixture_root / "mini", d)
    victim = sorted((d / "images").iterdir())[0]
    victim.write_bytes(b"broken")
    ds = load_dataset("mini", tmp_path / "data")
    split = next(s for s in ds.split_names if victim.name in ds.split(s).filenames)
    with pytest.raises(DataError, match=rf"{victim.name} cannot be decoded"):
        ensure_image_features(ds, split, root=tmp_path / "cache", progress=False)


def test_build_array_resumes_after_interruption(tmp_path):
    npy, side = tmp_path / "x.npy", tmp_path / "x.json"
    sidecar = {"kind": "test", "v": 1}
    calls = []

    def compute(a, b):
        calls.append((a, b))
        if len(calls) == 3:
            raise KeyboardInterrupt  # interrupted in the third chunk
        return np.arange(a, b, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32), slice(a, b)

    with pytest.raises(KeyboardInterrupt):
        build_array(npy, side, sidecar, (10, 4), np.float32, 10, 3, compute, "t", progress=False)
    assert not npy.exists() and not side.exists()  # nothing half-written looks complete
    calls.clear()

    def compute2(a, b):
        calls.append((a, b))
        return np.arange(a, b, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32), slice(a, b)

    build_array(npy, side, sidecar, (10, 4), np.float32, 10, 3, compute2, "t", progress=False)
    assert calls == [(6, 9), (9, 10)]  # only the missing chunks
    np.testing.assert_array_equal(np.load(npy)[:, 0], np.arange(10))
    assert json.loads(side.read_text()) == sidecar


def test_partial_of_another_request_is_discarded(tmp_path):
    npy, side = tmp_path / "x.npy", tmp_path / "x.json"

    def boom(a, b):
        if a >= 3:
            raise KeyboardInterrupt
        return np.full((b - a, 2), 7, np.float32), slice(a, b)

    with pytest.raises(KeyboardInterrupt):
        build_array(npy, side, {"v": 1}, (6, 2), np.float32, 6, 3, boom, "t", progress=False)
    seen = []

    def ok(a, b):
        seen.append(a)
        return np.full((b - a, 2), 1, np.float32), slice(a, b)

    build_array(npy, side, {"v": 2}, (6, 2), np.float32, 6, 3, ok, "t", progress=False)
    assert seen == [0, 3]
    assert np.all(np.load(npy) == 1)


def test_benchmark_rows_merge_by_dataset_split_kind(tmp_path):
    """A rebuilt cache replaces its own benchmark row and keeps the others; throughput and load are recorded."""
    import csv
    from itr_lib.features import _record_benchmark
    path = tmp_path / "bench.csv"
    row = lambda split, kind, items, secs: {"dataset": "d", "split": split, "kind": kind, "items": items,
                                            "seconds": secs, "items_per_s": round(items / secs, 1)}
    _record_benchmark([row("test", "image", 100, 10.0), row("test", "text", 500, 1.0)], "efficientnet-lite2", "cpu", path)
    _record_benchmark([row("test", "image", 100, 5.0)], "efficientnet-lite2", "cpu", path)
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 2
    img = next(r for r in rows if r["kind"] == "image")
    assert float(img["items_per_s"]) == 20.0 and img["model"] == "efficientnet-lite2"
    assert float(img["load_1min"]) >= 0
