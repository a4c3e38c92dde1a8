"""Word-object analysis: quadrant bookkeeping, the mosaic pointing game against oracles, word-piece grouping,
concept / retrieval bookkeeping, run lookup and atomic figure saving. Fast: no MiniLM or EfficientNet
forward pass (only the MiniLM tokenizer is loaded); the encoders are replaced by colour-coded fakes."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from itr_lib import plots as viz, wordobj
from itr_lib.data import DataError
from itr_lib.wordobj import make_mosaic, quadrant_regions, region_quadrant

# ----------------------------------------------------------------------------------------------- fakes
PALETTE = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255)],
                   dtype=np.float32)
CLASSES = ["beach", "forest", "desert", "airport", "church", "stadium"]  # one colour each; one-piece names


class ColourImageEncoder:
    """Grid 'features': the one-hot palette colour of each 32x32 cell, row-major like EfficientNet's."""

    def encode(self, images, size=224):
        out = []
        for im in images:
            arr = np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float32)
            g = size // 32
            cells = arr.reshape(g, 32, g, 32, 3).mean((1, 3)).reshape(g * g, 3)
            idx = ((cells[:, None, :] - PALETTE[None]) ** 2).sum(-1).argmin(1)
            out.append(np.eye(len(PALETTE), dtype=np.float32)[idx])
        return np.stack(out)


class ColourTextEncoder:
    """'MiniLM states': a class's name piece -> its colour one-hot; every other piece -> zeros."""

    max_length = 32

    def __init__(self):
        self.tokenizer = wordobj.get_tokenizer()
        self.piece_class = {self.tokenizer.convert_tokens_to_ids(c): k for k, c in enumerate(CLASSES)}

    def tokenize(self, captions):
        enc = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="np")
        return enc["input_ids"].astype(np.int32), enc["attention_mask"].sum(1).astype(np.int32)

    def encode_ids(self, ids, lengths):
        out = np.zeros((len(ids), ids.shape[1], len(PALETTE)), dtype=np.float32)
        for b, row in enumerate(ids):
            for p, t in enumerate(row[:lengths[b]]):
                if int(t) in self.piece_class:
                    out[b, p, self.piece_class[int(t)]] = 1.0
        return out


class OracleModel(nn.Module):
    """'pre' = the features themselves: a class word peaks exactly on the regions of its colour."""

    text_kind = "minilm"

    def __init__(self, flip: bool = False):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.flip = flip

    @staticmethod
    def _norm(x):
        return x / (x.norm(dim=-1, keepdim=True) + 1e-8)

    def encode_images(self, regions, mask):
        r = regions.flip(1) if self.flip else regions  # flipped: region r shows what sits at 195 - r
        return {"pre": self._norm(r.float()), "mask": mask}

    def encode_texts(self, text, text_mask, word_mask):
        return {"pre": self._norm(text.float()), "mask": text_mask}


def _solid(rgb, size=224):
    from PIL import Image
    return Image.new("RGB", (size, size), tuple(int(v) for v in rgb))


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    """A tiny Karpathy-format dataset: 2 solid-colour test images per class, captions naming the class."""
    root = tmp_path_factory.mktemp("synth_data")
    img_dir = root / "synth" / "images"
    img_dir.mkdir(parents=True)
    images, sid = [], 0
    for k, cls in enumerate(CLASSES):
        for n in range(2):
            fn = f"{cls}_{n + 1}.png"
            _solid(PALETTE[k]).save(img_dir / fn)
            sents = []
            for raw in (f"a {cls} with some trees .", f"there is a {cls} near a road .", "a road ."):
                sents.append({"raw": raw, "tokens": raw.split(), "sentid": sid})
                sid += 1
            images.append({"filename": fn, "split": "test", "sentences": sents})
    (root / "synth" / "dataset_synth.json").write_text(json.dumps({"dataset": "synth", "images": images}))
    return root


# ----------------------------------------------------------------------------------------------- quadrants
def test_region_quadrant_bookkeeping():
    assert region_quadrant(0) == 0 and region_quadrant(6) == 0
    assert region_quadrant(7) == 1 and region_quadrant(13) == 1
    assert region_quadrant(7 * 14) == 2 and region_quadrant(7 * 14 + 6) == 2
    assert region_quadrant(7 * 14 + 7) == 3 and region_quadrant(195) == 3
    assert region_quadrant(6 * 14 + 7) == 1  # last row of the top half, right half
    q = region_quadrant(np.arange(196))
    assert np.bincount(q).tolist() == [49, 49, 49, 49]
    for quad in range(4):
        regs = quadrant_regions(quad)
        assert len(regs) == 49 and set(region_quadrant(regs).tolist()) == {quad}
    assert sorted(np.concatenate([quadrant_regions(k) for k in range(4)]).tolist()) == list(range(196))
    with pytest.raises(ValueError):
        region_quadrant(196)


def test_mosaic_placement_matches_region_quadrants():
    tiles = [_solid(PALETTE[k], size=256) for k in range(4)]  # 256 px: make_mosaic resizes to 224
    mosaic = make_mosaic(tiles)
    assert mosaic.size == (448, 448)
    px = np.asarray(mosaic)
    for q, (y, x) in enumerate([(100, 100), (100, 300), (300, 100), (300, 300)]):
        assert tuple(px[y, x]) == tuple(PALETTE[q].astype(np.uint8))
    feats = ColourImageEncoder().encode([mosaic], 448)[0]          # (196, P), row-major cells
    assert feats.shape[0] == 196
    assert (feats.argmax(1) == region_quadrant(np.arange(196))).all()


def test_class_conflicts():
    assert wordobj.classes_conflict("denseresidential", "sparseresidential")
    assert wordobj.classes_conflict("mediumresidential", "denseresidential")
    assert wordobj.classes_conflict("bridge", "river")
    assert not wordobj.classes_conflict("beach", "forest")
    assert "storagetanks" in wordobj.aliases_for("storagetanks")
    assert {"tank", "tanks"} <= wordobj.aliases_for("storagetanks")


# ----------------------------------------------------------------------------------------------- pointing game
@pytest.fixture(scope="module")
def pset(synth_root):
    return wordobj.build_pointing_set("synth", "test", n_mosaics=12, seed=3, data_root=synth_root,
                                      image_encoder=ColourImageEncoder(), text_encoder=ColourTextEncoder())


def test_pointing_set_sampling(pset):
    assert pset.n_mosaics == 12 and pset.features.shape == (12, 196, len(PALETTE))
    for imgs, clss in zip(pset.mosaics, pset.classes):
        assert len(set(clss)) == 4
        for i, c in zip(imgs, clss):
            assert pset.image_paths[i].name.startswith(c + "_")
    # 2 unique captions per image name the class ("a road ." does not); duplicates are not scored twice
    assert len(pset.targets) == 12 * 4 * 2
    assert {t.word for t in pset.targets} <= set(CLASSES)


def test_pointing_game_oracle_hits_everything(pset):
    res = wordobj.pointing_game(OracleModel(), "synth", pointing_set=pset)
    assert res["n_words"] == 96 and res["hits"] == 96 and res["hit_rate"] == 1.0 == res["class_mean_rate"]
    assert all(d["rate"] == 1.0 for d in res["per_class"].values())
    lo, hi = res["ci_wilson"]
    assert lo > 0.9 and hi == 1.0
    assert res["chance"] == 0.25


def test_pointing_game_wrong_quadrant_scores_zero(pset):
    res = wordobj.pointing_game(OracleModel(flip=True), "synth", pointing_set=pset)
    assert res["hits"] == 0 and res["hit_rate"] == 0.0
    assert all(r["pred_quadrant"] == 3 - r["quadrant"] for r in res["records"])
    overall, per_class = wordobj.pointing_table({"flip": res, "oracle": wordobj.score_pointing(OracleModel(), pset)})
    assert overall.set_index("model").loc["oracle", "hit_rate"] == 1.0
    assert set(per_class["class"]) <= set(CLASSES)
    diff = wordobj.pointing_difference(res, wordobj.score_pointing(OracleModel(), pset), n_boot=200)
    assert diff["difference"] == 1.0 and diff["only_b"] == 96 and diff["only_a"] == 0


def test_pointing_game_needs_four_classes(synth_root, tmp_path):
    data = json.loads((synth_root / "synth" / "dataset_synth.json").read_text())
    data["images"] = [im for im in data["images"] if im["filename"].split("_")[0] in CLASSES[:3]]
    (tmp_path / "few" / "images").mkdir(parents=True)
    for im in data["images"]:
        os.symlink(synth_root / "synth" / "images" / im["filename"], tmp_path / "few" / "images" / im["filename"])
    (tmp_path / "few" / "dataset_few.json").write_text(json.dumps({**data, "dataset": "few"}))
    with pytest.raises(DataError, match="needs 4"):
        wordobj.build_pointing_set("few", n_mosaics=2, data_root=tmp_path, image_encoder=ColourImageEncoder(),
                                   text_encoder=ColourTextEncoder())


def test_interval_helpers():
    lo, hi = wordobj.wilson_interval(25, 100)
    assert lo < 0.25 < hi and 0.16 < lo and hi < 0.35
    hits = np.array([1, 1, 0, 0, 1, 0, 1, 1], dtype=bool)
    lo, hi = wordobj.cluster_bootstrap(hits, np.array([0, 0, 1, 1, 2, 2, 3, 3]), n_boot=500)
    assert 0 <= lo <= hits.mean() <= hi <= 1


# ----------------------------------------------------------------------------------------------- words
def test_word_pieces_group_into_words():
    tok = wordobj.get_tokenizer()
    cap = "many storagetanks near a baseballfield ."
    words = wordobj.caption_words(cap, tok)
    assert [w.text for w in words] == ["many", "storagetanks", "near", "a", "baseballfield", "."]
    ids = tok(cap, truncation=True, max_length=32)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert [p for w in words for p in w.pieces] == list(range(1, len(ids) - 1))  # [CLS], [SEP] skipped
    for w in words:
        assert "".join(pieces[p].removeprefix("##") for p in w.pieces) == w.text
    assert len(words[1].pieces) > 1 and len(words[4].pieces) > 1
    # truncation keeps only the pieces that fit
    long_words = wordobj.caption_words(" ".join(["storagetanks"] * 20), tok, max_length=32)
    assert max(p for w in long_words for p in w.pieces) == 30


class RandomStatesEncoder(ColourTextEncoder):
    def encode_ids(self, ids, lengths):
        rng = np.random.default_rng(0)
        return rng.standard_normal((len(ids), ids.shape[1], 384)).astype(np.float32)


@pytest.mark.parametrize("lca", [False, True])
@pytest.mark.parametrize("n_regions", [49, 196])
def test_word_maps_shapes(lca, n_regions):
    from itr_lib.models import VSEModel
    torch.manual_seed(0)
    model = VSEModel(dim=16, pooling="mean", lca=lca, codebook_size=8).eval()
    regions = np.random.default_rng(1).standard_normal((n_regions, 1280)).astype(np.float16)
    maps = wordobj.word_maps(model, regions, "two storagetanks near a road .", RandomStatesEncoder())
    assert [m.word for m in maps] == ["two", "storagetanks", "near", "a", "road"]
    g = 7 if n_regions == 49 else 14
    for word, sim, region, concept in maps:
        assert sim.shape == (g, g) and region == int(sim.argmax())
        assert np.all(np.abs(sim) <= 1 + 1e-5)
        assert (concept is None) != lca and (concept is None or 0 <= concept < 8)


# ----------------------------------------------------------------------------------------------- concepts, retrieval
def _fake_split_data(n_images=6, caps_per_image=2, seed=0):
    tok = wordobj.get_tokenizer()
    captions = [f"a {CLASSES[i % 6]} with {'many' if j else 'some'} trees ." for i in range(n_images)
                for j in range(caps_per_image)]
    enc = tok(captions, padding="max_length", truncation=True, max_length=32, return_tensors="np")
    rng = np.random.default_rng(seed)
    img2txt = [list(range(i * caps_per_image, (i + 1) * caps_per_image)) for i in range(n_images)]
    split = SimpleNamespace(captions=captions, image_paths=[f"img{i}.png" for i in range(n_images)],
                            filenames=[f"img{i}.png" for i in range(n_images)], img2txt=img2txt,
                            txt2img=np.repeat(np.arange(n_images), caps_per_image),
                            n_images=n_images, n_texts=len(captions),
                            caption_keys=lambda: [c.lower() for c in captions])
    return SimpleNamespace(split=split, text=torch.from_numpy(rng.standard_normal((len(captions), 32, 384)).astype(np.float16)),
                           lengths=torch.from_numpy(enc["attention_mask"].sum(1).astype(np.int64)),
                           images=torch.from_numpy(rng.standard_normal((n_images, 49, 1280)).astype(np.float16)),
                           n_images=n_images, n_texts=len(captions))


def test_concept_analysis_bookkeeping():
    from itr_lib.models import VSEModel
    torch.manual_seed(0)
    model = VSEModel(dim=16, pooling="mean", lca=True, codebook_size=8).eval()
    data = _fake_split_data()
    rep = wordobj.concept_analysis(model, data, n_patches=3, chunk=4)
    assert rep.region_usage.sum() == 6 * 49
    assert rep.word_usage.sum() == 12 * 5          # 5 words per caption, "." not counted
    counted = sum(c for words in rep.top_words.values() for _, c in words)
    assert counted == 12 * 2                       # stop words ("a", "with", "some", "many") excluded
    assert all(w not in wordobj.STOP_WORDS for words in rep.top_words.values() for w, _ in words)
    for k, patches in rep.top_patches.items():
        scores = [s for _, _, s in patches]
        assert len(patches) == 3 and scores == sorted(scores, reverse=True)
        assert len({i for i, _, _ in patches}) == 3  # one region per image
    s = rep.summary()
    assert 0 < s["used_by_regions"] <= 1 and 1 <= s["perplexity_regions"] <= 8
    assert rep.table(top=None).shape[0] == 8
    with pytest.raises(ValueError, match="LCA"):
        wordobj.concept_analysis(VSEModel(dim=16, pooling="mean"), data)
    assert wordobj.usage_entropy(np.array([5, 0, 0])) == 0.0
    assert wordobj.usage_entropy(np.array([1, 1, 1, 1])) == pytest.approx(np.log(4))


def test_retrieval_examples_marks_correct():
    data = _fake_split_data(n_images=4, caps_per_image=2)
    sims = np.zeros((4, 8))
    sims[1, 2] = sims[1, 3] = 1.0     # image 1 ranks its own captions first
    sims[2, 0] = 2.0                  # caption 0 (image 0) ranks image 2 first
    ex = wordobj.retrieval_examples(None, data, k=3, sims=sims, text_queries=[0], image_queries=[1])
    t = ex["t2i"][0]
    assert t["hits"][0]["image"] == 2 and not t["hits"][0]["correct"]
    assert any(h["correct"] for h in t["hits"]) and t["gt_rank"] == 2
    i = ex["i2t"][0]
    assert [h["correct"] for h in i["hits"][:2]] == [True, True] and i["gt_rank"] == 1
    df = wordobj.retrieval_examples_frame(ex)
    assert len(df) == 6 and set(df["direction"]) == {"t2i", "i2t"}


# ----------------------------------------------------------------------------------------------- figures
def test_save_fig_writes_png_and_svg_atomically(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    written = viz.save(fig, tmp_path / "figs" / "line.png")
    assert [p.name for p in written] == ["line.png", "line.svg"]
    png, svg = written
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in svg.read_bytes()
    first = svg.read_bytes()
    viz.save(fig, tmp_path / "figs" / "line")
    assert svg.read_bytes() == first                    # fixed hash salt, no date: identical bytes
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["line.png", "line.svg"]

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(RuntimeError):
        viz.save(fig, tmp_path / "figs" / "line")
    assert svg.read_bytes() == first                    # the old file survives a failed write
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["line.png", "line.svg"]  # no temp left
    plt.close(fig)


def test_plot_helpers_run(tmp_path, pset):
    import matplotlib.pyplot as plt
    img = _solid(PALETTE[0])
    sim = np.zeros((7, 7))
    sim[2, 3] = 1
    maps = [("beach", sim, 17, 3), ("road", sim[::-1], 31, None)]
    figs = [viz.plot_caption_word_maps(img, maps, "a beach"),
            viz.plot_word_maps_compare(img, {"baseline": maps, "lca": maps}, "a beach"),
            viz.plot_codebook_usage(np.array([5, 0, 2]), np.array([1, 1, 1]))]
    res = {"oracle": wordobj.score_pointing(OracleModel(), pset),
           "flip": wordobj.score_pointing(OracleModel(flip=True), pset)}
    overall, per_class = wordobj.pointing_table(res)
    figs.append(viz.plot_pointing_game(overall, per_class))
    assert viz.crop_region(img, 48).shape == (32, 32, 3)
    for n, f in enumerate(figs):
        viz.save(f, tmp_path / f"f{n}")
        plt.close(f)
    assert len(list(tmp_path.glob("*.png"))) == len(figs)
