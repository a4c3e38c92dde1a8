"""The querybank path of the hubness corrections (:mod:`itr_lib.hubness`): the bank checked against the evaluated
split (:func:`check_bank`), sampled (:func:`bank_sample`), encoded and scored against that split (:func:`prepare`,
with a model's own encoder or a vector function such as the recipe's views-averaged ensembles). The one bank path
of the study: :mod:`itr_lib.hubness` and :mod:`itr_lib.recipe.inference` both call :func:`prepare`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


def check_bank(test, bank) -> None:
    """Raise unless ``bank`` is a different split from ``test`` that shares none of its images: the querybank
    must never hold test data."""
    if bank is test:
        raise ValueError("the querybank is the evaluated split itself. Fix: pass the training split as the bank "
                         "(load_split_tensors(cfg, 'train')); test data must never enter the bank")
    if bank.split.name == test.split.name:
        raise ValueError(f"the querybank split {bank.split.name!r} is the evaluated split {test.split.name!r}. "
                         f"Fix: pass the training split as the bank")
    shared = set(bank.split.filenames) & set(test.split.filenames)
    if shared:
        raise ValueError(f"the querybank split {bank.split.name!r} shares {len(shared)} image(s) with the evaluated "
                         f"split {test.split.name!r} (e.g. {sorted(shared)[0]!r}). Fix: use a disjoint split "
                         f"(the training split) as the bank")


@dataclass
class Prepared:
    """Encoded test scores and querybank scores of one model (reused across methods and betas)."""

    sims: np.ndarray                     # (n_images, n_distinct_texts) test scores
    inverse: np.ndarray                  # per test caption, its distinct text
    text_counts: np.ndarray              # copies of each distinct test text
    bank_t2i: np.ndarray | None = None   # (n_bank_texts_distinct, n_images): bank captions vs test images
    bank_t2i_w: np.ndarray | None = None  # copies of each bank caption
    bank_i2t: np.ndarray | None = None   # (n_bank_images, n_distinct_texts): bank images vs test captions
    info: dict = field(default_factory=dict)


def bank_sample(bank, bank_size: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """A querybank from ``bank`` (all of it, or ``bank_size`` seeded captions and images): its distinct captions
    (indices into the split's captions), their copies among the sampled ones (weights), its images, and a record."""
    if bank_size is not None and bank_size < 1:
        raise ValueError(f"bank_size must be >= 1 or None (the whole bank), got {bank_size}")
    rng = np.random.default_rng(seed)
    b_uniq, b_inv = bank.text_groups()
    caps, imgs = np.arange(bank.n_texts), np.arange(bank.n_images)
    if bank_size is not None:  # a seeded sample of bank_size captions and bank_size images
        caps = np.sort(rng.choice(bank.n_texts, min(bank_size, bank.n_texts), replace=False))
        imgs = np.sort(rng.choice(bank.n_images, min(bank_size, bank.n_images), replace=False))
    counts = np.bincount(b_inv[caps], minlength=len(b_uniq))
    groups = np.flatnonzero(counts)
    info = {"split": bank.split.name, "n_texts": int(len(caps)), "n_distinct_texts": int(len(groups)),
            "n_images": int(len(imgs)), "bank_size": bank_size, "seed": seed if bank_size else None}
    return b_uniq[groups], counts[groups].astype(np.float64), imgs, info


def _inner(img: np.ndarray, txt: np.ndarray) -> np.ndarray:
    return np.asarray(img) @ np.asarray(txt).T


def model_vectors(model, device: str = "cpu", batch_size: int = 256):
    """A model's own encoder for :func:`prepare`: ``(encode, score, label)``. ``encode(data, texts, images)``: the
    encoder outputs (:func:`itr_lib.scoring.encode_items`: retrieval vectors when the model's score is their inner
    product, ``exact_vectors``, else every tensor) of ``data``'s ``images`` (None: all) and captions ``texts``;
    ``score(img, txt)``: their (n_images, n_texts) scores (:func:`itr_lib.scoring.score_matrix`: one matmul, or
    ``model.similarity``, e.g. TGDT's s_global + s_local: fine for evaluation, but not one faiss search and slow on a
    large bank)."""
    from .scoring import encode_items, score_matrix
    model.eval()
    exact = bool(model.exact_vectors)
    outputs, fn = ("vectors", None) if exact else ("all", model.similarity)

    def encode(data, texts, images=None):
        images = np.arange(data.n_images) if images is None else images
        return (encode_items(model, data, images, "images", device, batch_size, outputs),
                encode_items(model, data, texts, "texts", device, batch_size, outputs))
    label = "inner product of retrieval vectors" if exact else "model.similarity (exhaustive)"
    return encode, (lambda img, txt: score_matrix(model, img, txt, device, fn=fn)), label


def prepare(model, test, bank=None, device: str = "cpu", batch_size: int = 256, bank_size: int | None = None,
            seed: int = 0, vectors=None) -> Prepared:
    """Encode ``test`` (each distinct caption once, as :func:`itr_lib.scoring.evaluate`) and, when ``bank`` is
    given, the querybank: ``bank``'s captions (the bank of text->image queries) and images (image->text), all of
    them or a seeded sample of ``bank_size`` captions and ``bank_size`` images (:func:`bank_sample`), and score
    them against the test images and captions. The one bank path of the study.

    ``vectors``: the vector function, ``vectors(data, texts, images) -> (image vectors, text vectors)`` (numpy,
    rows in the order of ``images``, None meaning every image of ``data``, and of ``texts``, indices into its
    captions), scored by their inner product; ``model`` is then not read (the recipe passes its own: images averaged
    over views, several models). None: the model's own encoder (:func:`model_vectors`)."""
    if vectors is None:
        encode, score, label = model_vectors(model, device, batch_size)
    else:
        encode, score, label = vectors, _inner, "inner product of retrieval vectors"
    uniq, inverse = test.text_groups()
    img, txt = encode(test, uniq, None)
    prep = Prepared(sims=score(img, txt), inverse=inverse, text_counts=np.bincount(inverse, minlength=len(uniq)))
    prep.info["score"] = label
    if bank is None:
        return prep
    check_bank(test, bank)
    t0 = time.perf_counter()
    b_texts, b_weights, b_images, b_info = bank_sample(bank, bank_size, seed)
    b_img, b_txt = encode(bank, b_texts, b_images)
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    prep.bank_t2i = score(img, b_txt).T  # (bank captions, test images)
    prep.bank_t2i_w = b_weights
    prep.bank_i2t = score(b_img, txt)    # (bank images, test captions)
    prep.info.update(bank=b_info, bank_encode_seconds=encode_s, bank_score_seconds=time.perf_counter() - t0)
    return prep
