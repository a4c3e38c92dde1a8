"""Shared fine-grained pieces of the TGDT / ALADIN / interactive models.

Scores (all memory-chunked, padding-safe: padded positions never influence a score, whatever they hold):

- MrSw (TERAN's: the sum over words of the max over regions) lives in :mod:`itr_lib.models.mrsw`, on this module's
  blocks (:func:`_blocked`).
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

from .. import scorekernel
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


__all__ = ["encode_by_length", "use_buckets", "loss_defaults", "scan_t2i_scores", "SequenceInput", "CLSTransformer", "pack_valid",
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
