"""Fine-grained models (TGDT, ALADIN, SCAN, MrSw), their scores and losses, and two-stage re-ranking."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from itr_lib import losses as L
from itr_lib.metrics import metrics_from_ranks, rank_arrays, retrieval_metrics
from itr_lib.models import build_model
from itr_lib.models.encoders import l2norm
from itr_lib.models.fine import scan_t2i_scores
from itr_lib.models.mrsw import mrsw_pair_scores, mrsw_scores
from itr_lib.rerank import matrix_rescorer, two_stage_ranks
from itr_lib.scoring import evaluate_two_stage
from itr_lib.config import TrainConfig
from itr_lib.scoring import encode_split, score_matrix
from itr_lib.splits import SplitTensors


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP waits on a busy 2-core machine (40x faster here); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------- two-stage ranks
G_HAND = np.array([[0.1, 0.9, 0.8, 0.5],
                   [0.2, 0.7, 0.9, 0.1],
                   [0.3, 0.2, 0.6, 0.4],
                   [0.0, 0.1, 0.2, 0.3]])
DIAG = ([[0], [1], [2], [3]], [0, 1, 2, 3])


def test_shortlist_miss_ranks_beyond_the_shortlist_never_r1():
    g = G_HAND
    r = g.copy()
    r[0, 0] = 10.0   # image 0's ground truth would be the best by re-score, but global ranks it 4th
    r[1, 1] = 5.0    # image 1's ground truth is 2nd globally, inside the top-2 shortlist: re-scoring lifts it
    k = 2
    i2t, t2i = two_stage_ranks(g, matrix_rescorer(r), *DIAG, k_i2t=k, k_t2i=k)
    # image 0: shortlist {1, 2}; the GT misses it; beyond: text 3 (0.5) beats text 0 (0.1) -> k + 1
    assert i2t[0] == k + 1
    assert i2t[0] >= k
    assert i2t[1] == 0  # re-ranked inside the shortlist
    # the exhaustive re-score would put image 0's GT first: the shortlist, not the local score, decides
    assert rank_arrays(r, *DIAG)[0][0] == 0
    # the released TGDT evaluation counts the miss as an R@1 hit
    bug_i2t, _ = two_stage_ranks(g, matrix_rescorer(r), *DIAG, k_i2t=k, k_t2i=k, miss_as_hit=True)
    assert bug_i2t[0] == 0
    assert metrics_from_ranks(i2t, t2i)["i2t_r1"] < metrics_from_ranks(bug_i2t, t2i)["i2t_r1"]
    # caption 0 (t2i): column 0 = [0.1, 0.2, 0.3, 0.0]: image 0 is 3rd, misses the top-2 -> 2 + 0 (only image 3
    # is outside and it scores 0.0 < 0.1)
    assert t2i[0] == k + 0


def _random_case(seed=0, n_img=10, per=3, ties=True):
    rng = np.random.default_rng(seed)
    n_txt = n_img * per
    img2txt = [list(range(i * per, (i + 1) * per)) for i in range(n_img)]
    txt2img = np.repeat(np.arange(n_img), per)
    g = rng.normal(size=(n_img, n_txt))
    if ties:
        g = np.round(g, 1)  # many exact ties: exercises the tie rule at the shortlist boundary
    r = rng.normal(size=(n_img, n_txt))
    return g, r, img2txt, txt2img


def _naive_two_stage(g, r, img2txt, txt2img, k1, k2):
    """Per-query reference: stable sort by global, re-sort the top k by re-score, rank of the best positive."""
    def one(gq, rq, pos, k):
        order = np.argsort(-gq, kind="stable")
        sl, rest = order[:k], order[k:]
        if np.isin(pos, sl).any():
            re = sorted(sl, key=lambda c: (-rq[c], c))
            return min(re.index(p) for p in pos if p in sl)
        return k + min(list(rest).index(p) for p in pos)
    i2t = [one(g[i], r[i], img2txt[i], k1) for i in range(g.shape[0])]
    t2i = [one(g[:, j], r[:, j], [txt2img[j]], k2) for j in range(g.shape[1])]
    return np.array(i2t), np.array(t2i)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_stage_matches_naive_and_outside_keeps_global_ranks(seed):
    g, r, img2txt, txt2img = _random_case(seed)
    k1, k2 = 5, 3
    i2t, t2i, det = two_stage_ranks(g, matrix_rescorer(r), img2txt, txt2img, k1, k2, return_details=True)
    ref_i2t, ref_t2i = _naive_two_stage(g, r, img2txt, txt2img, k1, k2)
    np.testing.assert_array_equal(i2t, ref_i2t)
    np.testing.assert_array_equal(t2i, ref_t2i)
    # queries whose ground truth is outside the shortlist keep exactly their global-only rank
    g_i2t, g_t2i = rank_arrays(g, img2txt, txt2img)
    mi, mt = det["missed_i2t"], det["missed_t2i"]
    assert mi.any() and mt.any() and (~mi).any() and (~mt).any()
    np.testing.assert_array_equal(i2t[mi], g_i2t[mi])
    np.testing.assert_array_equal(t2i[mt], g_t2i[mt])
    assert (i2t[mi] >= k1).all() and (t2i[mt] >= k2).all()
    assert (i2t[~mi] < k1).all() and (t2i[~mt] < k2).all()
    # the shortlist holds the k best global candidates
    for i in range(g.shape[0]):
        assert g[i, det["shortlist_i2t"][i]].min() >= np.delete(g[i], det["shortlist_i2t"][i]).max()


@pytest.mark.parametrize("ties", [True, False])
def test_two_stage_limits_exhaustive_and_global(ties):
    g, r, img2txt, txt2img = _random_case(3, ties=ties)
    n_i, n_t = g.shape
    # k = gallery size: two-stage == exhaustive re-scoring
    full = two_stage_ranks(g, matrix_rescorer(r), img2txt, txt2img, k_i2t=n_t, k_t2i=n_i)
    ref = rank_arrays(r, img2txt, txt2img)
    np.testing.assert_array_equal(full[0], ref[0])
    np.testing.assert_array_equal(full[1], ref[1])
    # re-score == global score: two-stage == global-only, whatever k
    glob = rank_arrays(g, img2txt, txt2img)
    for k1, k2 in ((1, 1), (4, 2), (7, 9)):
        same = two_stage_ranks(g, matrix_rescorer(g), img2txt, txt2img, k1, k2)
        np.testing.assert_array_equal(same[0], glob[0])
        np.testing.assert_array_equal(same[1], glob[1])


def test_two_stage_from_vectors_uses_faiss_shortlists():
    rng = np.random.default_rng(0)
    iv = rng.normal(size=(8, 16)).astype(np.float32)
    tv = rng.normal(size=(24, 16)).astype(np.float32)
    img2txt = [list(range(3 * i, 3 * i + 3)) for i in range(8)]
    txt2img = np.repeat(np.arange(8), 3)
    g = iv @ tv.T
    r = rng.normal(size=g.shape)
    a = two_stage_ranks((iv, tv), matrix_rescorer(r), img2txt, txt2img, 5, 3)
    b = two_stage_ranks(g, matrix_rescorer(r), img2txt, txt2img, 5, 3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# ----------------------------------------------------------------------------------------------- losses
def test_listnet_hand_computed_and_minimum():
    s = torch.tensor([[0.5, 0.1, -0.2], [0.0, 0.3, 0.2], [0.1, -0.1, 0.4]])
    t = torch.tensor([[2.0, 1.0, 0.0], [0.5, 1.5, 1.0], [0.0, 0.0, 3.0]])

    def ce(p_logits, q_logits):  # -sum softmax(p) log softmax(q), plain python
        pe = [math.exp(x) for x in p_logits]
        qe = [math.exp(x) for x in q_logits]
        return -sum(pi / sum(pe) * math.log(qi / sum(qe)) for pi, qi in zip(pe, qe))
    rows = sum(ce(t[i].tolist(), (6 * s[i]).tolist()) for i in range(3)) / 3
    cols = sum(ce(t[:, j].tolist(), (6 * s[:, j]).tolist()) for j in range(3)) / 3
    assert L.listnet_loss(s, t).item() == pytest.approx((rows + cols) / 2, rel=1e-5)
    assert L.listnet_loss(s, t, combine="sum").item() == pytest.approx(rows + cols, rel=1e-5)
    # student softmax == teacher softmax (along both axes): the loss is the teacher's mean entropy, its minimum
    s_opt = (t / 6.0).clone().requires_grad_(True)
    loss = L.listnet_loss(s_opt, t)
    ent_rows = sum(ce(t[i].tolist(), t[i].tolist()) for i in range(3)) / 3
    ent_cols = sum(ce(t[:, j].tolist(), t[:, j].tolist()) for j in range(3)) / 3
    assert loss.item() == pytest.approx((ent_rows + ent_cols) / 2, rel=1e-5)
    assert loss.item() < L.listnet_loss(s, t).item()
    loss.backward()
    assert s_opt.grad.abs().max().item() < 1e-6
    # the teacher is detached
    t_req = t.clone().requires_grad_(True)
    L.listnet_loss(s.clone().requires_grad_(True), t_req).backward()
    assert t_req.grad is None


def test_intra_consistency_hand_computed_2x2():
    gv = torch.tensor([[1.0, 0.0], [0.6, 0.8]])   # S_VV off-diagonal 0.6
    gt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])   # S_TT off-diagonal 0.0
    s_vv, s_tt = gv @ gv.t(), gt @ gt.t()
    # |S_TT - S_VV| = [[0, .6], [.6, 0]]; per column max 0.6; [0.6 - 0.3]_+ = 0.3, twice
    assert L.intra_consistency_loss(s_vv, s_tt, 0.3).item() == pytest.approx(0.6, abs=1e-6)
    assert L.intra_consistency_loss(s_vv, s_tt, 0.7).item() == 0.0
    # per column j the max over rows i, then the hinge (not a sum over all entries, not a max per row)
    a = torch.tensor([[0.8, 0.9], [0.5, 0.4]])
    z = torch.zeros(2, 2)
    assert L.intra_consistency_loss(z, a, 0.3).item() == pytest.approx((0.8 - 0.3) + (0.9 - 0.3), abs=1e-6)
    assert L.intra_consistency_loss(a, z, 0.3).item() == pytest.approx(1.1, abs=1e-6)  # |.| is symmetric


# ----------------------------------------------------------------------------------------------- scores
def _locals(seed=0, bi=5, r=7, bt=6, l=9, d=8):
    g = torch.Generator().manual_seed(seed)
    v = l2norm(torch.randn(bi, r, d, generator=g))
    vm = torch.rand(bi, r, generator=g) > 0.3
    vm[:, 0] = True
    u = l2norm(torch.randn(bt, l, d, generator=g))
    um = torch.rand(bt, l, generator=g) > 0.3
    um[:, 0] = True
    return v, vm, u, um


def _garbage(x, mask):
    x = x.clone()
    x[~mask] = torch.tensor([float("nan"), 1e6, -1e6, float("inf")]).repeat(x.shape[-1])[:x.shape[-1]]
    return x


def test_mrsw_equals_naive_loop_and_ignores_padding():
    v, vm, u, um = _locals()
    ref = torch.zeros(v.shape[0], u.shape[0])
    for i in range(v.shape[0]):
        for t in range(u.shape[0]):  # valid words x valid regions cosines; max over regions, sum over words
            ref[i, t] = (u[t][um[t]] @ v[i][vm[i]].t()).max(1).values.sum()
    for budget in (2 ** 24, 40):  # one block, and many tiny blocks
        got = mrsw_scores(v, vm, u, um, max_elements=budget)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        got_g = mrsw_scores(_garbage(v, vm), vm, _garbage(u, um), um, max_elements=budget)
        torch.testing.assert_close(got_g, ref, atol=1e-5, rtol=1e-5)
    # pairwise version = the matrix entries
    ii, tt = torch.tensor([0, 1, 4, 2]), torch.tensor([5, 0, 3, 3])
    pair = mrsw_pair_scores(_garbage(v, vm)[ii], vm[ii], _garbage(u, um)[tt], um[tt])
    torch.testing.assert_close(pair, ref[ii, tt], atol=1e-5, rtol=1e-5)


def test_mrsw_sparse_backward_equals_autograd_reference():
    v, vm, u, um = _locals(1)
    v, u = v.double().requires_grad_(True), u.double().requires_grad_(True)
    w = torch.randn(v.shape[0], u.shape[0], dtype=torch.float64)
    (mrsw_scores(v, vm, u, um, max_elements=60) * w).sum().backward()
    gv, gu = v.grad.clone(), u.grad.clone()
    v.grad = u.grad = None
    s = torch.einsum("ird,twd->itwr", v * vm[..., None], u * um[..., None])
    s = s.masked_fill(~vm[:, None, None, :], float("-inf")).amax(-1)
    (torch.where(um[None], s, 0.0).sum(-1) * w).sum().backward()
    torch.testing.assert_close(gv, v.grad)
    torch.testing.assert_close(gu, u.grad)
    assert gv[~vm].abs().max() == 0 and gu[~um].abs().max() == 0


class _PaddedMrSwBlock(torch.autograd.Function):
    """The MrSw block before its words were packed (the study's records up to issue 29's last lever): the word x
    region product over every padded position of the trimmed block, the sum over L with padding zeroed, and the
    same CSR backward over padded rows. The reference the packed block must equal bit for bit."""

    @staticmethod
    def forward(ctx, v, vm, u, um):
        from itr_lib import scorekernel
        ci, r, d = v.shape
        ct, l, _ = u.shape
        if scorekernel.low_precision():
            s = torch.matmul(u.to(torch.bfloat16), v.reshape(ci * r, d).to(torch.bfloat16).t()).view(ct, l, ci, r)
        else:
            s = torch.matmul(u, v.reshape(ci * r, d).t()).view(ct, l, ci, r)
        if not bool(vm.all()):
            s.masked_fill_(~vm[None, None], float("-inf"))
        best, arg = s.max(-1)
        best = best.float()
        valid = um[:, :, None] & vm.any(1)[None, None, :]
        ctx.save_for_backward(v, u, arg, valid)
        return torch.where(valid, best, best.new_zeros(())).sum(1).t()

    @staticmethod
    def backward(ctx, grad):
        from itr_lib.models.mrsw import _csr
        v, u, arg, valid = ctx.saved_tensors
        ci, r, d = v.shape
        ct, l, _ = u.shape
        cols = (torch.arange(ci)[None, None, :] * r + arg)[valid]
        w = grad.t()[:, None, :].expand(ct, l, ci)[valid].to(v.dtype)
        crow = torch.zeros(ct * l + 1, dtype=torch.int64)
        torch.cumsum(valid.view(ct * l, ci).sum(1), 0, out=crow[1:])
        gu = (_csr(crow, cols, w, (ct * l, ci * r)) @ v.reshape(ci * r, d)).view(ct, l, d)
        order = torch.argsort(cols, stable=True)
        text_pos = torch.arange(ct * l).view(ct, l, 1).expand(ct, l, ci)[valid][order]
        crow_a = torch.zeros(ci * r + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(cols, minlength=ci * r), 0, out=crow_a[1:])
        gv = (_csr(crow_a, text_pos, w[order], (ci * r, ct * l)) @ u.reshape(ct * l, d)).view(ci, r, d)
        return gv, None, gu, None


@pytest.mark.parametrize("score_precision", ["fp32", "bf16"])
def test_the_packed_mrsw_block_is_bit_identical_to_the_padded_one(score_precision):
    """Packing the captions to their valid words (bf16: one gather of the padded text for all blocks, each image
    block cast once) changes no bit of the scores or the gradients (both score precisions; a training-like batch:
    ragged captions with dropped words, images with dropped regions, one image without any, one caption without a
    word; one block, several length-sorted caption blocks, several image blocks), so the records trained with the
    padded block stay valid."""
    from itr_lib import scorekernel as sk
    from itr_lib.models.fine import DEFAULT_MAX_ELEMENTS, _blocked
    g = torch.Generator().manual_seed(3)
    lens = torch.randint(3, 26, (90,), generator=g)
    um = (torch.arange(25)[None] < lens[:, None]) & (torch.rand(90, 25, generator=g) > 0.2)
    um[:, 0] = False
    um[7] = False
    vm = torch.rand(24, 49, generator=g) > 0.2
    vm[3] = False
    u0 = F.normalize(torch.randn(90, 25, 64, generator=g), dim=-1)
    v0 = F.normalize(torch.randn(24, 49, 64, generator=g), dim=-1)
    w = torch.randn(24, 90, generator=g)
    rule = sk.resolve("mrsw", "off", score_precision, "cpu")
    budgets = (DEFAULT_MAX_ELEMENTS, 150000, 5000)  # one block; 18 caption blocks; image and caption blocks
    out = []
    for fn in (mrsw_scores, lambda *a: _blocked(_PaddedMrSwBlock.apply, *a)):
        for budget in budgets:
            v, u = v0.clone().requires_grad_(), u0.clone().requires_grad_()
            with sk.policy(rule):
                sc = fn(v, vm, u, um, budget)
                (sc * w).sum().backward()
            out.append((sc.detach(), v.grad, u.grad))
    for a, b in zip(out[:len(budgets)], out[len(budgets):]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert out[0][0][:, 7].abs().max() == 0 and out[0][0][3].abs().max() == 0 and out[0][0].abs().max() > 1
    assert out[0][2][~um].abs().max() == 0 and out[0][2][um].abs().max() > 0  # only valid words get gradient


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fine_models_normalise_only_the_kept_rows_bit_identically(precision):
    """SCAN's / MrSw's locals are l2-normalised on the valid rows (interactive.packed_locals) instead of on the
    padded tensor then masked: the same locals, means and parameter gradients bit for bit (dropped regions, ragged
    captions, CLS / SEP outside the word mask)."""
    from itr_lib import precision as prec
    from itr_lib.models.fine import normed_locals
    from itr_lib.models.encoders import masked_mean
    from itr_lib.precision import linear_input
    if precision == "bf16" and not prec.bf16_support()[0]:
        pytest.skip("no native bf16 here")
    g = torch.Generator().manual_seed(1)
    regions, rmask = torch.randn(6, 49, 1280, generator=g).half(), torch.rand(6, 49, generator=g) > 0.2
    text = torch.randn(9, 12, 384, generator=g).half()
    tmask = torch.arange(12)[None] < torch.randint(3, 13, (9, 1), generator=g)
    wmask = tmask & (torch.arange(12)[None] > 0) & (torch.rand(9, 12, generator=g) > 0.2)
    torch.manual_seed(0)
    m = build_model(TrainConfig(method="mrsw", dim=32))
    w_img, w_txt = torch.randn(6, 49, 32, generator=g), torch.randn(9, 12, 32, generator=g)

    def old_grid():
        _, h = m.img_enc(linear_input(regions), rmask)
        loc = normed_locals(h, rmask)
        return {"locals": loc, "mean": l2norm(masked_mean(loc, rmask))}

    def old_tokens():
        _, h = m.txt_enc(linear_input(text), tmask)
        words = wmask & tmask
        loc = normed_locals(h, words)
        return {"locals": loc, "mean": l2norm(masked_mean(loc, words))}
    out = []
    def new_grid():  # training mode: "mean" is left out and computed by image_vectors where asked for
        img = m.encode_grid(regions, rmask)
        return {**img, "mean": m.image_vectors(img)}

    def new_tokens():
        txt = m.encode_tokens(text, tmask, wmask)
        return {**txt, "mean": m.text_vectors(txt)}
    assert m.training and "mean" not in m.encode_grid(regions, rmask)
    for grid, tokens in ((new_grid, new_tokens), (old_grid, old_tokens)):
        m.zero_grad()
        with prec.policy(precision), prec.autocast():
            img, txt = grid(), tokens()
        ((img["locals"] * w_img).sum() + (txt["locals"] * w_txt).sum() + img["mean"].sum() + txt["mean"].sum()
         ).backward()
        out.append([img["locals"].detach(), txt["locals"].detach(), img["mean"].detach(), txt["mean"].detach()]
                   + [p.grad.clone() for p in m.parameters()])
    assert len(out[0]) > 6 and all(torch.equal(a, b) for a, b in zip(*out))


def _scan_reference(vi, ut, lambda_softmax=9.0, lambda_lse=6.0):
    """SCAN's func_attention (t2i, clipped_l2norm) + LSE, for one image and one caption (valid rows only)."""
    attn = F.leaky_relu(vi @ ut.t(), 0.1)                      # (regions, words)
    attn = attn / (attn.norm(dim=1, keepdim=True) + 1e-8)      # l2norm over words
    attn = torch.softmax(attn.t() * lambda_softmax, dim=1)     # (words, regions)
    attended = attn @ vi
    cos = F.cosine_similarity(ut, attended, dim=1)
    return torch.log(torch.exp(cos * lambda_lse).sum()) / lambda_lse


def test_scan_equals_reference_and_ignores_padding():
    v, vm, u, um = _locals(2)
    ref = torch.tensor([[float(_scan_reference(v[i][vm[i]], u[t][um[t]])) for t in range(u.shape[0])]
                        for i in range(v.shape[0])])
    for budget in (2 ** 24, 50):
        got = scan_t2i_scores(_garbage(v, vm), vm, _garbage(u, um), um, max_elements=budget)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- models
def _batch(b=4, l=7, seed=0, holes=True):
    from itr_lib.models import Batch
    g = torch.Generator().manual_seed(seed)
    regions = torch.randn(b, 49, 1280, generator=g)
    rmask = torch.ones(b, 49, dtype=torch.bool)
    text = torch.randn(b, l, 384, generator=g)
    tmask = torch.ones(b, l, dtype=torch.bool)
    tmask[1, 5:] = False
    if holes:  # region drop / token drop as in training
        rmask[:, 20] = False
        rmask[0, [3, 10, 48]] = False
        rmask[2, :5] = False
        tmask[[0, 2, 3], [3, 4, 2]] = False
    wmask = tmask.clone()
    wmask[:, 0] = False
    wmask[0, l - 1] = False
    return Batch(regions, rmask, text, tmask, wmask, None)


def _build(method, **extra):
    torch.manual_seed(0)
    return build_model(TrainConfig(method=method, dim=32, extra=extra))


def test_registration_and_extra_validation():
    for m in ("tgdt", "aladin", "scan", "mrsw"):
        assert _build(m).__class__.__name__.lower().startswith({"tgdt": "tgdt", "aladin": "aladin", "scan": "scan",
                                                                "mrsw": "mrsw"}[m])
    with pytest.raises(ValueError, match="unknown cfg.extra"):
        _build("tgdt", layerz=2)
    assert _build("tgdt", layers=2, heads=2).img_tf.encoder.num_layers == 2


@pytest.mark.parametrize("method", ["tgdt", "aladin", "scan", "mrsw"])
def test_glove_text_input(method):
    glove = torch.randn(30, 50)
    torch.manual_seed(0)
    m = build_model(TrainConfig(method=method, dim=32, text_encoder="gru"), glove).eval()
    assert m.txt_enc.embed.num_embeddings == 30  # train.py reads it for the token-drop vocabulary
    ids = torch.tensor([[5, 7, 9, 0, 0], [3, 4, 0, 0, 0]])
    mask = ids > 0
    with torch.no_grad():
        txt = m.encode_texts(ids, mask, mask)
        txt_short = m.encode_texts(ids[:, :3], mask[:, :3], mask[:, :3])  # less padding, same captions
        img = m.encode_images(torch.randn(2, 49, 1280), torch.ones(2, 49, dtype=torch.bool))
        torch.testing.assert_close(m.similarity(img, txt), m.similarity(img, txt_short), atol=1e-5, rtol=1e-5)


def test_tgdt_vectors_scores_and_padding():
    m = _build("tgdt").eval()
    b = _batch()
    with torch.no_grad():
        img, txt = m.encode_images(b.regions, b.region_mask), m.encode_texts(b.text, b.text_mask, b.word_mask)
        glob = m.global_similarity(img, txt)
        torch.testing.assert_close(m.image_vectors(img) @ m.text_vectors(txt).t(), glob)
        loc = mrsw_scores(img["locals"], img["mask"], txt["locals"], txt["mask"])
        torch.testing.assert_close(m.local_similarity(img, txt), loc)
        torch.testing.assert_close(m.similarity(img, txt), glob + loc)
        pairs = m.rescore_pairs({k: v[[0, 2]] for k, v in img.items()}, {k: v[[3, 1]] for k, v in txt.items()})
        torch.testing.assert_close(pairs, (glob + loc)[[0, 2], [3, 1]])
        assert m.exact_vectors is False
        # garbage in masked-out inputs changes nothing
        b2 = _batch()
        b2.regions[~b2.region_mask] = 1e4
        b2.text[~b2.text_mask] = -1e4
        img2, txt2 = m.encode_images(b2.regions, b2.region_mask), m.encode_texts(b2.text, b2.text_mask, b2.word_mask)
        torch.testing.assert_close(m.similarity(img2, txt2), glob + loc)


@pytest.mark.parametrize("method", ["tgdt", "aladin"])
def test_training_packing_equals_masking(method):
    m = _build(method, dropout=0.0).train()  # train mode: dropped tokens are packed out
    b = _batch()
    img, txt = m.encode_images(b.regions, b.region_mask), m.encode_texts(b.text, b.text_mask, b.word_mask)
    assert img["mask"].shape[1] < 49 or txt["mask"].shape[1] < b.text.shape[1]
    m.hp["pack"] = False
    img0, txt0 = m.encode_images(b.regions, b.region_mask), m.encode_texts(b.text, b.text_mask, b.word_mask)
    assert img0["mask"].shape[1] == 49
    sim = m.rescore_similarity if method == "tgdt" else m.alignment_similarity
    torch.testing.assert_close(sim(img, txt), sim(img0, txt0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.image_vectors(img), m.image_vectors(img0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.text_vectors(txt), m.text_vectors(txt0), atol=1e-5, rtol=1e-5)


def test_tgdt_gradients_reach_both_encoders_end_to_end():
    m = _build("tgdt", w_global=0.0, w_consistency=0.0, dropout=0.0).train()  # the local loss alone
    b = _batch()
    img, txt = m.encode_images(b.regions, b.region_mask), m.encode_texts(b.text, b.text_mask, b.word_mask)
    loss, terms = m.compute_loss(img, txt, b, epoch=0)
    assert terms["local"] > 0
    loss.backward()
    for name in ("img_in.proj.weight", "txt_enc.proj.weight", "img_tf.encoder.layers.0.linear1.weight",
                 "txt_tf.encoder.layers.0.self_attn.in_proj_weight"):
        grad = dict(m.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # the full CMC loss: every term present and finite
    m.zero_grad()
    m.hp.update(w_global=1.0, w_consistency=1.0)
    img, txt = m.encode_images(b.regions, b.region_mask), m.encode_texts(b.text, b.text_mask, b.word_mask)
    loss, terms = m.compute_loss(img, txt, b, epoch=0)
    assert set(terms) == {"global", "consistency", "local", "total"}
    assert terms["total"] == pytest.approx(terms["global"] + terms["consistency"] + terms["local"], rel=1e-5)


def test_aladin_vectors_teacher_student_and_distillation():
    m = _build("aladin")
    b = _batch()
    m.eval()
    with torch.no_grad():
        img, txt = m.encode_images(b.regions, b.region_mask), m.encode_texts(b.text, b.text_mask, b.word_mask)
        match = m.matching_similarity(img, txt)
        torch.testing.assert_close(m.image_vectors(img) @ m.text_vectors(txt).t(), match)
        torch.testing.assert_close(m.similarity(img, txt), match)
        torch.testing.assert_close(m.alignment_similarity(img, txt),
                                   mrsw_scores(img["tokens"], img["mask"], txt["tokens"], txt["mask"]))
    assert m.exact_vectors is True
    # distillation trains the student (and through it the backbone); the teacher score is detached in ListNet
    m.train()
    m.hp["w_align"] = 0.0
    img, txt = m.encode_images(b.regions, b.region_mask), m.encode_texts(b.text, b.text_mask, b.word_mask)
    loss, terms = m.compute_loss(img, txt, b, epoch=0)
    assert {"align", "distill", "total"} <= set(terms)
    loss.backward()
    params = dict(m.named_parameters())
    assert params["student.cls"].grad.abs().sum() > 0
    assert params["backbone.layers.0.linear1.weight"].grad.abs().sum() > 0
    # before distill_start_epoch only the alignment head trains
    m2 = _build("aladin", distill_start_epoch=2)
    img, txt = m2.encode_images(b.regions, b.region_mask), m2.encode_texts(b.text, b.text_mask, b.word_mask)
    _, terms2 = m2.compute_loss(img, txt, b, epoch=1)
    assert "distill" not in terms2


@pytest.mark.parametrize("method", ["aladin", "tgdt"])
@pytest.mark.parametrize("pack", [True, False])
def test_length_buckets_same_outputs_and_gradients(pack, method):
    """Encoding the captions in length groups (TrainConfig.length_buckets) gives every caption the outputs and the
    gradients of one padded group (dropout off, so only rounding can differ), in training and in eval mode; the
    field is a runtime one (outside the identity) and an error for a method that cannot honour it."""
    g = torch.Generator().manual_seed(3)
    n, l = 12, 9
    text = torch.randn(n, l, 384, generator=g)
    lengths = torch.tensor([3, 9, 4, 5, 9, 6, 3, 7, 8, 4, 5, 6])
    tmask = torch.arange(l)[None] < lengths[:, None]
    tmask[1, 2] = tmask[4, 5] = False  # token drop: holes inside captions (packed away with pack=True)
    wmask = tmask & (torch.arange(l)[None] > 0)
    text[~tmask] = 1e3  # garbage in the padding must not matter either way
    vec, tok = ("emb", "tokens") if method == "aladin" else ("global", "locals")
    outs = []
    for k in (None, 4):
        torch.manual_seed(0)
        m = build_model(TrainConfig(method=method, dim=32, length_buckets=k, extra=dict(dropout=0.0, pack=pack)))
        assert m.length_buckets == (k or 1)
        m.eval()
        with torch.no_grad():
            ev = m.encode_texts(text, tmask, wmask)
        m.train()
        txt = m.encode_texts(text, tmask, wmask)
        (txt[vec].square().sum() + txt[tok][..., 0].sum()).backward()
        outs.append((ev, txt, {k_: p.grad.clone() for k_, p in m.named_parameters() if p.grad is not None}))
    (ea, a, ga), (eb, b, gb) = outs
    for x, y in ((a, b), (ea, eb)):
        assert x[tok].shape == y[tok].shape and torch.equal(x["mask"], y["mask"])
        torch.testing.assert_close(y[vec], x[vec], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y[tok], x[tok], atol=1e-5, rtol=1e-5)
    assert set(ga) == set(gb) and len(ga) > 5
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], atol=1e-4, rtol=1e-4, msg=name)
    # runtime field: same run name; methods without a text transformer refuse it; nonsense values refused
    assert TrainConfig(method=method, length_buckets=8).run_name() == TrainConfig(method=method).run_name()
    for other in ("scan", "mrsw", "baseline"):
        with pytest.raises(ValueError, match="length_buckets"):
            build_model(TrainConfig(method=other, dim=32, length_buckets=4))
    with pytest.raises(ValueError, match="length_buckets"):
        TrainConfig(method=method, length_buckets=0)


@pytest.mark.parametrize("method", ["scan", "mrsw"])
def test_interactive_models_score_and_train(method):
    m = _build(method)
    b = _batch()
    img, txt = m.encode_images(b.regions, b.region_mask), m.encode_texts(b.text, b.text_mask, b.word_mask)
    s = m.similarity(img, txt)
    assert s.shape == (4, 4) and m.exact_vectors is False
    ref = (scan_t2i_scores if method == "scan" else mrsw_scores)(img["locals"], img["mask"], txt["locals"],
                                                                txt["mask"])
    torch.testing.assert_close(s, ref)
    loss, _ = m.compute_loss(img, txt, b, epoch=0)
    loss.backward()
    assert m.img_enc.proj.weight.grad.abs().sum() > 0 and m.txt_enc.proj.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- evaluation
def _fake_split(n_img=6, per=2, l=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = object.__new__(SplitTensors)
    d.images = torch.randn(n_img, 49, 1280, generator=g).half()
    d.text = torch.randn(n_img * per, l, 384, generator=g).half()
    d.lengths = torch.randint(4, l + 1, (n_img * per,), generator=g)
    d.text_encoder = "minilm"
    d.img2txt = [list(range(i * per, (i + 1) * per)) for i in range(n_img)]
    d.txt2img = np.repeat(np.arange(n_img), per)
    return d


@pytest.mark.parametrize("method", ["tgdt", "aladin"])
def test_evaluate_two_stage_modes(method):
    m = _build(method)
    data = _fake_split()
    out, info = evaluate_two_stage(m, data, k_i2t=12, k_t2i=6, batch_size=4, return_details=True)  # k = gallery
    assert set(out) == {"global", "two_stage", "exhaustive"}
    assert out["two_stage"] == out["exhaustive"]
    assert info["shortlist_miss_rate_i2t"] == 0.0
    small = evaluate_two_stage(m, data, k_i2t=1, k_t2i=1, batch_size=4, modes=("global", "two_stage"))
    assert set(small) == {"global", "two_stage"}
    assert m.exact_vectors is (method == "aladin")  # the class attribute, never overwritten
    if method == "aladin":  # the global mode is the student, i.e. what train.evaluate scores
        img, txt = encode_split(m, data, batch_size=4)
        assert set(img) == {"vec"}
        assert out["global"]["standard"] == retrieval_metrics(score_matrix(m, img, txt), data.img2txt, data.txt2img)


def test_length_buckets_cut_by_split_equal_a_per_group_index_exactly():
    """encode_by_length permutes its inputs once and splits them (one zero-filled gradient instead of one per group):
    outputs and input gradients are bit-identical to indexing each group, with dropout on (same draws, same order)."""
    import torch.nn.functional as F
    from itr_lib.models.fine import encode_by_length

    def reference(fn, x, attn_mask, buckets, token_keys):  # the previous implementation: x[idx, :w] per group
        width = attn_mask.shape[1]
        last = (attn_mask.long() * torch.arange(1, width + 1)).amax(1)
        order = torch.argsort(last, stable=True)
        parts = {}
        for idx in torch.tensor_split(order, buckets):
            if len(idx) == 0:
                continue
            w = max(1, int(last[idx].max()))
            for k, v in fn(x[idx, :w], attn_mask[idx, :w]).items():
                if k in token_keys:
                    v = F.pad(v, (0, 0) * (v.dim() - 2) + (0, width - w))
                parts.setdefault(k, []).append(v)
        inv = torch.argsort(order)
        return {k: torch.cat(v)[inv] for k, v in parts.items()}

    g = torch.Generator().manual_seed(0)
    n, l, d = 21, 11, 16
    mask = torch.arange(l)[None] < torch.randint(1, l + 1, (n,), generator=g)[:, None]
    layer = torch.nn.TransformerEncoderLayer(d, 2, 32, dropout=0.3, batch_first=True).train()

    def fn(x, m):
        h = layer(x, src_key_padding_mask=~m)
        return {"g": h[:, 0], "h": h}
    results = []
    for impl in ("reference", "split"):
        x = torch.randn(n, l, d, generator=torch.Generator().manual_seed(1), requires_grad=True)
        torch.manual_seed(5)
        out = reference(fn, x, mask, 4, ("h",)) if impl == "reference" else encode_by_length(fn, (x, mask), mask, 4,
                                                                                            ("h",))
        (out["g"].square().sum() + (out["h"] * torch.linspace(-1, 1, d)).sum()).backward()
        results.append((out["g"].detach(), out["h"].detach(), x.grad.clone()))
    for a, b in zip(*results):
        assert torch.equal(a, b)
