"""MiniLM's forward for one query in plain torch ops (the query kernel of issue 29; see :class:`LeanMiniLM`)."""
from __future__ import annotations

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
    bf16)). ``layer``: return the states after that many layers (None: all; the text top's cut)."""

    def __init__(self, bert, mm: torch.dtype = torch.float32):
        super().__init__()
        e = bert.embeddings
        self.word, self.pos = e.word_embeddings.weight, e.position_embeddings.weight
        self.typ = e.token_type_embeddings.weight[0]
        self.eln = (e.LayerNorm.weight, e.LayerNorm.bias, e.LayerNorm.eps)
        self.mm, self.h = mm, bert.config.num_attention_heads
        self.layers = []
        for blk in bert.encoder.layer:
            a, ao, out = blk.attention.self, blk.attention.output, blk.output
            self.layers.append(dict(
                qkv=(torch.cat([a.query.weight, a.key.weight, a.value.weight]).to(mm).contiguous(),
                     torch.cat([a.query.bias, a.key.bias, a.value.bias])),
                o=(ao.dense.weight.to(mm), ao.dense.bias), ln1=(ao.LayerNorm.weight, ao.LayerNorm.bias, ao.LayerNorm.eps),
                f1=(blk.intermediate.dense.weight.to(mm), blk.intermediate.dense.bias),
                f2=(out.dense.weight.to(mm), out.dense.bias), ln2=(out.LayerNorm.weight, out.LayerNorm.bias,
                                                                   out.LayerNorm.eps)))

    def _lin(self, x, wb):
        w, b = wb
        if self.mm is torch.float32:
            return F.linear(x, w, b)
        return F.linear(x.to(self.mm), w).float() + b

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
            q, k, v = self._lin(x, blk["qkv"]).view(n, 3, h, d // h).permute(1, 2, 0, 3)
            a = F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(n, d)
            x = F.layer_norm(self._lin(a, blk["o"]) + x, (d,), *blk["ln1"])
            f = F.gelu(self._lin(x, blk["f1"]))
            x = F.layer_norm(self._lin(f, blk["f2"]) + x, (d,), *blk["ln2"])
        return SimpleNamespace(last_hidden_state=x[None])
