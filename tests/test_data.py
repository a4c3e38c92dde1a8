"""Loader round-trip on the committed fixture, index maps, statistics, and every bad input's error."""
import json

import pytest

from conftest import shared_data_or_skip
from itr_lib.data import DataError, load_dataset, load_image, scene_class


def _write(tmp_path, images, name="toy"):
    d = tmp_path / name
    (d / "images").mkdir(parents=True)
    (d / f"dataset_{name}.json").write_text(json.dumps({"dataset": name, "images": images}))
    return d / f"dataset_{name}.json"


def _rec(fn, split, caps):
    return {"filename": fn, "split": split, "sentences": [{"raw": c, "tokens": c.split()} for c in caps]}


def test_fixture_round_trip(fixture_root):
    raw = json.loads((fixture_root / "mini" / "dataset_mini.json").read_text())
    ds = load_dataset("mini", root=fixture_root)
    assert ds.split_names == ["train", "val", "test"]
    for name in ds.split_names:
        sp = ds.split(name)
        recs = [r for r in raw["images"] if r["split"] == name]
        assert sp.filenames == [r["filename"] for r in recs]
        assert sp.captions == [s["raw"].strip() for r in recs for s in r["sentences"]]
        assert all(p.is_file() for p in sp.image_paths)
        for i, caps in enumerate(sp.img2txt):
            assert all(sp.txt2img[j] == i for j in caps)
        assert sorted(j for c in sp.img2txt for j in c) == list(range(sp.n_texts))
    ds.check_images(decode=True)


def test_any_number_of_captions_and_test_only_dataset(tmp_path):
    path = _write(tmp_path, [_rec("a.jpg", "test", ["one cap"]), _rec("b.jpg", "test", ["x y", "x z", "w"]),
                             _rec("c.jpg", "test", ["p q", "r"])])
    ds = load_dataset(path)
    assert ds.split_names == ["test"]
    sp = ds.split("test")
    assert sp.img2txt == [[0], [1, 2, 3], [4, 5]]
    assert sp.txt2img.tolist() == [0, 1, 1, 1, 2, 2]
    with pytest.raises(DataError, match="no image has split 'train'.*present: \\['test'\\]"):
        ds.split("train")
    sub = sp.subset(2)
    assert sub.img2txt == [[0], [1, 2, 3]] and sub.n_texts == 4


def test_name_resolution_by_env_and_argument(tmp_path, monkeypatch):
    _write(tmp_path, [_rec("a.jpg", "test", ["a b"])])
    monkeypatch.setenv("ITR_DATA_ROOT", str(tmp_path))
    assert load_dataset("toy").split("test").n_images == 1
    monkeypatch.delenv("ITR_DATA_ROOT")
    assert load_dataset("toy", root=tmp_path).name == "toy"


def test_missing_root_and_json(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"data root .*nowhere.* does not exist\. Fix: .*--data-root"):
        load_dataset("rsicd", root=tmp_path / "nowhere")
    monkeypatch.setenv("ITR_DATA_ROOT", str(tmp_path / "gone"))
    with pytest.raises(DataError, match=r"ITR_DATA_ROOT"):
        load_dataset("rsicd")
    with pytest.raises(DataError, match=r"dataset_flickr30k\.json not found .*Fix"):
        load_dataset("flickr30k", root=tmp_path)
    with pytest.raises(DataError, match=r"missing\.json does not exist"):
        load_dataset(tmp_path / "missing.json")


def test_malformed_json_and_records(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [ {"filename": "a.jpg", }')
    with pytest.raises(DataError, match=r"bad\.json is not valid JSON \(line 1"):
        load_dataset(bad)
    bad.write_text('{"dataset": "x"}')
    with pytest.raises(DataError, match=r"field 'images'"):
        load_dataset(bad)
    path = _write(tmp_path, [{"split": "test", "sentences": [{"raw": "a"}]}], "nofile")
    with pytest.raises(DataError, match=r"images\[0\] has no field 'filename'"):
        load_dataset(path)
    path = _write(tmp_path, [{"filename": "a.jpg", "split": "test"}], "nosent")
    with pytest.raises(DataError, match=r"images\[0\] \('a\.jpg'\) has no field 'sentences'"):
        load_dataset(path)


def test_empty_caption_is_dropped_with_warning_or_raises(tmp_path, caplog):
    path = _write(tmp_path, [_rec("a.jpg", "train", ["a field", "  ", "green trees"])])
    with pytest.raises(DataError, match=r"a\.jpg'\): sentences\[1\].* empty caption\. Fix"):
        load_dataset(path, empty_captions="error")
    ds = load_dataset(path)
    assert ds.split("train").captions == ["a field", "green trees"]
    assert "dropped 1 empty caption" in caplog.text and "a.jpg sentences[1]" in caplog.text
    path = _write(tmp_path, [_rec("b.jpg", "train", ["."])], "allempty")
    with pytest.raises(DataError, match="every caption is empty"):
        load_dataset(path)


def test_missing_and_corrupt_images(tmp_path):
    path = _write(tmp_path, [_rec("gone.jpg", "test", ["a b"])])
    ds = load_dataset(path)
    with pytest.raises(DataError, match=r"(?s)1 bad image.*gone\.jpg .*field 'filename'.*missing.*Fix"):
        ds.check_images()
    corrupt = tmp_path / "toy" / "images" / "gone.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=r"gone\.jpg cannot be decoded .*Fix"):
        load_image(corrupt)


def test_check_images_reports_every_bad_file_at_once(tmp_path):
    from PIL import Image
    recs = [_rec(f"{n}.jpg", split, ["a b"]) for n, split in (("ok", "train"), ("trunc", "val"), ("gone", "test"),
                                                              ("junk", "test"))]
    path = _write(tmp_path, recs)
    img_dir = tmp_path / "toy" / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (200, 10, 10)).save(img_dir / "ok.jpg")
    Image.new("RGB", (64, 64), (20, 100, 10)).save(img_dir / "trunc.jpg")
    data = (img_dir / "trunc.jpg").read_bytes()
    (img_dir / "trunc.jpg").write_bytes(data[: len(data) // 2])  # a truncated JPEG: the header alone is fine
    (img_dir / "junk.jpg").write_bytes(b"not an image at all")
    ds = load_dataset(path)
    with pytest.raises(DataError) as err:
        ds.check_images()
    msg = str(err.value)
    assert "3 bad image file(s)" in msg
    for name, why in (("trunc.jpg", "cannot be decoded"), ("gone.jpg", "missing"), ("junk.jpg", "cannot be decoded")):
        assert any(name in line and why in line for line in msg.splitlines()), (name, msg)
    assert "ok.jpg" not in msg
    ds.check_images(["train"])  # the good split alone passes


def test_duplicate_aware_maps_and_stats(tmp_path):
    path = _write(tmp_path, [_rec("a.jpg", "test", ["a red roof", "a red roof", "trees"]),
                             _rec("b.jpg", "test", ["trees", "a pond"]),
                             _rec("c.jpg", "test", ["a pond"])])
    sp = load_dataset(path).split("test")
    img2txt_dup, txt2imgs = sp.duplicate_aware_maps()
    assert [t.tolist() for t in txt2imgs] == [[0], [0], [0, 1], [0, 1], [1, 2], [1, 2]]
    assert img2txt_dup == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5]]
    st = sp.stats()
    assert st["unique_captions"] == 3
    assert st["dup_lines_within_image"] == 1 and st["images_with_repeated_caption"] == 1
    assert st["caption_lines_shared_across_images"] == 4


def test_real_datasets_match_their_readme():
    root = shared_data_or_skip()
    rsicd = load_dataset("rsicd", root=root)
    assert [rsicd.split(s).n_images for s in ("train", "val", "test")] == [7862, 1966, 1093]
    st = rsicd.split("test").stats()
    assert st["captions"] == 5465 and st["caption_lines_shared_across_images"] == 641
    ucm = load_dataset("ucm", root=root).split("test").stats()
    assert (ucm["images"], ucm["unique_captions"], ucm["caption_lines_shared_across_images"]) == (210, 377, 868)
    assert scene_class("rsicd", "airport_348.jpg") == "airport"
    assert scene_class("ucm", "1.jpg", root) == "agricultural"
    assert scene_class("ucm", "2100.jpg", root) == "tenniscourt"
