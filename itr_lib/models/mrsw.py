"""TERAN's MrSw score (Messina et al. 2021), all pairs and aligned pairs, on :mod:`itr_lib.models.fine`'s blocks.

- :func:`mrsw_scores`: for image i and caption t, the sum over the valid words w of t of the max over the valid
  regions r of i of <v_ir, u_tw> (cosine when the locals are l2-normalised). (Bi, Bt) matrix, memory-chunked,
  padding-safe, with a sparse backward; under the bf16 score rule on the valid words only (:func:`_mrsw_packed`),
  its max over regions in a C++ kernel where ``compile_scores`` says so (:mod:`itr_lib.maxkernel`).
- :func:`mrsw_pair_scores`: the same for P aligned (image, caption) pairs (re-ranking a shortlist), (P,).
- :func:`per_word`: a word-summed score as it is, or its mean over the words.

Used by MrSw itself (:mod:`itr_lib.models.interactive`), TGDT's local term and ALADIN's teacher.
"""
from __future__ import annotations

import torch

from .. import maxkernel, scorekernel
from .fine import _block_sizes, _blocked, _clean, _lengths_order, _trim, _trim_len, DEFAULT_MAX_ELEMENTS


class _MrSwBlock(torch.autograd.Function):
    """MrSw of one block with a sparse backward; under the bf16 score rule, on the block's valid words only.

    bf16 (the study's rule for MrSw and TGDT, driven by :func:`_mrsw_packed`): ``u`` holds the block's valid words
    only (the word mask: padding, dropped tokens and CLS / SEP out), packed caption-major, and ``pos`` their
    positions in the block's trimmed (ct, l) layout; so the score matrix, its mask fill and its max hold no padded
    rows (about a third of the rows of a length-sorted, trimmed block of training captions); the words' maxima go
    back to the padded layout for the sum over words, so the additions run in the same order: outputs and gradients
    bit-identical to the padded block (tests). ``v16``: the image block in bf16, converted once for all its caption
    blocks. float32 (ALADIN's teacher; ``pos`` None) keeps every position of the padded ``u`` (ct, l, d), the
    product as its records ran it. Only the best region of each (image, caption, word) receives gradient, so the
    backward is two sparse (CSR)-dense products with ci x words non-zeros instead of the dense products autograd
    would run through ``amax`` (about 50x fewer operations), and only the argmax indices are kept for it, not the
    score tensor. Ties between regions send the whole gradient to the first of them (``amax`` would split it)."""

    @staticmethod
    def forward(ctx, v, vm, u, um, pos=None, v16=None):
        # no input cleaning needed: garbage in a padded region only reaches its own column of s, which the -inf fill
        # discards, and a padded word's row is never summed; the backward only reads valid (word, best region) pairs.
        # Layout (rows, ci*R): the max over regions runs over the contiguous last axis.
        ci, r, d = v.shape
        ct, l = um.shape
        if pos is not None:  # bf16 inputs (itr_lib.scorekernel.score_precision), the packed valid words; the max over
            # regions runs on the bf16 products and only the maxima are cast to float32: the same values as casting
            # first
            s = torch.matmul(u.to(torch.bfloat16), v16.reshape(ci * r, d).t())
        else:  # float32 (ALADIN's teacher, the fp32 rule): every position of the block, the product as it always ran
            if ci * r >= 256 and not u.is_contiguous():
                u = u.contiguous()  # many images: one large matmul beats a batch that re-reads them per caption
            s = torch.matmul(u, v.reshape(ci * r, d).t())  # a strided block of one image: a batch, no copy
        best, arg = _masked_max(s.view(-1, ci, r), vm)  # (rows, ci), float32: best region per word
        del s
        # a product row's word is valid (every packed row is), and its image has a region
        valid = (um.reshape(-1, 1) if pos is None else um.new_ones(len(pos), 1)) & vm.any(1)[None, :]
        best = torch.where(valid, best, best.new_zeros(()))
        if pos is not None:  # the padded layout again for the sum over words: the same order of additions
            best = best.new_zeros(ct * l, ci).index_copy_(0, pos, best)
        ctx.save_for_backward(v, u, arg, valid, pos)
        ctx.text_shape = (ct, l)
        return best.view(ct, l, ci).sum(1).t()

    @staticmethod
    def backward(ctx, grad):
        v, uw, arg, valid, pos = ctx.saved_tensors
        ct, l = ctx.text_shape
        ci, r, d = v.shape
        uw = uw.reshape(-1, d)  # the product's rows: the valid words (bf16), or every position (float32)
        rows = uw.shape[0]
        gv = gu = None
        cap = torch.arange(ct * l, device=v.device) // l if pos is None else torch.div(pos, l, rounding_mode="floor")
        # A^T (rows, ci*R): row w holds dL/dS[i, caption of w] at column i*R + (best region), for its valid images
        # i. The valid entries of the (rows, ci) layout come out row by row, images in order: CSR needs no sort
        # (a COO matrix would be coalesced -- sorted -- by every sparse product: ~1.7x slower, same sums).
        cols = (torch.arange(ci, device=v.device)[None, :] * r + arg)[valid]
        w = grad.t().index_select(0, cap)[valid].to(v.dtype)
        crow = torch.zeros(rows + 1, dtype=torch.int64, device=v.device)
        torch.cumsum(valid.sum(1), 0, out=crow[1:])
        if ctx.needs_input_grad[2]:
            g = _csr(crow, cols, w, (rows, ci * r)) @ v.reshape(ci * r, d) if rows else uw.new_zeros(0, d)
            gu = g if pos is not None else g.view(ct, l, d)  # packed rows, as ``u`` came
        if ctx.needs_input_grad[0]:
            # A (ci*R, rows): the same entries sorted by their row (stable: within a row, words in order)
            order = torch.argsort(cols, stable=True)
            word = torch.arange(rows, device=v.device).view(rows, 1).expand(rows, ci)[valid][order]
            crow_a = torch.zeros(ci * r + 1, dtype=torch.int64, device=v.device)
            torch.cumsum(torch.bincount(cols, minlength=ci * r), 0, out=crow_a[1:])
            gv = (_csr(crow_a, word, w[order], (ci * r, rows)) @ uw).view(ci, r, d) if rows else torch.zeros_like(v)
        return gv, None, gu, None, None, None


def _masked_max(s: torch.Tensor, vm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The max over regions of s (rows, ci, r) with the invalid regions at -inf, as float32, and its first index:
    the C++ kernel where the rule says compiled (``compile_scores``; :mod:`itr_lib.maxkernel`), else eager (fills
    ``s`` in place); the same values either way. A kernel that fails to build turns the rule eager (recorded)."""
    if scorekernel.current()["compiled"]:
        try:
            return maxkernel.masked_max(s, vm)
        except Exception as err:  # noqa: BLE001 - 'auto' falls back to eager (recorded), 'on' raises
            scorekernel.fall_back(err)
    return maxkernel.eager_masked_max(s, vm)


def _csr(crow, col, val, size):
    import warnings
    with warnings.catch_warnings():  # "sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, size)


def _mrsw_block(v, vm, u, um):
    """The float32 block of :func:`_blocked` (padded words; the bf16 rule goes through :func:`_mrsw_packed`)."""
    return _MrSwBlock.apply(v, vm, u, um)


def _mrsw_packed(img: torch.Tensor, img_mask: torch.Tensor, txt: torch.Tensor, txt_mask: torch.Tensor,
                 max_elements: int) -> torch.Tensor:
    """MrSw under the bf16 score rule: :func:`_blocked`'s blocks (the same image and caption blocks, captions sorted
    by length, each block trimmed), but every block's valid words come from ONE gather of the padded ``txt`` (its
    valid positions, in block order), split per block, and each image block is cast to bf16 once for all its
    caption blocks. The padded text is neither sorted nor split nor trimmed (a copy of the whole padded tensor
    forward, and its zero-filled gradient backward, per step); every block multiplies the same rows in the same
    order, so scores and gradients are bit-identical to :func:`_blocked` over the packed block (tests)."""
    bi, r = img.shape[:2]
    bt, l = txt.shape[:2]
    if bi == 0 or bt == 0:
        return img.new_zeros(bi, bt)
    ci, ct = _block_sizes(bi, r, l, max_elements)
    order = _lengths_order(txt_mask) if bt > ct else None  # the blocks of _blocked
    caps = torch.arange(bt, device=txt.device) if order is None else order
    blocks, src = [], []
    for c0 in range(0, bt, ct):
        ids = caps[c0:c0 + ct]
        um = txt_mask.index_select(0, ids)
        um = um[:, :_trim_len(um)]
        pos = um.reshape(-1).nonzero().squeeze(1)  # caption-major, words in order, in the trimmed layout
        lb = um.shape[1]
        src.append(ids.index_select(0, torch.div(pos, lb, rounding_mode="floor")) * l + pos % lb)
        blocks.append((um, pos))
    src = torch.cat(src)
    words = torch.split(txt.reshape(bt * l, -1).index_select(0, src), [len(p) for _, p in blocks])
    rows = []
    for v, vm in zip(torch.split(img, ci), torch.split(img_mask, ci)):
        v, vm = _trim(v, vm)
        v16 = v.detach().to(torch.bfloat16)
        rows.append(torch.cat([_MrSwBlock.apply(v, vm, u, um, pos, v16) for u, (um, pos) in zip(words, blocks)], 1))
    out = torch.cat(rows, 0)
    if order is not None:
        out = out[:, torch.argsort(order)]
    return out


def mrsw_scores(img_locals: torch.Tensor, img_mask: torch.Tensor, txt_locals: torch.Tensor,
                txt_mask: torch.Tensor, max_elements: int = DEFAULT_MAX_ELEMENTS) -> torch.Tensor:
    """TERAN's MrSw: S[i, t] = sum_{valid words w of t} max_{valid regions r of i} <v_ir, u_tw>.

    img_locals (Bi, R, D), img_mask (Bi, R) bool; txt_locals (Bt, L, D), txt_mask (Bt, L) bool (the words to sum
    over: exclude CLS/SEP and padding there). Pass l2-normalised locals for cosine. Returns (Bi, Bt); differentiable.
    An image without any valid region scores 0."""
    if scorekernel.low_precision():
        return _mrsw_packed(img_locals, img_mask, txt_locals, txt_mask, max_elements)
    return _blocked(_mrsw_block, img_locals, img_mask, txt_locals, txt_mask, max_elements)


def per_word(scores: torch.Tensor, txt_mask: torch.Tensor, reduce: str) -> torch.Tensor:
    """A word-summed score, (Bi, Bt) for all pairs or (P,) for aligned pairs, as it is ("sum", TERAN's MrSw) or
    divided by each caption's number of valid words ("mean": the mean over words, on the cosine scale, so one
    temperature serves short and long captions)."""
    if reduce == "sum":
        return scores
    if reduce == "mean":
        n = txt_mask.sum(1).clamp_min(1).to(scores.dtype)
        return scores / (n[None, :] if scores.dim() == 2 else n)
    raise ValueError(f"local_score must be 'sum' or 'mean', got {reduce!r}")


def mrsw_pair_scores(img_locals: torch.Tensor, img_mask: torch.Tensor, txt_locals: torch.Tensor,
                     txt_mask: torch.Tensor) -> torch.Tensor:
    """MrSw of P aligned pairs (img_locals[p], txt_locals[p]) -> (P,). Same conventions as :func:`mrsw_scores`."""
    v, u = _clean(img_locals, img_mask), _clean(txt_locals, txt_mask)
    s = torch.bmm(v, u.transpose(1, 2))  # (P, R, L)
    s = s.masked_fill(~img_mask[:, :, None], float("-inf")).amax(1)
    valid = txt_mask & img_mask.any(1)[:, None]
    return torch.where(valid, s, s.new_zeros(())).sum(-1)


__all__ = ["mrsw_scores", "mrsw_pair_scores", "per_word"]
