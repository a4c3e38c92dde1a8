"""The trainable top of the text backbone: all-MiniLM-L6-v2's last BERT layers, run on cached hidden states below
them (:func:`itr_lib.features.ensure_text_features` with ``cut``), so the token states every method consumes adapt
during training -- the text side of :mod:`itr_lib.models.adapt`.

``TrainConfig.text_top_layers = k`` (0: the frozen token states, today's path; 1 or 2) trains MiniLM layers
``6 - k + 1 .. 6`` (``encoder.layer[6 - k:]``) from the cached ``hidden_states[6 - k]`` (:func:`text_cut`). The top
starts from the packaged weights (the ones :class:`~itr_lib.backbones.TextEncoder` loads); its learning rate is
``lr * text_top_lr_factor``.

Rules (stated, and kept in eval and training alike):

- **Dropout: off.** The top always runs in eval mode (``train()`` cannot switch it), as the frozen MiniLM that
  filled the caches did, so at step 0 the top reproduces the frozen token states (up to the float16 rounding of
  the cached input). Regularisation stays the study's token drop.
- **Attention mask: the caption lengths.** Each caption attends over its positions ``0 .. length - 1`` (what
  MiniLM did when the cache was filled); the length of a row is recovered from its ``text_mask`` as its last valid
  position + 1 (token drop never drops [CLS] / [SEP]), so a dropped word still feeds the top's attention as
  context and is dropped afterwards by the method, like a dropped word of the frozen cache.
- **Padding: zero.** Positions past a caption's length are zeroed on output, as the cache stores them.

Every method reading MiniLM states consumes the adapted ones: :meth:`RetrievalModel.encode_texts` runs the top
before the method's own ``encode_tokens``; a model class that overrides ``encode_texts`` itself, or the GRU/GloVe
text encoder (word ids, not MiniLM states), cannot honour the field and :func:`attach_text_top` refuses it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

MINILM_LAYERS = 6
MAX_TOP_LAYERS = 2  # the cached hidden states offered (hidden_states[5] and [4]); more would be a new cache


def text_cut(layers: int) -> int:
    """The MiniLM hidden state whose cache feeds a top of ``layers`` trainable layers: ``6 - layers``."""
    if not isinstance(layers, int) or isinstance(layers, bool) or not 1 <= layers <= MAX_TOP_LAYERS:
        raise ValueError(f"text_top_layers must be an integer in 1..{MAX_TOP_LAYERS} (0: the frozen token states), "
                         f"got {layers!r}")
    return MINILM_LAYERS - layers


def lengths_of(text_mask: torch.Tensor) -> torch.Tensor:
    """(B,) caption lengths from a (B, L) valid-position mask: the last valid position + 1 (token drop leaves
    holes inside a caption, never at its [SEP])."""
    pos = torch.arange(1, text_mask.shape[1] + 1, device=text_mask.device)
    return (text_mask.long() * pos).amax(1)


class TextTop(nn.Module):
    """MiniLM layers ``cut + 1 .. 6``: (B, L, 384) cached ``hidden_states[cut]`` (any float dtype; the cache is
    float16) and the (B, L) valid mask -> (B, L, 384) float32 token states, zero past each length."""

    def __init__(self, layers: int):
        super().__init__()
        import os
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel
        from ..backbones import _quiet, _text_model_dir
        self.cut = text_cut(layers)
        with _quiet():  # the packaged weights; a checkpoint's state_dict overwrites them
            bert = AutoModel.from_pretrained(str(_text_model_dir()))
        self.config = bert.config
        self.layers = nn.ModuleList(list(bert.encoder.layer)[self.cut:])
        super().train(False)

    def train(self, mode: bool = True) -> "TextTop":
        """Always eval mode: dropout off (see the module docstring)."""
        return super().train(False)

    def forward(self, states: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask
        if states.dim() != 3 or states.shape[-1] != self.config.hidden_size or states.is_floating_point() is False:
            raise ValueError(f"the text top above MiniLM layer {self.cut} takes (B, L, {self.config.hidden_size}) "
                             f"float hidden states, got {tuple(states.shape)} {states.dtype}. Fix: load the "
                             f"hidden-state cache (python -m itr_lib.features ... --text-cut {self.cut}).")
        x = states.float()
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths_of(text_mask)[:, None]
        attn = create_bidirectional_mask(config=self.config, inputs_embeds=x, attention_mask=valid.long())
        for layer in self.layers:
            x = layer(x, attn)
            x = x[0] if isinstance(x, tuple) else x
        return x * valid[..., None]


def attach_text_top(model: nn.Module, layers: int, text_encoder: str = "minilm") -> nn.Module:
    """Give ``model`` a trainable text top of ``layers`` MiniLM layers (``model.text_top``, in its state_dict);
    refuses the GRU/GloVe text encoder and a model class whose ``encode_texts`` does not route the states through
    it."""
    from .adapt import refuse_override
    if text_encoder != "minilm":
        raise ValueError(f"text_top_layers={layers} trains MiniLM's last layers, but text_encoder={text_encoder!r} "
                         f"reads GloVe word ids, not MiniLM states. Fix: set text_top_layers=0, or "
                         f"text_encoder='minilm'.")
    refuse_override(model, "encode_texts", "encode_tokens", "adapted token states", f"text_top_layers={layers}")
    model.text_top = TextTop(layers)
    return model


def text_top_parameters(model: nn.Module) -> list[nn.Parameter]:
    from .adapt import top_parameters
    return top_parameters(model, "text_top")


def text_cut_of(model: nn.Module) -> int | None:
    """The MiniLM hidden state a model reads (None: the last, the frozen token states): raw query text is encoded
    to it (:meth:`~itr_lib.backbones.TextEncoder.encode_ids` with ``layer``) and the model's top runs the rest."""
    top = getattr(model, "_modules", {}).get("text_top")
    return None if top is None else top.cut
