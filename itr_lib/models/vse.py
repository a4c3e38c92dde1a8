"""Independent-embedding baseline (VSE++ / VSE-infinity) and SelfAlign (baseline + LCA + CRA).

SelfAlign (Zhuang et al., IEEE TMM 2023) as specified in METHODS.md:
- LCA on the pre-context features (region / word projections), a K-prototype codebook, Sinkhorn codes of
  regions, word->region argmax within the pair, swapped prediction at temperature 0.1;
- CRA on the locals after context modelling (ReLU(BN(.)), l2-normalised), guided globals, InfoNCE at 0.7
  with top-k hard negatives, gated fusion; similarity S = S_base + 0.5 (<mean_v, f_t> + <f_v, mean_t>),
  implemented as concatenated retrieval vectors [e, 0.5 a, 0.5 b] . [e, c, d] (one inner product).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import losses as L
from ..precision import linear_input
from .base import Batch, RetrievalModel
from .encoders import (MaskedBatchNorm, Pool, RegionEncoder, build_text_encoder, l2norm, packed_mean, unpack,
                       valid_rows)


class CRABranch(nn.Module):
    """Per-modality CRA pieces: locals ReLU(BN(h)), guided global, gated fusion."""

    def __init__(self, dim: int):
        super().__init__()
        self.bn_local = MaskedBatchNorm(dim)
        self.global_fc, self.global_bn = nn.Linear(dim, dim), nn.BatchNorm1d(dim)
        self.gate = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def forward(self, h: torch.Tensor, owner: torch.Tensor, n: int) -> dict:
        """h (V, D): the packed valid locals of n items, owner (V,) the item of each (the padded (B, N, D) form
        would cost every elementwise op and the CRA scores twice on short captions)."""
        flat = l2norm(F.relu(self.bn_local(h)))
        mean_local = packed_mean(flat, owner, n)
        g = l2norm(F.relu(self.global_bn(self.global_fc(mean_local))))
        mean_n = l2norm(mean_local)
        gate = torch.sigmoid(self.gate(torch.cat([mean_n, g], dim=-1)))
        fused = l2norm(gate * mean_n + (1 - gate) * g)
        return {"cra_flat": flat, "cra_global": g, "cra_mean": mean_n, "cra_fused": fused, "gate": gate}


class VSEModel(RetrievalModel):
    """Baseline when ``lca=cra=False``; SelfAlign with either or both modules on."""

    supports_multi_caption = True

    def __init__(self, dim: int = 1024, text_encoder: str = "minilm", pooling: str = "gpo", mlp: bool = False,
                 glove: torch.Tensor | None = None, lca: bool = False, cra: bool = False, codebook_size: int = 1024,
                 base_loss: str = "triplet", margin: float = 0.2, infonce_temperature: float = 0.05,
                 warmup_epochs: int = 1, lca_eps: float = 0.05, lca_iters: int = 3, lca_temperature: float = 0.1,
                 lca_weight: float = 1.0, cra_temperature: float = 0.7, cra_topk: int = 512,
                 cra_weight: float = 1.0, codebook_freeze_epochs: int = 1, region_dim: int = 1280):
        super().__init__()
        self.dim, self.text_kind = dim, text_encoder
        self.img_enc = RegionEncoder(region_dim, dim, mlp)
        self.txt_enc = build_text_encoder(text_encoder, dim, glove, mlp)
        self.img_pool, self.txt_pool = Pool(pooling), Pool(pooling)
        self.use_lca, self.use_cra = lca, cra
        if lca:
            self.codebook = nn.Linear(dim, codebook_size, bias=False)
            self.normalize_codebook()
        if cra:
            self.img_cra, self.txt_cra = CRABranch(dim), CRABranch(dim)
        self.hp = dict(base_loss=base_loss, margin=margin, infonce_temperature=infonce_temperature,
                       warmup_epochs=warmup_epochs, lca_eps=lca_eps, lca_iters=lca_iters,
                       lca_temperature=lca_temperature, lca_weight=lca_weight, cra_temperature=cra_temperature,
                       cra_topk=cra_topk, cra_weight=cra_weight, codebook_freeze_epochs=codebook_freeze_epochs)

    # -------------------------------------------------------------------------------- encoding
    def _finish(self, pre, h, mask, pool, cra_branch) -> dict:
        """pre, h (V, D): the packed valid positions (``mask``'s row-major order) before / after context.

        Outputs: "emb" (pooled, l2), "pre_flat" (l2-normalised pre-context projections, LCA's input) with
        "owner" (the row of each), and in eval mode "pre", the same padded (B, N, D) with zeros, the
        word-object analysis's space; with CRA its locals, globals and fused vectors."""
        owner = mask.nonzero(as_tuple=True)[0]
        pre = l2norm(pre)
        out = {"emb": l2norm(pool.packed(h, owner, mask)), "mask": mask, "pre_flat": pre, "owner": owner}
        if not self.training:
            out["pre"] = unpack(pre, mask)
        if self.use_cra:
            out.update(cra_branch(h, owner, mask.shape[0]))
        return out

    def encode_grid(self, regions, region_mask) -> dict:
        pre, h = self.img_enc.forward_flat(linear_input(valid_rows(regions, region_mask)))
        return self._finish(pre, h, region_mask, self.img_pool, self.img_cra if self.use_cra else None)

    def encode_tokens(self, text, text_mask, word_mask) -> dict:
        if self.text_kind == "gru":  # the BiGRU reads the padded sequence
            pre, h = self.txt_enc(text, text_mask)
            pre, h = pre[text_mask], h[text_mask]
        else:
            pre, h = self.txt_enc.forward_flat(linear_input(valid_rows(text, text_mask)))
        out = self._finish(pre, h, text_mask, self.txt_pool, self.txt_cra if self.use_cra else None)
        out["word_mask"] = word_mask
        return out

    def image_vectors(self, img: dict) -> torch.Tensor:
        if not self.use_cra:
            return img["emb"]
        return torch.cat([img["emb"], 0.5 * img["cra_mean"], 0.5 * img["cra_fused"]], dim=-1)

    def text_vectors(self, txt: dict) -> torch.Tensor:
        if not self.use_cra:
            return txt["emb"]
        return torch.cat([txt["emb"], txt["cra_fused"], txt["cra_mean"]], dim=-1)

    # -------------------------------------------------------------------------------- training
    def normalize_codebook(self) -> None:
        with torch.no_grad():
            self.codebook.weight.copy_(l2norm(self.codebook.weight))

    def on_step_start(self, epoch: int) -> None:
        if self.use_lca:
            self.normalize_codebook()

    def on_before_optimizer_step(self, epoch: int) -> None:
        if self.use_lca and epoch < self.hp["codebook_freeze_epochs"]:
            self.codebook.weight.grad = None

    def compute_loss(self, img: dict, txt: dict, batch: Batch, epoch: int) -> tuple[torch.Tensor, dict]:
        hp = self.hp
        scores = self.similarity(img, txt)
        pos = batch.positives()
        base = L.contrastive_loss(hp["base_loss"], scores, margin=hp["margin"], hardest=epoch >= hp["warmup_epochs"],
                                  temperature=hp["infonce_temperature"], ignore=batch.ignore, pos=pos)
        terms = {"base": base}
        total = base
        if self.use_lca:
            sel = txt["word_mask"][txt["mask"]]  # the words among the packed valid tokens
            owner = txt["owner"][sel]
            lca = L.lca_loss_packed(img["pre_flat"], img["mask"], txt["pre_flat"][sel],
                                    owner if batch.cap2img is None else batch.cap2img[owner], self.codebook.weight,
                                    hp["lca_eps"], hp["lca_iters"], hp["lca_temperature"])
            terms["lca"] = lca
            total = total + hp["lca_weight"] * lca
        if self.use_cra:
            cra = 0.5 * (L.cra_loss_packed(txt["cra_global"], img["cra_flat"], img["owner"],
                                           hp["cra_temperature"], hp["cra_topk"], pos=None if pos is None else pos.t())
                         + L.cra_loss_packed(img["cra_global"], txt["cra_flat"], txt["owner"],
                                             hp["cra_temperature"], hp["cra_topk"], pos=pos))
            terms["cra"] = cra
            total = total + hp["cra_weight"] * cra
        terms["total"] = total
        return total, {k: float(v.detach()) for k, v in terms.items()}

    # -------------------------------------------------------------------------------- analysis
    @torch.no_grad()
    def word_region_matches(self, img: dict, txt: dict) -> dict:
        """For paired (img[b], txt[b]): word->region cosine similarities (B, L, R) of the pre-context
        projections, the argmax region per word (what LCA trains on; for the baseline, the same readout of
        its projections), and with LCA the concept (codebook entry) each word and region falls into."""
        w, v = unpack(txt["pre_flat"], txt["mask"]), unpack(img["pre_flat"], img["mask"])
        sim = torch.einsum("bld,brd->blr", w, v).masked_fill(~img["mask"][:, None, :], float("-inf"))
        out = {"sim": sim, "r_star": sim.argmax(-1)}
        if self.use_lca:
            c = self.codebook.weight
            out["word_concept"] = (w @ c.t()).argmax(-1)
            out["region_concept"] = (v @ c.t()).argmax(-1)
        return out
