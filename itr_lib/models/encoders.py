"""Shared building blocks: region / token encoders, masked pooling (mean, max, GPO), masked batch norm.

Shapes: regions (B, R, C) float, region_mask (B, R) bool; text features (B, L, 384) float (frozen MiniLM)
or word ids (B, L) long (GloVe BiGRU), text_mask (B, L) bool. Locals come out as (B, N, D).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class _L2Norm(torch.autograd.Function):
    """y = x / (|x| + eps) with a hand-written backward: autograd's generic one for the broadcast division
    reduces the divisor's gradient separately and costs ~4x more on (tokens x D) tensors on CPU."""

    @staticmethod
    def forward(ctx, x, dim, eps):
        n = x.norm(dim=dim, keepdim=True)
        d = n + eps
        y = x / d
        ctx.save_for_backward(y, n, d)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, g):
        y, n, d = ctx.saved_tensors
        # dy/dx^T g = (g - y <g, y> (n + eps) / n) / (n + eps)
        dot = (g * y).sum(ctx.dim, keepdim=True) * (d / n.clamp_min(1e-30))
        return (g - y * dot) / d, None, None


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """x / (|x| + eps) along ``dim`` (exact gradient, see _L2Norm); a reduced-precision input (bf16 autocast) is
    normalised in float32 and comes out float32."""
    if x.dtype in (torch.bfloat16, torch.float16):
        x = x.float()
    if torch.is_grad_enabled() and x.requires_grad:
        return _L2Norm.apply(x, dim, eps)
    return x / (x.norm(dim=dim, keepdim=True) + eps)


def valid_rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The valid positions of (B, N, ...) as (V, ...), row-major (the order of ``mask.nonzero()``); a view when
    every position is valid."""
    if bool(mask.all()):
        return x.reshape(-1, *x.shape[2:])
    return x[mask]


def unpack(flat: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Inverse of :func:`valid_rows`: (V, D) valid rows -> (B, N, D) with ``fill`` at the other positions."""
    if bool(mask.all()):
        return flat.reshape(*mask.shape, flat.shape[-1])
    out = flat.new_full((*mask.shape, flat.shape[-1]), fill)
    out[mask] = flat
    return out


def packed_mean(flat: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """Per-item mean of packed rows: flat (V, D), owner (V,) the item (0..n-1) of each row -> (n, D); an item
    without rows gets zeros."""
    counts = torch.bincount(owner, minlength=n).clamp_min(1).to(flat.dtype)[:, None]
    return flat.new_zeros(n, flat.shape[-1]).index_add(0, owner, flat) / counts


class _PackedMax(torch.autograd.Function):
    """Per-item max of packed rows: flat (V, D), owner (V,) the item of each row (non-decreasing: the rows of
    ``mask.nonzero()``) -> (n, D), -inf for an item without rows. The values and gradients of the padded
    ``unpack(flat, mask, -inf).max(1).values`` (each maximum's gradient to the first of its item's rows that
    reaches it, as max over a dimension picks on CPU) without the padded (n, N, D) tensor, its fill, its indices
    and its gradient's scatter."""

    @staticmethod
    def forward(ctx, flat, owner, n):
        v, d = flat.shape
        mx = flat.new_full((n, d), float("-inf")).scatter_reduce_(0, owner[:, None].expand(v, d), flat, "amax")
        ctx.save_for_backward(flat, owner, mx)
        return mx

    @staticmethod
    def backward(ctx, grad):
        flat, owner, mx = ctx.saved_tensors
        d = flat.shape[1]
        hit = flat == mx.index_select(0, owner)  # the rows that reach their item's maximum, per column
        hits = torch.zeros(mx.shape, device=flat.device).index_add_(0, owner, hit.float())  # exact counts
        tied = hits > 1
        if bool(tied.any()):  # a tie: only the first of the item's rows that reach it keeps the gradient
            r, c = (hit & tied.index_select(0, owner)).nonzero(as_tuple=True)  # row-major: rows ascending per column
            key = owner[r] * d + c
            order = torch.argsort(key, stable=True)
            later = torch.ones_like(order, dtype=torch.bool)
            later[0] = False
            later[1:] = key[order][1:] == key[order][:-1]
            hit[r[order[later]], c[order[later]]] = False
        return torch.where(hit, grad.index_select(0, owner), grad.new_zeros(())), None, None


def packed_max(flat: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """Per-item max of packed rows (see :class:`_PackedMax`): flat (V, D), owner (V,) non-decreasing -> (n, D)."""
    return _PackedMax.apply(flat, owner, n)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1).values


class MaskedBatchNorm(nn.Module):
    """BatchNorm1d over the valid positions of a batch of sequences, given packed (V, D) (``valid_rows``), so
    padding never enters the statistics. A wrapper (attribute ``bn``) so that checkpoint keys stay as trained."""

    def __init__(self, dim: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


def positional_encoding_1d(d_model: int, length: int, device=None) -> torch.Tensor:
    pe = torch.zeros(length, d_model, device=device)
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class GPO(nn.Module):
    """VSE-infinity's Generalized Pooling Operator.

    Features are sorted per dimension in descending order; a small BiGRU over sin/cos position codes
    scores each sorted position; pooled = sum_k softmax(score_k / 0.1) * sorted_k (valid positions only)."""

    def __init__(self, d_pe: int = 32, d_hidden: int = 32):
        super().__init__()
        self.d_pe = d_pe
        self.gru = nn.GRU(d_pe, d_hidden, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(d_hidden, 1, bias=False)

    def weights(self, lengths: torch.Tensor, max_len: int) -> torch.Tensor:
        """(B, max_len, 1) pooling weights. They depend on the length only, so the BiGRU runs once per
        distinct length in the batch (at most max_len sequences, not B) and the rows are gathered back."""
        uniq, inverse = torch.unique(lengths, return_inverse=True)
        return self._weights(uniq, max_len)[inverse]

    def _weights(self, lengths: torch.Tensor, max_len: int) -> torch.Tensor:
        pe = positional_encoding_1d(self.d_pe, max_len, lengths.device).unsqueeze(0).repeat(len(lengths), 1, 1)
        mask = torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
        pe = pe.masked_fill(~mask.unsqueeze(-1), 0)
        packed = nn.utils.rnn.pack_padded_sequence(pe, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=max_len)
        out = (out[..., : out.size(-1) // 2] + out[..., out.size(-1) // 2:]) / 2
        scores = self.linear(out).masked_fill(~mask.unsqueeze(-1), -10000.0)
        return torch.softmax(scores / 0.1, dim=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).clamp_min(1)
        x = x.masked_fill(~mask.unsqueeze(-1), -10000.0)
        sorted_x = x.sort(dim=1, descending=True).values
        sorted_x = sorted_x.masked_fill(~mask.sort(dim=1, descending=True).values.unsqueeze(-1), 0)
        w = self.weights(lengths, x.size(1))
        return (sorted_x * w).sum(1)


class Pool(nn.Module):
    """mean | max | gpo | meanmax (mean + max) over valid positions."""

    def __init__(self, kind: str = "gpo"):
        super().__init__()
        if kind not in ("mean", "max", "gpo", "meanmax"):
            raise ValueError(f"unknown pooling {kind!r}; choose mean, max, gpo or meanmax")
        self.kind = kind
        self.gpo = GPO() if kind == "gpo" else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "mean":
            return masked_mean(x, mask)
        if self.kind == "max":
            return masked_max(x, mask)
        if self.kind == "meanmax":
            return masked_mean(x, mask) + masked_max(x, mask)
        return self.gpo(x, mask)

    def packed(self, flat: torch.Tensor, owner: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The same pooling of packed valid positions: flat (V, D) = x[mask], owner (V,) the row of each.
        Mean and max pool the packed rows (no padded tensor; max: :func:`packed_max`, the padded max's values and
        gradients); GPO reads a padded view."""
        if self.kind in ("mean", "meanmax"):
            mean = packed_mean(flat, owner, mask.shape[0])
            if self.kind == "mean":
                return mean
        if self.kind in ("max", "meanmax"):
            mx = packed_max(flat, owner, mask.shape[0])
            return mx if self.kind == "max" else mean + mx
        return self.gpo(unpack(flat, mask), mask)


class ResidualMLP(nn.Module):
    """VSE-infinity's 'basic' precomputed-feature encoder: fc(x) + MLP(x) (2 layers, BN, ReLU)."""

    def __init__(self, d_in: int, d_out: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or d_out // 2
        self.fc1, self.bn, self.fc2 = nn.Linear(d_in, hidden), MaskedBatchNorm(hidden), nn.Linear(hidden, d_out)

    def forward_flat(self, x: torch.Tensor) -> torch.Tensor:
        """The map on packed valid positions (V, C) (batch statistics over exactly those positions)."""
        return self.fc2(F.relu(self.bn(self.fc1(x))))


class ProjectionEncoder(nn.Module):
    """Features -> locals by a trainable projection. ``proj`` output is the pre-context feature (LCA input);
    locals = proj (+ residual MLP). ``xavier``: Xavier-uniform weight and zero bias (else PyTorch's default)."""

    def __init__(self, d_in: int, dim: int, mlp: bool = False, xavier: bool = False):
        super().__init__()
        self.proj = nn.Linear(d_in, dim)
        self.mlp = ResidualMLP(d_in, dim) if mlp else None
        if xavier:
            nn.init.xavier_uniform_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, C) -> padded (pre, locals), each (B, N, D); invalid positions come out zero."""
        pre, locals_ = self.forward_flat(valid_rows(x, mask))
        return unpack(pre, mask), unpack(locals_, mask)

    def forward_flat(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` on the packed valid positions (V, C) -> packed (pre, locals), each (V, D)."""
        pre = self.proj(x)
        return pre, (pre + self.mlp.forward_flat(x) if self.mlp is not None else pre)


class RegionEncoder(ProjectionEncoder):
    """Grid regions (1280-d EfficientNet cells) -> locals (Xavier-initialised projection)."""

    def __init__(self, d_in: int = 1280, dim: int = 1024, mlp: bool = False):
        super().__init__(d_in, dim, mlp, xavier=True)


class MiniLMTextEncoder(ProjectionEncoder):
    """Frozen MiniLM token states -> trainable projection (+ residual MLP)."""

    def __init__(self, d_in: int = 384, dim: int = 1024, mlp: bool = False):
        super().__init__(d_in, dim, mlp)


class GRUTextEncoder(nn.Module):
    """Word embeddings (GloVe-initialised, trainable) -> BiGRU (directions averaged), as in VSE++/VSE-infinity.

    The pre-context feature for LCA is a linear map of the word embedding."""

    def __init__(self, embeddings: torch.Tensor, dim: int = 1024, layers: int = 1):
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(embeddings.clone().float(), freeze=False, padding_idx=0)
        d_word = embeddings.shape[1]
        self.gru = nn.GRU(d_word, dim, num_layers=layers, batch_first=True, bidirectional=True)
        self.word_proj = nn.Linear(d_word, dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(ids)
        lengths = mask.sum(1).clamp_min(1)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=ids.size(1))
        half = out.size(-1) // 2
        locals_ = (out[..., :half] + out[..., half:]) / 2
        return self.word_proj(x), locals_


def build_text_encoder(kind: str, dim: int, glove: torch.Tensor | None = None, mlp: bool = False) -> nn.Module:
    """'minilm': frozen MiniLM states -> projection (+ MLP); 'gru': BiGRU over GloVe-initialised words."""
    if kind == "minilm":
        return MiniLMTextEncoder(384, dim, mlp)
    if kind == "gru":
        if glove is None:
            raise ValueError("text_encoder='gru' needs the GloVe embedding matrix (glove=...)")
        return GRUTextEncoder(glove, dim)
    raise ValueError(f"unknown text_encoder {kind!r}; choose 'minilm' or 'gru'")
