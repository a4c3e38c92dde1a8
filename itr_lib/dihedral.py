"""The 8 symmetries of a square image (the dihedral group D4), named stably, on PIL images and numpy arrays.

Aerial images have no "up": a scene rotated by 90 degrees or mirrored is the same scene. Feature caches can be
built for each transform of the image *pixels* (:func:`itr_lib.features.ensure_image_features` with
``transform=``), training can draw one per image and step (``TrainConfig.image_transforms``) and scoring can
average an image's retrieval vector over several (:func:`itr_lib.scoring.evaluate_tta`).

Names: ``rK`` rotates counter-clockwise by K degrees (K in 0, 90, 180, 270); ``fK`` mirrors left-right first,
then rotates counter-clockwise by K. ``r0`` is the identity: its cache is today's untransformed cache (same file
name, same sidecar). Every transform is a lossless permutation of pixels (PIL ``Image.transpose``), applied to
the decoded image before the usual resize and normalisation.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ROTATIONS = ("r0", "r90", "r180", "r270")
TRANSFORMS = ROTATIONS + ("f0", "f90", "f180", "f270")
IDENTITY = "r0"
DEFINITIONS = {**{f"r{k}": f"rotate {k} degrees counter-clockwise" for k in (0, 90, 180, 270)},
               **{f"f{k}": f"mirror left-right, then rotate {k} degrees counter-clockwise" for k in (0, 90, 180, 270)}}


def parse(name: str) -> tuple[bool, int]:
    """``(flip, quarter turns)`` of a transform name; unknown names raise ValueError listing the valid ones."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown image transform {name!r}; valid: {', '.join(TRANSFORMS)} "
                         f"(rK: rotate K degrees counter-clockwise; fK: mirror left-right, then rotate K)")
    return name[0] == "f", int(name[1:]) // 90


def validate(names: Sequence[str], field: str = "image_transforms") -> list[str]:
    """The names as a list, after checking each one, that there is at least one and that none repeats."""
    if isinstance(names, str):
        raise ValueError(f"{field} must be a list of transform names such as ['r0', 'r90'], not the string "
                         f"{names!r}")
    names = list(names)
    if not names:
        raise ValueError(f"{field} is empty; give at least one of {', '.join(TRANSFORMS)} (or None for no "
                         f"transforms)")
    for n in names:
        parse(n)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{field} repeats {dup}; list each transform once (each is drawn with equal chance)")
    return names


def apply_pil(img, name: str):
    """The transform of a PIL image (a new image; the identity returns ``img`` itself)."""
    from PIL import Image
    flip, quarters = parse(name)
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    rot = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}
    return img.transpose(rot[quarters]) if quarters else img


def apply_array(a: np.ndarray, name: str) -> np.ndarray:
    """The same transform of an (H, W, ...) array, as displayed with row 0 on top (numpy, independent of PIL)."""
    flip, quarters = parse(name)
    if flip:
        a = a[:, ::-1]
    return np.rot90(a, quarters, axes=(0, 1))


def cache_suffix(name: str) -> str:
    """What a transform adds to an image cache's file name: nothing for the identity, else ``.<name>``."""
    parse(name)
    return "" if name == IDENTITY else f".{name}"


def sidecar_fields(name: str) -> dict:
    """What a transform adds to an image cache's sidecar: nothing for the identity (today's caches stay valid)."""
    parse(name)
    return {} if name == IDENTITY else {"transform": name, "transform_definition": DEFINITIONS[name]}


def label(names: Sequence[str]) -> str:
    """Short label of a list of transforms: ``rot4`` (the 4 rotations), ``d4`` (all 8), else the names joined."""
    s = set(names)
    if s == set(ROTATIONS) and len(names) == 4:
        return "rot4"
    if s == set(TRANSFORMS) and len(names) == 8:
        return "d4"
    return "+".join(names)
