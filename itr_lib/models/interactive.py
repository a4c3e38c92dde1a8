"""The interactive-embedding reference: models whose score needs every (image, caption) pair jointly.

- ``"scan"``: SCAN t2i (Lee et al., ECCV 2018): regions -> Linear(1280, D), words -> text encoder (MiniLM
  projection, or the BiGRU over GloVe as SCAN itself), both l2-normalised; each word attends over the regions
  (cosine, LeakyReLU(0.1), l2-normalised over the words per region, softmax(lambda_softmax=9 * .) over the regions),
  cosine(word, attended region vector), LogSumExp pooling over the words (lambda_lse=6)
  (:func:`itr_lib.models.fine.scan_t2i_scores`). Hardest-negative triplet, margin 0.2 (SCAN's max_violation).
- ``"mrsw"``: exhaustive fine-grained matching without cross attention: the same projections, MrSw (sum over words
  of the max over regions of the cosine) on all pairs, hardest-negative triplet.

Both have ``exact_vectors = False`` and ``similarity`` = the exhaustive, memory-chunked score over images x texts.
Their ``image_vectors`` / ``text_vectors`` are l2-normalised MEAN-POOLED locals: NOT the model's score (nothing
was trained for them); they exist only to satisfy the interface (e.g. the retrieval-vector size in metrics.json),
never use them as this model's retrieval result.

``cfg.extra`` keys: margin=cfg.margin (0.2), warmup_epochs=0, and for scan lambda_softmax=9.0, lambda_lse=6.0,
leaky=0.1 (SCAN t2i defaults for Flickr30K/COCO: lambda_softmax 9 / 4, lambda_lse 6). ``cfg.mlp`` adds the
VSE-infinity residual MLP to the projections.
"""
from __future__ import annotations

import torch

from .. import losses as L
from . import register
from .base import Batch, RetrievalModel
from .encoders import RegionEncoder, build_text_encoder, l2norm, masked_mean
from .fine import extra_get, mrsw_pair_scores, mrsw_scores, normed_locals, scan_t2i_scores


class _FineModel(RetrievalModel):
    exact_vectors = False

    def __init__(self, dim: int = 1024, text_encoder: str = "minilm", glove: torch.Tensor | None = None,
                 mlp: bool = False, region_dim: int = 1280, **hp):
        super().__init__()
        self.hp = hp
        self.text_kind = text_encoder
        self.img_enc = RegionEncoder(region_dim, dim, mlp)
        self.txt_enc = build_text_encoder(text_encoder, dim, glove, mlp)

    def encode_images(self, regions, region_mask) -> dict:
        _, h = self.img_enc(regions.float(), region_mask)
        loc = normed_locals(h, region_mask)
        return {"locals": loc, "mask": region_mask, "mean": l2norm(masked_mean(loc, region_mask))}

    def encode_texts(self, text, text_mask, word_mask) -> dict:
        text = text if self.text_kind == "gru" else text.float()
        _, h = self.txt_enc(text, text_mask)
        words = word_mask & text_mask
        loc = normed_locals(h, words)
        return {"locals": loc, "mask": words, "mean": l2norm(masked_mean(loc, words))}

    def image_vectors(self, img: dict) -> torch.Tensor:
        """Mean-pooled locals: NOT this model's score (see the module docstring)."""
        return img["mean"]

    def text_vectors(self, txt: dict) -> torch.Tensor:
        """Mean-pooled locals: NOT this model's score (see the module docstring)."""
        return txt["mean"]

    def compute_loss(self, img: dict, txt: dict, batch: Batch, epoch: int) -> tuple[torch.Tensor, dict]:
        loss = L.triplet_loss(self.similarity(img, txt), self.hp["margin"], epoch >= self.hp["warmup_epochs"],
                              batch.ignore)
        return loss, {"base": float(loss.detach()), "total": float(loss.detach())}


class SCANModel(_FineModel):
    def similarity(self, img: dict, txt: dict) -> torch.Tensor:
        hp = self.hp
        return scan_t2i_scores(img["locals"], img["mask"], txt["locals"], txt["mask"], hp["lambda_softmax"],
                               hp["lambda_lse"], hp["leaky"])


class MrSwModel(_FineModel):
    def similarity(self, img: dict, txt: dict) -> torch.Tensor:
        return mrsw_scores(img["locals"], img["mask"], txt["locals"], txt["mask"])

    def rescore_similarity(self, img: dict, txt: dict) -> torch.Tensor:
        return self.similarity(img, txt)

    def rescore_pairs(self, img: dict, txt: dict) -> torch.Tensor:
        return mrsw_pair_scores(img["locals"], img["mask"], txt["locals"], txt["mask"])


@register("scan")
def _scan(cfg, glove):
    hp = extra_get(cfg.extra, dict(margin=cfg.margin, warmup_epochs=0, lambda_softmax=9.0, lambda_lse=6.0,
                                   leaky=0.1))
    return SCANModel(dim=cfg.dim, text_encoder=cfg.text_encoder, glove=glove, mlp=cfg.mlp, **hp)


@register("mrsw")
def _mrsw(cfg, glove):
    hp = extra_get(cfg.extra, dict(margin=cfg.margin, warmup_epochs=0))
    return MrSwModel(dim=cfg.dim, text_encoder=cfg.text_encoder, glove=glove, mlp=cfg.mlp, **hp)
