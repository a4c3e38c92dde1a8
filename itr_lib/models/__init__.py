"""Model registry: ``build_model(cfg, glove)`` maps a TrainConfig's ``method`` to a model.

Methods: ``baseline`` (VSE++/VSE-infinity), ``selfalign`` (baseline + LCA and/or CRA by config). Further
methods register themselves in ``BUILDERS`` (name -> callable(cfg, glove) -> RetrievalModel).
"""
from __future__ import annotations

from typing import Callable

from .base import Batch, RetrievalModel
from .vse import VSEModel

BUILDERS: dict[str, Callable] = {}
USES: dict[str, Callable] = {}  # method -> cfg -> the method-specific TrainConfig fields it reads

# TrainConfig fields every method reads (or that only steer the run, not the model)
COMMON_FIELDS = frozenset({
    "method", "dataset", "text_encoder", "seed", "dim", "base_loss", "false_negatives", "captions_per_step",
    "epochs", "batch_size", "lr", "lr_decay_frac", "lr_decay_gamma", "grad_clip", "weight_decay", "region_drop",
    "token_drop", "image_transforms", "extra", "data_root", "cache_dir", "max_train_images", "max_eval_images",
    "val_images_per_epoch", "eval_batch_size", "device", "threads", "run_dir", "progress",
    "image_top_blocks", "image_top_lr_factor",  # the top: every model routes its grid through it (models.adapt)
    "top_precision",  # the top's 1 x 1 convolutions (its config check needs image_top_blocks > 0)
    "text_top_layers", "text_top_lr_factor",  # and its token states through the text top (models.text_top)
    "precision", "compile_scores"})  # compile_scores: 'auto' applies where there is a block to compile (scorekernel)
LOSS_FIELDS = {"triplet": ("margin", "warmup_epochs"), "infonce": ("infonce_temperature",)}


def register(name: str, uses: Callable | tuple = ()):
    """Register a builder ``fn(cfg, glove) -> RetrievalModel`` under ``name``; ``uses`` names the TrainConfig
    fields beyond :data:`COMMON_FIELDS` and the loss's own that the method reads (a tuple, or a function of the
    config); any other field set off its default is an error (:func:`check_config`)."""
    def deco(fn):
        BUILDERS[name] = fn
        USES[name] = uses if callable(uses) else (lambda cfg, _u=tuple(uses): _u)
        return fn
    return deco


def unused_fields(cfg) -> list[tuple[str, object, object]]:
    """``(name, value, default)`` of every TrainConfig field set off its default that the method (with its base
    loss) does not read."""
    import dataclasses
    _load_plugins()
    if cfg.base_loss not in LOSS_FIELDS:
        raise ValueError(f"unknown base_loss {cfg.base_loss!r}; choose one of {sorted(LOSS_FIELDS)}")
    if cfg.method not in USES:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {sorted(BUILDERS)}")
    used = COMMON_FIELDS | set(LOSS_FIELDS[cfg.base_loss]) | set(USES[cfg.method](cfg))
    return [(f.name, getattr(cfg, f.name), f.default) for f in dataclasses.fields(cfg)
            if f.name not in used and f.default is not dataclasses.MISSING and getattr(cfg, f.name) != f.default]


def check_config(cfg) -> None:
    """A TrainConfig field the method cannot honour, set off its default, is an error (never silently ignored)."""
    bad = unused_fields(cfg)
    if bad:
        desc = ", ".join(f"{n}={v!r} (default {d!r})" for n, v, d in bad)
        raise ValueError(f"method {cfg.method!r} with base_loss {cfg.base_loss!r} does not use {desc}. Fix: leave "
                         f"these at their defaults (they would be recorded but have no effect).")


_LCA_FIELDS = ("codebook_size", "lca_eps", "lca_iters", "lca_temperature", "lca_weight", "codebook_freeze_epochs")
_CRA_FIELDS = ("cra_temperature", "cra_topk", "cra_weight")


def _vse_kwargs(cfg, glove):
    return dict(dim=cfg.dim, text_encoder=cfg.text_encoder, pooling=cfg.pooling, mlp=cfg.mlp, glove=glove,
                base_loss=cfg.base_loss, margin=cfg.margin, infonce_temperature=cfg.infonce_temperature,
                warmup_epochs=cfg.warmup_epochs)


@register("baseline", uses=("pooling", "mlp"))
def _baseline(cfg, glove):
    return VSEModel(**_vse_kwargs(cfg, glove))


@register("selfalign", uses=lambda cfg: ("pooling", "mlp", "lca", "cra", "loss_precision")
          + (_LCA_FIELDS if cfg.lca else ()) + (_CRA_FIELDS if cfg.cra else ()))
def _selfalign(cfg, glove):
    if not (cfg.lca or cfg.cra):
        raise ValueError("method 'selfalign' needs lca=True and/or cra=True (use method 'baseline' for neither)")
    return VSEModel(**_vse_kwargs(cfg, glove), lca=cfg.lca, cra=cfg.cra, codebook_size=cfg.codebook_size,
                    lca_eps=cfg.lca_eps, lca_iters=cfg.lca_iters, lca_temperature=cfg.lca_temperature,
                    lca_weight=cfg.lca_weight, cra_temperature=cfg.cra_temperature, cra_topk=cfg.cra_topk,
                    cra_weight=cfg.cra_weight, codebook_freeze_epochs=cfg.codebook_freeze_epochs)


def build_model(cfg, glove=None) -> RetrievalModel:
    _load_plugins()
    if cfg.method not in BUILDERS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {sorted(BUILDERS)}")
    check_config(cfg)
    model = BUILDERS[cfg.method](cfg, glove)
    if getattr(cfg, "image_top_blocks", 0):
        from .adapt import attach_image_top
        attach_image_top(model, cfg.image_top_blocks)
    if getattr(cfg, "text_top_layers", 0):
        from .text_top import attach_text_top
        attach_text_top(model, cfg.text_top_layers, cfg.text_encoder)
    return model


def _load_plugins() -> None:
    """Import optional model modules so they can register (missing ones are simply not offered)."""
    import importlib
    for mod in ("tgdt", "aladin", "interactive"):
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{mod}":
                raise


__all__ = ["Batch", "RetrievalModel", "VSEModel", "build_model", "check_config", "unused_fields", "register", "BUILDERS"]
