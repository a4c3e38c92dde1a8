"""MiniLM's forward for one query in plain torch ops (the query kernel of issue 29; see :class:`LeanMiniLM`)."""
from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
import torch.nn.functional as F


class LeanMiniLM(torch.nn.Module):
    """MiniLM's (BERT's) forward for ONE query whose tokens are all valid (batch 1, no padding, so no attention mask),
    in plain torch ops: the query, key and value projections fused into one matmul, PyTorch's scaled-dot-product
    attention, exact GELU, post-LayerNorm, as ``transformers``' BertModel computes it (eval mode: no dropout).
    ``mm`` is the dtype of the matmul inputs: float32 (``lean-fp32``: the same function, ~1e-6 apart) or bfloat16
    (``lean-bf16mm``: weights cast once, each activation cast at the matmul and its result back to float32; the
    residual stream, biases, LayerNorm, softmax and GELU stay float32 (unlike ``bf16``, which runs everything in
    bf16)). ``layer``: return the states after that many layers (None: all; the text top's cut).

    ``packed``: reorder every weight once, at construction, into oneDNN's blocked layout and run the matmuls through
    oneDNN's linear (``packed-fp32`` / ``packed-bf16mm``). At batch 1 a query's matmuls are a few rows against 10.6M
    weights (42 MB in float32); on these shapes oneDNN's linear with pre-packed weights took ~0.65x the time of the
    plain GEMM (one thread, the 18 weight matrices of MiniLM, 16 rows). The packed float32 kernel is the same
    function up to summation order (~1e-6, like ``lean-fp32``). Needs PyTorch built with oneDNN
    (:func:`packed_available`): an error otherwise (:func:`query_kernel` picks the unpacked kernel there)."""

    def __init__(self, bert, mm: torch.dtype = torch.float32, packed: bool = False):
        super().__init__()
        if packed and not packed_available():
            raise RuntimeError("LeanMiniLM(packed=True) needs PyTorch with oneDNN (torch.backends.mkldnn); this build "
                               "has none. Fix: packed=False")
        self.packed = packed
        e = bert.embeddings
        self.word, self.pos = e.word_embeddings.weight, e.position_embeddings.weight
        self.typ = e.token_type_embeddings.weight[0]
        self.eln = (e.LayerNorm.weight, e.LayerNorm.bias, e.LayerNorm.eps)
        self.mm, self.h = mm, bert.config.num_attention_heads
        self.layers = []
        for blk in bert.encoder.layer:
            a, ao, out = blk.attention.self, blk.attention.output, blk.output
            self.layers.append({k: (self._pack(w), b) for k, (w, b) in dict(
                qkv=(torch.cat([a.query.weight, a.key.weight, a.value.weight]).to(mm).contiguous(),
                     torch.cat([a.query.bias, a.key.bias, a.value.bias])),
                o=(ao.dense.weight.to(mm), ao.dense.bias),
                f1=(blk.intermediate.dense.weight.to(mm), blk.intermediate.dense.bias),
                f2=(out.dense.weight.to(mm), out.dense.bias)).items()})
            self.layers[-1].update(ln1=(ao.LayerNorm.weight, ao.LayerNorm.bias, ao.LayerNorm.eps),
                                   ln2=(out.LayerNorm.weight, out.LayerNorm.bias, out.LayerNorm.eps))

    def _pack(self, w):
        return torch.ops.mkldnn._reorder_linear_weight(w.detach(), 16) if self.packed else w

    def _lin(self, x, wb):
        w, b = wb
        if self.packed:
            if self.mm is torch.float32:
                return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
            return torch.ops.mkldnn._linear_pointwise(x.to(self.mm), w, None, "none", [], "").float() + b
        if self.mm is torch.float32:
            return F.linear(x, w, b)
        return F.linear(x.to(self.mm), w).float() + b

    def _lin_gelu(self, x, wb):
        """GELU(linear): fused into oneDNN's linear (its exact-erf post-op) for the packed float32 kernel."""
        if self.packed and self.mm is torch.float32:
            return torch.ops.mkldnn._linear_pointwise(x, wb[0], wb[1], "gelu", [], "none")
        return F.gelu(self._lin(x, wb))

    def forward(self, input_ids, attention_mask=None, layer: int | None = None):
        if input_ids.shape[0] != 1 or (attention_mask is not None and not bool(attention_mask.all())):
            raise ValueError("LeanMiniLM encodes one query without padding (batch 1, every token valid); use the "
                             "transformers model for padded batches")
        ids = input_ids[0]
        n = ids.shape[0]
        x = self.word[ids] + self.pos[:n] + self.typ
        d, h = x.shape[-1], self.h
        x = F.layer_norm(x, (d,), self.eln[0], self.eln[1], self.eln[2])
        for blk in self.layers[:layer]:
            # (1, heads, n, head dim): the 4-d layout PyTorch's fused CPU attention takes (3-d ran its math path)
            q, k, v = self._lin(x, blk["qkv"]).view(1, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v)[0].transpose(0, 1).reshape(n, d)
            x = F.layer_norm(self._lin(a, blk["o"]) + x, (d,), *blk["ln1"])
            f = self._lin_gelu(x, blk["f1"])
            x = F.layer_norm(self._lin(f, blk["f2"]) + x, (d,), *blk["ln2"])
        return SimpleNamespace(last_hidden_state=x[None])


@functools.lru_cache(maxsize=1)
def packed_available() -> bool:
    """Whether this PyTorch runs oneDNN's linear with pre-packed weights (LeanMiniLM(packed=True)): oneDNN present
    and a 2 x 3 trial product equal to ``F.linear``'s."""
    return _packed_trial() is None


def _packed_trial() -> str | None:
    """None when the packed linear works here, else why not."""
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch has no oneDNN (torch.backends.mkldnn)"
    try:
        w, x = torch.arange(6.0).view(2, 3), torch.ones(1, 3)
        y = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, 1), None, "none", [],
                                               "")
    except (AttributeError, RuntimeError) as err:
        return f"oneDNN's packed linear failed here ({type(err).__name__}: {err})"
    if not torch.equal(y, F.linear(x, w)):
        return "oneDNN's packed linear disagreed with F.linear on a trial product"
    return None


def query_kernel() -> tuple[str, str]:
    """The float32 query kernel this machine gets and why: ``packed-fp32`` where oneDNN's packed linear works
    (adopted by the query-encoder check, ``results/benchmarks/query_encoder.csv``), else ``lean-fp32``."""
    if packed_available():
        return "packed-fp32", "oneDNN's packed linear available"
    return "lean-fp32", f"{_packed_trial()}, so the unpacked plain-torch forward"
