"""TGDT (Liu et al., IEEE TIP 2023): token-guided dual transformer, method ``"tgdt"``.

Two homogeneous branches, one per modality: token features -> Linear(in, D) + learned positions (a 7x7 grid
table for the region grid, a 1-D table for text) -> a learned CLS slot prepended -> ``nn.TransformerEncoder``.
Global = l2norm(CLS output); locals = l2norm(the other outputs), padding zeroed and excluded.

Scores: s_global = <g_v, g_t>; s_local = MrSw (TERAN): sum over the caption's valid words (MiniLM: no [CLS]/[SEP])
of the max over the image's valid regions of the cosine. ``similarity`` = s_global + local_scale * s_local (the
exhaustive score); ``global_similarity`` / ``local_similarity`` separately; ``image_vectors``/``text_vectors`` =
the globals, so ``exact_vectors = False`` (faiss serves the first stage only; see :mod:`itr_lib.rerank` for the
two-stage inference and its evaluation).

Loss (CMC + local), trained end to end (the released code detaches the encoders before its second stage; here
every term reaches both branches), under either base loss of the TrainConfig (``base_loss``):
  triplet (the authors'): hardest-negative triplet(s_global, margin) + intra_consistency(S_VV, S_TT, 0.3), summed
  over the batch + triplet(local_scale * MrSw summed over the words);
  infonce (the study loss): InfoNCE(s_global) + the consistency term averaged over the batch + InfoNCE(local_scale *
  MrSw averaged over the words), one temperature (``infonce_temperature``) for both.
With several captions per image (``captions_per_step`` all) every caption is a positive of its image, and the
consistency term compares each caption pair with the similarity of their images. ``batch.ignore`` (false
negatives) is honoured by the global and local terms.

``cfg.extra`` keys (defaults are CPU scale-downs; the released config uses D=1024, 4 image-transformer layers,
2 text layers on a fine-tuned BERT, 4 heads (TERAN), dropout 0.1, batch 30, lr 1e-5):
  layers=1, heads=4, ff=D (dim_feedforward = embed size, as in the TERAN/ALADIN code), dropout=0.1,
  max_len=64 (text positions), grid=7, consistency_margin=0.3, w_global=1, w_consistency=1, w_local=1,
  local_scale=1.0 (the released loss multiplies its MrSw by 10 inside the local triplet only; not copied),
  local_score ("sum" with the triplet, "mean" with InfoNCE; the inference score uses the same),
  consistency_reduce ("sum" with the triplet, "mean" with InfoNCE),
  k_i2t=50, k_t2i=100 (shortlists of the two-stage evaluation; read by scoring.evaluate_two_stage),
  pack=True (in training, tokens masked out by region/token drop are removed from the sequences instead of
  being attended-over padding: the same outputs, less compute; the locals then come in packed order).
The triplet's margin and warm-up are the TrainConfig's ``margin`` and ``warmup_epochs`` (the authors: hardest
negative from the start, max_violation=True: ``warmup_epochs=0``).
Cost (B=128, D=512, 1 layer, 49 regions + 20 tokens): ~60 GMAC per step, forward + backward; the MrSw backward
is sparse (see models/mrsw.py).
Text encoder: 'minilm' (frozen token states, 384-d) or 'gru' (trainable GloVe word embeddings feed the text
transformer directly; no GRU: the transformer is the context model).
"""
from __future__ import annotations

import torch

from .. import losses as L
from . import register
from .base import Batch, RetrievalModel
from .fine import (CLSTransformer, encode_by_length, extra_get, gather_tokens, loss_defaults, loss_on,
                   normed_locals, pack_valid, sequence_inputs, use_buckets)
from .mrsw import mrsw_pair_scores, mrsw_scores, per_word
from .encoders import l2norm


def tgdt_defaults(cfg) -> dict:
    """``cfg.extra`` keys and their defaults (the loss settings come from the TrainConfig: :func:`loss_defaults`)."""
    infonce = cfg.base_loss == "infonce"
    return dict(layers=1, heads=4, ff=cfg.dim, dropout=0.1, max_len=64, grid=7, consistency_margin=0.3,
                w_global=1.0, w_consistency=1.0, w_local=1.0, local_scale=1.0,
                local_score=loss_defaults(cfg)["local_score"], consistency_reduce="mean" if infonce else "sum",
                k_i2t=50, k_t2i=100, pack=True)


class TGDTModel(RetrievalModel):
    exact_vectors = False
    supports_multi_caption = True

    def __init__(self, dim: int = 512, text_encoder: str = "minilm", glove: torch.Tensor | None = None,
                 region_dim: int = 1280, text_dim: int = 384, length_buckets: int | None = None, **hp):
        super().__init__()
        self.hp = hp
        self.length_buckets = int(length_buckets or 1)  # TrainConfig.length_buckets (speed only: fine.encode_by_length)
        self.text_kind = text_encoder
        self.img_in, self.txt_enc = sequence_inputs(text_encoder, dim, glove, region_dim, text_dim, hp)
        self.img_tf = CLSTransformer(dim, hp["layers"], hp["heads"], hp["ff"], hp["dropout"])
        self.txt_tf = CLSTransformer(dim, hp["layers"], hp["heads"], hp["ff"], hp["dropout"])

    # ------------------------------------------------------------------------------ encoding
    def _pack(self, mask: torch.Tensor):
        return pack_valid(mask) if (self.training and self.hp["pack"]) else (None, mask)

    def encode_grid(self, regions, region_mask) -> dict:
        order, mask = self._pack(region_mask)
        g, h = self.img_tf(self.img_in(gather_tokens(regions, order), order), mask)
        return {"global": l2norm(g), "locals": normed_locals(h, mask), "mask": mask}

    def encode_tokens(self, text, text_mask, word_mask) -> dict:
        order, mask = self._pack(text_mask)
        words = gather_tokens(word_mask & text_mask, order)
        x = self.txt_enc(gather_tokens(text, order), order)
        if use_buckets(self.length_buckets, x.shape[0]):
            out = encode_by_length(lambda xi, mi: dict(zip("gh", self.txt_tf(xi, mi))), (x, mask), mask,
                                   self.length_buckets, token_keys=("h",))
            g, h = out["g"], out["h"]
        else:
            g, h = self.txt_tf(x, mask)
        return {"global": l2norm(g), "locals": normed_locals(h, words), "mask": words}

    def image_vectors(self, img: dict) -> torch.Tensor:
        return img["global"]

    def text_vectors(self, txt: dict) -> torch.Tensor:
        return txt["global"]

    # ------------------------------------------------------------------------------ scores
    def global_similarity(self, img: dict, txt: dict) -> torch.Tensor:
        return img["global"] @ txt["global"].t()

    def local_similarity(self, img: dict, txt: dict) -> torch.Tensor:
        """local_scale * MrSw (Bi, Bt), summed over the words or their mean (``local_score``)."""
        s = mrsw_scores(img["locals"], img["mask"], txt["locals"], txt["mask"])
        return self.hp["local_scale"] * per_word(s, txt["mask"], self.hp["local_score"])

    def similarity(self, img: dict, txt: dict) -> torch.Tensor:
        return self.global_similarity(img, txt) + self.local_similarity(img, txt)

    # the second stage of two-stage inference (rerank.py): s_global + s_local
    def rescore_similarity(self, img: dict, txt: dict) -> torch.Tensor:
        return self.similarity(img, txt)

    def rescore_pairs(self, img: dict, txt: dict) -> torch.Tensor:
        """s_global + s_local of aligned pairs (img[p], txt[p]) -> (P,)."""
        g = (img["global"] * txt["global"]).sum(-1)
        s = mrsw_pair_scores(img["locals"], img["mask"], txt["locals"], txt["mask"])
        return g + self.hp["local_scale"] * per_word(s, txt["mask"], self.hp["local_score"])

    # ------------------------------------------------------------------------------ training
    def compute_loss(self, img: dict, txt: dict, batch: Batch, epoch: int) -> tuple[torch.Tensor, dict]:
        hp = self.hp
        gv, gt = img["global"], txt["global"]
        l_global = loss_on(hp, gv @ gt.t(), batch, epoch)
        l_cons = L.intra_consistency_loss(gv @ gv.t(), gt @ gt.t(), hp["consistency_margin"], batch.cap2img,
                                          hp["consistency_reduce"])
        l_local = loss_on(hp, self.local_similarity(img, txt), batch, epoch)
        total = hp["w_global"] * l_global + hp["w_consistency"] * l_cons + hp["w_local"] * l_local
        terms = {"global": l_global, "consistency": l_cons, "local": l_local, "total": total}
        return total, {k: float(v.detach()) for k, v in terms.items()}


@register("tgdt", uses=("length_buckets", "score_precision"))
def _tgdt(cfg, glove):
    hp = {**loss_defaults(cfg), **extra_get(cfg.extra, tgdt_defaults(cfg))}
    return TGDTModel(dim=cfg.dim, text_encoder=cfg.text_encoder, glove=glove, length_buckets=cfg.length_buckets,
                     **hp)
