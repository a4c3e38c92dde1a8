"""The interface every model of the study implements, so one training loop and one evaluation serve all.

A model encodes a batch of images and a batch of texts separately (``encode_images`` / ``encode_texts``,
each returning a dict of tensors), scores any image batch against any text batch (``similarity``), and gives
retrieval vectors (``image_vectors`` / ``text_vectors``) whose inner product is its *global* similarity
(for independent-embedding models, the whole similarity: faiss search equals model scoring). Models whose
full score is not one inner product (TGDT's s_global + s_local, exhaustive MrSw, cross-attention) say so with
``exact_vectors = False``; their ``similarity`` is the exhaustive score.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class Batch:
    """One training or evaluation batch (tensors on the model's device)."""

    regions: torch.Tensor                # (B, R, C) float
    region_mask: torch.Tensor            # (B, R) bool
    text: torch.Tensor                   # (B, L, 384) float (MiniLM) or (B, L) long (GloVe ids)
    text_mask: torch.Tensor              # (B, L) bool: valid positions
    word_mask: torch.Tensor              # (B, L) bool: valid word positions (MiniLM: no [CLS]/[SEP])
    ignore: torch.Tensor | None = None   # (B, M) bool: pairs that must not be negatives (false negatives)
    cap2img: torch.Tensor | None = None  # (M,) long: the batch image of each caption (None: caption b <-> image b)

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device, non_blocking=True) if t is not None else None
                       for t in (self.regions, self.region_mask, self.text, self.text_mask, self.word_mask,
                                 self.ignore, self.cap2img)))

    def positives(self) -> torch.Tensor | None:
        """(B, M) bool: True where caption m belongs to image b; None for one caption per image."""
        if self.cap2img is None:
            return None
        return self.cap2img[None, :] == torch.arange(self.regions.shape[0], device=self.cap2img.device)[:, None]


class RetrievalModel(nn.Module):
    exact_vectors: bool = True
    supports_multi_caption: bool = False  # compute_loss accepts batches with several captions per image

    def encode_images(self, regions: torch.Tensor, region_mask: torch.Tensor) -> dict:
        """The method's image encoding (:meth:`encode_grid`) of the grid; with a trainable top (submodule
        ``image_top``, :mod:`itr_lib.models.adapt`), ``regions`` are cached backbone activations and the top
        turns them into the (adapted) grid first. The top always runs in float32, also inside a bf16 autocast
        region (:mod:`itr_lib.precision`): its depthwise convolutions measured slower under bf16 than in float32."""
        top = self._modules.get("image_top")
        if top is not None:
            with torch.autocast(regions.device.type, enabled=False):
                regions = top(regions.float())
        return self.encode_grid(regions, region_mask)

    def encode_grid(self, regions: torch.Tensor, region_mask: torch.Tensor) -> dict:
        """(B, R, 1280) grid cells and their (B, R) mask -> the method's image encoding (a dict of tensors)."""
        raise NotImplementedError

    def encode_texts(self, text: torch.Tensor, text_mask: torch.Tensor, word_mask: torch.Tensor) -> dict:
        """The method's text encoding (:meth:`encode_tokens`) of the token states; with a trainable text top
        (submodule ``text_top``, :mod:`itr_lib.models.text_top`), ``text`` are cached MiniLM hidden states below
        it and the top turns them into the (adapted) token states first."""
        top = self._modules.get("text_top")
        if top is not None:
            text = top(text, text_mask)
        return self.encode_tokens(text, text_mask, word_mask)

    def encode_tokens(self, text: torch.Tensor, text_mask: torch.Tensor, word_mask: torch.Tensor) -> dict:
        """(B, L, 384) MiniLM token states (or (B, L) GloVe ids), their (B, L) valid mask and word mask -> the
        method's text encoding (a dict of tensors)."""
        raise NotImplementedError

    def image_vectors(self, img: dict) -> torch.Tensor:
        raise NotImplementedError

    def text_vectors(self, txt: dict) -> torch.Tensor:
        raise NotImplementedError

    def similarity(self, img: dict, txt: dict) -> torch.Tensor:
        return self.image_vectors(img) @ self.text_vectors(txt).t()

    def compute_loss(self, img: dict, txt: dict, batch: Batch, epoch: int) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def on_step_start(self, epoch: int) -> None:
        """Hook before each optimisation step (e.g. codebook re-normalisation)."""

    def on_before_optimizer_step(self, epoch: int) -> None:
        """Hook after backward, before the optimiser step (e.g. freezing a codebook in epoch 0)."""
