"""Shared fine-grained pieces of the TGDT / ALADIN / interactive models.

Scores (all memory-chunked, padding-safe: padded positions never influence a score, whatever they hold):

- :func:`mrsw_scores` (TERAN's "MrSw"): for image i and caption t, the sum over the valid words w of t of the max
  over the valid regions r of i of <v_ir, u_tw> (cosine when the locals are l2-normalised). (Bi, Bt) matrix.
- :func:`mrsw_pair_scores`: the same for P aligned (image, caption) pairs (re-ranking a shortlist), (P,).
- :func:`scan_t2i_scores`: SCAN's text-to-image cross attention (Lee et al. 2018, ``func_attention`` with
  ``clipped_l2norm``): cosine region-word sims, LeakyReLU(0.1), l2-normalised over the words per region,
  softmax(lambda_softmax * .) over the regions, attended region vector per word, cosine(word, attended),
  LogSumExp pooling over the words (lambda_lse). (Bi, Bt) matrix.

Chunking: a block of ``ci`` images x ``ct`` captions materialises ``ci*R*ct*L`` scores; blocks are sized so that
this stays under ``max_elements`` (default 2**24 floats = 64 MiB, plus a few same-sized temporaries). When the
captions need several blocks they are processed sorted by length, and every block is trimmed to its longest
caption, so padding costs (almost) nothing.

Building blocks: :class:`SequenceInput` (features or GloVe ids -> Linear to D + learned positions, a learned 7x7
grid table for the region grid), :class:`CLSTransformer` (learned first slot + ``nn.TransformerEncoder``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import maxkernel, scorekernel
from ..precision import linear_input
from .encoders import l2norm

DEFAULT_MAX_ELEMENTS = 2 ** 24


# ----------------------------------------------------------------------------------------------- chunking
def _lengths_order(mask: torch.Tensor) -> torch.Tensor:
    """Permutation sorting sequences by their last valid position (shortest first)."""
    pos = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    last = (mask.long() * pos).amax(1)
    return torch.argsort(last, stable=True)


def _trim(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the sequence dimension after the last valid position of the block (at least 1 position)."""
    n = _trim_len(mask)
    return x[:, :n], mask[:, :n]


def _trim_len(mask: torch.Tensor) -> int:
    """:func:`_trim`'s length: one past the block's last valid position (at least 1)."""
    any_valid = mask.any(0)
    return int(any_valid.nonzero().max()) + 1 if bool(any_valid.any()) else 1


def _block_sizes(bi: int, r: int, l: int, max_elements: int) -> tuple[int, int]:
    """(images, captions) per block: ``ci * r * ct * l`` scores stay under ``max_elements``."""
    per_pair = max(1, r * l)
    ci = bi if bi * per_pair <= max_elements else max(1, max_elements // per_pair)
    return ci, max(1, max_elements // (ci * per_pair))


def _blocked(block_fn, img: torch.Tensor, img_mask: torch.Tensor, txt: torch.Tensor, txt_mask: torch.Tensor,
             max_elements: int) -> torch.Tensor:
    """Apply ``block_fn(v, vm, u, um) -> (ci, ct)`` over image x caption blocks; returns (Bi, Bt)."""
    bi, r = img.shape[:2]
    bt, l = txt.shape[:2]
    if bi == 0 or bt == 0:
        return img.new_zeros(bi, bt)
    ci, ct = _block_sizes(bi, r, l, max_elements)
    order = _lengths_order(txt_mask) if bt > ct else None  # several caption chunks: group similar lengths
    if order is not None:
        txt, txt_mask = txt[order], txt_mask[order]
    # torch.split, not a slice per block: the backward of a slice is a zero-filled tensor of the whole input per
    # block (then summed), the backward of a split one concatenation -- the same gradients, ~0.2 s less per step
    txt_blocks = list(zip(torch.split(txt, ct), torch.split(txt_mask, ct)))
    rows = []
    for v, vm in zip(torch.split(img, ci), torch.split(img_mask, ci)):
        v, vm = _trim(v, vm)
        cols = []
        for u, um in txt_blocks:
            u, um = _trim(u, um)
            cols.append(block_fn(v, vm, u, um))
        rows.append(torch.cat(cols, 1))
    out = torch.cat(rows, 0)
    if order is not None:
        out = out[:, torch.argsort(order)]
    return out


def _clean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the padded positions (so garbage there, even NaN/inf, cannot leak into valid scores)."""
    return x.masked_fill(~mask.unsqueeze(-1), 0.0)


# ----------------------------------------------------------------------------------------------- MrSw
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


# ----------------------------------------------------------------------------------------------- SCAN t2i
def scan_block_math(v, vm, u, um, lambda_softmax: float, lambda_lse: float, leaky: float, eps: float = 1e-8,
                    low: bool = False, branchless: bool = False):
    """SCAN t2i of one (ci images, ct captions) block -> (ci, ct). ``low``: the cosine matmul takes bf16 inputs
    (result cast back to float32 at once; :mod:`itr_lib.scorekernel`). ``branchless``: always apply the region
    mask (no data-dependent branch, so ``torch.compile`` makes one graph); the same values either way."""
    ci, r, d = v.shape
    ct, l, _ = u.shape
    v, u = _clean(v, vm), _clean(u, um)
    v2, u2 = v.reshape(ci * r, d), u.reshape(ct * l, d)
    if low:
        s = (v2.to(torch.bfloat16) @ u2.to(torch.bfloat16).t()).float().view(ci, r, ct, l)
    else:
        s = (v2 @ u2.t()).view(ci, r, ct, l)                                       # <v_r, u_w>
    a = F.leaky_relu(s, leaky).masked_fill(~um[None, None], 0.0)
    a = a / (a.norm(dim=-1, keepdim=True) + eps)                                   # l2 over words, per region
    logits = (a * lambda_softmax)
    if branchless or not bool(vm.all()):
        logits = logits.masked_fill(~vm[:, :, None, None], float("-inf"))
    att = torch.softmax(logits, dim=1)                                             # over regions, per word
    num = (att * s).sum(1)                                                         # <u_w, sum_r att_r v_r>
    gram = v @ v.transpose(1, 2)                                                   # (ci, r, r)
    ga = torch.bmm(gram, att.reshape(ci, r, ct * l)).view(ci, r, ct, l)
    att_norm = (att * ga).sum(1).clamp_min(0).sqrt()                               # |sum_r att_r v_r|
    cos = num / (att_norm * u.norm(dim=-1)[None]).clamp_min(eps)                   # (ci, ct, l)
    cos = cos.masked_fill(~um[None], float("-inf"))
    return torch.logsumexp(lambda_lse * cos, dim=-1) / lambda_lse


def _scan_block(v, vm, u, um, lambda_softmax, lambda_lse, leaky, eps=1e-8):
    """One block under the active score rule (:mod:`itr_lib.scorekernel`): compiled or eager, float32 or bf16
    score matmul."""
    low = scorekernel.low_precision()
    fn = scorekernel.compiled_or_none(scan_block_math)
    if fn is not None:
        try:
            return fn(v, vm, u, um, lambda_softmax, lambda_lse, leaky, eps, low, True)
        except Exception as err:  # noqa: BLE001 - a failed compile falls back to eager ('auto'), or raises ('on')
            scorekernel.fall_back(err)
    return scan_block_math(v, vm, u, um, lambda_softmax, lambda_lse, leaky, eps, low)


def scan_t2i_scores(img_locals: torch.Tensor, img_mask: torch.Tensor, txt_locals: torch.Tensor,
                    txt_mask: torch.Tensor, lambda_softmax: float = 9.0, lambda_lse: float = 6.0,
                    leaky: float = 0.1, max_elements: int = DEFAULT_MAX_ELEMENTS) -> torch.Tensor:
    """SCAN t2i (clipped_l2norm, LSE pooling) scores (Bi, Bt); locals should be l2-normalised as in SCAN.

    The attended vector is never materialised: <u, sum_r a_r v_r> = sum_r a_r <u, v_r> and
    |sum_r a_r v_r|^2 = a^T (V V^T) a, which is exact and costs R*R instead of D per word and region."""
    def block(v, vm, u, um):
        return _scan_block(v, vm, u, um, lambda_softmax, lambda_lse, leaky)
    return _blocked(block, img_locals, img_mask, txt_locals, txt_mask, max_elements)


# ----------------------------------------------------------------------------------------------- modules
class SequenceInput(nn.Module):
    """Token features -> Linear(d_in, D) + learned position (+ nothing else).

    ``grid``: the positions are a learned grid x grid table (the 7x7 EfficientNet grid, row-major), requiring
    exactly grid**2 tokens; otherwise a learned 1-D table of ``max_len`` positions. ``glove``: the input is word
    ids, embedded by a trainable GloVe-initialised table (attribute ``embed``, which train.py's token-drop
    augmentation reads for the vocabulary size) before the projection."""

    def __init__(self, d_in: int, dim: int, grid: int | None = None, max_len: int = 64,
                 glove: torch.Tensor | None = None):
        super().__init__()
        self.embed = None
        if glove is not None:
            self.embed = nn.Embedding.from_pretrained(glove.clone().float(), freeze=False, padding_idx=0)
            d_in = glove.shape[1]
        self.proj = nn.Linear(d_in, dim)
        self.grid = grid
        n_pos = grid * grid if grid else max_len
        self.pos = nn.Parameter(torch.zeros(n_pos, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, pos_index: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, d_in) features or (B, N) ids; ``pos_index`` (B, N): the original position of each token when
        the sequence was packed (:func:`pack_valid`), else positions 0..N-1."""
        x = self.embed(x) if self.embed is not None else linear_input(x)
        n = x.shape[1]
        if pos_index is None:
            if self.grid and n != self.grid * self.grid:
                raise ValueError(f"expected {self.grid}x{self.grid}={self.grid ** 2} grid regions, got {n}. Fix: "
                                 f"set cfg.extra['grid'] to the side of your feature grid")
            if n > self.pos.shape[0]:
                raise ValueError(f"sequence of {n} tokens exceeds the {self.pos.shape[0]} learned positions. Fix: "
                                 f"raise cfg.extra['max_len']")
            return self.proj(x) + self.pos[:n]
        return self.proj(x) + self.pos[pos_index]


def pack_valid(mask: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Training-time packing of masked-out tokens (region drop / token drop): ``(order (B, M), packed mask (B, M))``
    with each row's valid positions first, in their original order, and M = the largest valid count, so dropped
    tokens cost no compute. ``order`` is None when there is nothing to remove."""
    counts = mask.sum(1)
    m = int(counts.max()) if mask.numel() else 0
    if m == mask.shape[1]:
        return None, mask
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :max(m, 1)]
    packed = torch.arange(order.shape[1], device=mask.device)[None, :] < counts[:, None]
    return order, packed


def gather_tokens(x: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """x (B, N, ...) -> x[b, order[b]] (B, M, ...); identity when ``order`` is None."""
    if order is None:
        return x
    idx = order.view(*order.shape, *([1] * (x.dim() - 2))).expand(*order.shape, *x.shape[2:])
    return torch.gather(x, 1, idx)


def transformer_encoder(dim: int, layers: int, heads: int, ff: int, dropout: float) -> nn.TransformerEncoder:
    if dim % heads:
        raise ValueError(f"dim {dim} is not divisible by heads {heads}")
    layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class CLSTransformer(nn.Module):
    """A learned first slot prepended to a (B, N, D) sequence, then a transformer encoder with key padding.

    Returns (first-slot output (B, D), token outputs (B, N, D)); nothing is normalised here."""

    def __init__(self, dim: int, layers: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.cls, std=0.02)
        self.encoder = transformer_encoder(dim, layers, heads, ff, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        x = torch.cat([self.cls.expand(b, -1, -1).to(x.dtype), x], 1)
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=mask.device), ~mask], 1)
        h = self.encoder(x, src_key_padding_mask=pad)
        return h[:, 0], h[:, 1:]


def encode_by_length(fn, inputs: tuple[torch.Tensor, ...], attn_mask: torch.Tensor, buckets: int,
                     token_keys: tuple[str, ...]) -> dict:
    """Length buckets: ``fn(*cut) -> dict`` encodes one group of sequences, ``cut`` being ``inputs`` (tensors of
    shape (n, width, ...)) restricted to the group and cut to its width. The groups: ``buckets`` sets of sequences
    sorted by their last valid position, each cut after its own last valid position (a transformer's outputs for a
    sequence do not depend on the padding after it: the key-padding mask hides it); the outputs are put back in
    order, the ``token_keys`` ones (n, w, ...) zero-padded to the batch width. The same function of every sequence
    as one padded group, at the cost of the real lengths.

    The inputs are permuted once and split into the groups (not indexed per group): the backward of a per-group
    index is a zero-filled tensor of the whole input per group, summed; of one permutation and a split, one
    (the same gradients: the groups are disjoint, tested)."""
    width = attn_mask.shape[1]
    last = (attn_mask.long() * torch.arange(1, width + 1, device=attn_mask.device)).amax(1)
    order = torch.argsort(last, stable=True)
    sizes = [len(idx) for idx in torch.tensor_split(order, buckets)]
    groups = list(zip(*(torch.split(t.index_select(0, order), sizes) for t in inputs)))
    parts: dict[str, list] = {}
    for idx, cut in zip(torch.split(order, sizes), groups):
        if len(idx) == 0:
            continue
        w = max(1, int(last[idx].max()))
        for k, v in fn(*(t[:, :w] for t in cut)).items():
            if k in token_keys:
                v = F.pad(v, (0, 0) * (v.dim() - 2) + (0, width - w))
            parts.setdefault(k, []).append(v)
    inv = torch.argsort(order)
    return {k: torch.cat(v)[inv] for k, v in parts.items()}


def use_buckets(buckets: int, n: int) -> bool:
    """Whether length buckets pay off for ``n`` sequences (at least two per bucket)."""
    return buckets > 1 and n >= 2 * buckets


def normed_locals(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """l2-normalised locals with padded positions zeroed."""
    return l2norm(h).masked_fill(~mask.unsqueeze(-1), 0.0)


def loss_defaults(cfg) -> dict:
    """The loss settings every model reads from its TrainConfig: the base loss (``"triplet"``: the authors',
    summed, hardest negative from epoch ``warmup_epochs`` on; ``"infonce"``: the study loss, at
    ``infonce_temperature``), and how word-summed local scores enter it (``local_score``: "sum" with the triplet,
    as the authors; "mean" over the words with InfoNCE, so the local logits share the global temperature)."""
    return dict(base_loss=cfg.base_loss, margin=cfg.margin, warmup_epochs=cfg.warmup_epochs,
                temperature=cfg.infonce_temperature, local_score="mean" if cfg.base_loss == "infonce" else "sum")


def loss_on(kind_hp: dict, scores: torch.Tensor, batch, epoch: int) -> torch.Tensor:
    """The configured base loss (:func:`itr_lib.losses.contrastive_loss`) on a score matrix of ``batch``."""
    from .. import losses as L
    return L.contrastive_loss(kind_hp["base_loss"], scores, margin=kind_hp["margin"],
                              hardest=epoch >= kind_hp["warmup_epochs"], temperature=kind_hp["temperature"],
                              ignore=batch.ignore, pos=batch.positives())


def extra_get(extra: dict, defaults: dict) -> dict:
    """``defaults`` overridden by ``extra``; unknown keys in ``extra`` are an error (typos must not pass)."""
    unknown = sorted(set(extra) - set(defaults))
    if unknown:
        raise ValueError(f"unknown cfg.extra key(s) {unknown}; valid: {sorted(defaults)}")
    return {**defaults, **extra}


__all__ = ["encode_by_length", "use_buckets", "mrsw_scores", "mrsw_pair_scores", "per_word", "loss_defaults", "scan_t2i_scores", "SequenceInput", "CLSTransformer", "pack_valid",
           "gather_tokens", "transformer_encoder", "normed_locals", "extra_get", "DEFAULT_MAX_ELEMENTS"]


def sequence_inputs(text_encoder: str, dim: int, glove: torch.Tensor | None, region_dim: int, text_dim: int,
                    hp: dict) -> tuple[SequenceInput, SequenceInput]:
    """The image (7x7 grid positions) and text (1-D positions; GloVe ids for 'gru') input layers shared by
    the transformer models (TGDT, ALADIN)."""
    if text_encoder not in ("minilm", "gru"):
        raise ValueError(f"unknown text_encoder {text_encoder!r}; choose 'minilm' or 'gru'")
    if text_encoder == "gru" and glove is None:
        raise ValueError("text_encoder='gru' needs the GloVe embedding matrix (glove=...)")
    return (SequenceInput(region_dim, dim, grid=hp["grid"]),
            SequenceInput(text_dim, dim, max_len=hp["max_len"], glove=glove if text_encoder == "gru" else None))
