"""MrSw's masked max as a C++ kernel (itr_lib.maxkernel): the eager block's values bit for bit, or eager with a
recorded reason where it cannot be built."""
import pytest
import torch
import torch.nn.functional as F

from itr_lib import maxkernel
from itr_lib import scorekernel as sk
from itr_lib.models.mrsw import mrsw_scores

needs_kernel = pytest.mark.skipif(maxkernel.unavailable() is not None,
                                  reason=f"MrSw max kernel cannot be built here: {maxkernel.unavailable()}")


def _hard_case(dtype):
    """Scores with ties (values on a coarse grid), -0.0 beside 0.0, dropped regions, an image without any region,
    a NaN in a valid region and one in a dropped region."""
    g = torch.Generator().manual_seed(5)
    s = (torch.randint(-3, 4, (37, 9, 11), generator=g).float() / 4).to(dtype)
    s[0, 0, :3] = torch.tensor([0.0, -0.0, 0.0], dtype=dtype)
    s[0, 0, 3:] = -1
    vm = torch.rand(9, 11, generator=g) > 0.3
    vm[:, 0] = False  # the first region dropped everywhere: the kernel's start value must be -inf there
    vm[2] = False     # no valid region: -inf, index 0
    s[5, 4, 6] = float("nan")
    vm[4, 6] = True
    s[6, 5, ~vm[5]] = float("nan")  # garbage in dropped regions is ignored
    return s, vm


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernel_equals_the_eager_masked_max_bit_for_bit(dtype):
    for s, vm in (_hard_case(dtype), (torch.randn(300, 128, 49).to(dtype), torch.rand(128, 49) > 0.2)):
        want = maxkernel.eager_masked_max(s.clone(), vm)
        got = maxkernel.masked_max(s, vm)
        assert got[0].dtype == torch.float32 and got[1].dtype == torch.int64
        # bitwise (NaN included): compare the float32 bit patterns
        assert torch.equal(got[0].view(torch.int32), want[0].view(torch.int32))
        assert torch.equal(got[1], want[1])
    s, vm = _hard_case(dtype)
    best, arg = maxkernel.masked_max(s, vm)
    assert torch.isnan(best[5, 4]) and arg[5, 4] == 6
    assert best[0, 2].item() == float("-inf") and (arg[:, 2] == 0).all()
    # ties go to the first region holding the maximum
    vm1 = torch.ones(1, 4, dtype=torch.bool)
    t = torch.tensor([[[0.5, 1.0, 1.0, 1.0]]], dtype=dtype)
    assert maxkernel.masked_max(t, vm1)[1].item() == 1


@needs_kernel
@pytest.mark.parametrize("score_precision", ["fp32", "bf16"])
def test_mrsw_with_the_kernel_is_bit_identical_to_eager(score_precision):
    """Scores and both gradients of MrSw (bf16: the packed path; fp32: ALADIN's teacher path), a training-like
    batch with dropped regions and ragged captions, one block and many: the same bits with and without the kernel."""
    if score_precision == "bf16" and not __import__("itr_lib.precision").precision.bf16_support()[0]:
        pytest.skip("no native bf16 here")
    g = torch.Generator().manual_seed(2)
    um = (torch.arange(20)[None] < torch.randint(3, 21, (40, 1), generator=g)) & (torch.rand(40, 20, generator=g) > .2)
    vm = torch.rand(12, 49, generator=g) > 0.2
    vm[4] = False
    u0 = F.normalize(torch.randn(40, 20, 32, generator=g), dim=-1)
    v0 = F.normalize(torch.randn(12, 49, 32, generator=g), dim=-1)
    w = torch.randn(12, 40, generator=g)
    eager = sk.resolve("mrsw", "off", score_precision)
    kernel = sk.resolve("mrsw", "on", score_precision)
    assert kernel["compiled"] and "C++ kernel" in kernel["why"] and not eager["compiled"]
    out = {}
    for name, rule in (("eager", eager), ("kernel", kernel)):
        for budget in (2 ** 24, 20000):
            v, u = v0.clone().requires_grad_(), u0.clone().requires_grad_()
            with sk.policy(rule):
                sc = mrsw_scores(v, vm, u, um, max_elements=budget)
                (sc * w).sum().backward()
            out[name, budget] = (sc.detach(), v.grad, u.grad)
    for budget in (2 ** 24, 20000):
        assert all(torch.equal(a, b) for a, b in zip(out["eager", budget], out["kernel", budget]))
    assert kernel["compiled"]  # no silent fallback


def test_no_kernel_here_is_eager_with_the_reason_or_an_error(monkeypatch):
    monkeypatch.setattr(maxkernel, "unavailable", lambda: "no ninja for the MrSw max kernel (pip install ninja)")
    rule = sk.resolve("tgdt", "auto", "fp32")
    assert rule["compiled"] is False and "no ninja" in rule["why"]
    with pytest.raises(RuntimeError, match="pip install ninja"):
        sk.resolve("mrsw", "on", "fp32")


def test_a_failed_kernel_falls_back_to_eager_and_says_so(monkeypatch):
    def broken(s, vm):
        raise RuntimeError("linker exploded")
    monkeypatch.setattr(maxkernel, "masked_max", broken)
    g = torch.Generator().manual_seed(0)
    v, u = F.normalize(torch.randn(5, 7, 8, generator=g), dim=-1), F.normalize(torch.randn(6, 4, 8, generator=g), dim=-1)
    vm, um = torch.rand(5, 7, generator=g) > 0.3, torch.ones(6, 4, dtype=torch.bool)
    with sk.policy({"compiled": False, "matmul": "fp32", "strict": False, "why": "test"}):
        ref = mrsw_scores(v, vm, u, um)
    rule = {"compiled": True, "matmul": "fp32", "strict": False, "why": "MrSw max over regions: C++ kernel"}
    with sk.policy(rule) as active:
        got = mrsw_scores(v, vm, u, um)
        assert active["compiled"] is False and "linker exploded" in active["why"]
    assert torch.equal(got, ref)
    with sk.policy({**rule, "strict": True}), pytest.raises(RuntimeError, match="linker exploded"):
        mrsw_scores(v, vm, u, um)
