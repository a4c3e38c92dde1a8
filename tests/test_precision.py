"""bf16 autocast of the encoders (itr_lib.precision): agreement with float32, float32 losses, gradients, fallback,
and the runtime field (recorded in metrics.json, outside the run identity)."""
import pytest
import torch

from itr_lib import precision as prec
from itr_lib.bench import study_config
from itr_lib.config import TrainConfig
from itr_lib.models import build_model
from itr_lib.models.base import Batch

METHODS = ["baseline", "selfalign", "tgdt", "aladin", "scan", "mrsw"]
# bf16 keeps 8 bits of mantissa (relative rounding 2**-8 = 0.4%); after a few layers the l2-normalised outputs of
# these tiny models differ from float32 by at most ~0.03 per coordinate (measured: < 0.02)
TOL = 0.03


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(method, **kw):
    torch.manual_seed(0)
    extra = {} if method in ("baseline", "selfalign", "scan", "mrsw") else {"dropout": 0.0}
    sa = dict(lca=True, cra=True, codebook_size=16, cra_topk=8) if method == "selfalign" else {}
    vse = dict(pooling="meanmax") if method in ("baseline", "selfalign") else {}
    cfg = TrainConfig(method=method, dim=32, base_loss="infonce", extra=extra, **sa, **vse, **kw)
    return build_model(cfg)


def _batch(b=4, l=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 4, 5, 3])[:b]
    tmask = torch.arange(l)[None] < lengths[:, None]
    return Batch(torch.randn(b, 49, 1280, generator=g), torch.ones(b, 49, dtype=torch.bool),
                 torch.randn(b, l, 384, generator=g), tmask, tmask & (torch.arange(l)[None] > 0))


def _needs_bf16():
    ok, why = prec.bf16_support()
    if not ok:
        pytest.skip(f"no native bf16 here: {why}")


@pytest.mark.parametrize("method", METHODS)
def test_bf16_forward_agrees_with_fp32_and_outputs_are_float32(method):
    m = _model(method).eval()
    b = _batch()
    outs = {}
    with torch.no_grad():
        for p in ("fp32", "bf16"):
            with prec.policy(p):
                outs[p] = (prec.encode_images(m, b.regions, b.region_mask),
                           prec.encode_texts(m, b.text, b.text_mask, b.word_mask))
    diff = 0.0
    for side in (0, 1):
        for k, v in outs["fp32"][side].items():
            w = outs["bf16"][side][k]
            if torch.is_tensor(v) and v.is_floating_point():
                assert w.dtype == torch.float32, k  # cast back at the encoder boundary
                diff = max(diff, float((w - v).abs().max()))
    assert diff < TOL
    if prec.bf16_support()[0]:
        assert diff > 0  # autocast really ran in bf16 (identical outputs would mean it did nothing)
    with torch.no_grad():  # the score the metrics read is computed in float32 from float32 outputs
        s32, s16 = m.similarity(*outs["fp32"]), m.similarity(*outs["bf16"])
    assert s16.dtype == torch.float32
    assert float((s16 - s32).abs().max()) < 10 * TOL


@pytest.mark.parametrize("method", ["baseline", "selfalign", "tgdt"])
def test_bf16_training_step_float32_losses_and_gradients(method):
    _needs_bf16()
    from itr_lib.train import train_step
    m = _model(method).train()
    seen = set()
    for mod in m.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    captured = {}
    orig = m.compute_loss

    def spy(img, txt, batch, epoch):
        captured["dtypes"] = {v.dtype for d in (img, txt) for v in d.values()
                              if torch.is_tensor(v) and v.is_floating_point()}
        loss, terms = orig(img, txt, batch, epoch)
        captured["loss"] = loss.dtype
        return loss, terms
    m.compute_loss = spy
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    before = {k: p.detach().clone() for k, p in m.named_parameters()}
    with prec.policy("bf16"):
        terms = train_step(m, opt, _batch(), epoch=1, grad_clip=2.0)
    assert torch.bfloat16 in seen  # the encoders' linear layers ran in bf16
    assert captured["dtypes"] == {torch.float32} and captured["loss"] == torch.float32
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    grads = {k: p.grad for k, p in m.named_parameters() if p.grad is not None}
    proj = [k for k in grads if k.endswith("proj.weight")]
    assert proj and all(grads[k].dtype == torch.float32 and grads[k].abs().sum() > 0 for k in proj)
    assert any(not torch.equal(before[k], p) for k, p in m.named_parameters())  # the optimiser stepped


def test_fallback_to_fp32_with_a_logged_reason(monkeypatch, caplog):
    monkeypatch.setattr(prec, "cpu_flags", lambda path="/proc/cpuinfo": {"avx2", "avx512f"})
    with caplog.at_level("WARNING", logger="itr_lib.precision"):
        used, why = prec.resolve("auto")
    assert used == "fp32" and "avx512_bf16" in why
    assert "falling back to float32" in caplog.text
    assert prec.resolve("bf16")[0] == "fp32"
    assert prec.resolve("fp32") == ("fp32", "float32 requested")
    monkeypatch.setattr(prec, "cpu_flags", lambda path="/proc/cpuinfo": {"avx512_bf16"})
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert prec.resolve("auto")[0] == "bf16"
    with pytest.raises(ValueError, match="precision"):
        prec.resolve("fp16")
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="half")
    # outside a policy nothing autocasts
    assert prec.current() == "fp32"
    with prec.policy("bf16"):
        assert prec.current() == "bf16"
    assert prec.current() == "fp32"


def test_cpu_flags_parsed(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert prec.cpu_flags(f) == {"fpu", "avx512f", "avx512_bf16", "amx_bf16"}
    assert prec.cpu_flags(tmp_path / "missing") is None
    f.write_text("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nstepping\t: 1\n"
                 "flags\t\t: fpu avx512_bf16\n\nprocessor\t: 1\nmodel name\t: other\n")
    assert prec.cpu_id(f) == "AMD EPYC (family 25, model 17, stepping 1; bf16: avx512_bf16)"
    assert prec.cpu_id(tmp_path / "missing") == "unknown"


def test_precision_is_runtime_and_recorded(mini_cfg):
    """Old run names stay valid (the field is outside the identity); the run records what it used."""
    assert study_config("tgdt", "ucm", 0).run_name() == "ucm-tgdt-minilm-s0-7d1c8c9b"  # a committed record
    assert study_config("tgdt", "ucm", 0, precision="bf16").run_name() == "ucm-tgdt-minilm-s0-7d1c8c9b"
    from itr_lib.train import train
    m = train(mini_cfg(precision="auto", epochs=1))
    assert m["precision"] == prec.resolve("auto")[0]
    assert "precision" not in m["config_identity"] and m["config"]["precision"] == "auto"


@pytest.mark.parametrize("method", ["tgdt", "scan"])
def test_fp32_path_is_bitwise_the_old_one(method):
    """Outside a bf16 policy (every tool that re-scores a checkpoint, and precision='fp32') the encoders' outputs and
    the scores are bit-identical to calling the model directly, as before the lever existed."""
    m = _model(method).eval()
    b = _batch()
    with torch.no_grad():
        img, txt = prec.encode_images(m, b.regions, b.region_mask), prec.encode_texts(m, b.text, b.text_mask,
                                                                                       b.word_mask)
        img0, txt0 = m.encode_images(b.regions, b.region_mask), m.encode_texts(b.text, b.text_mask, b.word_mask)
        for new, old in ((img, img0), (txt, txt0)):
            assert all(torch.equal(new[k], old[k]) for k in old if torch.is_tensor(old[k]))
        assert torch.equal(m.similarity(img, txt), m.similarity(img0, txt0))


@pytest.mark.parametrize("method", METHODS)
def test_cached_features_enter_the_bf16_linear_without_a_float32_copy_bit_identically(method, monkeypatch):
    """precision.linear_input casts the float16 caches straight to autocast's bf16: a bf16 training step's losses
    and gradients are bit-identical to the float32 copy that autocast then cast (every float16 value converts the
    same way, checked exhaustively)."""
    _needs_bf16()
    from itr_lib.models import encoders, fine, interactive, vse
    from itr_lib.train import train_step
    h = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.float16)
    h = h[torch.isfinite(h)]
    assert torch.equal(h.bfloat16().view(torch.int16), h.float().bfloat16().view(torch.int16))
    b = _batch()
    b = Batch(b.regions.half(), b.region_mask, b.text.half(), b.text_mask, b.word_mask)  # as the caches hold them
    out = []
    for cast in (prec.linear_input, lambda x: x.float()):
        for mod in (vse, interactive, fine):
            monkeypatch.setattr(mod, "linear_input", cast, raising=False)
        m = _model(method).train()
        opt = torch.optim.SGD(m.parameters(), lr=0.0)
        with prec.policy("bf16"):
            terms = train_step(m, opt, b, epoch=1, grad_clip=0.0)
        out.append((terms, {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}))
    assert out[0][0] == out[1][0] and out[0][1].keys() == out[1][1].keys() and out[0][1]
    assert all(torch.equal(out[0][1][k], out[1][1][k]) for k in out[0][1])
