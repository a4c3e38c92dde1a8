"""Seed ensembles: the mean of m models' similarities as ONE inner product, so retrieval stays one faiss search.

Each model's retrieval vectors are scaled by ``1 / sqrt(m)`` and concatenated (image side and text side alike), so
``<[u_1, ..., u_m] / sqrt(m), [v_1, ..., v_m] / sqrt(m)> = (1/m) sum_k <u_k, v_k>``: the mean of the models' own
similarities (the score averaging of ensembles in VSE++ / VSE-infinity's evaluation, which average the two models'
similarity matrices). The baseline's vectors are unit-norm, so its ensemble is the mean of cosines; SelfAlign with
CRA scores ``[e, a/2, b/2] . [e, c, d]`` with vectors that are neither symmetric nor unit-norm, and the
concatenation keeps that score exactly (``normalize=True`` l2-normalises each model's vectors first instead,
which changes such a model's score). The cost: ``sum_k D_k`` float32 numbers per item (m x D x 4 bytes for m
models of dimension D), and one search over that dimension.

    from itr_lib.ensemble import EnsembleModel, load_ensemble
    model = load_ensemble(["runs/a/best.pt", "runs/b/best.pt", "runs/c/best.pt"])
    itr_lib.scoring.evaluate(model, test)       # or itr_lib.hubness.evaluate_hubness(model, ...)
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import torch
import torch.nn as nn

from .models import RetrievalModel

log = logging.getLogger(__name__)


class EnsembleModel(RetrievalModel):
    """``m`` trained models as one :class:`~itr_lib.models.RetrievalModel` whose retrieval vectors are the
    ``1/sqrt(m)``-scaled concatenation of theirs (``exact_vectors = True``: one inner product is the ensemble's
    score). ``configs``: their TrainConfigs, checked for one dataset and one text encoder (an ensemble of models
    trained on different data, or reading different text features, is an error). Inference only."""

    exact_vectors = True

    def __init__(self, models: Sequence[RetrievalModel], configs: Sequence | None = None, normalize: bool = False):
        super().__init__()
        models = list(models)
        if len(models) < 2:
            raise ValueError(f"an ensemble needs at least 2 models, got {len(models)}")
        for k, m in enumerate(models):
            if not getattr(m, "exact_vectors", False):
                raise ValueError(
                    f"model {k} ({type(m).__name__}) has exact_vectors = False: its retrieval vectors are not its "
                    f"score (TGDT adds a local re-score, SCAN / MrSw are cross-attention), so concatenating them "
                    f"would average the wrong similarity. Fix: ensemble models scored by one inner product "
                    f"(baseline, SelfAlign), or average their score matrices outside this class")
        if configs is not None:
            configs = list(configs)
            if len(configs) != len(models):
                raise ValueError(f"{len(models)} models but {len(configs)} configs; pass one config per model")
            for fld in ("dataset", "text_encoder"):
                values = [getattr(c, fld) for c in configs]
                if len(set(values)) > 1:
                    raise ValueError(f"the ensemble's models disagree on {fld}: {values}. Fix: ensemble models "
                                     f"trained on the same dataset with the same text encoder (seeds of one recipe)")
            methods = {c.method for c in configs}
            if len(methods) > 1:
                log.warning("ensemble of different methods %s: the mean of their similarities", sorted(methods))
        kinds = {getattr(m, "text_kind", None) for m in models} - {None}
        if len(kinds) > 1:
            raise ValueError(f"the ensemble's models read different text encoders {sorted(kinds)}. Fix: ensemble "
                             f"models with the same text encoder")
        self.members = nn.ModuleList(models)
        self.configs = configs
        self.normalize = bool(normalize)
        self.scale = 1.0 / math.sqrt(len(models))

    @property
    def m(self) -> int:
        return len(self.members)

    def _vec(self, v: torch.Tensor) -> torch.Tensor:
        v = v.float()
        if self.normalize:
            v = torch.nn.functional.normalize(v, dim=-1)
        return v * self.scale

    def encode_images(self, regions: torch.Tensor, region_mask: torch.Tensor) -> dict:
        return {"vec": torch.cat([self._vec(m.image_vectors(m.encode_images(regions, region_mask)))
                                  for m in self.members], dim=-1)}

    def encode_texts(self, text: torch.Tensor, text_mask: torch.Tensor, word_mask: torch.Tensor) -> dict:
        return {"vec": torch.cat([self._vec(m.text_vectors(m.encode_texts(text, text_mask, word_mask)))
                                  for m in self.members], dim=-1)}

    def image_vectors(self, img: dict) -> torch.Tensor:
        return img["vec"]

    def text_vectors(self, txt: dict) -> torch.Tensor:
        return txt["vec"]

    def compute_loss(self, img, txt, batch, epoch):
        raise TypeError("EnsembleModel is for inference only: train its members one by one (one run per seed)")

    def member_similarities(self, img_out: Sequence[dict], txt_out: Sequence[dict]) -> torch.Tensor:
        """Reference: the mean of the members' own ``similarity`` given each member's encoder outputs."""
        return torch.stack([m.similarity(i, t).float() for m, i, t in zip(self.members, img_out, txt_out)]).mean(0)

    @torch.no_grad()
    def footprint(self, data) -> dict:
        """Vector dimensions (per member and total) and bytes per item (float32), read from one encoded image and
        caption of ``data`` (a SplitTensors)."""
        self.eval()
        regions, mask = data.image_batch(torch.arange(1))
        text, tmask, word = data.text_batch(torch.arange(1))
        dev = next(self.parameters()).device
        dims_i = [int(m.image_vectors(m.encode_images(regions.to(dev), mask.to(dev))).shape[-1])
                  for m in self.members]
        dims_t = [int(m.text_vectors(m.encode_texts(text.to(dev), tmask.to(dev), word.to(dev))).shape[-1])
                  for m in self.members]
        return {"m": self.m, "member_dims": dims_i, "dim": sum(dims_i), "bytes_per_image": 4 * sum(dims_i),
                "bytes_per_text": 4 * sum(dims_t), "dtype": "float32"}


def load_ensemble(checkpoints: Sequence[str | os.PathLike], device: str = "cpu",
                  normalize: bool = False) -> EnsembleModel:
    """An :class:`EnsembleModel` of trained checkpoints (``best.pt`` of runs of one recipe, different seeds);
    their configs are checked for one dataset and one text encoder."""
    from .train import load_checkpoint
    loaded = [load_checkpoint(p, device) for p in checkpoints]
    seeds = [c.seed for _, c in loaded]
    if len(set(seeds)) < len(seeds):
        log.warning("ensemble members share seeds %s: an ensemble of identical runs gains nothing", seeds)
    return EnsembleModel([m for m, _ in loaded], [c for _, c in loaded], normalize=normalize).to(device).eval()
