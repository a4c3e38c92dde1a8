"""ALADIN (Messina et al., CBMI 2022): align, then distill into a kNN-searchable space; method ``"aladin"``.

Backbone (stands in for VinVL): modality-specific input Linear(in, D) + modality embedding + learned positions
(7x7 grid table for regions, 1-D for text), then ONE ``nn.TransformerEncoder`` shared by both modalities, run
separately on image tokens and on text tokens.

- Alignment head (teacher): MrSw (TERAN) on the l2-normalised backbone token outputs (valid regions; valid words,
  MiniLM [CLS]/[SEP] excluded), trained with the TrainConfig's base loss: the authors' hardest-negative triplet
  (margin 0.2) on the word sum, or the study's InfoNCE on the word mean (``local_score``).
  ``alignment_similarity`` scores all pairs (exhaustive, slow).
- Matching head (student): a transformer encoder (2 layers) shared by both modalities over the backbone token
  outputs with a learned first token prepended; embedding = l2norm(first-token output). ``image_vectors`` /
  ``text_vectors`` are these embeddings and ``similarity`` their inner product, so ``exact_vectors = True``
  (faiss kNN = the student).
- Distillation: ListNet (:func:`itr_lib.losses.listnet_loss`) between softmax(teacher_scale * S_align) (detached
  teacher) and softmax(listnet_scale * S_match) over the rows and the columns of the in-batch matrices (the
  authors: 1 and 6; with InfoNCE both 1 / infonce_temperature). With all captions per step the matrices are
  images x captions.
  L = w_align * L_align + w_distill * L_distill (released configuration: weights 1, 1).

The distillation gradient reaches the backbone through the student (as in the released code, where the matching
head reads the trainable VinVL outputs); ``detach_student_input=True`` stops it.

Evaluation of both heads: train.evaluate scores the student (kNN); :func:`itr_lib.rerank.evaluate_two_stage`
gives student-only, student shortlist re-scored by the teacher, and the exhaustive teacher.

``cfg.extra`` keys (CPU scale-downs; released: VinVL-base 12 layers x 768, matching head 2 layers, 4 heads,
ff = D, dropout 0.1, batch 32, lr 1e-5):
  backbone_layers=1, student_layers=2, heads=4, ff=D (as the released code), dropout=0.1, max_len=64, grid=7,
  w_align=1, w_distill=1, listnet_scale / teacher_scale (above), listnet_combine='mean' (released code: 'sum'
  of the two directions), local_score, distill_start_epoch=0 (the released config switches distillation on after
  2 epochs), detach_student_input=False, k_i2t=50, k_t2i=100 (two-stage re-ranking of the student's shortlist
  by the teacher in scoring.evaluate_two_stage), pack=True (as TGDT: dropped tokens removed in training).
``TrainConfig.length_buckets`` (a runtime field, outside the run's identity) encodes the training batch's captions in
groups of similar length (:meth:`ALADINModel._encode_by_length`).
The triplet's margin and warm-up are the TrainConfig's ``margin`` and ``warmup_epochs`` (authors: 0).
Cost (B=128, D=512, 1 backbone + 2 student layers): ~145 GMAC per step, about 2.4x TGDT's.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import losses as L
from . import register
from .base import Batch, RetrievalModel
from .encoders import l2norm
from .fine import (CLSTransformer, encode_by_length, extra_get, gather_tokens, loss_defaults, loss_on,
                   normed_locals, pack_valid, sequence_inputs, transformer_encoder, use_buckets)
from .mrsw import mrsw_pair_scores, mrsw_scores, per_word


def aladin_defaults(cfg) -> dict:
    """``cfg.extra`` keys and their defaults (the loss settings come from the TrainConfig: :func:`loss_defaults`).
    ListNet scales: the authors' softmax(S_align) vs softmax(6 * S_match) with the triplet; with InfoNCE both
    sides at the contrastive temperature, softmax(S_align / t) vs softmax(S_match / t), S_align the word mean."""
    infonce = cfg.base_loss == "infonce"
    t = 1.0 / cfg.infonce_temperature
    return dict(backbone_layers=1, student_layers=2, heads=4, ff=cfg.dim, dropout=0.1, max_len=64, grid=7,
                w_align=1.0, w_distill=1.0, listnet_scale=t if infonce else 6.0, teacher_scale=t if infonce else 1.0,
                listnet_combine="mean", local_score=loss_defaults(cfg)["local_score"], distill_start_epoch=0,
                detach_student_input=False, k_i2t=50, k_t2i=100, pack=True)


class ALADINModel(RetrievalModel):
    exact_vectors = True
    supports_multi_caption = True

    def __init__(self, dim: int = 512, text_encoder: str = "minilm", glove: torch.Tensor | None = None,
                 region_dim: int = 1280, text_dim: int = 384, length_buckets: int | None = None, **hp):
        super().__init__()
        self.hp = hp
        self.length_buckets = int(length_buckets or 1)  # TrainConfig.length_buckets (training speed only)
        self.img_in, self.txt_enc = sequence_inputs(text_encoder, dim, glove, region_dim, text_dim, hp)
        self.modality = nn.Parameter(torch.zeros(2, dim))
        nn.init.trunc_normal_(self.modality, std=0.02)
        self.backbone = transformer_encoder(dim, hp["backbone_layers"], hp["heads"], hp["ff"], hp["dropout"])
        self.student = CLSTransformer(dim, hp["student_layers"], hp["heads"], hp["ff"], hp["dropout"])

    def _pack(self, mask: torch.Tensor):
        return pack_valid(mask) if (self.training and self.hp["pack"]) else (None, mask)

    def _encode(self, x: torch.Tensor, attn_mask: torch.Tensor, align_mask: torch.Tensor) -> dict:
        h = self.backbone(x, src_key_padding_mask=~attn_mask)
        first, _ = self.student(h.detach() if self.hp["detach_student_input"] else h, attn_mask)
        return {"emb": l2norm(first), "tokens": normed_locals(h, align_mask), "mask": align_mask}

    def encode_grid(self, regions, region_mask) -> dict:
        order, mask = self._pack(region_mask)
        x = self.img_in(gather_tokens(regions, order), order) + self.modality[0]
        return self._encode(x, mask, mask)

    def encode_tokens(self, text, text_mask, word_mask) -> dict:
        order, mask = self._pack(text_mask)
        x = self.txt_enc(gather_tokens(text, order), order) + self.modality[1]
        align = gather_tokens(word_mask & text_mask, order)
        if use_buckets(self.length_buckets, x.shape[0]):  # encode_by_length: the same outputs, less padding
            def part(xi, mi, ai):
                out = self._encode(xi, mi, ai)
                return {"emb": out["emb"], "tokens": out["tokens"]}
            out = encode_by_length(part, (x, mask, align), mask, self.length_buckets, token_keys=("tokens",))
            return {"emb": out["emb"], "tokens": out["tokens"], "mask": align}
        return self._encode(x, mask, align)

    def image_vectors(self, img: dict) -> torch.Tensor:
        return img["emb"]

    def text_vectors(self, txt: dict) -> torch.Tensor:
        return txt["emb"]

    # ------------------------------------------------------------------------------ scores
    def matching_similarity(self, img: dict, txt: dict) -> torch.Tensor:
        return img["emb"] @ txt["emb"].t()

    def alignment_similarity(self, img: dict, txt: dict) -> torch.Tensor:
        """The teacher: MrSw over all pairs (exhaustive), summed over the words or their mean (``local_score``)."""
        s = mrsw_scores(img["tokens"], img["mask"], txt["tokens"], txt["mask"])
        return per_word(s, txt["mask"], self.hp["local_score"])

    def rescore_similarity(self, img: dict, txt: dict) -> torch.Tensor:
        return self.alignment_similarity(img, txt)

    def rescore_pairs(self, img: dict, txt: dict) -> torch.Tensor:
        s = mrsw_pair_scores(img["tokens"], img["mask"], txt["tokens"], txt["mask"])
        return per_word(s, txt["mask"], self.hp["local_score"])

    # ------------------------------------------------------------------------------ training
    def compute_loss(self, img: dict, txt: dict, batch: Batch, epoch: int) -> tuple[torch.Tensor, dict]:
        hp = self.hp
        s_align = self.alignment_similarity(img, txt)
        l_align = loss_on(hp, s_align, batch, epoch)
        total = hp["w_align"] * l_align
        terms = {"align": l_align}
        if epoch >= hp["distill_start_epoch"]:
            l_dist = L.listnet_loss(self.matching_similarity(img, txt), hp["teacher_scale"] * s_align.detach(),
                                    hp["listnet_scale"], hp["listnet_combine"])
            total = total + hp["w_distill"] * l_dist
            terms["distill"] = l_dist
        terms["total"] = total
        return total, {k: float(v.detach()) for k, v in terms.items()}


@register("aladin", uses=("length_buckets",))
def _aladin(cfg, glove):
    hp = {**loss_defaults(cfg), **extra_get(cfg.extra, aladin_defaults(cfg))}
    return ALADINModel(dim=cfg.dim, text_encoder=cfg.text_encoder, glove=glove, length_buckets=cfg.length_buckets,
                       **hp)
