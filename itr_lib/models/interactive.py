"""The interactive-embedding reference: models whose score needs every (image, caption) pair jointly.

- ``"scan"``: SCAN t2i (Lee et al., ECCV 2018): regions -> Linear(1280, D), words -> text encoder (MiniLM
  projection, or the BiGRU over GloVe as SCAN itself), both l2-normalised; each word attends over the regions
  (cosine, LeakyReLU(0.1), l2-normalised over the words per region, softmax(lambda_softmax=9 * .) over the regions),
  cosine(word, attended region vector), LogSumExp pooling over the words (lambda_lse=6)
  (:func:`itr_lib.models.fine.scan_t2i_scores`).
- ``"mrsw"``: exhaustive fine-grained matching without cross attention: the same projections, MrSw (sum over words
  of the max over regions of the cosine; its mean over the words under InfoNCE, ``local_score``) on all pairs.
Both train with the TrainConfig's base loss: the authors' hardest-negative triplet (margin 0.2, SCAN's
max_violation; ``warmup_epochs=0``) or the study's InfoNCE.

Both have ``exact_vectors = False`` and ``similarity`` = the exhaustive, memory-chunked score over images x texts.
Their ``image_vectors`` / ``text_vectors`` are l2-normalised MEAN-POOLED locals: NOT the model's score (nothing
was trained for them); they exist only to satisfy the interface (e.g. the retrieval-vector size in metrics.json),
never use them as this model's retrieval result.

``cfg.extra`` keys: for scan lambda_softmax=9.0, lambda_lse=6.0, leaky=0.1; for mrsw local_score (SCAN t2i defaults for Flickr30K/COCO: lambda_softmax 9 / 4, lambda_lse 6). ``cfg.mlp`` adds the
VSE-infinity residual MLP to the projections.
"""
from __future__ import annotations

import torch

from ..precision import linear_input
from . import register
from .base import Batch, RetrievalModel
from .encoders import RegionEncoder, build_text_encoder, l2norm, masked_mean, unpack, valid_rows
from .fine import extra_get, loss_defaults, loss_on, normed_locals, scan_t2i_scores
from .mrsw import mrsw_pair_scores, mrsw_scores, per_word


def packed_locals(flat: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """:func:`normed_locals` of the padded ``unpack(flat, mask)`` with ``keep`` (a subset of ``mask``'s positions)
    valid, computed on the kept rows only: l2-normalised locals, zeros elsewhere (the same rows, bit for bit: the
    normalisation is per row), without normalising and then masking the padded tensor."""
    if not bool(mask.all()) or not bool(keep.all()):
        flat = flat[keep[mask]]
    return unpack(l2norm(flat), keep)


class _FineModel(RetrievalModel):
    exact_vectors = False
    supports_multi_caption = True

    def __init__(self, dim: int = 1024, text_encoder: str = "minilm", glove: torch.Tensor | None = None,
                 mlp: bool = False, region_dim: int = 1280, **hp):
        super().__init__()
        self.hp = hp
        self.text_kind = text_encoder
        self.img_enc = RegionEncoder(region_dim, dim, mlp)
        self.txt_enc = build_text_encoder(text_encoder, dim, glove, mlp)

    def encode_grid(self, regions, region_mask) -> dict:
        _, h = self.img_enc.forward_flat(linear_input(valid_rows(regions, region_mask)))
        loc = packed_locals(h, region_mask, region_mask)
        return self._with_mean({"locals": loc, "mask": region_mask})

    def encode_tokens(self, text, text_mask, word_mask) -> dict:
        words = word_mask & text_mask
        if self.text_kind == "gru":  # the BiGRU reads the padded sequence
            _, h = self.txt_enc(text, text_mask)
            loc = normed_locals(h, words)
        else:
            _, h = self.txt_enc.forward_flat(linear_input(valid_rows(text, text_mask)))
            loc = packed_locals(h, text_mask, words)
        return self._with_mean({"locals": loc, "mask": words})

    def _with_mean(self, out: dict) -> dict:
        """``out`` with "mean", the l2-normalised mean of its locals (the two-stage shortlist's vector), outside
        training only: the training loss never reads it (a pass over the padded locals saved per step);
        :meth:`image_vectors` / :meth:`text_vectors` compute it where it is missing."""
        if not self.training:
            out["mean"] = l2norm(masked_mean(out["locals"], out["mask"]))
        return out

    def image_vectors(self, img: dict) -> torch.Tensor:
        """Mean-pooled locals: NOT this model's score (see the module docstring)."""
        return img["mean"] if "mean" in img else l2norm(masked_mean(img["locals"], img["mask"]))

    def text_vectors(self, txt: dict) -> torch.Tensor:
        """Mean-pooled locals: NOT this model's score (see the module docstring)."""
        return txt["mean"] if "mean" in txt else l2norm(masked_mean(txt["locals"], txt["mask"]))

    def compute_loss(self, img: dict, txt: dict, batch: Batch, epoch: int) -> tuple[torch.Tensor, dict]:
        loss = loss_on(self.hp, self.similarity(img, txt), batch, epoch)
        return loss, {"base": float(loss.detach()), "total": float(loss.detach())}


class SCANModel(_FineModel):
    def similarity(self, img: dict, txt: dict) -> torch.Tensor:
        hp = self.hp
        return scan_t2i_scores(img["locals"], img["mask"], txt["locals"], txt["mask"], hp["lambda_softmax"],
                               hp["lambda_lse"], hp["leaky"])


class MrSwModel(_FineModel):
    def similarity(self, img: dict, txt: dict) -> torch.Tensor:
        s = mrsw_scores(img["locals"], img["mask"], txt["locals"], txt["mask"])
        return per_word(s, txt["mask"], self.hp["local_score"])

    def rescore_similarity(self, img: dict, txt: dict) -> torch.Tensor:
        return self.similarity(img, txt)

    def rescore_pairs(self, img: dict, txt: dict) -> torch.Tensor:
        s = mrsw_pair_scores(img["locals"], img["mask"], txt["locals"], txt["mask"])
        return per_word(s, txt["mask"], self.hp["local_score"])


@register("scan", uses=("mlp", "score_precision"))
def _scan(cfg, glove):
    hp = {**loss_defaults(cfg), **extra_get(cfg.extra, dict(lambda_softmax=9.0, lambda_lse=6.0, leaky=0.1))}
    hp.pop("local_score")  # SCAN pools its words by LogSumExp, on the cosine scale already
    return SCANModel(dim=cfg.dim, text_encoder=cfg.text_encoder, glove=glove, mlp=cfg.mlp, **hp)


@register("mrsw", uses=("mlp", "score_precision"))
def _mrsw(cfg, glove):
    hp = {**loss_defaults(cfg), **extra_get(cfg.extra, dict(local_score=loss_defaults(cfg)["local_score"]))}
    return MrSwModel(dim=cfg.dim, text_encoder=cfg.text_encoder, glove=glove, mlp=cfg.mlp, **hp)
