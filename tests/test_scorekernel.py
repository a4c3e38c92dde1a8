"""The score kernels of issue 29 (itr_lib.scorekernel): SCAN's block compiled (the same function up to rounding) and
the bf16 cosine matmul of SCAN / MrSw (scores within bf16 rounding, everything else float32); settings a method cannot
honour are errors; the run records what it used, outside its identity."""
import pytest
import torch
import torch.nn.functional as F

from itr_lib import precision as prec
from itr_lib import scorekernel as sk
from itr_lib.config import TrainConfig
from itr_lib.models import build_model
from itr_lib.models.fine import scan_block_math, scan_t2i_scores
from itr_lib.models.mrsw import mrsw_scores

pytestmark = pytest.mark.usefixtures("one_thread")


def _locals(seed=0, bi=5, bt=7, r=9, l=6, d=16):
    g = torch.Generator().manual_seed(seed)
    v = F.normalize(torch.randn(bi, r, d, generator=g), dim=-1).requires_grad_()
    u = F.normalize(torch.randn(bt, l, d, generator=g), dim=-1).requires_grad_()
    vm = torch.ones(bi, r, dtype=torch.bool)
    vm[1, 6:] = False  # an image with padded regions
    um = torch.arange(l)[None] < torch.tensor([6, 2, 4, 5, 1, 3, 6])[:bt, None]
    return v, vm, u, um


def _scores_and_grads(fn, rule, seed=0, **kw):
    v, vm, u, um = _locals(seed)
    with sk.policy(rule):
        s = fn(v, vm, u, um, **kw)
        w = torch.randn(s.shape, generator=torch.Generator().manual_seed(1))
        (s * w).sum().backward()
    return s.detach(), v.grad, u.grad


EAGER = {"compiled": False, "matmul": "fp32", "strict": False, "why": "test"}


def test_compiled_scan_block_equals_eager():
    if sk.cxx_compiler() is None:
        pytest.skip("no C++ compiler for TorchInductor here")
    rule = sk.resolve("scan", "on", "fp32")
    assert rule["compiled"] and rule["matmul"] == "fp32"
    ref = _scores_and_grads(scan_t2i_scores, EAGER)
    got = _scores_and_grads(scan_t2i_scores, rule)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    # the rule stayed compiled (no silent fallback), and chunked blocks (two caption blocks) agree too
    assert rule["compiled"]
    ref = _scores_and_grads(scan_t2i_scores, EAGER, max_elements=200)
    got = _scores_and_grads(scan_t2i_scores, rule, max_elements=200)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_branchless_block_has_the_same_values():
    v, vm, u, um = _locals()
    with torch.no_grad():
        a = scan_block_math(v, vm, u, um, 9.0, 6.0, 0.1)
        b = scan_block_math(v, vm, u, um, 9.0, 6.0, 0.1, branchless=True)
        vm1 = torch.ones_like(vm)
        c, d = (scan_block_math(v, vm1, u, um, 9.0, 6.0, 0.1, branchless=x) for x in (False, True))
    assert torch.equal(a, b) and torch.equal(c, d)


@pytest.mark.parametrize("fn", [scan_t2i_scores, mrsw_scores])
def test_bf16_score_matmul_within_rounding_and_gradients_flow(fn):
    ok, why = prec.bf16_support()
    if not ok:
        pytest.skip(f"no native bf16 here: {why}")
    low = {**EAGER, "matmul": "bf16"}
    ref = _scores_and_grads(fn, EAGER)
    got = _scores_and_grads(fn, low)
    assert got[0].dtype == torch.float32
    diff = (got[0] - ref[0]).abs().max().item()
    # bf16 inputs of unit-norm 16-d vectors: each cosine moves by < 2**-8 (8 significant bits, |cos| <= 1); the
    # scores add or pool at most 6 words' terms
    assert 0 < diff < 6 * 2 ** -8
    for g in got[1:]:
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    # outside the policy the float32 path is bitwise what it was
    again = _scores_and_grads(fn, EAGER)
    assert all(torch.equal(a, b) for a, b in zip(ref, again))


def test_settings_a_method_cannot_honour_are_errors(monkeypatch):
    with pytest.raises(ValueError, match="nothing to compile"):
        TrainConfig(method="baseline", compile_scores="on")
    with pytest.raises(ValueError, match="nothing to compile"):
        TrainConfig(method="selfalign", compile_scores="on")
    with pytest.raises(ValueError, match="compile_scores"):
        TrainConfig(method="scan", compile_scores="yes")
    with pytest.raises(ValueError, match="score_precision"):
        TrainConfig(method="scan", score_precision="fp16")
    with pytest.raises(ValueError, match="score_precision='bf16'"):
        build_model(TrainConfig(method="aladin", score_precision="bf16"))
    build_model(TrainConfig(method="mrsw", score_precision="bf16"))  # honoured
    build_model(TrainConfig(method="tgdt", score_precision="bf16"))  # honoured: its MrSw term
    # 'auto' is allowed everywhere and compiles only SCAN's block and the MrSw max (MrSw, TGDT, ALADIN)
    assert sk.resolve("baseline", "auto", "fp32")["compiled"] is False
    # no compiler: 'auto' stays eager with the reason, 'on' is an error naming the fix
    monkeypatch.setattr(sk, "cxx_compiler", lambda: None)
    rule = sk.resolve("scan", "auto", "fp32")
    assert rule["compiled"] is False and "no C++ compiler" in rule["why"]
    with pytest.raises(RuntimeError, match="install g\\+\\+"):
        sk.resolve("scan", "on", "fp32")


def test_a_failed_compile_falls_back_to_eager_and_says_so(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("inductor exploded")
    monkeypatch.setattr(sk, "compiled_or_none", lambda fn: broken if sk.current()["compiled"] else None)
    rule = {"compiled": True, "matmul": "fp32", "strict": False, "why": "SCAN block compiled"}
    got = _scores_and_grads(scan_t2i_scores, rule)
    ref = _scores_and_grads(scan_t2i_scores, EAGER)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    with sk.policy(rule):
        pass
    strict = {**rule, "strict": True}
    with pytest.raises(RuntimeError, match="exploded"):
        _scores_and_grads(scan_t2i_scores, strict)


def test_score_kernel_is_runtime_and_recorded(mini_cfg):
    from itr_lib.bench import study_config
    assert study_config("scan", "ucm", 0).run_name() == "ucm-scan-minilm-s0-af43955e"  # a committed record
    assert study_config("scan", "ucm", 0, compile_scores="auto",
                        score_precision="bf16").run_name() == "ucm-scan-minilm-s0-af43955e"
    from itr_lib.train import train
    m = train(mini_cfg(method="mrsw", pooling=TrainConfig.pooling, score_precision="bf16", epochs=1))
    want = "bf16" if prec.bf16_support()[0] else "fp32"
    assert m["score_kernel"]["matmul"] == want and m["score_kernel"]["compiled"] is False
    assert "score_precision" not in m["config_identity"] and m["config"]["score_precision"] == "bf16"


def test_the_study_wide_runtime_settings_reach_the_methods_that_read_them():
    """02's SCORE_PRECISION and LENGTH_BUCKETS go to every planned run; the methods that do not read them keep the
    defaults (their records say what they did) and every planned config builds."""
    from itr_lib.experiments import comparison_configs
    cfgs = comparison_configs(["ucm"], [0], ["baseline", "tgdt", "scan", "mrsw", "lca+cra", "aladin"],
                              base={"score_precision": "bf16", "compile_scores": "auto", "dim": 32,
                                    "length_buckets": 8, "loss_precision": "bf16"})
    got = {c.method if c.method != "selfalign" else "lca+cra": (c.score_precision, c.length_buckets, c.loss_precision)
           for c in cfgs}
    assert got == {"baseline": ("fp32", None, "fp32"), "tgdt": ("bf16", 8, "fp32"), "scan": ("bf16", None, "fp32"),
                   "mrsw": ("bf16", None, "fp32"), "lca+cra": ("fp32", None, "bf16"), "aladin": ("fp32", 8, "fp32")}
    for c in cfgs:
        build_model(c)  # check_config: nothing a method cannot honour


def test_selfalign_loss_matmuls_in_bf16_move_the_loss_by_rounding_only_and_keep_gradients(mini_cfg):
    """TrainConfig.loss_precision='bf16' (the bf16+losses lever): LCA's and CRA's matmuls take bf16 inputs, their
    products are float32; the losses move by bf16 rounding only (not by nothing: the lever is real), gradients reach
    words, regions and codebook in float32; only selfalign honours it, outside the run identity, recorded."""
    from itr_lib import losses as L
    g = torch.Generator().manual_seed(0)
    b, r, m, d, k = 6, 5, 6, 16, 12
    regions = F.normalize(torch.randn(b * r, d, generator=g), dim=-1).requires_grad_()
    region_mask = torch.ones(b, r, dtype=torch.bool)
    words = F.normalize(torch.randn(20, d, generator=g), dim=-1).requires_grad_()
    word_img = torch.randint(0, b, (20,), generator=g)
    codebook = F.normalize(torch.randn(k, d, generator=g), dim=-1).requires_grad_()
    query = F.normalize(torch.randn(m, d, generator=g), dim=-1).requires_grad_()
    owner = torch.randint(0, m, (30,), generator=g)
    flat = F.normalize(torch.randn(30, d, generator=g), dim=-1).requires_grad_()
    out = {}
    for name, rule in (("fp32", EAGER), ("bf16", {**EAGER, "loss_matmul": "bf16"})):
        for t in (regions, words, codebook, query, flat):
            t.grad = None
        with sk.policy(rule):
            lca = L.lca_loss_packed(regions, region_mask, words, word_img, codebook)
            cra = L.cra_loss_packed(query, flat, owner, topk=8)
        (lca + cra).backward()
        assert lca.dtype == cra.dtype == torch.float32
        out[name] = (lca.detach(), cra.detach(), words.grad.clone(), codebook.grad.clone(), query.grad.clone(),
                     flat.grad.clone())
    for a, b_ in zip(out["fp32"], out["bf16"]):
        assert b_.dtype == torch.float32 and torch.isfinite(b_).all()
        torch.testing.assert_close(b_, a, atol=0.05, rtol=0.05)
    assert not all(torch.equal(a, b_) for a, b_ in zip(out["fp32"], out["bf16"]))
    x, y = torch.randn(7, 16, generator=g), torch.randn(16, 5, generator=g)
    with sk.policy({**EAGER, "loss_matmul": "bf16"}):
        torch.testing.assert_close(sk.loss_mm(x, y), (x.bfloat16() @ y.bfloat16()).float())
    assert torch.equal(sk.loss_mm(x, y), x @ y)  # outside the rule: float32
    # the config: selfalign only, runtime, values checked
    with pytest.raises(ValueError, match="loss_precision"):
        build_model(TrainConfig(method="baseline", loss_precision="bf16"))
    with pytest.raises(ValueError, match="loss_precision must be one of"):
        TrainConfig(method="selfalign", lca=True, loss_precision="fp16")
    from itr_lib.bench import study_config
    assert study_config("lca+cra", "ucm", 0, loss_precision="bf16").run_name() == \
        study_config("lca+cra", "ucm", 0).run_name() == "ucm-selfalign-lca-cra-k1024-minilm-s0-c83d959f"
    from itr_lib.train import train
    rec = train(mini_cfg(method="selfalign", lca=True, cra=True, loss_precision="bf16", epochs=1))
    assert rec["score_kernel"]["loss_matmul"] == ("bf16" if prec.bf16_support()[0] else "fp32")
    assert rec["config"]["loss_precision"] == "bf16" and "loss_precision" not in rec["config_identity"]


def test_length_buckets_reach_only_the_methods_listed():
    """02's LENGTH_BUCKETS_METHODS: the buckets lever is adopted per method (its own check on both datasets), so
    LENGTH_BUCKETS reaches the listed methods only; a method without a text transformer cannot be listed."""
    from pathlib import Path
    from itr_lib.cost import notebook_defaults
    from itr_lib.experiments import notebook_grids
    from itr_lib.params import range_errors
    p = notebook_defaults(Path(__file__).resolve().parents[1] / "notebooks" / "02_ablations.ipynb")
    p.update(LENGTH_BUCKETS=8, COMPARISON_DATASETS=["ucm"], COMPARISON_SEEDS=[0],
             COMPARISON_METHODS=["tgdt", "aladin", "scan"])
    for listed, want in ((["aladin"], {"tgdt": None, "aladin": 8, "scan": None}),
                         (["tgdt", "aladin"], {"tgdt": 8, "aladin": 8, "scan": None}),
                         ([], {"tgdt": None, "aladin": None, "scan": None})):
        _, plan = notebook_grids({**p, "LENGTH_BUCKETS_METHODS": listed})
        assert {c.method: c.length_buckets for _, _, c in plan} == want
    assert range_errors({"LENGTH_BUCKETS_METHODS": ["scan"]}) and not range_errors({"LENGTH_BUCKETS_METHODS": []})
    # SCORE_PRECISION the same way: TGDT reads the field (its MrSw term) but gets it only once listed
    p.update(SCORE_PRECISION="bf16")
    for listed, want in ((["scan", "mrsw"], {"tgdt": "fp32", "aladin": "fp32", "scan": "bf16"}),
                         (["scan", "mrsw", "tgdt"], {"tgdt": "bf16", "aladin": "fp32", "scan": "bf16"})):
        _, plan = notebook_grids({**p, "SCORE_PRECISION_METHODS": listed})
        assert {c.method: c.score_precision for _, _, c in plan} == want
    assert range_errors({"SCORE_PRECISION_METHODS": ["aladin"]})


def test_tgdt_local_term_takes_the_bf16_score_matmul_and_records_it(mini_cfg):
    """TGDT's local term is MrSw: under score_precision='bf16' its scores (training loss and the two-stage re-score)
    move by bf16 rounding only, the global term not at all; a TGDT run records the rule it used."""
    ok, why = prec.bf16_support()
    if not ok:
        pytest.skip(f"no native bf16 here: {why}")
    torch.manual_seed(0)
    model = build_model(TrainConfig(method="tgdt", dim=32, score_precision="bf16", extra={"dropout": 0.0})).eval()
    g = torch.Generator().manual_seed(0)
    regions, rmask = torch.randn(3, 49, 1280, generator=g), torch.ones(3, 49, dtype=torch.bool)
    text = torch.randn(4, 6, 384, generator=g)
    tmask = torch.arange(6)[None] < torch.tensor([6, 3, 4, 2])[:, None]
    with torch.no_grad():
        img, txt = model.encode_grid(regions, rmask), model.encode_tokens(text, tmask, tmask)
        out = {}
        for name, rule in (("fp32", EAGER), ("bf16", {**EAGER, "matmul": "bf16"})):
            with sk.policy(rule):
                out[name] = (model.global_similarity(img, txt), model.local_similarity(img, txt),
                             model.rescore_similarity(img, txt))
    assert torch.equal(out["fp32"][0], out["bf16"][0])
    for a, b in zip(out["fp32"][1:], out["bf16"][1:]):
        diff = (a - b).abs().max().item()
        assert b.dtype == torch.float32 and 0 < diff < 0.05
    from itr_lib.train import train
    rec = train(mini_cfg(method="tgdt", score_precision="bf16", epochs=1, extra={"dropout": 0.0}))
    assert rec["score_kernel"]["matmul"] == "bf16" and rec["config"]["score_precision"] == "bf16"
    assert "score_precision" not in rec["config_identity"]
