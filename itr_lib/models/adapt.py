"""The trainable top of the image backbone: EfficientNet-Lite2's last blocks and its conv head, run on cached
activations below them (:func:`itr_lib.features.ensure_image_features` with ``cut``), so the grid every method
consumes adapts during training.

``TrainConfig.image_top_blocks = k`` (0: the frozen grid, today's path) trains blocks ``21 - k .. 20`` and the
352 -> 1280 conv head from the cached output of block ``20 - k`` (:func:`top_cut`): k = 1 is block 20 + head
(from block 19's 7 x 7 x 208), k = 6 the whole last stage (from block 14's 14 x 14 x 120). The top starts from
the ImageNet weights; its learning rate is ``lr * image_top_lr_factor``.

Rules of the unfrozen blocks (stated, and kept in eval and training alike):

- **BatchNorm: frozen statistics.** The top always runs in eval mode (``train()`` cannot switch it), so every
  BatchNorm normalises with its ImageNet running mean / variance and never updates them; its affine weight and
  bias train. (Batches of 128 aerial images would give noisy, domain-shifted statistics; the frozen grids were
  extracted in eval mode too, so at step 0 the top reproduces them.)
- **Drop-connect (stochastic depth, rate 0.2 scaled per block in the EfficientNet code): off**, by the same eval
  mode; the blocks have no other dropout. Regularisation stays the study's region / token drop.

Every method consumes the adapted grid: :meth:`RetrievalModel.encode_images` runs the top before the method's
own ``encode_grid``; a model class that overrides ``encode_images`` itself cannot honour the field, and
:func:`attach_image_top` refuses it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding

from .. import scorekernel

LITE2_BLOCKS = 21
MODEL = "efficientnet-lite2"


class SymmetricSamePadding(Conv2dDynamicSamePadding):
    """A stride-1 'same' convolution whose TensorFlow padding is symmetric (odd kernel), given as the convolution's own
    zero padding ``same_pad`` instead of the EfficientNet code's ``F.pad`` on every call (:func:`_symmetric_same_padding`).
    A module-level class, so a model holding the top still pickles."""

    same_pad: tuple[int, int]

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.same_pad, self.dilation, self.groups)


class PointwiseConv(Conv2dDynamicSamePadding):
    """A 1 x 1, stride-1 convolution of the top (no padding either way) that takes bf16 inputs when the active score
    rule says so (``TrainConfig.top_precision = "bf16"``, :mod:`itr_lib.scorekernel`'s ``top_matmul``): input,
    weight and bias cast to bf16, the output cast back to float32 at once; the depthwise convolutions, BatchNorm and
    ReLU6 stay float32. Under the default rule it is the EfficientNet code's convolution (zero padding: the same
    call, bit-identical). A module-level class, so a model holding the top still pickles."""

    def forward(self, x):
        if scorekernel.current().get("top_matmul") == "bf16":
            b = None if self.bias is None else self.bias.to(torch.bfloat16)
            return F.conv2d(x.to(torch.bfloat16), self.weight.to(torch.bfloat16), b, self.stride, 0, self.dilation,
                            self.groups).float()
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _pointwise(top: nn.Module) -> int:
    """Make each 1 x 1, stride-1 convolution of ``top`` a :class:`PointwiseConv` (parameters and checkpoint keys
    unchanged). Returns the count."""
    n = 0
    for m in top.modules():
        if type(m) is Conv2dDynamicSamePadding and tuple(m.weight.shape[-2:]) == (1, 1) and tuple(m.stride) == (1, 1):
            m.__class__ = PointwiseConv
            n += 1
    return n


def _symmetric_same_padding(top: nn.Module) -> int:
    """Give each stride-1 'same'-padded convolution of ``top`` (the EfficientNet code pads its input with ``F.pad``
    on every call: a zero-filled copy of the activations, and a slice of its gradient back) the convolution's own
    zero padding instead, where TensorFlow's 'same' rule pads symmetrically (stride 1, odd kernel). The same
    arithmetic: outputs and gradients are bit-identical (``tests/test_adapt.py``), about 1.15x faster forward +
    backward of the top (one thread). The parameters and their checkpoint keys are unchanged. Returns the count."""
    n = 0
    for m in top.modules():
        if type(m) is not Conv2dDynamicSamePadding or tuple(m.stride) != (1, 1):
            continue
        pads = [(k - 1) * d for k, d in zip(m.weight.shape[-2:], m.dilation)]
        if any(p % 2 for p in pads) or not any(pads):
            continue  # asymmetric 'same' padding (even kernel), or none (1 x 1): keep the original forward
        m.__class__ = SymmetricSamePadding
        m.same_pad = tuple(p // 2 for p in pads)
        n += 1
    return n


def top_cut(blocks: int) -> int:
    """The Lite2 block whose cached output feeds a top of ``blocks`` trainable blocks (+ the conv head)."""
    if not isinstance(blocks, int) or not 1 <= blocks <= LITE2_BLOCKS - 1:
        raise ValueError(f"image_top_blocks must be an integer in 1..{LITE2_BLOCKS - 1} (0: the frozen grid), "
                         f"got {blocks!r}")
    return LITE2_BLOCKS - 1 - blocks


class ImageTop(nn.Module):
    """Lite2 blocks ``cut + 1 ..`` and the conv head (+ BN + ReLU6): (B, H*W, C_cut) activations (any float
    dtype; the cache is float16) -> (B, 49, 1280) float32 grid, the layout of the frozen grid cache."""

    def __init__(self, blocks: int):
        super().__init__()
        from ..backbones import _image_weights_path, _quiet
        from efficientnet_lite_pytorch import EfficientNet
        self.cut = top_cut(blocks)
        with _quiet():  # the ImageNet weights; a checkpoint's state_dict overwrites them
            net = EfficientNet.from_pretrained(MODEL, weights_path=str(_image_weights_path(MODEL)), image_size=None)
        self.blocks = nn.ModuleList(list(net._blocks)[self.cut + 1:])
        self.conv_head, self.bn1, self.act = net._conv_head, net._bn1, net._swish
        self.in_channels = self.blocks[0]._block_args.input_filters
        self.symmetric_convs = _symmetric_same_padding(self)
        self.pointwise_convs = _pointwise(self)
        super().train(False)

    def train(self, mode: bool = True) -> "ImageTop":
        """Always eval mode: frozen BatchNorm statistics, no drop-connect (see the module docstring)."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, r, c = x.shape
        side = int(round(r ** 0.5))
        if c != self.in_channels or side * side != r:
            raise ValueError(f"the image top above block {self.cut} takes (B, H*W, {self.in_channels}) activations "
                             f"of a square grid, got {tuple(x.shape)}. Fix: load the block-{self.cut} activation "
                             f"cache (python -m itr_lib.features ... --cut {self.cut}).")
        # channels-last: (B, H*W, C) is already that layout in memory, so this is a view (no transposed copy); one
        # depthwise convolution alone ran 2.5x faster forward + backward in it than NCHW, the whole top ~1.05x
        # (one thread, 128 images); outputs and gradients are bit-identical to the NCHW path (tests/test_adapt.py)
        x = x.float().reshape(b, side, side, c).permute(0, 3, 1, 2)
        for block in self.blocks:
            x = block(x)  # drop_connect_rate None: off (and eval mode)
        x = self.act(self.bn1(self.conv_head(x)))
        return x.permute(0, 2, 3, 1).reshape(b, -1, x.shape[1])


def attach_image_top(model: nn.Module, blocks: int) -> nn.Module:
    """Give ``model`` a trainable top of ``blocks`` blocks (``model.image_top``, in its state_dict); refuses a
    model class whose ``encode_images`` does not route the grid through it."""
    refuse_override(model, "encode_images", "encode_grid", "an adapted grid", f"image_top_blocks={blocks}")
    model.image_top = ImageTop(blocks)
    return model


def refuse_override(model: nn.Module, method: str, hook: str, what: str, setting: str) -> None:
    """A model class that overrides ``method`` itself (instead of the ``hook`` it calls after a top) cannot consume
    ``what``: the error names the setting and the fix."""
    from .base import RetrievalModel
    if getattr(type(model), method) is not getattr(RetrievalModel, method):
        name, field = type(model).__name__, setting.split("=")[0]
        raise ValueError(f"{name} overrides {method}, so it cannot consume {what} (TrainConfig.{setting}). Fix: set "
                         f"{field}=0, or implement {hook} instead of {method} in {name}.")


def top_parameters(model: nn.Module, name: str = "image_top") -> list[nn.Parameter]:
    """The trainable parameters of the model's top ``name`` (``image_top`` / ``text_top``; none without one)."""
    top = getattr(model, "_modules", {}).get(name)
    return [] if top is None else [p for p in top.parameters() if p.requires_grad]


def image_top_parameters(model: nn.Module) -> list[nn.Parameter]:
    return top_parameters(model, "image_top")
