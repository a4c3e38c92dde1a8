"""Model registry: ``build_model(cfg, glove)`` maps a TrainConfig's ``method`` to a model.

Methods: ``baseline`` (VSE++/VSE-infinity), ``selfalign`` (baseline + LCA and/or CRA by config). Further
methods register themselves in ``BUILDERS`` (name -> callable(cfg, glove) -> RetrievalModel).
"""
from __future__ import annotations

from typing import Callable

from .base import Batch, RetrievalModel
from .vse import VSEModel

BUILDERS: dict[str, Callable] = {}


def register(name: str):
    def deco(fn):
        BUILDERS[name] = fn
        return fn
    return deco


def _vse_kwargs(cfg, glove):
    return dict(dim=cfg.dim, text_encoder=cfg.text_encoder, pooling=cfg.pooling, mlp=cfg.mlp, glove=glove,
                base_loss=cfg.base_loss, margin=cfg.margin, infonce_temperature=cfg.infonce_temperature,
                warmup_epochs=cfg.warmup_epochs)


@register("baseline")
def _baseline(cfg, glove):
    return VSEModel(**_vse_kwargs(cfg, glove))


@register("selfalign")
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
    return BUILDERS[cfg.method](cfg, glove)


def _load_plugins() -> None:
    """Import optional model modules so they can register (missing ones are simply not offered)."""
    import importlib
    for mod in ("tgdt", "aladin", "interactive"):
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{mod}":
                raise


__all__ = ["Batch", "RetrievalModel", "VSEModel", "build_model", "register", "BUILDERS"]
