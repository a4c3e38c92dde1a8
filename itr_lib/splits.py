"""A split's cached features as torch tensors in memory: training batches (augmentation, all or one caption per
image, the false-negative mask) and evaluation batches; the groups of identical caption inputs.

``load_split_tensors(cfg, split)`` keeps one copy per process (keyed by dataset checksum, split, cache, text
encoder, text cut and image transforms), so a grid of runs loads each split once. With ``transforms`` it also holds
the grids of the rotated / mirrored images (:mod:`itr_lib.dihedral`), one *view* per transform: training draws one per
image and step, test-time augmentation encodes each.
"""
from __future__ import annotations

import numpy as np
import torch

from . import dihedral
from .data import load_dataset
from .features import SplitFeatures, load_features, load_image_grid
from .models import Batch

class SplitTensors:
    """A split's features as torch tensors in memory, with the index maps and caption keys.

    ``views``: transform name -> that transform's (N, R, C) grid cache (``r0``, the images as they are, is
    ``feats.images`` and need not be given); ``view_names`` lists the views held, in the order given."""

    def __init__(self, feats: SplitFeatures, text_encoder: str, max_images: int | None = None,
                 views: dict[str, np.ndarray] | None = None):
        sp = feats.split
        n = sp.n_images if max_images is None else min(max_images, sp.n_images)
        caps = np.concatenate([sp.img2txt[i] for i in range(n)]).astype(np.int64)
        self.split = sp.subset(n) if n < sp.n_images else sp
        self.images = torch.from_numpy(np.array(feats.images[:n]))  # a RAM copy of the memmap
        self.views = {dihedral.IDENTITY: self.images}
        for name, grid in (views or {}).items():
            dihedral.parse(name)
            if name != dihedral.IDENTITY:
                self.views[name] = torch.from_numpy(np.array(grid[:n]))
        self.view_names = list(views) if views else [dihedral.IDENTITY]
        self._grid_cells = feats.grid_cells  # with activation caches: the cells of the top's output grid
        self.text_encoder = text_encoder
        if text_encoder == "minilm":
            self.text = torch.from_numpy(np.array(feats.text[caps]))
            self.lengths = torch.from_numpy(feats.text_lengths[caps].astype(np.int64))
        else:
            self.text = torch.from_numpy(feats.glove_ids[caps])
            self.lengths = torch.from_numpy(feats.glove_lengths[caps].astype(np.int64))
        self.img2txt = self.split.img2txt
        self.txt2img = self.split.txt2img
        keys = self.split.caption_keys()
        uniq = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        self.cap_key = torch.tensor([uniq[k] for k in keys], dtype=torch.long)
        width = max(len(c) for c in self.img2txt)
        self.img_keys = torch.full((n, width), -1, dtype=torch.long)
        for i, c in enumerate(self.img2txt):
            self.img_keys[i, :len(c)] = self.cap_key[c]

    @property
    def n_images(self) -> int:
        return self.images.shape[0]

    @property
    def n_texts(self) -> int:
        return self.text.shape[0]

    def text_batch(self, idx: torch.Tensor, token_drop: float = 0.0, gen: torch.Generator | None = None,
                   vocab_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lengths = self.lengths[idx]
        width = int(lengths.max())
        text = self.text[idx, :width]
        pos = torch.arange(width)[None, :]
        mask = pos < lengths[:, None]
        if self.text_encoder == "minilm":
            word = mask & (pos > 0) & (pos < (lengths[:, None] - 1))  # no [CLS] / [SEP]
            if token_drop > 0:
                drop = (torch.rand(mask.shape, generator=gen) < token_drop) & word
                keep_any = (word & ~drop).any(1, keepdim=True)
                drop = drop & keep_any  # never drop every word of a caption
                mask, word = mask & ~drop, word & ~drop
            return text, mask, word
        if token_drop > 0:  # VSE-infinity's GloVe augmentation: of the 20% picked, 50% <unk>, 10% random, 40% removed
            text = text.clone()
            r = torch.rand(mask.shape, generator=gen)
            picked = (r < token_drop) & mask
            sub = r / token_drop
            text[picked & (sub < 0.5)] = 1
            rnd = picked & (sub >= 0.5) & (sub < 0.6)
            text[rnd] = torch.randint(2, vocab_size or 3, (int(rnd.sum()),), generator=gen)
            removed = picked & (sub >= 0.6)
            rows = []
            for t, m, rm in zip(text, mask, removed):
                kept = t[m & ~rm] if (m & ~rm).any() else t[m][:1]
                rows.append(kept)
            lengths = torch.tensor([len(r_) for r_ in rows])
            width = int(lengths.max())
            text = torch.zeros(len(rows), width, dtype=torch.long)
            for i, r_ in enumerate(rows):
                text[i, :len(r_)] = r_
            mask = torch.arange(width)[None, :] < lengths[:, None]
        return text, mask, mask

    def image_batch(self, idx: torch.Tensor, region_drop: float = 0.0, gen: torch.Generator | None = None,
                    view: str | torch.Tensor | None = None):
        """Grids and region masks of images ``idx``. ``view``: a transform name (every image in that view), or per
        image an index into ``view_names`` (a tensor like ``idx``), or None (the images as they are)."""
        regions = self._view_rows(idx, view)
        # the mask covers the grid the model sees: with activation caches, the top's output, not the positions held
        cells = getattr(self, "_grid_cells", None) or regions.shape[1]
        mask = torch.ones((regions.shape[0], cells), dtype=torch.bool)
        if region_drop > 0:
            mask = torch.rand(mask.shape, generator=gen) >= region_drop
            mask[mask.sum(1) == 0, 0] = True
        return regions, mask

    def _view_rows(self, idx: torch.Tensor, view: str | torch.Tensor | None) -> torch.Tensor:
        if view is None:
            return self.images[idx]
        if isinstance(view, str):
            if view not in self.views:
                raise ValueError(f"split {self.split.name!r} is loaded with the views {self.view_names}, not "
                                 f"{view!r}. Fix: load it with load_split_tensors(cfg, {self.split.name!r}, "
                                 f"transforms=[..., {view!r}]).")
            return self.views[view][idx]
        view = torch.as_tensor(view, dtype=torch.long)
        if view.shape != idx.shape or (len(view) and int(view.max()) >= len(self.view_names)):
            raise ValueError(f"per-image view indices must match idx {tuple(idx.shape)} and index view_names "
                             f"{self.view_names}; got shape {tuple(view.shape)}")
        rows = torch.empty((len(idx),) + tuple(self.images.shape[1:]), dtype=self.images.dtype)
        for v, name in enumerate(self.view_names):
            sel = view == v
            if sel.any():
                rows[sel] = self.views[name][idx[sel]]
        return rows

    def train_batch(self, ii: torch.Tensor, cfg, multi: bool, one_caption: np.ndarray,
                    gen: torch.Generator | None = None, vocab_size: int | None = None,
                    view: torch.Tensor | None = None) -> Batch:
        """The training batch of images ``ii``: with ``multi`` every caption of each image (and ``cap2img``), else
        the caption ``one_caption[i]`` of each image i; with the config's region / token drop and, when
        ``cfg.false_negatives == "mask"``, the false-negative mask. ``view``: per image, the index into
        ``view_names`` of the transform whose grid it gets (None: the images as they are)."""
        if multi:
            caps = [self.img2txt[i] for i in ii.tolist()]
            tt = torch.tensor([c for cs in caps for c in cs])
            cap2img = torch.repeat_interleave(torch.arange(len(ii)), torch.tensor([len(c) for c in caps]))
        else:
            tt, cap2img = torch.from_numpy(one_caption[ii.numpy()]), None
        regions, rmask = self.image_batch(ii, cfg.region_drop, gen, view)
        text, tmask, wmask = self.text_batch(tt, cfg.token_drop, gen, vocab_size)
        ignore = self.false_negative_mask(ii, tt) if cfg.false_negatives == "mask" else None
        return Batch(regions, rmask, text, tmask, wmask, ignore, cap2img)

    def text_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """``(distinct, inverse)``: the first caption of each distinct model input (the same token ids / GloVe
        ids and length) and, per caption, the position of its group in ``distinct``; ``distinct[inverse]`` is
        each caption's representative. Evaluation encodes the representatives only, so copies of a caption
        score bit-identically (their ties are real, see :mod:`itr_lib.metrics`). Recomputed when ``text`` is
        replaced (:mod:`itr_lib.evaluate` swaps in another vocabulary's ids)."""
        if getattr(self, "_groups_of", None) is not self.text:
            keys: dict[bytes, int] = {}
            text, lengths = self.text.numpy(), self.lengths.numpy()
            inverse = np.empty(len(text), dtype=np.int64)
            first = []
            for j in range(len(text)):
                key = text[j, :lengths[j]].tobytes()
                g = keys.setdefault(key, len(first))
                if g == len(first):
                    first.append(j)
                inverse[j] = g
            self._groups = (np.asarray(first, dtype=np.int64), inverse)
            self._groups_of = self.text
        return self._groups

    def false_negative_mask(self, img_idx: torch.Tensor, cap_idx: torch.Tensor) -> torch.Tensor:
        """(B, B): True where caption j's text is one of image i's captions (i != j pairs only matter)."""
        keys = self.cap_key[cap_idx]
        return (self.img_keys[img_idx][:, :, None] == keys[None, None, :]).any(1)


_TENSORS: dict = {}


def load_split_tensors(cfg, split: str, max_images: int | None = None,
                       transforms: list[str] | None = None) -> SplitTensors:
    """A split's features in memory. Kept per process (keyed by dataset file checksum, split, cache, text
    encoder and transforms; the caches' sidecars are re-checked on every call), so a grid of runs loads each
    split once. ``transforms``: also hold these transforms' grids as views (each cache must exist: a
    :class:`~itr_lib.features.CacheError` names the command that builds it)."""
    ds = load_dataset(cfg.dataset, cfg.data_root)
    cut = getattr(cfg, "image_cut", None)  # a trainable image top: the activations below it, not the grids
    text_cut = getattr(cfg, "text_cut", None)  # a trainable text top: MiniLM's hidden states below it
    feats = load_features(ds, split, root=cfg.cache_dir, cut=cut, text_cut=text_cut)  # validates the sidecars
    names = dihedral.validate(transforms, "transforms") if transforms is not None else None
    grids = {t: load_image_grid(ds, split, t, root=cfg.cache_dir, cut=cut) for t in names
             if t != dihedral.IDENTITY} if names else {}
    key = (ds.json_sha256, split, str(feats.images.filename if hasattr(feats.images, "filename") else id(feats)),
           cfg.text_encoder, max_images) + ((text_cut,) if text_cut is not None else ()) \
        + ((tuple(names),) if names else ())
    if key not in _TENSORS:
        if len(_TENSORS) >= 6:
            _TENSORS.pop(next(iter(_TENSORS)))
        views = {t: grids.get(t, feats.images) for t in names} if names else None
        _TENSORS[key] = SplitTensors(feats, cfg.text_encoder, max_images, views)
    return _TENSORS[key]


