"""Numerical precision of training and evaluation: float32, or bfloat16 autocast of the encoders.

``TrainConfig.precision`` is ``"fp32"``, ``"bf16"`` or ``"auto"`` (bf16 where the CPU computes it natively, else
fp32). Under bf16 only the *encoders* run under ``torch.autocast(..., torch.bfloat16)`` (their linear layers and
transformers, forward and, through autograd, backward); every encoder output is cast back to float32 at the
boundary (:func:`encode_images` / :func:`encode_texts`), so the losses, their softmaxes, the similarity scores the
metrics read and the metrics themselves are computed in float32 exactly as before. l2-normalisation inside the
encoders upcasts to float32 too (:func:`itr_lib.models.encoders.l2norm`). A trainable image top (the adapted
operating point, :mod:`itr_lib.models.adapt`) runs in float32 inside the autocast region: its depthwise
convolutions measured slower under bf16 (2.4-2.7 s against 2.0-2.4 s per 64 images, forward + backward, one thread).

Support: bf16 is used only when torch's oneDNN reports bf16 support AND the CPU has native bf16 instructions
(``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``): without them oneDNN emulates bf16 and it is slower than
float32. Otherwise the run falls back to float32 and the reason is logged (and returned by :func:`resolve`).

The precision is a *runtime* field of a run (like ``threads``; :data:`itr_lib.config.RUNTIME_FIELDS`): it is
recorded in ``metrics.json`` (``"precision"``) but is not part of the run's identity, so records trained before it
existed stay valid. That choice rests on the accuracy check of ``results/benchmarks/speed_levers.md`` (paired
bootstrap of test mR, old float32 records vs bf16 reruns).

The active precision is a context (:func:`policy`), set once per training run by :func:`itr_lib.train.train`, so
the training step and the per-epoch / final evaluation read the same rule without threading an argument through
every scoring function.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "auto")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_state = threading.local()


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (None where the file does not exist)."""
    p = Path(path)
    if not p.is_file():
        return None
    for line in p.read_text(errors="replace").splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_id(path: str | Path = "/proc/cpuinfo") -> str:
    """The CPU a run trained on, as recorded in ``metrics.json["cpu"]``: model name, family / model / stepping and
    the native bf16 flags (reduced-precision kernels, hence a bf16 run's last bits, differ between CPU kinds: a
    record reproduces bit for bit on the kind it names). "unknown" where ``/proc/cpuinfo`` does not exist."""
    p = Path(path)
    if not p.is_file():
        return "unknown"
    info: dict[str, str] = {}
    for line in p.read_text(errors="replace").splitlines():
        if not line.strip():
            break  # the first processor's block only
        k, _, v = line.partition(":")
        info.setdefault(k.strip(), v.strip())
    native = sorted(set(NATIVE_BF16_FLAGS) & (cpu_flags(p) or set()))
    return (f"{info.get('model name', 'unknown')} (family {info.get('cpu family', '?')}, model "
            f"{info.get('model', '?')}, stepping {info.get('stepping', '?')}; bf16: {', '.join(native) or 'none'})")


def bf16_support(device: str = "cpu") -> tuple[bool, str]:
    """Whether bf16 autocast is native (fast) on ``device``, and why (a sentence for the log)."""
    if str(device).startswith("cuda"):
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, "CUDA device supports bf16" if ok else "this CUDA device does not support bf16"
    if not torch.backends.mkldnn.is_available():
        return False, "this torch build has no oneDNN (mkldnn)"
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False, "torch's oneDNN reports no bf16 support on this CPU"
    except (AttributeError, RuntimeError) as err:  # an older torch without the probe
        return False, f"torch cannot report bf16 support ({type(err).__name__})"
    flags = cpu_flags()
    if flags is None:
        return False, "/proc/cpuinfo is not readable, cannot confirm native bf16 (avx512_bf16 / amx_bf16)"
    native = sorted(set(NATIVE_BF16_FLAGS) & flags)
    if not native:
        return False, "the CPU lacks avx512_bf16 and amx_bf16: oneDNN would emulate bf16, slower than float32"
    return True, f"native bf16 on this CPU ({', '.join(native)})"


def resolve(setting: str, device: str = "cpu") -> tuple[str, str]:
    """``(precision used, reason)`` for a ``TrainConfig.precision`` setting: ``"fp32"`` as asked; ``"bf16"`` and
    ``"auto"`` -> ``"bf16"`` when :func:`bf16_support`, else ``"fp32"`` with the reason logged as a warning."""
    if setting not in PRECISIONS:
        raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {setting!r}. Fix: set "
                         f"precision='fp32' (exact old behaviour), 'bf16' or 'auto'.")
    if setting == "fp32":
        return "fp32", "float32 requested"
    ok, why = bf16_support(device)
    if ok:
        return "bf16", why
    log.warning("precision=%r: falling back to float32 (%s)", setting, why)
    return "fp32", f"fallback to float32: {why}"


def current() -> str:
    """The active precision ("fp32" outside any :func:`policy`)."""
    return getattr(_state, "precision", "fp32")


@contextlib.contextmanager
def policy(precision: str, device_type: str = "cpu") -> Iterator[str]:
    """Make ``precision`` ("fp32" or "bf16", a resolved one) the active rule inside the block (nestable)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"policy takes a resolved precision ('fp32' or 'bf16'), got {precision!r}; "
                         f"resolve 'auto' with precision.resolve first")
    prev = (current(), getattr(_state, "device_type", "cpu"))
    _state.precision, _state.device_type = precision, device_type
    try:
        yield precision
    finally:
        _state.precision, _state.device_type = prev


@contextlib.contextmanager
def autocast() -> Iterator[None]:
    """bf16 autocast when the active precision is bf16, else nothing."""
    if current() != "bf16":
        yield
        return
    with torch.autocast(getattr(_state, "device_type", "cpu"), dtype=torch.bfloat16):
        yield


def linear_input(x: torch.Tensor) -> torch.Tensor:
    """Cached features (float16) made the input of a linear layer: float32, or inside an autocast region its dtype
    at once (bf16), which autocast's cast of the float32 copy would give bit for bit (float16 -> float32 is exact;
    both then round the same way) with one pass over the features less. Only for a tensor whose consumers are
    autocast-cast ops (``nn.Linear``)."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return x.to(torch.get_autocast_dtype(dev))
    return x.float()


def float32(out: dict) -> dict:
    """An encoder's output dict with every reduced-precision floating tensor cast to float32."""
    return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() and v.dtype != torch.float32 else v
            for k, v in out.items()}


def encode_images(model, regions: torch.Tensor, region_mask: torch.Tensor) -> dict:
    """``model.encode_images`` under the active precision; float32 outputs."""
    with autocast():
        out = model.encode_images(regions, region_mask)
    return float32(out)


def encode_texts(model, text: torch.Tensor, text_mask: torch.Tensor, word_mask: torch.Tensor) -> dict:
    """``model.encode_texts`` under the active precision; float32 outputs."""
    with autocast():
        out = model.encode_texts(text, text_mask, word_mask)
    return float32(out)
