"""The trainable text top (itr_lib.models.text_top) and its MiniLM hidden-state caches (features --text-cut)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from itr_lib.features import CacheError, TextEncoder, ensure_features, load_features
from itr_lib.models import BUILDERS, _load_plugins, build_model
from itr_lib.models.base import RetrievalModel
from itr_lib.models.text_top import TextTop, attach_text_top

_load_plugins()  # the registry in full (tgdt, aladin, scan, mrsw) before the tests are parametrised over it
# one MiniLM BertLayer: q, k, v, o (4 x (384 x 384 + 384)), FFN 384 -> 1536 -> 384, two LayerNorms (2 x 768)
BERT_LAYER_PARAMS = 4 * (384 * 384 + 384) + (384 * 1536 + 1536) + (1536 * 384 + 384) + 2 * 768


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory, fixture_root):
    """The mini dataset's grids, token states and the hidden_states[5] / [4] caches, in one cache root."""
    root = tmp_path_factory.mktemp("textcut")
    rows = ensure_features("mini", data_root=fixture_root, root=root, progress=False, threads=1, text_cut=[5, 4])
    return root, rows


@pytest.fixture
def tcfg(tmp_path, text_cache, fixture_root):
    from conftest import tiny_config_factory
    return tiny_config_factory(tmp_path, text_cache[0], fixture_root)


def test_text_cut_caches_are_named_and_checked_by_their_cut(text_cache, fixture_root, tmp_path):
    root, rows = text_cache
    built = {(r["split"], r["kind"]): Path(r["path"]) for r in rows}
    assert {k for _, k in built} == {"image", "text", "text.cut5", "text.cut4"}
    path = built[("test", "text.cut4")]
    assert path.name == "test.text.minilm-32.cut4.npy"
    side = json.loads(path.with_suffix(".json").read_text())
    assert (side["text_cut"], side["kind"], side["dim"], side["dtype"]) == (4, "text-hidden", 384, "float16")
    feats = load_features("mini", "test", data_root=fixture_root, root=root, text_cut=5)
    base = load_features("mini", "test", data_root=fixture_root, root=root)
    assert feats.text.shape == base.text.shape == (10, 32, 384)
    assert not np.array_equal(feats.text, base.text)  # the states below the last layer, not the token states
    pad = np.arange(32)[None, :] >= base.text_lengths[:, None]
    assert not np.abs(np.asarray(feats.text)[pad]).any()  # zero-padded like the token-state cache
    # one pass filled both cuts as a build of its own fills one
    ensure_features("mini", ["test"], data_root=fixture_root, root=tmp_path, progress=False, threads=1, text_cut=4)
    np.testing.assert_array_equal(np.load(tmp_path / "mini" / path.name), np.load(path))
    # a cache built for another cut is refused: the file, the field and the command are named
    other = root / "mini"
    for ext in (".npy", ".json"):
        shutil.copy(other / f"test.text.minilm-32.cut4{ext}", tmp_path / "mini" / f"test.text.minilm-32.cut5{ext}")
    with pytest.raises(CacheError, match=r"cut5\.npy was built for another request: sidecar field 'text_cut' is 4"
                                         r".*--splits test --text-cut 5"):
        load_features("mini", "test", data_root=fixture_root, root=tmp_path, text_cut=5)
    with pytest.raises(CacheError, match="--text-cut 3"):  # never built: the error names the command
        load_features("mini", "test", data_root=fixture_root, root=root, text_cut=3)


@pytest.mark.parametrize("layers", [1, 2])
def test_cached_state_forward_equals_the_full_minilm(text_cache, fixture_root, layers):
    """The top on the float16 hidden-state cache reproduces MiniLM's full forward (float32, computed here) on the
    same captions, on every valid position (measured: max |diff| 0.0017 on values up to 5.5, relative L2 3e-4,
    the float16 rounding of the cached input); tolerance: 1e-2 absolute, 1e-3 relative. Padding is zero."""
    from itr_lib.data import load_dataset
    root, _ = text_cache
    ds = load_dataset("mini", fixture_root)
    feats = load_features(ds, "test", root=root, text_cut=6 - layers)
    lengths = torch.from_numpy(feats.text_lengths.astype(np.int64))
    valid = torch.arange(32)[None, :] < lengths[:, None]
    with torch.no_grad():
        out = TextTop(layers)(torch.from_numpy(np.array(feats.text)), valid).numpy()
    enc = TextEncoder()
    ids, lens = enc.tokenize(list(ds.split("test").captions))
    full = enc.encode_ids(ids, lens)
    v = valid.numpy()
    np.testing.assert_allclose(out[v], full[v], atol=1e-2)
    assert np.linalg.norm(out[v] - full[v]) / np.linalg.norm(full[v]) < 1e-3
    assert not out[~v].any()
    np.testing.assert_array_equal(enc.encode_ids(ids, lens, layer=6 - layers).astype(np.float16), feats.text)


def test_zero_layers_is_todays_path(tcfg):
    from itr_lib.train import make_optimizer
    cfg = tcfg()
    assert not {"text_top_layers", "text_top_lr_factor"} & set(cfg.identity()) and cfg.text_cut is None
    model = build_model(cfg)
    assert getattr(model, "text_top", None) is None and not any(k.startswith("text_top") for k in model.state_dict())
    assert len(make_optimizer(cfg, model)[0].param_groups) == 1
    assert tcfg(text_top_layers=1).run_name() != cfg.run_name() and tcfg(text_top_layers=2).text_cut == 4
    from dataclasses import asdict
    from itr_lib.config import variant_label
    assert "text top" not in variant_label(asdict(cfg))
    assert variant_label(asdict(tcfg(text_top_layers=2, text_top_lr_factor=0.1))).endswith("| text top 2 lyr x0.1 lr")
    with pytest.raises(ValueError, match="text_top_lr_factor"):
        tcfg(text_top_lr_factor=0.3)
    with pytest.raises(ValueError, match="text_top_layers"):
        tcfg(text_top_layers=3)


def test_gradients_reach_only_the_text_top_and_the_heads(tcfg):
    from itr_lib.splits import load_split_tensors
    from itr_lib.train import make_optimizer, multi_caption, train_step
    cfg = tcfg(text_top_layers=2, text_top_lr_factor=0.5, token_drop=0.2)
    model = build_model(cfg)
    top = model.text_top
    assert sum(p.numel() for p in top.parameters()) == 2 * BERT_LAYER_PARAMS
    heads = {n for n, _ in build_model(tcfg()).named_parameters()}
    assert {n for n, _ in model.named_parameters()} == heads | {f"text_top.{n}" for n, _ in top.named_parameters()}
    opt, _ = make_optimizer(cfg, model)
    assert [g["lr"] for g in opt.param_groups] == [cfg.lr, cfg.lr * 0.5]
    assert [len(g["params"]) for g in opt.param_groups] == [len(heads), len(list(top.parameters()))]
    before = {k: v.clone() for k, v in top.named_parameters()}
    tr = load_split_tensors(cfg, "train")
    ref = load_split_tensors(tcfg(), "train")
    assert tr.text.shape == ref.text.shape and not torch.equal(tr.text, ref.text)  # the hidden_states[4] cache
    model.train()
    assert not top.training  # dropout off
    batch = tr.train_batch(torch.arange(8), cfg, multi_caption(cfg, model), np.zeros(8, dtype=np.int64))
    train_step(model, opt, batch, 0, cfg.grad_clip)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in top.parameters())
    assert all(not torch.equal(p, before[n]) for n, p in top.named_parameters())  # every top weight moved
    assert not batch.text.requires_grad and not batch.regions.requires_grad  # the cached inputs never train


def test_token_drop_keeps_the_caption_length_as_the_attention_mask(text_cache, fixture_root):
    """A dropped word still feeds the top's attention (the mask is the caption's length, as when the cache was
    filled); only padding is masked and zeroed."""
    root, _ = text_cache
    feats = load_features("mini", "test", data_root=fixture_root, root=root, text_cut=5)
    x = torch.from_numpy(np.array(feats.text[:2])).float()
    lengths = torch.from_numpy(feats.text_lengths[:2].astype(np.int64))
    full = torch.arange(32)[None, :] < lengths[:, None]
    holes = full.clone()
    holes[:, 2] = False  # a dropped word
    top = TextTop(1)
    with torch.no_grad():
        torch.testing.assert_close(top(x, holes), top(x, full))
        short = top(x, full & (torch.arange(32)[None, :] < lengths[:, None] - 1))  # a shorter caption differs
    assert not torch.allclose(short[:, 1], top(x, full)[:, 1])


@pytest.mark.parametrize("method", sorted(BUILDERS))
def test_every_method_consumes_the_adapted_states(tcfg, method):
    own = {"selfalign": {"cra": True}, "baseline": {}}.get(method, {"pooling": "gpo"})  # gpo: the default, unread
    cfg = tcfg(method=method, text_top_layers=1, **own)
    model = build_model(cfg).eval()
    states = torch.randn(2, 12, 384)
    mask = torch.arange(12)[None, :] < torch.tensor([[12], [7]])
    word = mask & (torch.arange(12)[None, :] > 0)
    with torch.no_grad():
        via_top = model.encode_texts(states, mask, word)
        direct = model.encode_tokens(model.text_top(states, mask), mask, word)
        frozen = model.encode_tokens(states, mask, word)
    vec = model.text_vectors(via_top)
    torch.testing.assert_close(vec, model.text_vectors(direct))
    assert not torch.allclose(vec, model.text_vectors(frozen))


def test_gru_and_models_that_skip_the_top_are_refused(tcfg):
    with pytest.raises(ValueError, match="text_encoder='gru' reads GloVe word ids"):
        tcfg(text_encoder="gru", text_top_layers=1)
    from itr_lib.train import make_model
    gru_model = make_model(tcfg(text_encoder="gru"))
    with pytest.raises(ValueError, match="GloVe word ids"):
        attach_text_top(gru_model, 1, "gru")

    class Own(RetrievalModel):
        def encode_texts(self, text, text_mask, word_mask):
            return {}
    with pytest.raises(ValueError, match="Own overrides encode_texts"):
        attach_text_top(Own(), 1)


def test_checkpoint_carries_the_text_top_and_reloads_to_the_same_scores(tcfg):
    from itr_lib.scoring import evaluate
    from itr_lib.splits import load_split_tensors
    from itr_lib.train import load_checkpoint, train
    cfg = tcfg(text_top_layers=1, epochs=2, text_top_lr_factor=2.0)
    m = train(cfg)
    assert m["text_top"] == {"layers": 1, "cut": 5, "lr_factor": 2.0, "n_params": BERT_LAYER_PARAMS,
                             "dropout": "off (eval mode)", "attention_mask": "the caption lengths"}
    ck = torch.load(Path(cfg.run_dir) / "best.pt", weights_only=True)
    keys = [k for k in ck["model"] if k.startswith("text_top.")]
    fresh = TextTop(1).state_dict()
    assert len(keys) == len(fresh) and any(not torch.equal(ck["model"][k], fresh[k[9:]]) for k in keys)
    model, cfg2 = load_checkpoint(Path(cfg.run_dir) / "best.pt")
    assert cfg2.text_cut == 5 and torch.equal(model.text_top.layers[0].output.dense.weight,
                                              ck["model"]["text_top.layers.0.output.dense.weight"])
    again = evaluate(model, load_split_tensors(cfg2, "test"), "cpu")["standard"]
    assert again == pytest.approx(m["test"]["standard"])


def test_the_explorer_encodes_a_query_to_the_checkpoints_cut(tcfg, text_cache, fixture_root):
    """A raw query runs MiniLM to the checkpoint's cut, then the model's top: a test caption typed as a query gets
    the vector its cached row gets."""
    from itr_lib.data import load_dataset
    from itr_lib.explore import Entry, Explorer
    from itr_lib.splits import load_split_tensors
    from itr_lib.train import load_checkpoint, train
    cfg = tcfg(text_top_layers=2, epochs=1)
    train(cfg)
    model, cfg2 = load_checkpoint(Path(cfg.run_dir) / "best.pt")
    root, _ = text_cache
    ex = Explorer.__new__(Explorer)
    ex.device, ex._encoder = "cpu", None
    e = Entry.__new__(Entry)
    e.model, e.cfg = model, cfg2
    caption = load_dataset("mini", fixture_root).split("test").captions[0]
    q = ex.encode_query(e, caption)
    data = load_split_tensors(cfg2, "test")
    text, mask, word = data.text_batch(torch.tensor([0]))
    with torch.no_grad():
        cached = model.text_vectors(model.encode_texts(text.float(), mask, word))
    torch.testing.assert_close(model.text_vectors(q), cached, atol=2e-3, rtol=1e-3)


def test_the_text_levers_and_their_caches(fixture_root, tmp_path):
    from itr_lib import recipe
    from itr_lib.recipe.adapt import ensure_cut_caches
    names = [(n, g, ch) for n, g, ch in recipe.ADAPT_LEVERS if g == "text top"]
    assert names == [("text top: last MiniLM layer", "text top", {"text_top_layers": 1}),
                     ("text top: last two MiniLM layers", "text top", {"text_top_layers": 2})]
    root = tmp_path / "cache"
    ensure_features("mini", data_root=fixture_root, root=root, progress=False, threads=1)
    base = dict(data_root=str(fixture_root), cache_dir=str(root), dim=32, batch_size=8, progress=False)
    cfgs = recipe.adapt_configs({"epochs": 1}, "mini", base=base, levers=names)
    assert [c.text_cut for c in cfgs] == [None, 5, 4]
    assert ensure_cut_caches(cfgs, "mini", tmp_path, str(fixture_root), str(root)) == []
    for split in ("train", "val", "test"):
        for cut in (5, 4):
            load_features("mini", split, data_root=fixture_root, root=root, text_cut=cut)  # built, sidecar-checked
