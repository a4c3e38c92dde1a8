"""Training on cached features: Adam + step decay + clipping, augmentation, val rsum each epoch, best
checkpoint by val rsum, exact resume, JSON-lines log, progress bar.

``train(TrainConfig(...))`` runs (or resumes, or skips when finished) one run in ``cfg.run_dir`` and returns
its metrics dict (also written to ``<run_dir>/metrics.json``). An epoch is one pass over the training
*images*; per step each image comes with all its captions (``captions_per_step`` all; the default with InfoNCE)
or one drawn at random (``one``; the default with the triplet). What the run did (the resolved caption rule, the
method's hyper-parameters, the tie rule of its metrics) is recorded with its results. :func:`train_step` is the
one optimisation step, shared with the step benchmark (:mod:`itr_lib.bench`).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import checkpoints
from . import precision as prec
from . import scorekernel
from .config import TrainConfig, dataset_name
from .glove import load_glove
from .heap import limit_heap
from .io import (atomic_savez, atomic_write_text, git_commit, progress_enabled, read_json, resolve_device,
                 seed_everything, write_json)
from .metrics import STUDY_TIE_RULE
from .models import RetrievalModel, build_model
from .models.adapt import image_top_parameters
from .models.text_top import text_top_parameters
from .recordio import portable_run_dir, read_record
from .scoring import evaluate, evaluate_two_stage, has_two_stage, ties_arrays
from .splits import load_split_tensors

log = logging.getLogger(__name__)


def _glove_for(cfg: TrainConfig):
    if cfg.text_encoder != "gru":
        return None
    _, emb = load_glove(cfg.dataset, cfg.data_root, cfg.cache_dir)
    return torch.from_numpy(emb)


def make_model(cfg: TrainConfig) -> RetrievalModel:
    return build_model(cfg, _glove_for(cfg))


def train_step(model: RetrievalModel, opt: torch.optim.Optimizer, batch, epoch: int, grad_clip: float,
               lap=None) -> dict:
    """One optimisation step on ``batch`` (the training loop's and the step benchmark's): encode both sides,
    the model's loss, backward, gradient clipping, the optimiser. Returns the loss terms (floats). ``lap(name)``,
    when given, is called after each phase ("encode", "loss", "backward", "optimizer") for timing."""
    lap = lap or (lambda name: None)
    model.on_step_start(epoch)
    img = prec.encode_images(model, batch.regions, batch.region_mask)  # the active precision (precision.policy)
    txt = prec.encode_texts(model, batch.text, batch.text_mask, batch.word_mask)
    lap("encode")
    loss, terms = model.compute_loss(img, txt, batch, epoch)
    lap("loss")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    lap("backward")
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    model.on_before_optimizer_step(epoch)
    opt.step()
    lap("optimizer")
    return terms


def make_optimizer(cfg: TrainConfig, model: RetrievalModel):
    """Adam over the trainable parameters and the step decay (lr x gamma after ``lr_decay_frac`` of the epochs);
    a trainable image top (``image_top_blocks``) is a second group at ``lr * image_top_lr_factor``, a trainable text
    top (``text_top_layers``) a group of its own at ``lr * text_top_lr_factor``."""
    tops = [(ps, cfg.lr * f) for ps, f in ((image_top_parameters(model), cfg.image_top_lr_factor),
                                          (text_top_parameters(model), cfg.text_top_lr_factor)) if ps]
    in_top = {id(p) for ps, _ in tops for p in ps}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in in_top]
    groups = [{"params": params}] + [{"params": ps, "lr": lr} for ps, lr in tops]
    opt = torch.optim.Adam(groups if tops else params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    decay_epoch = max(1, int(round(cfg.lr_decay_frac * cfg.epochs)))
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=decay_epoch, gamma=cfg.lr_decay_gamma)


def train(cfg: TrainConfig, stop_after_epochs: int | None = None) -> dict:
    """Run, resume or skip one training run; returns its metrics (also in ``<run_dir>/metrics.json``).

    ``stop_after_epochs`` stops early after that many epochs in this call (simulates an interruption;
    the run stays resumable and returns ``{}``). Training and evaluation run under ``cfg.precision``
    (:mod:`itr_lib.precision`; recorded as ``metrics.json["precision"]``)."""
    used, why = prec.resolve(cfg.precision, cfg.device)
    log.info("precision %s (%s)", used, why)
    rule = scorekernel.resolve_config(cfg, resolve_device(cfg.device))
    log.info("score kernel: %s", rule["why"])
    with prec.policy(used, resolve_device(cfg.device).split(":")[0]), scorekernel.policy(rule):
        return _train(cfg, stop_after_epochs)


def _train(cfg: TrainConfig, stop_after_epochs: int | None = None) -> dict:
    from tqdm.auto import tqdm
    run_dir = cfg.resolved_run_dir()
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        done = read_record(metrics_path)
        if done.get("config_identity") == cfg.identity():
            log.info("run %s already finished: reusing %s", run_dir.name, metrics_path)
            return done
        raise ValueError(f"{metrics_path} belongs to another configuration (field 'config_identity' differs). "
                         f"Fix: choose another run_dir, or delete {run_dir} to retrain.")
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    limit_heap()  # ITR_HEAP=mmap: tensors of 1 MiB+ from mmap, a bounded heap, slower steps (itr_lib.heap)
    seed_everything(cfg.seed)

    t_load = time.perf_counter()
    tr = load_split_tensors(cfg, "train", cfg.max_train_images, transforms=cfg.image_transforms)
    va = load_split_tensors(cfg, "val", cfg.max_eval_images)
    va_sel = load_split_tensors(cfg, "val", cfg.val_images_per_epoch) if cfg.val_images_per_epoch else va
    t_load = time.perf_counter() - t_load
    model = make_model(cfg).to(device)
    vocab_size = model.txt_enc.embed.num_embeddings if cfg.text_encoder == "gru" and hasattr(model, "txt_enc") else None
    opt, sched = make_optimizer(cfg, model)

    start_epoch, best_rsum, history = 0, -1.0, []
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if last_path.is_file():
        ck = checkpoints.load(last_path, device)
        if ck["config_identity"] != cfg.identity():
            raise ValueError(f"{last_path} was saved for another configuration (field 'config_identity'). "
                             f"Fix: use another run_dir or delete {run_dir}.")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["torch_rng"].cpu())
        start_epoch, best_rsum, history = ck["epoch"] + 1, ck["best_rsum"], ck["history"]
        print(f"{run_dir.name}: resumed after epoch {start_epoch} of {cfg.epochs} (from last.pt)", flush=True)

    if cfg.captions_per_step not in ("auto", "one", "all"):
        raise ValueError(f"captions_per_step must be auto, one or all, not {cfg.captions_per_step!r}")
    multi = multi_caption(cfg, model)
    if multi and not model.supports_multi_caption:
        raise ValueError(f"method {cfg.method!r} trains with one caption per image: set captions_per_step='one'")
    n = tr.n_images
    steps = (n + cfg.batch_size - 1) // cfg.batch_size
    gen = torch.Generator().manual_seed(cfg.seed)
    epochs_this_call = 0
    for epoch in range(start_epoch, cfg.epochs):
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            return {}
        rng = np.random.default_rng([cfg.seed, epoch])
        gen.manual_seed(int(rng.integers(2 ** 62)))
        order = rng.permutation(n)
        cap_choice = np.array([c[rng.integers(len(c))] for c in tr.img2txt])
        # image_transforms: a stream of its own per epoch, so the other draws stay those of a run without it
        view_gen = torch.Generator().manual_seed(int(np.random.default_rng([cfg.seed, epoch, 1]).integers(2 ** 62))) \
            if cfg.image_transforms else None
        model.train()
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        bar = tqdm(range(steps), desc=f"{run_dir.name} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress_enabled(cfg.progress), mininterval=2.0, leave=False)
        for step in bar:
            ii = torch.from_numpy(order[step * cfg.batch_size:(step + 1) * cfg.batch_size])
            if len(ii) < 2:
                continue
            view = torch.randint(len(tr.view_names), (len(ii),), generator=view_gen) if view_gen else None
            batch = tr.train_batch(ii, cfg, multi, cap_choice, gen, vocab_size, view).to(device)
            terms = train_step(model, opt, batch, epoch, cfg.grad_clip)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            if step % 20 == 0:
                bar.set_postfix(loss=f"{terms['total']:.3f}")
        train_secs = time.perf_counter() - t0
        lr = opt.param_groups[0]["lr"]
        sched.step()
        t1 = time.perf_counter()
        val = evaluate(model, va_sel, device, cfg.eval_batch_size, selection=True)["standard"]
        rec = {"epoch": epoch, "lr": lr, "train_seconds": round(train_secs, 2),
               "eval_seconds": round(time.perf_counter() - t1, 2),
               **{f"loss_{k}": v / steps for k, v in sums.items()},
               **{f"val_{k}": v for k, v in val.items()}}
        history.append(rec)
        log.info("%s epoch %d: loss %.4f val rsum %.2f", run_dir.name, epoch, rec.get("loss_total", 0), val["rsum"])
        if val["rsum"] > best_rsum:
            best_rsum = val["rsum"]
            checkpoints.save(best_path, {"model": model.state_dict()},
                             {"config": asdict(cfg), "epoch": epoch, "val_rsum": best_rsum})
        checkpoints.save(last_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                     "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state()},
                         {"epoch": epoch, "best_rsum": best_rsum, "history": history,
                          "config_identity": cfg.identity()})
        atomic_write_text(run_dir / "log.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        epochs_this_call += 1

    return finalize(cfg, model, history, t_load, device)


def multi_caption(cfg: TrainConfig, model: RetrievalModel) -> bool:
    return cfg.captions_per_step == "all" or (cfg.captions_per_step == "auto" and cfg.base_loss == "infonce"
                                              and model.supports_multi_caption)


def finalize(cfg: TrainConfig, model: RetrievalModel, history: list, t_load: float, device: str) -> dict:
    """Score the best checkpoint on val and test; write metrics.json, test ranks and the config."""
    run_dir = cfg.resolved_run_dir()
    best = checkpoints.load(run_dir / "best.pt", device)
    model.load_state_dict(best["model"])
    # val: the score that selected the checkpoint (on the val subset when val_images_per_epoch is set)
    va = load_split_tensors(cfg, "val", cfg.val_images_per_epoch or cfg.max_eval_images)
    te = load_split_tensors(cfg, "test", cfg.max_eval_images)
    t0 = time.perf_counter()
    val = evaluate(model, va, device, cfg.eval_batch_size, selection=True)
    test = evaluate(model, te, device, cfg.eval_batch_size, with_ranks=True)
    eval_secs = time.perf_counter() - t0
    i2t_ranks, t2i_ranks = test.pop("_ranks")
    arrays = {"i2t": i2t_ranks, "t2i": t2i_ranks, **ties_arrays(test.pop("_ties"))}
    extra_eval = {}
    if has_two_stage(model):  # TGDT global / two-stage / exhaustive; ALADIN student / re-ranked / teacher
        # a model without exact vectors was just scored exhaustively (its similarity): not computed twice
        modes = ("global", "two_stage") + (("exhaustive",) if model.exact_vectors else ())
        res, info = evaluate_two_stage(model, te, device, cfg.eval_batch_size, modes=modes, return_details=True)
        for mode, ties in info.pop("ties").items():
            arrays.update(ties_arrays(ties, f"{mode}/"))
        extra_eval = dict(res)
        if not model.exact_vectors:
            extra_eval["exhaustive"] = {k: v for k, v in test.items() if k.startswith("standard")}
            arrays.update({k.replace("i2t_", "exhaustive/i2t_", 1).replace("t2i_", "exhaustive/t2i_", 1): v
                           for k, v in arrays.items() if k.endswith(("_above", "_tied", "_tpos")) and "/" not in k})
            info["exhaustive_seconds"] = eval_secs
        extra_eval["details"] = info
    atomic_savez(run_dir / "test_ranks.npz", **arrays)
    with torch.no_grad():
        model.eval()
        regions, rmask = te.image_batch(torch.arange(1))
        vec_dim = int(model.image_vectors(model.encode_images(regions.to(device), rmask.to(device))).shape[1])
    out = {
        "run": run_dir.name, "method": cfg.method, "dataset": dataset_name(cfg.dataset),
        "seed": cfg.seed, "config": asdict(cfg), "config_identity": cfg.identity(),
        "best_epoch": best["epoch"], "epochs": cfg.epochs, "val_images": va.n_images, "epoch_definition": "one pass over the training "
        "images; per step each image with " + ("all its captions" if multi_caption(cfg, model) else
                                               "one random caption"), "val": val, "test": test,
        "history": history, "extra_eval": extra_eval, "retrieval_vector_dim": vec_dim, "exact_vectors": model.exact_vectors,
        "tie_rule": STUDY_TIE_RULE, "method_hp": dict(getattr(model, "hp", {})),
        "captions_per_step": "all" if multi_caption(cfg, model) else "one",
        "n_params": sum(p.numel() for p in model.parameters()),
        **({"image_top": {"blocks": cfg.image_top_blocks, "cut": cfg.image_cut, "lr_factor": cfg.image_top_lr_factor,
                          "n_params": sum(p.numel() for p in image_top_parameters(model)),
                          "batchnorm": "frozen statistics (eval mode)", "drop_connect": "off"}}
           if cfg.image_top_blocks else {}),  # the trainable backbone top (itr_lib.models.adapt)
        **({"text_top": {"layers": cfg.text_top_layers, "cut": cfg.text_cut, "lr_factor": cfg.text_top_lr_factor,
                         "n_params": sum(p.numel() for p in text_top_parameters(model)),
                         "dropout": "off (eval mode)", "attention_mask": "the caption lengths"}}
           if cfg.text_top_layers else {}),  # MiniLM's trainable last layers (itr_lib.models.text_top)
        "train_seconds": round(sum(h["train_seconds"] for h in history), 2),
        "val_eval_seconds": round(sum(h["eval_seconds"] for h in history), 2),
        "test_eval_seconds": round(eval_secs, 2), "load_seconds": round(t_load, 2),
        "git_commit": git_commit(), "torch": torch.__version__, "device": device,
        "threads": torch.get_num_threads(), "precision": prec.current(), "cpu": prec.cpu_id(), "heap": limit_heap(),
        "score_kernel": scorekernel.record(),
    }
    # the record stores run_dir relative to its results folder (the same on any clone); the caller gets it resolved
    write_json(run_dir / "metrics.json", {**out, "config": {**out["config"], "run_dir": portable_run_dir(run_dir)}})
    return out


def load_checkpoint(path: str | os.PathLike, device: str = "cpu",
                    trust: bool | None = None) -> tuple[RetrievalModel, TrainConfig]:
    """A trained model and its config from a ``best.pt`` / ``last.pt`` file, read without running code from it
    (:func:`itr_lib.checkpoints.load`: a file that needs more is refused unless ``trust`` or
    ``$ITR_TRUST_CHECKPOINTS`` opts in)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist. Fix: pass the best.pt of a finished run "
                                f"(results/<profile>/runs/<run>/best.pt, e.g. results/smoke/runs/...; "
                                f"`python -m itr_lib.study --retrain GLOB` rebuilds a recorded run's checkpoint).")
    ck = checkpoints.load(path, device, trust)
    if "config" not in ck:
        cfg_path = path.parent / "metrics.json"
        if not cfg_path.is_file():
            raise ValueError(f"{path} has no 'config' field and no metrics.json beside it. Fix: use best.pt.")
        ck["config"] = read_json(cfg_path)["config"]
    cfg = TrainConfig.from_dict({**ck["config"], "run_dir": str(path.parent)})  # where the checkpoint lies
    model = make_model(cfg).to(device)
    model.load_state_dict(ck["model"])
    model.eval()
    return model, cfg
