"""Run configuration: :class:`TrainConfig` (every hyper-parameter of a run), its identity and name, the one
list of runtime-only fields, and the human-readable variant label of a recorded config.

A run's *identity* is its config without the fields that cannot change its result (:data:`RUNTIME_FIELDS`);
the run name is ``<dataset>-<variant>-<text encoder>-s<seed>-<hash of the identity>``, so a recorded run is found
again by its config (never by a name typed anywhere) and a changed config never reuses a stale run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import dihedral
from .io import REPO_ROOT

# fields that do not change the result of a run (excluded from its identity)
RUNTIME_FIELDS = ("data_root", "cache_dir", "device", "threads", "run_dir", "progress", "eval_batch_size",
                  "length_buckets", "precision", "compile_scores", "score_precision", "loss_precision",
                  "top_precision")
# fields added after runs were first recorded: they enter the identity only when set, so the names (and
# resumability) of earlier runs stay valid
ADDED_LATER = ("val_images_per_epoch", "image_transforms")
# added later with a non-None default: they enter the identity only when off that default
ADDED_LATER_DEFAULTS = {"image_top_blocks": 0, "image_top_lr_factor": 1.0, "text_top_layers": 0,
                        "text_top_lr_factor": 1.0}


class ConfigError(ValueError):
    """A TrainConfig field holds a value outside its allowed range; the message names the field, the value and the
    range."""


# allowed values of TrainConfig's fields: field -> (test, what is allowed); checked when a config is made
FIELD_RANGES = {
    "epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "seed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "dim": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "codebook_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "warmup_epochs": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "lr": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "infonce_temperature": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "lca_temperature": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "cra_temperature": (lambda v: _is_num(v) and v > 0, "a number > 0"),
    "margin": (lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    "grad_clip": (lambda v: _is_num(v) and v >= 0, "a number >= 0 (0: no clipping)"),
    "weight_decay": (lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    "lr_decay_frac": (lambda v: _is_num(v) and 0 <= v <= 1, "a fraction in [0, 1]"),
    "lr_decay_gamma": (lambda v: _is_num(v) and 0 < v <= 1, "a number in (0, 1]"),
    "region_drop": (lambda v: _is_num(v) and 0 <= v < 1, "a fraction in [0, 1)"),
    "token_drop": (lambda v: _is_num(v) and 0 <= v < 1, "a fraction in [0, 1)"),
    "max_train_images": (lambda v: v is None or (_is_int(v) and v >= 1), "None or an integer >= 1"),
    "max_eval_images": (lambda v: v is None or (_is_int(v) and v >= 1), "None or an integer >= 1"),
    "val_images_per_epoch": (lambda v: v is None or (_is_int(v) and v >= 1), "None or an integer >= 1"),
    "base_loss": (lambda v: v in ("triplet", "infonce"), "triplet | infonce"),
    "false_negatives": (lambda v: v in ("mask", "none"), "mask | none"),
    "captions_per_step": (lambda v: v in ("one", "all", "auto"), "one | all | auto"),
    "text_encoder": (lambda v: v in ("minilm", "gru"), "minilm | gru"),
    "pooling": (lambda v: v in ("mean", "max", "gpo", "meanmax"), "mean | max | gpo | meanmax"),
}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def config_identity(cfg: dict) -> dict:
    """The identity of a config given as a dict (a recorded ``metrics.json['config']`` or ``asdict(cfg)``)."""
    return {k: v for k, v in cfg.items() if k not in RUNTIME_FIELDS and not (k in ADDED_LATER and v is None)
            and not (k in ADDED_LATER_DEFAULTS and v == ADDED_LATER_DEFAULTS[k])}


def group_key(cfg: dict) -> str:
    """The identity without the seed, hashed: runs that differ only in their seed share it."""
    ident = {k: v for k, v in config_identity(cfg).items() if k != "seed"}
    return hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:10]


def dataset_name(dataset: str) -> str:
    """The dataset's short name from a config's ``dataset`` (a name, or a path to ``dataset_<name>.json``)."""
    return Path(str(dataset)).stem.replace("dataset_", "")


@dataclass
class TrainConfig:
    """Every hyper-parameter of a run. Defaults follow the authors (METHODS.md) except where noted."""

    # what
    method: str = "baseline"            # baseline | selfalign | tgdt | aladin | scan | ...
    dataset: str = "rsicd"              # dataset name under the data root, or a JSON path
    text_encoder: str = "minilm"        # minilm (frozen MiniLM + trainable layers) | gru (BiGRU over GloVe)
    seed: int = 0
    # architecture
    dim: int = 1024                     # joint embedding size D (authors: 1024)
    pooling: str = "gpo"                # mean | max | gpo | meanmax
    mlp: bool = False                   # VSE-infinity residual MLP on the projections
    # SelfAlign
    lca: bool = False
    cra: bool = False
    codebook_size: int = 1024           # K (authors' scripts: 1024)
    lca_eps: float = 0.05
    lca_iters: int = 3
    lca_temperature: float = 0.1
    lca_weight: float = 1.0
    codebook_freeze_epochs: int = 1
    cra_temperature: float = 0.7
    cra_topk: int = 512
    cra_weight: float = 1.0
    # loss
    base_loss: str = "triplet"          # triplet (authors: hardest negative after warm-up) | infonce
    margin: float = 0.2
    warmup_epochs: int = 1              # VSE-infinity: sum of violations in epoch 0
    infonce_temperature: float = 0.05
    false_negatives: str = "mask"       # mask: in-batch captions whose text the anchor image carries are no
                                        # negatives | none: the authors' behaviour
    captions_per_step: str = "auto"     # one: one random caption per image and step (authors) | all: every
                                        # caption of the batch's images (multi-positive InfoNCE; more text
                                        # supervision per image forward) | auto: all for InfoNCE on models
                                        # that support it, else one
    # optimisation
    epochs: int = 12
    batch_size: int = 128
    lr: float = 5e-4                    # VSE-infinity 5e-4
    lr_decay_frac: float = 0.6          # lr x0.1 after this fraction of the epochs
    lr_decay_gamma: float = 0.1
    grad_clip: float = 2.0
    weight_decay: float = 0.0
    region_drop: float = 0.2            # VSE-infinity: drop 20% of regions
    token_drop: float = 0.2             # and 20% of tokens
    image_transforms: list[str] | None = None  # per image and step, the grid of one of these transforms of the
                                        # pixels, drawn uniformly (itr_lib.dihedral: r0 r90 r180 r270 f0 ...;
                                        # their train caches must exist); None: the images as they are
    # backbone adaptation (itr_lib.models.adapt): train EfficientNet-Lite2's last blocks + conv head from cached
    # activations below them; every method consumes the adapted grid
    image_top_blocks: int = 0           # 0: the frozen grid (today's path) | k: blocks 21-k..20 + head train, from
                                        # block 20-k's activation cache (1: block 20 + head; 6: the last stage)
    image_top_lr_factor: float = 1.0    # the top's learning rate = lr * this factor (only with image_top_blocks)
    # the text side (itr_lib.models.text_top): train MiniLM's last layers from cached hidden states below them;
    # every method reading MiniLM states consumes the adapted ones (gru: an error)
    text_top_layers: int = 0            # 0: the frozen token states (today's path) | k in 1..2: MiniLM layers 7-k..6
                                        # train, from the hidden_states[6 - k] cache (features --text-cut 6-k)
    text_top_lr_factor: float = 1.0     # the text top's learning rate = lr * this factor (only with text_top_layers)
    # method-specific extras (TGDT, ALADIN, ...)
    extra: dict = field(default_factory=dict)
    # data / runtime
    data_root: str | None = None
    cache_dir: str | None = None
    max_train_images: int | None = None  # small subsets for tests and smoke runs
    max_eval_images: int | None = None
    val_images_per_epoch: int | None = None  # model selection on the first N val images (slow exhaustive models)
    eval_batch_size: int = 256
    device: str = "cpu"
    threads: int | None = None
    length_buckets: int | None = None   # ALADIN, TGDT (their text transformers; SCAN / MrSw have none: a per-token
                                        # projection of the valid tokens, and their scores are already computed
                                        # in length-sorted, trimmed blocks): encode the captions in this many groups of
                                        # similar length, each cut to its own longest caption, instead of one
                                        # group padded to the longest (the same function per caption, faster
                                        # steps: `python -m itr_lib.bench train-step --variants aladin
                                        # --length-buckets 1 8`). Like ``threads`` it is outside the run's
                                        # identity: it changes float rounding and how the dropout draws are laid
                                        # out, not the method. None or 1: off
    precision: str = "fp32"             # fp32 | bf16 | auto: bf16 autocast of the encoders where the CPU has native
                                        # bf16 (itr_lib.precision; else float32 with a logged reason). Runtime
                                        # field (outside the identity), recorded in metrics.json. The library's
                                        # default stays fp32; the study's notebooks default to auto since its
                                        # accuracy check passed (results/benchmarks/speed_levers.md)
    compile_scores: str = "off"         # off | auto | on: SCAN's score block through torch.compile (the same
                                        # function up to rounding); MrSw's max over regions (MrSw, TGDT, ALADIN) as
                                        # a C++ kernel (bit-identical; itr_lib.scorekernel). Runtime field, recorded
    score_precision: str = "fp32"       # fp32 | bf16: SCAN's / MrSw's cosine matmul from bf16 inputs, the rest of
                                        # the score float32 (itr_lib.scorekernel). Runtime field, recorded
    loss_precision: str = "fp32"        # fp32 | bf16: SelfAlign's LCA/CRA loss matmuls from bf16 inputs, the rest
                                        # of the loss float32 (itr_lib.scorekernel.loss_mm). Runtime field, recorded
    top_precision: str = "fp32"         # fp32 | bf16: the trainable image top's 1 x 1 convolutions from bf16 inputs
                                        # (itr_lib.models.adapt.PointwiseConv; needs image_top_blocks). Runtime
                                        # field, recorded; not adopted (its check at the adapted point: speed_levers.md)
    run_dir: str | None = None          # default results/runs/<run_name>
    progress: bool | None = None

    def __post_init__(self):
        bad = [f"{name} = {getattr(self, name)!r} (allowed: {allowed})" for name, (ok, allowed) in FIELD_RANGES.items()
               if not ok(getattr(self, name))]
        if bad:
            raise ConfigError(f"TrainConfig: {'; '.join(bad)}. Fix: pass an allowed value (a notebook parameter, "
                              f"-p NAME VALUE, or a profile's overrides).")
        if self.length_buckets is not None and (not isinstance(self.length_buckets, int) or self.length_buckets < 1):
            raise ValueError(f"TrainConfig.length_buckets must be a positive integer or None, got "
                             f"{self.length_buckets!r}")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"TrainConfig.precision must be 'fp32', 'bf16' or 'auto', got {self.precision!r}")
        from .scorekernel import check as check_scores
        check_scores(self.method, self.compile_scores, self.score_precision, self.loss_precision, self.top_precision,
                     self.image_top_blocks)
        if self.image_transforms is not None:
            self.image_transforms = dihedral.validate(self.image_transforms, "TrainConfig.image_transforms")
        if self.image_top_blocks:
            from .models.adapt import top_cut
            top_cut(self.image_top_blocks)  # a clear error for a count outside the backbone
        elif self.image_top_lr_factor != 1.0:
            raise ValueError(f"TrainConfig.image_top_lr_factor={self.image_top_lr_factor!r} has no effect with "
                             f"image_top_blocks=0 (the frozen grid). Fix: leave it at 1.0 or set image_top_blocks.")
        if self.text_top_layers:
            from .models.text_top import text_cut
            text_cut(self.text_top_layers)  # a clear error for a count outside the cached cuts
            if self.text_encoder != "minilm":
                raise ValueError(f"TrainConfig.text_top_layers={self.text_top_layers} trains MiniLM's last layers, "
                                 f"but text_encoder={self.text_encoder!r} reads GloVe word ids, not MiniLM states. "
                                 f"Fix: set text_top_layers=0, or text_encoder='minilm'.")
        elif self.text_top_lr_factor != 1.0:
            raise ValueError(f"TrainConfig.text_top_lr_factor={self.text_top_lr_factor!r} has no effect with "
                             f"text_top_layers=0 (the frozen token states). Fix: leave it at 1.0 or set "
                             f"text_top_layers.")

    @property
    def image_cut(self) -> int | None:
        """The Lite2 block whose cached activations the run loads (None: the frozen grid)."""
        if not self.image_top_blocks:
            return None
        from .models.adapt import top_cut
        return top_cut(self.image_top_blocks)

    @property
    def text_cut(self) -> int | None:
        """The MiniLM hidden state whose cache the run loads (None: the frozen last hidden state)."""
        if not self.text_top_layers:
            return None
        from .models.text_top import text_cut
        return text_cut(self.text_top_layers)

    def identity(self) -> dict:
        return config_identity(asdict(self))

    def run_name(self) -> str:
        h = hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        variant = self.method
        if self.method == "selfalign":
            variant += ("-lca" if self.lca else "") + ("-cra" if self.cra else "") + (f"-k{self.codebook_size}" if self.lca else "")
        if self.base_loss != "infonce":
            variant += f"-{self.base_loss}"
        return f"{dataset_name(self.dataset)}-{variant}-{self.text_encoder}-s{self.seed}-{h}"

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else REPO_ROOT / "results" / "adhoc" / "runs" / self.run_name()

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; valid: {sorted(names)}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------- training


def method_key(cfg: dict) -> str:
    """The method of a config (a dict, or ``vars(cfg)``) as the cost tables and the notebooks' per-method lists
    name it, the keys of ``experiments.METHOD_VARIANTS``: SelfAlign by its modules (lca, cra, lca+cra)."""
    if cfg.get("method") == "selfalign":
        return "+".join(m for m in ("lca", "cra") if cfg.get(m)) or "selfalign"
    return cfg.get("method", "?")


def variant_label(cfg: dict) -> str:
    """Human-readable variant of a run's config (a table's row label): the method's own settings, the loss (as it
    was trained: ``| infonce +FN-mask`` ...), the schedule (``| 6 ep``), and every setting off its default, so runs
    with different settings are never pooled into one row."""
    m = cfg["method"]
    if m == "selfalign":
        parts = [p for p, on in (("LCA", cfg.get("lca")), ("CRA", cfg.get("cra"))) if on]
        v = "+".join(parts)
        if cfg.get("lca"):
            v += f" K={cfg.get('codebook_size')}"
        for key, short, on in (("lca_weight", "w_lca", cfg.get("lca")), ("cra_weight", "w_cra", cfg.get("cra"))):
            if on and cfg.get(key, 1.0) != 1.0:  # loss weights off the authors' 1.0 (sensitivity runs)
                v += f" {short}={cfg[key]:g}"
    else:
        v = m
    loss = cfg.get("base_loss", "triplet")
    v += f" | {loss}" + (" +FN-mask" if cfg.get("false_negatives") == "mask" else "")
    caps = cfg.get("captions_per_step", "auto")
    if caps == "one" and loss == "infonce":
        v += " 1cap"
    elif caps == "all" and loss == "triplet":
        v += " allcap"
    if cfg.get("epochs"):  # the schedule differs between methods and between runs of one method
        v += f" | {cfg['epochs']} ep"
    if cfg.get("dim") and cfg["dim"] != 512:
        v += f" | D={cfg['dim']}"
    if cfg.get("mlp"):
        v += " | MLP"
    if cfg.get("image_top_blocks"):  # the backbone's top trained (itr_lib.models.adapt)
        v += f" | image top {cfg['image_top_blocks']} blk"
        if cfg.get("image_top_lr_factor", 1.0) != 1.0:
            v += f" x{cfg['image_top_lr_factor']:g} lr"
    if cfg.get("text_top_layers"):  # MiniLM's last layers trained (itr_lib.models.text_top)
        v += f" | text top {cfg['text_top_layers']} lyr"
        if cfg.get("text_top_lr_factor", 1.0) != 1.0:
            v += f" x{cfg['text_top_lr_factor']:g} lr"
    if cfg.get("image_transforms"):  # trained on rotated / mirrored grids
        v += f" | {dihedral.label(cfg['image_transforms'])}"
    if cfg.get("text_encoder", "minilm") != "minilm":
        v += f" | {cfg['text_encoder']}"
    if cfg.get("val_images_per_epoch"):  # model selection on the first N val images
        v += f" | val {cfg['val_images_per_epoch']}"
    if m not in ("baseline", "selfalign") and cfg.get("base_loss") == "triplet" and cfg.get("warmup_epochs", 0):
        v += f" | warmup_epochs={cfg['warmup_epochs']}"
    if cfg.get("extra"):  # method hyper-parameters off their defaults: never pooled with the default runs
        v += " | " + ",".join(f"{k}={val}" for k, val in sorted(cfg["extra"].items()))
    return v
