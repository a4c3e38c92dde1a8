"""How the exhaustive fine-grained scores are computed: SCAN's block compiled, and the score matmul in bf16.

Runtime levers of issue 29: the first two for the methods whose training step is their score (SCAN, MrSw; the
second also reaches TGDT's MrSw term), then SelfAlign's loss matmuls and the adapted image top's 1 x 1 convolutions:

- ``TrainConfig.compile_scores`` (``"off"`` | ``"auto"`` | ``"on"``): SCAN's cross-attention block
  (:func:`itr_lib.models.fine.scan_block_math`) runs through ``torch.compile`` (TorchInductor's C++ kernels), which
  fuses its dozen elementwise passes over the (images x regions x captions x words) tensor, forward and backward.
  The same function up to float rounding (``tests/test_scorekernel.py``: scores and gradients against the eager
  block, max difference ~1e-6). ``"auto"`` compiles where a C++ compiler is found and falls back to the eager block
  (with the reason logged and recorded) if it is missing or compilation fails; ``"on"`` makes either an error.
  MrSw, TGDT (its MrSw term) and ALADIN (its MrSw teacher) compile their masked max over regions instead, a C++
  loop built once per machine (:mod:`itr_lib.maxkernel`): bit for bit the eager values, so no accuracy check.
  The other methods have nothing to compile: ``"on"`` is a config error there, ``"auto"`` leaves them eager.
- ``TrainConfig.score_precision`` (``"fp32"`` | ``"bf16"``): the (regions x words) cosine matmul of SCAN's block and
  of MrSw's block takes bf16 inputs (AMX / AVX512-BF16: 2.3x the float32 matmul here) and its result is
  cast back to float32 before anything else: the LeakyReLU, the softmax over regions, the max over regions, the
  pooling, the loss and the metrics stay float32. The scores move by ~1e-3 (bf16 has 8 significant bits), so this
  is a lever that needs the accuracy check of :mod:`itr_lib.levers` (old float32 records vs reruns, paired
  bootstrap of test mR). Honoured by ``scan``, ``mrsw`` and ``tgdt`` (TGDT's local term is MrSw: the same block, in
  its training loss and its two-stage re-scoring; the model registry's ``uses``): another method with ``"bf16"`` is
  a config error, so ALADIN's MrSw teacher is never touched. TGDT's use has its own check (``bf16+buckets+scores``
  in :mod:`itr_lib.levers`); the notebooks apply the field to the methods in ``SCORE_PRECISION_METHODS``. Used only where
  :func:`itr_lib.precision.bf16_support` says bf16 is native; elsewhere it falls back to float32 (logged, recorded).

- ``TrainConfig.loss_precision`` (``"fp32"`` | ``"bf16"``): SelfAlign's loss matmuls (the LCA codebook scores of
  regions and words, the CRA global-to-local scores; :func:`loss_mm`) from bf16 inputs, their products cast to
  float32: the Sinkhorn codes, log-softmax, top-k and the loss stay float32. ~1.5x a SelfAlign (LCA+CRA) step, one
  thread. Honoured by ``selfalign`` only (the registry's ``uses``); a lever with its own accuracy check
  (``bf16+losses`` in :mod:`itr_lib.levers`), which passed: the study's notebooks (01, 02, 07) default to
  ``LOSS_PRECISION = "bf16"``; the library's default stays ``"fp32"``.

- ``TrainConfig.top_precision`` (``"fp32"`` | ``"bf16"``): the trainable image top's 1 x 1 convolutions (expand,
  project, head; :class:`itr_lib.models.adapt.PointwiseConv`) from bf16 inputs, their outputs float32; depthwise
  convolutions, BatchNorm and ReLU6 stay float32 (the top runs outside the encoders' autocast: its depthwise
  convolutions were slower in bf16). Needs ``image_top_blocks > 0`` (an error otherwise). Its accuracy check at the
  adapted point (``bf16+top`` in ``speed_levers.md``) passes for the baseline and LCA+CRA on both datasets; TGDT
  passes on UCM (9 seeds) and is inconclusive on RSICD (3 seeds, half-width 1.06 mR). 02 and 07 default to
  ``TOP_PRECISION = "bf16"`` for the variants in ``TOP_PRECISION_METHODS`` (baseline, LCA+CRA); the library's
  default stays ``"fp32"``.

All four are *runtime* fields (``itr_lib.config.RUNTIME_FIELDS``), recorded in ``metrics.json["score_kernel"]`` as what
the run used. Like :mod:`itr_lib.precision`, the active rule is a thread-local context (:func:`policy`) that
:func:`itr_lib.train.train` sets once per run, so the training step and the per-epoch and final scoring read it.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import torch

from . import maxkernel
from .maxkernel import cxx_compiler  # SCAN's check uses it here (tests patch scorekernel.cxx_compiler)

log = logging.getLogger(__name__)

COMPILE_SETTINGS = ("off", "auto", "on")
SCORE_PRECISIONS = ("fp32", "bf16")
COMPILED_METHODS = ("scan",)          # the methods with a block to compile (torch.compile)
KERNEL_METHODS = ("mrsw", "tgdt", "aladin")  # the methods whose MrSw max runs in the C++ kernel (itr_lib.maxkernel)
LOW_PRECISION_METHODS = ("scan", "mrsw")  # the exhaustive methods whose score matmul may run in bf16 (bf16+scores;
# TGDT's MrSw term reads the field too: models' uses=, its own lever bf16+buckets+scores)
_state = threading.local()
_compiled: dict = {}                  # process-wide: function name -> its torch.compile wrapper


def check(method: str, compile_scores: str, score_precision: str, loss_precision: str = "fp32",
          top_precision: str = "fp32", image_top_blocks: int = 0) -> None:
    """Config validation: allowed values, and no setting a method cannot honour (``score_precision`` and
    ``loss_precision`` for another method are refused by the model registry's ``uses``; ``top_precision`` needs a
    trainable image top)."""
    if loss_precision not in SCORE_PRECISIONS:
        raise ValueError(f"TrainConfig.loss_precision must be one of {SCORE_PRECISIONS}, got {loss_precision!r}")
    if top_precision not in SCORE_PRECISIONS:
        raise ValueError(f"TrainConfig.top_precision must be one of {SCORE_PRECISIONS}, got {top_precision!r}")
    if top_precision != "fp32" and not image_top_blocks:
        raise ValueError(f"TrainConfig.top_precision={top_precision!r} sets the trainable image top's 1 x 1 "
                         f"convolutions, but image_top_blocks=0 (the frozen grid) has none. Fix: leave it at "
                         f"'fp32' or set image_top_blocks.")
    if compile_scores not in COMPILE_SETTINGS:
        raise ValueError(f"TrainConfig.compile_scores must be one of {COMPILE_SETTINGS}, got {compile_scores!r}")
    if score_precision not in SCORE_PRECISIONS:
        raise ValueError(f"TrainConfig.score_precision must be one of {SCORE_PRECISIONS}, got {score_precision!r}")
    if compile_scores == "on" and method not in COMPILED_METHODS + KERNEL_METHODS:
        raise ValueError(f"TrainConfig.compile_scores='on' has nothing to compile for method {method!r} (only "
                         f"{', '.join(COMPILED_METHODS + KERNEL_METHODS)}). Fix: set compile_scores='off' or 'auto'.")


def resolve(method: str, compile_scores: str, score_precision: str, device: str = "cpu",
            loss_precision: str = "fp32", top_precision: str = "fp32", image_top_blocks: int = 0) -> dict:
    """What a run of ``method`` will use: ``{"compiled": bool, "matmul": "fp32"|"bf16", "loss_matmul":
    "fp32"|"bf16", "top_matmul": "fp32"|"bf16", "why": str}``."""
    check(method, compile_scores, score_precision, loss_precision, top_precision, image_top_blocks)
    why = []
    compiled = False
    if method in COMPILED_METHODS + KERNEL_METHODS and compile_scores != "off":
        scan = method in COMPILED_METHODS
        what = "SCAN's block" if scan else "MrSw's max over regions"
        if not str(device).startswith("cpu"):
            reason = f"compile_scores is for the CPU path, device is {device}"
        elif scan:
            reason = None if cxx_compiler() else "no C++ compiler ($CXX, c++, g++, clang++) for TorchInductor"
        else:
            reason = maxkernel.unavailable()
        if reason and compile_scores == "on":
            raise RuntimeError(f"compile_scores='on' but {reason}. Fix: install g++ and python3-dev (apt-get install "
                               f"g++ python3-dev) and ninja (pip install ninja), or set compile_scores='auto' / 'off'.")
        if reason:
            log.warning("compile_scores=%r: %s stays eager (%s)", compile_scores, what, reason)
            why.append(f"eager: {reason}")
        else:
            compiled = True
            why.append("SCAN block compiled (TorchInductor)" if scan else
                       "MrSw max over regions: C++ kernel (itr_lib.maxkernel)")
    matmul = _matmul_dtype("score_precision", score_precision, device, "score matmul", why)
    loss_matmul = _matmul_dtype("loss_precision", loss_precision, device, "LCA/CRA loss matmuls", why)
    top_matmul = _matmul_dtype("top_precision", top_precision, device, "image top 1 x 1 convolutions", why)
    return {"compiled": compiled, "matmul": matmul, "loss_matmul": loss_matmul, "top_matmul": top_matmul,
            "strict": compile_scores == "on", "why": "; ".join(why) or "eager, float32 score matmul"}


def resolve_config(cfg, device: str | None = None) -> dict:
    """:func:`resolve` of a TrainConfig's fields (``device``: the resolved device, default ``cfg.device``)."""
    return resolve(cfg.method, cfg.compile_scores, cfg.score_precision, device or cfg.device, cfg.loss_precision,
                   cfg.top_precision, cfg.image_top_blocks)


def _matmul_dtype(field: str, setting: str, device: str, what: str, why: list) -> str:
    """``"bf16"`` where ``setting`` asks for it and the device has native bf16, else ``"fp32"`` (logged); the reason
    is appended to ``why``."""
    if setting != "bf16":
        return "fp32"
    from .precision import bf16_support
    ok, reason = bf16_support(device)
    if ok:
        why.append(f"bf16 {what} ({reason})")
        return "bf16"
    log.warning("%s='bf16': falling back to float32 (%s)", field, reason)
    why.append(f"fp32 {what}: {reason}")
    return "fp32"


def current() -> dict:
    """The active rule (eager, float32 outside any :func:`policy`)."""
    return getattr(_state, "rule", {"compiled": False, "matmul": "fp32", "loss_matmul": "fp32", "top_matmul": "fp32",
                                    "strict": False, "why": "default"})


def low_precision() -> bool:
    return current()["matmul"] == "bf16"


def loss_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of SelfAlign's loss matmuls (:func:`itr_lib.losses.lca_loss_packed`, ``cra_loss_packed``): from
    bf16 inputs, the product cast to float32 before anything else, when the active rule says so
    (``TrainConfig.loss_precision='bf16'``); else float32. Gradients flow through the casts (float32 for the
    inputs, the backward matmuls from bf16 inputs too)."""
    if current().get("loss_matmul") == "bf16":
        return torch.matmul(a.to(torch.bfloat16), b.to(torch.bfloat16)).float()
    return a @ b


@contextlib.contextmanager
def policy(rule: dict) -> Iterator[dict]:
    """Make a resolved rule (:func:`resolve`) the active one inside the block (nestable)."""
    prev = current()
    _state.rule = dict(rule)
    try:
        yield _state.rule
    finally:
        _state.rule = prev


def compiled_or_none(fn):
    """``torch.compile(fn)`` (dynamic shapes, one graph) when the active rule says compiled, else None. A compile
    that fails turns the rule eager for the rest of the process (logged and recorded in the rule's ``why``), unless
    the setting was ``"on"`` (then :func:`resolve` already vouched for the compiler and the error propagates)."""
    rule = current()
    if not rule["compiled"]:
        return None
    key = fn.__qualname__
    if key not in _compiled:
        _compiled[key] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _compiled[key]


def fall_back(err: Exception) -> None:
    """Record that compilation failed: the active rule becomes eager (what the run then did); with
    ``compile_scores='on'`` the error is raised instead."""
    rule = current()
    if rule.get("strict"):
        raise err
    rule["compiled"] = False
    rule["why"] = f"eager: compilation failed ({type(err).__name__}: {str(err)[:200]})"
    log.warning("the compiled score kernel failed, running eager: %s", rule["why"])


def record() -> dict:
    """What the active rule did, for ``metrics.json["score_kernel"]``."""
    rule = current()
    return {"compiled": rule["compiled"], "matmul": rule["matmul"], "loss_matmul": rule.get("loss_matmul", "fp32"),
            "why": rule["why"]}
