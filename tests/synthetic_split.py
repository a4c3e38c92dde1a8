"""Synthetic SplitTensors (random region grids and MiniLM-shaped token states, some captions repeated verbatim)
for the tests of itr_lib.hubness and itr_lib.ensemble: no feature extraction needed."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from itr_lib.data import Split
from itr_lib.features import SplitFeatures
from itr_lib.splits import SplitTensors

REGION_DIM = 16


def synthetic_split(name: str, n_images: int, caps_per_image: int = 3, regions: int = 4, length: int = 6,
                    seed: int = 0, repeat_every: int = 4) -> SplitTensors:
    """``n_images`` images with ``caps_per_image`` captions each; every ``repeat_every``-th image's first caption
    is the same text (identical token states), so the split has duplicate captions across images."""
    rng = np.random.default_rng(seed)
    n_txt = n_images * caps_per_image
    img2txt = [list(range(i * caps_per_image, (i + 1) * caps_per_image)) for i in range(n_images)]
    txt2img = np.repeat(np.arange(n_images), caps_per_image)
    text = rng.standard_normal((n_txt, length, 384)).astype(np.float16)
    lengths = rng.integers(3, length + 1, size=n_txt)
    tokens = [[f"{name}{seed}w{j}", "x"] for j in range(n_txt)]
    dup = [img2txt[i][0] for i in range(0, n_images, repeat_every)]
    for j in dup[1:]:
        text[j], lengths[j], tokens[j] = text[dup[0]], lengths[dup[0]], list(tokens[dup[0]])
    files = [f"img_{seed}_{i}.jpg" for i in range(n_images)]  # the seed, not the name, says which images
    split = Split(name=name, image_paths=[Path(f) for f in files], filenames=files,
                  captions=[" ".join(t) for t in tokens], tokens=tokens, img2txt=img2txt, txt2img=txt2img)
    feats = SplitFeatures(dataset="synthetic", split=split,
                          images=rng.standard_normal((n_images, regions, REGION_DIM)).astype(np.float16),
                          text=text, text_lengths=lengths, text_ids=np.zeros((n_txt, length), dtype=np.int64),
                          glove_ids=np.zeros((n_txt, length), dtype=np.int64),
                          glove_lengths=np.full(n_txt, length))
    return SplitTensors(feats, "minilm")


def tiny_model(seed: int = 0, dim: int = 8, **kw):
    """A randomly initialised VSE model (baseline unless ``cra=True``) on the synthetic features, in eval mode."""
    import torch

    from itr_lib.models import VSEModel
    torch.manual_seed(seed)
    return VSEModel(dim=dim, text_encoder="minilm", pooling="mean", region_dim=REGION_DIM, **kw).eval()
