"""Score any saved checkpoint on any Karpathy-JSON dataset split; prints the metrics as JSON.

    python -m itr_lib.evaluate --checkpoint PATH --data-root DIR --dataset NAME [--split test] [--trust-checkpoint]

Features of a dataset seen for the first time are extracted on the fly and cached (sidecar-checked).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .data import DataError, load_dataset
from .features import SplitFeatures, ensure_features, load_features


def evaluate_checkpoint(checkpoint: str, dataset: str, split: str = "test", data_root: str | None = None,
                        cache_dir: str | None = None, device: str = "cpu", progress: bool | None = None,
                        trust: bool | None = None) -> dict:
    from .scoring import evaluate
    from .splits import SplitTensors
    from .train import load_checkpoint
    model, cfg = load_checkpoint(checkpoint, device, trust)
    ds = load_dataset(dataset, data_root)
    print(f"scoring {checkpoint} ({cfg.method}) on {ds.name}/{split}; features are extracted first when not cached "
          f"(a minute or more per thousand images on a CPU)", file=sys.stderr, flush=True)
    # a model with a trainable image top reads the activations below it (its cut), not the frozen grid
    ensure_features(ds, [split], root=cache_dir, device=device, progress=progress, benchmark=False,
                    cut=cfg.image_cut, text_cut=cfg.text_cut)
    # and a trainable text top reads MiniLM's hidden states below it (its text cut)
    feats: SplitFeatures = load_features(ds, split, root=cache_dir, cut=cfg.image_cut, text_cut=cfg.text_cut)
    data = SplitTensors(feats, cfg.text_encoder)
    if cfg.text_encoder == "gru":  # the model's vocabulary is the training dataset's, not this one's
        from .glove import glove_ids, load_glove
        itos, _ = load_glove(cfg.dataset, cfg.data_root, cfg.cache_dir)
        ids, lens = glove_ids(data.split.tokens, {w: i for i, w in enumerate(itos)})
        import torch
        data.text, data.lengths = torch.from_numpy(ids), torch.from_numpy(lens)
    out = evaluate(model, data, device)
    return {"checkpoint": str(checkpoint), "method": cfg.method, "trained_on": cfg.dataset, "dataset": ds.name,
            "split": split, "n_images": data.n_images, "n_texts": data.n_texts, **out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m itr_lib.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="best.pt of a finished run")
    p.add_argument("--dataset", required=True, help="dataset name under the data root, or a JSON path")
    p.add_argument("--data-root", default=None, help="folder holding NAME/dataset_NAME.json "
                   "(default: $ITR_DATA_ROOT, else ../shared/data)")
    p.add_argument("--cache-dir", default=None, help="feature cache root (default: $ITR_CACHE_DIR, else ./cache/features)")
    p.add_argument("--split", default="test", help="split to score: train | val | test (default test)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    p.add_argument("--trust-checkpoint", action="store_true", default=None,
                   help="load a checkpoint that needs full unpickling (an old-format file): runs any code it "
                        "carries, so only for files whose origin you trust (default: $ITR_TRUST_CHECKPOINTS)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        out = evaluate_checkpoint(a.checkpoint, a.dataset, a.split, a.data_root, a.cache_dir, a.device, progress=None,
                                  trust=a.trust_checkpoint)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
