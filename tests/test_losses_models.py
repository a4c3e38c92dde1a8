"""Losses against hand-computed cases, gradient routing of LCA, CRA on tiny batches, retrieval vectors."""
import math

import pytest
import torch

from itr_lib import losses as L
from itr_lib.models import VSEModel
from itr_lib.models.encoders import GPO, Pool, l2norm


def test_triplet_hardest_and_sum_match_hand_computation():
    s = torch.tensor([[0.9, 0.5, 0.1],
                      [0.8, 0.4, 0.2],
                      [0.3, 0.6, 0.7]])
    m = 0.2
    # image anchors (rows): violations margin + s[i,j] - s[i,i]
    # row0: j1 0.2+0.5-0.9=-0.2 -> 0; j2 -> 0.  row1: j0 0.2+0.8-0.4=0.6, j2 0.2+0.2-0.4=0.0. row2: j0 -0.2, j1 0.1
    # caption anchors (cols): margin + s[i,j] - s[j,j]
    # col0: i1 0.2+0.8-0.9=0.1, i2 -0.4. col1: i0 0.2+0.5-0.4=0.3, i2 0.2+0.6-0.4=0.4. col2: i0 -0.4, i1 -0.3
    hardest = (0 + 0.6 + 0.1) + (0.1 + 0.4 + 0)
    total = (0.6 + 0.1) + (0.1 + 0.3 + 0.4)
    assert L.triplet_loss(s, m, hardest=True).item() == pytest.approx(hardest, abs=1e-6)
    assert L.triplet_loss(s, m, hardest=False).item() == pytest.approx(total, abs=1e-6)
    # ignoring pair (1, 0) (a false negative) removes 0.6 from row 1 and 0.1 from column 0
    ignore = torch.zeros(3, 3, dtype=torch.bool)
    ignore[1, 0] = True
    assert L.triplet_loss(s, m, True, ignore).item() == pytest.approx(0.0 + 0.0 + 0.1 + 0.0 + 0.4 + 0.0, abs=1e-6)


def test_infonce_matches_hand_computation_and_masking():
    s = torch.tensor([[1.0, 0.0], [0.5, 0.2]])
    t = 0.5
    row = [-math.log(math.exp(2) / (math.exp(2) + 1)), -math.log(math.exp(0.4) / (math.exp(1.0) + math.exp(0.4)))]
    col = [-math.log(math.exp(2) / (math.exp(2) + math.exp(1.0))), -math.log(math.exp(0.4) / (1 + math.exp(0.4)))]
    expected = (sum(row) / 2 + sum(col) / 2) / 2
    assert L.infonce_loss(s, t).item() == pytest.approx(expected, abs=1e-5)
    ignore = torch.tensor([[False, True], [True, False]])
    assert L.infonce_loss(s, t, ignore).item() == pytest.approx(0.0, abs=1e-6)


def test_sinkhorn_rows_sum_to_one_and_prototypes_balanced():
    torch.manual_seed(0)
    scores = l2norm(torch.randn(600, 16)) @ l2norm(torch.randn(12, 16)).t()
    q = L.sinkhorn(scores, eps=0.05, iters=3)
    assert q.shape == (600, 12)
    assert torch.allclose(q.sum(1), torch.ones(600), atol=1e-5)
    mass = q.sum(0)
    raw_mass = torch.softmax(scores / 0.05, dim=1).sum(0)
    # equipartition: 3 iterations already spread mass more evenly than the plain softmax assignment
    assert mass.std() < 0.8 * raw_mass.std()
    q_many = L.sinkhorn(scores, eps=0.05, iters=50)
    assert torch.allclose(q_many.sum(0), torch.full((12,), 50.0), rtol=0.02)
    assert not q.requires_grad


def _lca_inputs(b=4, r=6, l=5, d=8, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    regions = torch.randn(b, r, d, generator=g, requires_grad=True)
    words = torch.randn(b, l, d, generator=g, requires_grad=True)
    codebook = l2norm(torch.randn(k, d, generator=g)).requires_grad_(True)
    rmask = torch.ones(b, r, dtype=torch.bool)
    wmask = torch.ones(b, l, dtype=torch.bool)
    wmask[0, 3:] = False
    return regions, rmask, words, wmask, codebook


def test_lca_gradients_reach_words_and_codebook_not_images():
    regions, rmask, words, wmask, codebook = _lca_inputs()
    loss = L.lca_loss(l2norm(regions), rmask, l2norm(words), wmask, codebook)
    loss.backward()
    assert regions.grad is None or torch.count_nonzero(regions.grad) == 0
    assert words.grad is not None and torch.count_nonzero(words.grad) > 0
    assert codebook.grad is not None and torch.count_nonzero(codebook.grad) > 0
    assert torch.count_nonzero(words.grad[0, 3:]) == 0  # padding words get nothing


def test_lca_matches_argmax_region_of_own_image():
    regions, rmask, words, wmask, codebook = _lca_inputs()
    v, w = l2norm(regions.detach()), l2norm(words.detach())
    loss, det = L.lca_loss(v, rmask, w, wmask, codebook.detach(), return_details=True)
    for b in range(4):
        for j in range(5):
            assert det["r_star"][b, j] == int((v[b] @ w[b, j]).argmax())
    # hand-compute the loss from the codes it used
    q = det["codes"]
    logp = torch.log_softmax(w @ codebook.detach().t() / 0.1, -1)
    per_word = [-(q[b, det["r_star"][b, j]] * logp[b, j]).sum() for b in range(4) for j in range(5) if wmask[b, j]]
    assert loss.item() == pytest.approx(torch.stack(per_word).mean().item(), rel=1e-5)


def test_cra_small_batch_works_and_matches_reference():
    torch.manual_seed(1)
    b, n, d = 4, 3, 8
    q = l2norm(torch.randn(b, d))
    loc = l2norm(torch.randn(b, n, d))
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[2, 2] = False
    t = 0.7
    got = L.cra_loss(q, loc, mask, temperature=t, topk=512).item()  # k capped at 8 or 9 negatives
    per = []
    for i in range(b):
        negs = torch.cat([loc[c][mask[c]] @ q[i] for c in range(b) if c != i]) / t
        kk = min(512, min(int(mask.sum() - mask[c].sum()) for c in range(b)))
        negs = negs.topk(kk).values
        for p in range(n):
            if mask[i, p]:
                sp = (loc[i, p] @ q[i]) / t
                per.append(-(sp - torch.logsumexp(torch.cat([sp[None], negs]), 0)))
    assert got == pytest.approx(torch.stack(per).mean().item(), rel=1e-5)
    # top-k really keeps only the hardest: k=1 uses the single largest negative score
    got1 = L.cra_loss(q, loc, mask, temperature=t, topk=1)
    assert torch.isfinite(got1)
    # a batch of one has no negatives: zero loss, no crash
    assert L.cra_loss(q[:1], loc[:1], mask[:1]).item() == 0.0


def _batch(b=4, r=7, l=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    regions = torch.randn(b, r, 1280, generator=g)
    rmask = torch.ones(b, r, dtype=torch.bool)
    rmask[1, 5:] = False
    text = torch.randn(b, l, 384, generator=g)
    tmask = torch.ones(b, l, dtype=torch.bool)
    tmask[2, 4:] = False
    wmask = tmask.clone()
    wmask[:, 0] = False
    return regions, rmask, text, tmask, wmask


@pytest.mark.parametrize("lca,cra,pooling", [(False, False, "gpo"), (True, True, "gpo"), (False, True, "max"),
                                             (True, False, "mean")])
def test_retrieval_vectors_reproduce_pairwise_similarity(lca, cra, pooling):
    torch.manual_seed(0)
    m = VSEModel(dim=32, pooling=pooling, lca=lca, cra=cra, codebook_size=16).eval()
    regions, rmask, text, tmask, wmask = _batch()
    img, txt = m.encode_images(regions, rmask), m.encode_texts(text, tmask, wmask)
    sims = m.image_vectors(img) @ m.text_vectors(txt).t()
    # reference: S = S_base + 0.5 (<mean_v, f_t> + <f_v, mean_t>), computed pair by pair
    for i in range(4):
        for j in range(4):
            ref = img["emb"][i] @ txt["emb"][j]
            if cra:
                ref = ref + 0.5 * (img["cra_mean"][i] @ txt["cra_fused"][j] + img["cra_fused"][i] @ txt["cra_mean"][j])
            assert sims[i, j].item() == pytest.approx(ref.item(), abs=1e-5)
    assert torch.allclose(m.similarity(img, txt), sims)
    dim = m.image_vectors(img).shape[1]
    assert dim == (96 if cra else 32)  # SelfAlign vectors at most 3x the baseline's


def test_padding_does_not_change_embeddings():
    torch.manual_seed(0)
    m = VSEModel(dim=16, pooling="gpo", lca=True, cra=True, codebook_size=8).eval()
    regions, rmask, text, tmask, wmask = _batch()
    txt = m.encode_texts(text, tmask, wmask)
    text2 = text.clone()
    text2[2, 4:] = 123.0  # garbage in the padding of caption 2
    txt2 = m.encode_texts(text2, tmask, wmask)
    assert torch.allclose(m.text_vectors(txt), m.text_vectors(txt2), atol=1e-6)


def test_selfalign_loss_backpropagates_to_every_trainable_part():
    torch.manual_seed(0)
    m = VSEModel(dim=16, pooling="gpo", lca=True, cra=True, codebook_size=8).train()
    from itr_lib.models import Batch
    regions, rmask, text, tmask, wmask = _batch()
    batch = Batch(regions, rmask, text, tmask, wmask)
    img, txt = m.encode_images(regions, rmask), m.encode_texts(text, tmask, wmask)
    loss, terms = m.compute_loss(img, txt, batch, epoch=1)
    assert set(terms) == {"base", "lca", "cra", "total"}
    loss.backward()
    for name in ("img_enc.proj.weight", "txt_enc.proj.weight", "codebook.weight", "img_cra.gate.0.weight",
                 "txt_cra.global_fc.weight", "img_pool.gpo.linear.weight"):
        p = dict(m.named_parameters())[name]
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    m.on_before_optimizer_step(epoch=0)  # codebook frozen in the first epoch
    assert m.codebook.weight.grad is None


def test_gpo_weights_ignore_padding_and_max_pool_picks_maximum():
    torch.manual_seed(0)
    gpo = GPO()
    w = gpo.weights(torch.tensor([3, 5]), 5)
    assert torch.allclose(w.sum(1).squeeze(-1), torch.ones(2), atol=1e-5)
    assert w[0, 3:].abs().max() < 1e-6
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.allclose(Pool("max")(x, mask)[0], x[0, :3].max(0).values)
    assert torch.allclose(Pool("mean")(x, mask)[0], x[0, :3].mean(0))


def test_multi_caption_infonce_and_cra_match_references():
    torch.manual_seed(3)
    s = torch.randn(3, 7)
    cap2img = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    pos = cap2img[None, :] == torch.arange(3)[:, None]
    t = 0.5
    lg = s / t
    i2t = torch.stack([-(torch.logsumexp(lg[i, pos[i]], 0) - torch.logsumexp(lg[i], 0)) for i in range(3)]).mean()
    t2i = torch.stack([-(lg[cap2img[j], j] - torch.logsumexp(lg[:, j], 0)) for j in range(7)]).mean()
    assert L.infonce_loss(s, t, pos=pos).item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-5)
    # with the diagonal as positives it is the square loss
    sq = torch.randn(4, 4)
    assert L.infonce_loss(sq, t, pos=torch.eye(4, dtype=torch.bool)).item() == pytest.approx(L.infonce_loss(sq, t).item())
    # CRA with an explicit diagonal equals the default
    q, loc = l2norm(torch.randn(4, 8)), l2norm(torch.randn(4, 3, 8))
    m = torch.ones(4, 3, dtype=torch.bool)
    assert L.cra_loss(q, loc, m, pos=torch.eye(4, dtype=torch.bool)).item() == pytest.approx(L.cra_loss(q, loc, m).item())
    # image globals against the locals of several captions each
    tl = l2norm(torch.randn(7, 5, 8))
    tm = torch.ones(7, 5, dtype=torch.bool)
    assert torch.isfinite(L.cra_loss(l2norm(torch.randn(3, 8)), tl, tm, pos=pos))


def test_model_loss_with_several_captions_per_image():
    torch.manual_seed(0)
    from itr_lib.models import Batch
    m = VSEModel(dim=16, lca=True, cra=True, codebook_size=8, base_loss="infonce").train()
    regions, rmask, _, _, _ = _batch(b=3)
    text = torch.randn(7, 6, 384)
    tmask = torch.ones(7, 6, dtype=torch.bool)
    cap2img = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    batch = Batch(regions, rmask, text, tmask, tmask, None, cap2img)
    img, txt = m.encode_images(regions, rmask), m.encode_texts(text, tmask, tmask)
    loss, terms = m.compute_loss(img, txt, batch, epoch=1)
    loss.backward()
    assert all(math.isfinite(v) for v in terms.values())
    trip = VSEModel(dim=16, base_loss="triplet")  # the triplet takes several captions per image too
    t_img, t_txt = trip.encode_images(regions, rmask), trip.encode_texts(text, tmask, tmask)
    loss, _ = trip.compute_loss(t_img, t_txt, batch, 1)
    ref = _ref_multi_triplet(trip.similarity(t_img, t_txt), batch.positives(), None, 0.2, True)
    assert torch.allclose(loss, ref)


def _ref_multi_triplet(s, pos, ignore, margin, hardest):
    """Multi-positive hinge triplet by loops: each caption against the other images, each (image, own caption)
    pair against the captions the image does not own (``ignore`` removes negatives)."""
    b, m = s.shape
    ign = torch.zeros_like(pos) if ignore is None else ignore
    total = s.new_zeros(())
    for j in range(m):  # caption anchors
        i0 = int(pos[:, j].nonzero()[0])
        costs = [torch.clamp(margin + s[i, j] - s[i0, j], min=0) for i in range(b) if not pos[i, j] and not ign[i, j]]
        if costs:
            total = total + (max(costs) if hardest else sum(costs))
    for i in range(b):  # (image, own caption) anchors
        for j in pos[i].nonzero()[:, 0].tolist():
            costs = [torch.clamp(margin + s[i, n] - s[i, j], min=0) for n in range(m) if not pos[i, n] and not ign[i, n]]
            if costs:
                total = total + (max(costs) if hardest else sum(costs))
    return total


@pytest.mark.parametrize("hardest", [True, False])
def test_multi_positive_triplet_matches_loops(hardest):
    torch.manual_seed(3)
    cap2img = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    pos = cap2img[None, :] == torch.arange(4)[:, None]
    s = torch.randn(4, 7, requires_grad=True)
    ignore = torch.zeros(4, 7, dtype=torch.bool)
    ignore[1, 0] = ignore[3, 4] = True  # two false negatives
    for ig in (None, ignore):
        got = L.triplet_loss(s, 0.2, hardest, ig, pos)
        ref = _ref_multi_triplet(s, pos, ig, 0.2, hardest)
        assert torch.allclose(got, ref)
        g1, = torch.autograd.grad(got, s)
        g2, = torch.autograd.grad(ref, s)
        assert torch.allclose(g1, g2)
    # one caption per image: the multi-positive form is the square (diagonal) loss
    sq = torch.randn(5, 5)
    assert torch.allclose(L.triplet_loss(sq, 0.2, hardest, None, torch.eye(5, dtype=torch.bool)),
                          L.triplet_loss(sq, 0.2, hardest))


def test_consistency_with_several_captions_per_image():
    torch.manual_seed(4)
    s_vv, cap2img = torch.randn(3, 3), torch.tensor([0, 0, 1, 2, 2])
    s_tt = torch.randn(5, 5)
    got = L.intra_consistency_loss(s_vv, s_tt, 0.3, cap2img, reduce="sum")
    ref = sum(max(0.0, max(abs(float(s_tt[i, j] - s_vv[cap2img[i], cap2img[j]])) for i in range(5)) - 0.3)
              for j in range(5))
    assert float(got) == pytest.approx(ref, rel=1e-6)
    assert float(L.intra_consistency_loss(s_vv, s_tt, 0.3, cap2img, reduce="mean")) == pytest.approx(ref / 5, rel=1e-6)


# ------------------------------------------------------------------ the fast losses equal their direct forms
def _ref_sinkhorn(scores, eps, iters):  # SwAV's loop, rewriting the whole matrix
    q = torch.exp((scores.float() - scores.max()) / eps).t()
    q /= q.sum()
    k, n = q.shape
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n
    return (q * n).t()


def _ref_lca(regions, rmask, words, wmask, codebook, eps, iters, temperature, cap2img=None):
    v = regions.detach()
    codes = torch.zeros(*v.shape[:2], codebook.size(0))
    codes[rmask] = _ref_sinkhorn(v[rmask] @ codebook.detach().t(), eps, iters)
    if cap2img is not None:
        v, codes, rmask = v[cap2img], codes[cap2img], rmask[cap2img]
    sim = torch.einsum("bld,brd->blr", words.detach(), v).masked_fill(~rmask[:, None, :], float("-inf"))
    target = torch.gather(codes, 1, sim.argmax(-1).unsqueeze(-1).expand(-1, -1, codes.size(-1)))
    logp = torch.log_softmax((words @ codebook.t()) / temperature, dim=-1)
    return -(target * logp).sum(-1)[wmask].mean()


def _ref_cra(query, locals_, mask, temperature, topk, pos=None):
    q, c = query.shape[0], locals_.shape[0]
    pos = torch.eye(q, c, dtype=torch.bool) if pos is None else pos
    s = torch.einsum("qd,cnd->qcn", query, locals_) / temperature
    pos_valid, neg_valid = pos[:, :, None] & mask[None], (~pos)[:, :, None] & mask[None]
    k = min(topk, int(neg_valid.reshape(q, -1).sum(1).min()))
    neg_lse = torch.logsumexp(s.masked_fill(~neg_valid, float("-inf")).reshape(q, -1).topk(k, dim=1).values, 1)
    return (torch.logaddexp(s, neg_lse[:, None, None]) - s)[pos_valid].mean()


@pytest.mark.parametrize("multi", [False, True])
def test_fast_lca_and_cra_equal_direct_forms_in_value_and_gradient(multi):
    g = torch.Generator().manual_seed(5)
    b, r, l, d, k = 6, 9, 7, 16, 32
    cap2img = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5]) if multi else None
    m = len(cap2img) if multi else b
    regions = l2norm(torch.randn(b, r, d, generator=g))
    rmask = torch.rand(b, r, generator=g) > 0.3
    rmask[:, 0] = True
    words = l2norm(torch.randn(m, l, d, generator=g))
    wmask = torch.rand(m, l, generator=g) > 0.3
    wmask[:, 1] = True
    cb = l2norm(torch.randn(k, d, generator=g))
    scores = regions[rmask] @ cb.t()
    assert torch.allclose(L.sinkhorn(scores, 0.05, 3), _ref_sinkhorn(scores, 0.05, 3), rtol=1e-4, atol=1e-6)
    grads = []
    for fn in (L.lca_loss, _ref_lca):
        w, c = words.clone().requires_grad_(True), cb.clone().requires_grad_(True)
        loss = fn(regions, rmask, w, wmask, c, 0.05, 3, 0.1, cap2img=cap2img)
        loss.backward()
        grads.append((loss.detach(), w.grad, c.grad))
    for a, b_ in zip(*grads):
        assert torch.allclose(a, b_, rtol=1e-4, atol=1e-6)
    pos = (cap2img[None, :] == torch.arange(b)[:, None]) if multi else None
    loc = l2norm(torch.randn(m, l, d, generator=g))
    grads = []
    for fn in (L.cra_loss, _ref_cra):
        q, lo = l2norm(torch.randn(b, d, generator=torch.Generator().manual_seed(9))).requires_grad_(True), \
            loc.clone().requires_grad_(True)
        loss = fn(q, lo, wmask, 0.7, 5, pos=pos)
        loss.backward()
        grads.append((loss.detach(), q.grad, lo.grad))
    for a, b_ in zip(*grads):
        assert torch.allclose(a, b_, rtol=1e-4, atol=1e-6)


def test_l2norm_gradient_matches_autograd_of_the_formula():
    x = torch.randn(5, 7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: l2norm(t, -1), (x,))
    assert torch.autograd.gradcheck(lambda t: l2norm(t, 1), (x,))
    with torch.no_grad():
        x[0, 0] = 0.0  # a zero vector (masked padding) gets a finite gradient, as with the plain formula
    g = torch.randn(5, 7, 6, dtype=torch.float64)
    (l2norm(x) * g).sum().backward()
    ref = x.detach().clone().requires_grad_(True)
    (ref / (ref.norm(dim=-1, keepdim=True) + 1e-8) * g).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.allclose(x.grad[1:], ref.grad[1:], atol=1e-12)
    assert torch.allclose(x.grad[0, 1:], ref.grad[0, 1:], atol=1e-12)


@pytest.mark.parametrize("kind", ["mean", "max", "meanmax", "gpo"])
def test_packed_pooling_equals_padded_pooling_in_value_and_gradient(kind):
    torch.manual_seed(4)
    pool = Pool(kind)
    x = torch.randn(5, 7, 6)
    mask = torch.rand(5, 7) > 0.4
    mask[:, 0] = True
    mask[3] = True  # one full row
    grads = []
    for packed in (False, True):
        xx = x.clone().requires_grad_(True)
        out = pool.packed(xx[mask], mask.nonzero(as_tuple=True)[0], mask) if packed else pool(xx, mask)
        (out * torch.arange(6.0)).sum().backward()
        grads.append((out.detach(), xx.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-5)
    assert torch.count_nonzero(grads[1][1][~mask]) == 0  # padding gets no gradient


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_max_is_bit_identical_to_the_padded_max_with_ties(dtype):
    """packed_max (Pool's max on packed rows) gives the padded max's values and gradients bit for bit, each maximum's
    gradient to the first row of its item that reaches it, also where rows tie (small integers: many ties) and for
    an item without rows (-inf, no gradient)."""
    from itr_lib.models.encoders import packed_max, unpack
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(64, 25, generator=g) > 0.4
    mask[5] = False
    mask[6] = True
    owner = mask.nonzero(as_tuple=True)[0]
    flat0 = torch.randint(-3, 4, (int(mask.sum()), 32), generator=g).to(dtype)
    w = torch.randn(64, 32, generator=g).to(dtype)
    out = []
    for f in (lambda x: packed_max(x, owner, 64), lambda x: unpack(x, mask, float("-inf")).max(1).values):
        x = flat0.clone().requires_grad_()
        y = f(x)
        (torch.where(torch.isfinite(y), y, 0) * w).sum().backward()
        out.append((y.detach(), x.grad))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    assert torch.isinf(out[0][0][5]).all() and (out[0][1] != 0).sum() == (63 * 32)  # one row per maximum


def test_model_lca_and_cra_terms_equal_the_direct_forms_on_a_multi_caption_batch():
    """The model's packed wiring (valid tokens, word selection, caption -> image) gives the same LCA and CRA
    terms as the padded reference losses on a batch with dropped regions, dropped words and 1-3 captions
    per image."""
    from itr_lib.models import Batch
    from itr_lib.models.encoders import unpack
    torch.manual_seed(6)
    m = VSEModel(dim=16, lca=True, cra=True, codebook_size=8, base_loss="infonce", pooling="meanmax").train()
    regions, rmask, _, _, _ = _batch(b=3)
    cap2img = torch.tensor([0, 1, 1, 1, 2, 2])
    text = torch.randn(6, 8, 384)
    tmask = torch.arange(8)[None, :] < torch.tensor([8, 5, 6, 4, 7, 3])[:, None]
    wmask = tmask & (torch.arange(8)[None, :] > 0)
    wmask[0, 3] = tmask[0, 3] = False  # a dropped word
    img, txt = m.encode_images(regions, rmask), m.encode_texts(text, tmask, wmask)
    _, terms = m.compute_loss(img, txt, Batch(regions, rmask, text, tmask, wmask, None, cap2img), epoch=1)
    v, w = unpack(img["pre_flat"], rmask), unpack(txt["pre_flat"], tmask)
    ref_lca = _ref_lca(v, rmask, w, wmask, m.codebook.weight, 0.05, 3, 0.1, cap2img=cap2img)
    assert terms["lca"] == pytest.approx(ref_lca.item(), rel=1e-5)
    pos = cap2img[None, :] == torch.arange(3)[:, None]
    ref_cra = 0.5 * (_ref_cra(txt["cra_global"], unpack(img["cra_flat"], rmask), rmask, 0.7, 512, pos.t())
                     + _ref_cra(img["cra_global"], unpack(txt["cra_flat"], tmask), tmask, 0.7, 512, pos))
    assert terms["cra"] == pytest.approx(ref_cra.item(), rel=1e-5)
