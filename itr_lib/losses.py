"""Losses of the study, one function each, device-agnostic (no .cuda() inside).

Score matrices are (B_images, B_texts) with the positive pairs on the diagonal. ``ignore`` masks are
(B, B) bool, True where a pair must not serve as a negative (e.g. a caption whose text is carried by the
anchor image too: a false negative); the diagonal is always excluded.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .scorekernel import loss_mm  # SelfAlign's loss matmuls: float32, or bf16 inputs (TrainConfig.loss_precision)


def _neg_mask(scores: torch.Tensor, ignore: torch.Tensor | None) -> torch.Tensor:
    eye = torch.eye(scores.size(0), scores.size(1), dtype=torch.bool, device=scores.device)
    return eye if ignore is None else (eye | ignore)


def triplet_loss(scores: torch.Tensor, margin: float = 0.2, hardest: bool = True,
                 ignore: torch.Tensor | None = None, pos: torch.Tensor | None = None) -> torch.Tensor:
    """VSE++ hinge triplet, summed over the batch (as the authors do).

    ``hardest``: only the hardest in-batch negative per anchor ("max violation"); otherwise the sum of all
    violations (VSE-infinity's warm-up epoch). ``pos`` (B, M) bool marks each caption's image when a batch holds
    several captions per image (default: the diagonal of a square matrix); then every caption is an anchor
    against the other images, and every (image, own caption) pair is an anchor against the captions of other
    images (those the image does not own and that ``ignore`` does not exclude)."""
    if pos is None:
        pos_s = scores.diag()
        mask = _neg_mask(scores, ignore)
        cost_t = (margin + scores - pos_s[:, None]).clamp(min=0).masked_fill(mask, 0)  # image anchor, caption negs
        cost_i = (margin + scores - pos_s[None, :]).clamp(min=0).masked_fill(mask, 0)  # caption anchor, image negs
        if hardest:
            return cost_t.max(1).values.sum() + cost_i.max(0).values.sum()
        return cost_t.sum() + cost_i.sum()
    not_neg = pos if ignore is None else (pos | ignore)
    cap_img = pos.float().argmax(0)  # (M,) each caption's image
    p_cap = scores.gather(0, cap_img[None, :])[0]  # (M,) the positive score of each caption
    cost_i = (margin + scores - p_cap[None, :]).clamp(min=0).masked_fill(not_neg, 0)  # caption anchors
    pi, pm = pos.nonzero(as_tuple=True)  # (image, own caption) pairs
    p_pair = scores[pi, pm]
    if hardest:
        neg_best = scores.masked_fill(not_neg, float("-inf")).max(1).values  # (B,) hardest caption per image
        cost_t = (margin + neg_best[pi] - p_pair).clamp(min=0)
        cost_t = torch.where(torch.isinf(neg_best[pi]), torch.zeros_like(cost_t), cost_t)  # no negative at all
        return cost_t.sum() + cost_i.max(0).values.sum()
    cost_t = (margin + scores[pi] - p_pair[:, None]).clamp(min=0).masked_fill(not_neg[pi], 0)
    return cost_t.sum() + cost_i.sum()


def infonce_loss(scores: torch.Tensor, temperature: float = 0.05, ignore: torch.Tensor | None = None,
                 pos: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (mean of both directions); ignored pairs are removed from the denominators.

    ``scores`` (B_images, M_texts); ``pos`` (B, M) bool marks each text's image (default: the diagonal of a
    square matrix). An image with several captions in the batch uses all of them as positives
    (-log sum_pos / sum_all); each caption has exactly one positive image."""
    b, m = scores.shape
    if pos is None:
        pos = torch.eye(b, m, dtype=torch.bool, device=scores.device)
    logits = scores / temperature
    if ignore is not None:
        logits = logits.masked_fill(ignore & ~pos, float("-inf"))
    i2t = (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~pos, float("-inf")), 1)).mean()
    t2i = F.cross_entropy(logits.t(), pos.float().argmax(0))
    return (i2t + t2i) / 2


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp: (N samples, K prototypes) scores -> codes whose rows sum to 1 and whose
    prototype masses are equalised (equipartition). Computed without gradient.

    The same iterations as SwAV's (per iteration: every prototype's mass set to 1/K, then every sample's to
    1/N; codes = N x the plan), carried as two scaling vectors, Q = diag(b) P diag(a), so an iteration costs
    two matrix-vector products instead of rewriting the N x K matrix four times."""
    p = torch.exp((scores.float() - scores.max()) / eps)  # N x K
    n, k = p.shape
    b = torch.ones(n, dtype=p.dtype, device=p.device)
    a = torch.ones(k, dtype=p.dtype, device=p.device)
    for _ in range(iters):
        a = 1.0 / (k * (b @ p))   # prototype masses -> 1/K
        b = 1.0 / (n * (p @ a))   # sample masses -> 1/N
    return (n * b)[:, None] * p * a[None, :]


def lca_loss(regions: torch.Tensor, region_mask: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor,
             codebook: torch.Tensor, eps: float = 0.05, iters: int = 3, temperature: float = 0.1,
             return_details: bool = False, cap2img: torch.Tensor | None = None):
    """SelfAlign's Local Concept Alignment (swapped prediction of region codes from words).

    regions (B, R, D), words (M, L, D): l2-normalised pre-context features; codebook (K, D) unit rows.
    Region codes: Sinkhorn over every valid region of the batch on detached scores. Each word j is matched
    to r*(j) = argmax_r <w_j, v_r> over the regions of its own image; loss = mean over words of
    CE(q_{r*(j)}, softmax(<c_k, w_j> / temperature)). Only words and codebook receive gradient.
    ``cap2img`` (M,): the image of each caption when a batch holds M captions of B images (default: M = B
    pairs). Computed on the valid words only: :func:`lca_loss_packed`."""
    img_of = cap2img if cap2img is not None else torch.arange(words.shape[0], device=words.device)
    word_img = img_of[word_mask.nonzero(as_tuple=True)[0]]
    loss = lca_loss_packed(regions[region_mask], region_mask, words[word_mask], word_img, codebook, eps, iters,
                           temperature)
    if not return_details:
        return loss
    with torch.no_grad():  # the analysis readout, on the padded layout
        v = regions.detach()
        codes = sinkhorn(v[region_mask] @ codebook.detach().t(), eps, iters)
        full = torch.zeros(*region_mask.shape, codes.size(1), device=codes.device)
        full[region_mask] = codes
        sim = torch.einsum("bld,brd->blr", words.detach(), v[img_of]).masked_fill(
            ~region_mask[img_of][:, None, :], float("-inf"))
        word_logp = F.log_softmax((words.detach() @ codebook.detach().t()) / temperature, dim=-1)
    # per caption (M, ...): its words' best regions, its image's region codes, its words' concept log-probs
    return loss, {"r_star": sim.argmax(-1), "codes": full[img_of], "word_logp": word_logp}


def lca_loss_packed(regions: torch.Tensor, region_mask: torch.Tensor, words: torch.Tensor, word_img: torch.Tensor,
                    codebook: torch.Tensor, eps: float = 0.05, iters: int = 3,
                    temperature: float = 0.1) -> torch.Tensor:
    """``lca_loss`` on packed inputs: regions (V, D) = the valid regions of B images (padded[region_mask],
    region_mask (B, R)), words (W, D) the valid words, word_img (W,) the batch image of each word.

    The word->region argmax runs per image on a (B, words of the image, R) block: no per-caption copy of the
    regions and no padded caption positions."""
    b = region_mask.shape[0]
    with torch.no_grad():
        v = regions.detach()
        codes = sinkhorn(loss_mm(v, codebook.detach().t()), eps, iters)  # (valid regions, K)
        flat = torch.full(region_mask.shape, -1, dtype=torch.long, device=v.device)
        flat[region_mask] = torch.arange(v.shape[0], device=v.device)
        vpad = v.new_zeros(*region_mask.shape, v.shape[-1])
        vpad[region_mask] = v
        # the words grouped by image: slot = rank of the word among its image's words
        order = torch.argsort(word_img, stable=True)
        img_sorted = word_img[order]
        counts = torch.bincount(word_img, minlength=b)
        slot = torch.arange(len(order), device=v.device) - (torch.cumsum(counts, 0) - counts)[img_sorted]
        wpad = v.new_zeros(b, int(counts.max()) if len(order) else 0, v.shape[-1])
        wpad[img_sorted, slot] = words.detach()[order]
        sim = torch.bmm(wpad, vpad.transpose(1, 2)).masked_fill_(~region_mask[:, None, :], float("-inf"))
        r_star = torch.empty_like(word_img)
        r_star[order] = sim.argmax(-1)[img_sorted, slot]
        target = codes[flat[word_img, r_star]]  # (words, K): the codes of their regions
    logp = F.log_softmax(loss_mm(words, codebook.t()) / temperature, dim=-1)
    return -(target * logp).sum(-1).mean()


def cra_loss(query: torch.Tensor, locals_: torch.Tensor, mask: torch.Tensor, temperature: float = 0.7,
             topk: int = 512, pos: torch.Tensor | None = None) -> torch.Tensor:
    """SelfAlign's Contextual Relation Alignment, one direction.

    query (Q, D): the globals of one modality; locals_ (C, N, D) with mask (C, N): the other modality's
    locals; pos (Q, C) bool: which items are the query's own (default: the diagonal, Q == C). The valid
    locals of a query's own items are positives; those of the other items are negatives, of which only the
    top-k hardest are kept (k capped by what the batch has). InfoNCE per positive, averaged over all
    positives. (Computed on the valid locals only: ``cra_loss_packed``.)"""
    return cra_loss_packed(query, locals_[mask], mask.nonzero(as_tuple=True)[0], temperature, topk, pos)


def cra_loss_packed(query: torch.Tensor, flat: torch.Tensor, owner: torch.Tensor, temperature: float = 0.7,
                    topk: int = 512, pos: torch.Tensor | None = None) -> torch.Tensor:
    """``cra_loss`` on packed locals: flat (V, D) are the valid locals of C items, owner (V,) the item of each
    (padding never enters the score matrix, the top-k or the gradient)."""
    q = query.shape[0]
    if pos is None:
        pos = torch.eye(q, dtype=torch.bool, device=query.device)
    s = loss_mm(query, flat.t()) / temperature  # (Q, V)
    pos_tok = pos[:, owner]  # (Q, V): the query's own locals
    k = min(topk, int((~pos_tok).sum(1).min().item()))
    if k == 0:
        return query.sum() * 0.0
    neg_lse = torch.logsumexp(s.masked_fill(pos_tok, float("-inf")).topk(k, dim=1).values, dim=1)  # (Q,)
    qi, vi = pos_tok.nonzero(as_tuple=True)
    sp = s[qi, vi]  # the positives' scores only
    return (torch.logaddexp(sp, neg_lse[qi]) - sp).mean()


def listnet_loss(student_scores: torch.Tensor, teacher_scores: torch.Tensor, scale: float = 6.0,
                 combine: str = "mean") -> torch.Tensor:
    """ALADIN's ListNet distillation: cross-entropy between softmax(teacher) (detached) and softmax(scale * student),
    over the rows (caption lists of each image) and over the columns (image lists of each caption) of the in-batch
    score matrices; each direction is the mean over its lists.

    ``combine="mean"`` averages the two directions (METHODS.md); ``"sum"`` adds them (the released ALADIN code,
    ``im_cost + s_cost``, which also adds 1e-10 inside the log; here log-softmax is exact). The minimum over the
    student, reached when softmax(scale * student) equals softmax(teacher) along both axes, is the teacher's mean
    entropy."""
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(f"student {tuple(student_scores.shape)} and teacher {tuple(teacher_scores.shape)} differ")
    t = teacher_scores.detach()
    s = student_scores * scale
    rows = -(F.softmax(t, dim=1) * F.log_softmax(s, dim=1)).sum(1).mean()
    cols = -(F.softmax(t, dim=0) * F.log_softmax(s, dim=0)).sum(0).mean()
    if combine == "mean":
        return (rows + cols) / 2
    if combine == "sum":
        return rows + cols
    raise ValueError(f"combine must be 'mean' or 'sum', got {combine!r}")


def intra_consistency_loss(s_vv: torch.Tensor, s_tt: torch.Tensor, margin: float = 0.3,
                           cap2img: torch.Tensor | None = None, reduce: str = "sum") -> torch.Tensor:
    """TGDT's cross-modal consistency (part of CMC): sum_j [max_i |S_TT[i, j] - S_VV[i, j]| - margin]_+, where
    S_VV / S_TT are the in-batch image-image / text-text global similarity matrices of the paired batch (as the
    released code: ``((s_scores - im_scores).abs().max(0)[0] - margin).clamp(min=0).sum()``).

    ``cap2img`` (M,): with several captions per image, S_TT is (M, M) and each caption pair is compared with the
    similarity of their images, S_VV[cap2img[i], cap2img[j]]. ``reduce``: "sum" over the columns (the authors)
    or "mean" (the study loss, whose contrastive terms are means: the same per-query scale)."""
    if cap2img is not None:
        s_vv = s_vv[cap2img][:, cap2img]
    if s_vv.shape != s_tt.shape:
        raise ValueError(f"S_VV {tuple(s_vv.shape)} and S_TT {tuple(s_tt.shape)} differ")
    per_col = ((s_tt - s_vv).abs().max(0).values - margin).clamp(min=0)
    if reduce == "sum":
        return per_col.sum()
    if reduce == "mean":
        return per_col.mean()
    raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")


def contrastive_loss(kind: str, scores: torch.Tensor, *, margin: float = 0.2, hardest: bool = True,
                     temperature: float = 0.05, ignore: torch.Tensor | None = None,
                     pos: torch.Tensor | None = None) -> torch.Tensor:
    """The study's two base losses behind one name: ``"triplet"`` (:func:`triplet_loss`, summed, the authors')
    or ``"infonce"`` (:func:`infonce_loss`, mean of both directions, the study loss)."""
    if kind == "triplet":
        return triplet_loss(scores, margin, hardest, ignore, pos)
    if kind == "infonce":
        return infonce_loss(scores, temperature, ignore=ignore, pos=pos)
    raise ValueError(f"unknown base_loss {kind!r}; choose 'triplet' or 'infonce'")
