"""Karpathy split-JSON datasets (RSICD, UCM-Captions, Flickr30K, MS-COCO) behind one loader.

The format (``dataset_flickr30k.json`` / ``dataset_coco.json``)::

    {"dataset": NAME, "images": [{"filename": "x.jpg", "split": "train"|"val"|"test"|"restval",
                                  ["filepath": "val2014",] "sentences": [{"raw": "...", "tokens": [...]}, ...]}]}

``load_dataset("rsicd")`` finds ``<data root>/rsicd/dataset_rsicd.json``; the data root is the ``root``
argument, else the ``ITR_DATA_ROOT`` environment variable, else ``../shared/data`` beside the repository.
Images are looked up in ``images/`` beside the JSON (or beside it directly, as Flickr30K/COCO ship them),
joined with a record's ``filepath`` when it has one (COCO).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT_ENV = "ITR_DATA_ROOT"
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A dataset file or image is missing or malformed; the message names the file, the field and the fix."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Resolve the data root: argument > $ITR_DATA_ROOT > ../shared/data beside the repository."""
    if root is not None:
        path, source = Path(root), "the `root`/--data-root argument"
    elif os.environ.get(DATA_ROOT_ENV):
        path, source = Path(os.environ[DATA_ROOT_ENV]), f"${DATA_ROOT_ENV}"
    else:
        path, source = REPO_ROOT.parent / "shared" / "data", "the default ../shared/data beside the repository"
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise DataError(
            f"data root {path} (from {source}) does not exist. Fix: pass --data-root DIR / root=DIR, or set "
            f"{DATA_ROOT_ENV}=DIR, where DIR holds NAME/dataset_NAME.json and NAME/images/.")
    return path


def resolve_json(json_path_or_name: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """A path to an existing JSON file is used as is; a bare name maps to <root>/NAME/dataset_NAME.json."""
    candidate = Path(json_path_or_name).expanduser()
    if candidate.suffix == ".json" or candidate.is_file():
        if not candidate.is_file():
            raise DataError(f"dataset JSON {candidate} does not exist. Fix: check the path, or pass a dataset "
                            f"name (e.g. 'rsicd') to look it up under the data root.")
        return candidate.resolve()
    name = str(json_path_or_name)
    path = data_root(root) / name / f"dataset_{name}.json"
    if not path.is_file():
        found = available_datasets(data_root(root))
        raise DataError(
            f"dataset JSON {path} not found for dataset '{name}' (datasets under {data_root(root)}: "
            f"{', '.join(found) or 'none'}). Fix: pick one of those, put the Karpathy-format file there, "
            f"or pass the JSON's path directly, or point the data root elsewhere ({DATA_ROOT_ENV}).")
    return path


def available_datasets(root: str | os.PathLike) -> list[str]:
    """Names NAME with a ``NAME/dataset_NAME.json`` under ``root``."""
    root = Path(root)
    return sorted(p.parent.name for p in root.glob("*/dataset_*.json") if p.stem == f"dataset_{p.parent.name}") \
        if root.is_dir() else []


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_TOKEN_RE = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def simple_tokenize(text: str) -> list[str]:
    """Lower-case word tokens, the Karpathy preprocessing for captions that come without ``tokens``."""
    return _TOKEN_RE.findall(text.lower())


def caption_key(tokens: list[str]) -> str:
    """The string under which two captions count as identical (duplicate-aware protocol, statistics)."""
    return " ".join(t.lower() for t in tokens)


@dataclass
class Split:
    """One split: images, their captions and the index maps between them.

    ``img2txt[i]`` lists the caption indices of image ``i``; ``txt2img[j]`` is the image of caption ``j``.
    Captions are numbered image by image, in file order, so any number of captions per image works.
    """

    name: str
    image_paths: list[Path]
    filenames: list[str]
    captions: list[str]
    tokens: list[list[str]]
    img2txt: list[list[int]]
    txt2img: np.ndarray
    sentids: list[int] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return len(self.image_paths)

    @property
    def n_texts(self) -> int:
        return len(self.captions)

    def __len__(self) -> int:
        return self.n_images

    def __repr__(self) -> str:
        return f"Split({self.name!r}, {self.n_images} images, {self.n_texts} captions)"

    def subset(self, n_images: int) -> "Split":
        """The first ``n_images`` images with their captions, index maps renumbered."""
        n_images = min(n_images, self.n_images)
        caps = [j for i in range(n_images) for j in self.img2txt[i]]
        remap = {old: new for new, old in enumerate(caps)}
        return Split(
            name=self.name, image_paths=self.image_paths[:n_images], filenames=self.filenames[:n_images],
            captions=[self.captions[j] for j in caps], tokens=[self.tokens[j] for j in caps],
            img2txt=[[remap[j] for j in self.img2txt[i]] for i in range(n_images)],
            txt2img=np.asarray([self.txt2img[j] for j in caps], dtype=np.int64),
            sentids=[self.sentids[j] for j in caps] if self.sentids else [])

    def caption_keys(self) -> list[str]:
        return [caption_key(t) for t in self.tokens]

    def duplicate_aware_maps(self) -> tuple[list[list[int]], list[np.ndarray]]:
        """Index maps where a caption string is correct for every image that carries it.

        Returns ``(img2txt_dup, txt2imgs)``: for each image, every caption index whose text equals one of its
        captions; for each caption, the array of images that carry its text.
        """
        keys = self.caption_keys()
        key2imgs: dict[str, set[int]] = defaultdict(set)
        key2txts: dict[str, list[int]] = defaultdict(list)
        for j, k in enumerate(keys):
            key2imgs[k].add(int(self.txt2img[j]))
            key2txts[k].append(j)
        txt2imgs = [np.array(sorted(key2imgs[k]), dtype=np.int64) for k in keys]
        img2txt_dup = []
        for i in range(self.n_images):
            own = {keys[j] for j in self.img2txt[i]}
            img2txt_dup.append(sorted(j for k in own for j in key2txts[k]))
        return img2txt_dup, txt2imgs

    def stats(self) -> dict:
        """Counts, caption lengths and duplicate captions within and across images."""
        keys = self.caption_keys()
        lengths = np.array([len(t) for t in self.tokens])
        per_image = np.array([len(c) for c in self.img2txt])
        key2imgs: dict[str, set[int]] = defaultdict(set)
        for j, k in enumerate(keys):
            key2imgs[k].add(int(self.txt2img[j]))
        within = sum(len(c) - len({keys[j] for j in c}) for c in self.img2txt)
        images_with_within = sum(len(c) != len({keys[j] for j in c}) for c in self.img2txt)
        across = sum(len(key2imgs[k]) > 1 for k in keys)
        vocab = Counter(t for toks in self.tokens for t in toks)
        return {
            "split": self.name, "images": self.n_images, "captions": self.n_texts,
            "captions_per_image_min": int(per_image.min()) if len(per_image) else 0,
            "captions_per_image_max": int(per_image.max()) if len(per_image) else 0,
            "unique_captions": len(set(keys)),
            "caption_len_mean": float(lengths.mean()) if len(lengths) else 0.0,
            "caption_len_median": float(np.median(lengths)) if len(lengths) else 0.0,
            "caption_len_max": int(lengths.max()) if len(lengths) else 0,
            "vocab_size": len(vocab),
            "dup_lines_within_image": int(within),
            "images_with_repeated_caption": int(images_with_within),
            "caption_lines_shared_across_images": int(across),
        }


@dataclass
class Dataset:
    """A Karpathy split-JSON dataset; ``split(name)`` gives a :class:`Split`."""

    name: str
    json_path: Path
    image_dir: Path
    splits: dict[str, Split]
    json_sha256: str
    dropped_captions: list[str] = field(default_factory=list)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(f"{self.json_path}: no image has split '{name}' (present: {sorted(self.splits)}). "
                            f"Fix: choose one of those splits.")
        return self.splits[name]

    @property
    def split_names(self) -> list[str]:
        return [s for s in SPLITS if s in self.splits] + [s for s in self.splits if s not in SPLITS]

    def stats(self):
        import pandas as pd
        return pd.DataFrame([self.splits[s].stats() for s in self.split_names]).set_index("split")

    def check_images(self, splits: list[str] | None = None, decode: bool = True, max_listed: int = 20) -> None:
        """Check every image of the splits up front and raise one :class:`DataError` naming all the bad files (a
        missing file; with ``decode``, a file whose header or data does not decode: checked with a reduced-size
        JPEG draft decode, a few ms per image, so a corrupt file is found before any feature is extracted)."""
        bad = []
        for s in splits or self.split_names:
            for i, path in enumerate(self.splits[s].image_paths):
                if not path.is_file():
                    bad.append(f"{path} (split '{s}', field 'filename' of image {i}): missing")
                elif decode and (err := _decode_error(path)):
                    bad.append(f"{path} (split '{s}', image {i}): cannot be decoded ({err})")
        if bad:
            shown = "\n  ".join(bad[:max_listed]) + (f"\n  ... and {len(bad) - max_listed} more" if len(bad) >
                                                        max_listed else "")
            raise DataError(f"{self.json_path}: {len(bad)} bad image file(s):\n  {shown}\nFix: restore or replace "
                            f"these files under {self.image_dir}, or remove their records from the JSON.")

    def __repr__(self) -> str:
        parts = ", ".join(f"{s}={self.splits[s].n_images}/{self.splits[s].n_texts}" for s in self.split_names)
        return f"Dataset({self.name!r}, {parts})"


def load_image(path: str | os.PathLike):
    """Open an image as RGB, with an error that names the file and the fix when it is missing or corrupt."""
    from PIL import Image, UnidentifiedImageError
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file {path} is missing. Fix: restore it (or remove its record from the dataset JSON).")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"image file {path} cannot be decoded ({err}). Fix: replace it with a valid image "
                        f"file, or remove its record from the dataset JSON.") from err


def _decode_error(path: Path) -> str | None:
    """Why an image file does not decode, or None (a draft decode at reduced size: reads the whole file)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return str(err) or type(err).__name__
    return None


def _image_dir_for(json_path: Path) -> Path:
    images = json_path.parent / "images"
    return images if images.is_dir() else json_path.parent


def load_dataset(json_path_or_name: str | os.PathLike, root: str | os.PathLike | None = None,
                 restval_as: str = "train", image_dir: str | os.PathLike | None = None,
                 empty_captions: str = "drop") -> Dataset:
    """Read a Karpathy split-JSON file (by path, or by name under the data root).

    ``restval`` images (COCO) join ``restval_as`` (the usual practice: train). A split that no image has
    is simply absent (a test-only dataset is fine). Records are validated; any problem raises
    :class:`DataError` naming the file, the record and the field.

    ``empty_captions``: a caption with no words (RSICD's train split has three that are just ".") is
    dropped with a warning naming it (``"drop"``, the default), or raises :class:`DataError` (``"error"``).
    An image left with no caption at all is always an error.
    """
    if empty_captions not in ("drop", "error"):
        raise ValueError(f"empty_captions must be 'drop' or 'error', not {empty_captions!r}")
    json_path = resolve_json(json_path_or_name, root)
    try:
        with open(json_path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"{json_path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}). "
                        f"Fix: regenerate or repair the file (Karpathy split-JSON format).") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("images"), list):
        raise DataError(f"{json_path}: top-level field 'images' (a list of image records) is missing. "
                        f"Fix: use the Karpathy split-JSON format {{'dataset': NAME, 'images': [...]}}.")
    name = str(raw.get("dataset") or json_path.stem.replace("dataset_", ""))
    img_dir = Path(image_dir) if image_dir is not None else _image_dir_for(json_path)

    buckets: dict[str, dict[str, list]] = {}
    dropped: list[str] = []
    for idx, rec in enumerate(raw["images"]):
        where = f"{json_path}: images[{idx}]"
        if not isinstance(rec, dict):
            raise DataError(f"{where} is not an object. Fix: each entry of 'images' must be a record.")
        for key in ("filename", "sentences"):
            if key not in rec:
                named = f" ('{rec['filename']}')" if "filename" in rec else ""
                raise DataError(f"{where}{named} has no field '{key}'. Fix: every image record needs 'filename' "
                                f"and 'sentences' (a list of {{'raw', 'tokens'}}).")
        split = rec.get("split", "test")
        if split == "restval":
            split = restval_as
        sents = rec["sentences"]
        if not isinstance(sents, list) or not sents:
            raise DataError(f"{where} ('{rec['filename']}'): field 'sentences' is empty or not a list. "
                            f"Fix: give the image at least one caption, or remove the record.")
        b = buckets.setdefault(split, {"paths": [], "files": [], "caps": [], "toks": [], "img2txt": [],
                                       "txt2img": [], "sentids": []})
        img_index = len(b["files"])
        sub = rec.get("filepath", "")
        b["paths"].append(img_dir / sub / rec["filename"])
        b["files"].append(rec["filename"])
        ids = []
        for k, s in enumerate(sents):
            if not isinstance(s, dict) or ("raw" not in s and "tokens" not in s):
                raise DataError(f"{where} ('{rec['filename']}'): sentences[{k}] has neither 'raw' nor 'tokens'. "
                                f"Fix: each sentence needs a 'raw' caption string.")
            raw_text = str(s.get("raw", " ".join(s.get("tokens", [])))).strip()
            toks = s.get("tokens") or simple_tokenize(raw_text)
            if not raw_text or not toks or not any(ch.isalnum() for ch in raw_text):
                if empty_captions == "drop":
                    dropped.append(f"{rec['filename']} sentences[{k}] (sentid {s.get('sentid')}): {raw_text!r}")
                    continue
                raise DataError(f"{where} ('{rec['filename']}'): sentences[{k}] (sentid {s.get('sentid')}) is an "
                                f"empty caption. Fix: write the caption in its 'raw' field or remove the sentence.")
            ids.append(len(b["caps"]))
            b["caps"].append(raw_text)
            b["toks"].append([str(t) for t in toks])
            b["txt2img"].append(img_index)
            b["sentids"].append(int(s.get("sentid", len(b["sentids"]))))
        if not ids:
            raise DataError(f"{where} ('{rec['filename']}'): every caption is empty. Fix: write at least one "
                            f"caption for the image, or remove the record.")
        b["img2txt"].append(ids)
    if dropped:
        log.warning("%s: dropped %d empty caption(s): %s", json_path, len(dropped), "; ".join(dropped[:10]))

    splits = {
        s: Split(name=s, image_paths=b["paths"], filenames=b["files"], captions=b["caps"], tokens=b["toks"],
                 img2txt=b["img2txt"], txt2img=np.asarray(b["txt2img"], dtype=np.int64), sentids=b["sentids"])
        for s, b in buckets.items()}
    return Dataset(name=name, json_path=json_path, image_dir=img_dir, splits=splits,
                   json_sha256=sha256_file(json_path), dropped_captions=dropped)


def scene_class(dataset: str, filename: str, root: str | os.PathLike | None = None) -> str | None:
    """The scene class of an image: RSICD's file-name prefix (``airport_348.jpg`` -> airport);
    UCM's class from ``ucm/source/ucm_mapping.tsv``. ``None`` where the name carries no class."""
    if dataset == "ucm":
        mapping = _ucm_mapping(str(data_root(root)))
        return mapping.get(Path(filename).stem)
    m = re.match(r"([a-z]+)_\d+\.", filename)
    return m.group(1) if m else None


_UCM_CACHE: dict[str, dict[str, str]] = {}


def _ucm_mapping(root: str) -> dict[str, str]:
    if root not in _UCM_CACHE:
        path = Path(root) / "ucm" / "source" / "ucm_mapping.tsv"
        if not path.is_file():
            raise DataError(f"{path} not found: UCM scene classes come from it. Fix: restore the file.")
        out = {}
        for line in path.read_text().splitlines()[1:]:
            cols = line.split("\t")
            if len(cols) >= 2:
                out[Path(cols[0]).stem] = cols[1].split("/")[0]
        _UCM_CACHE[root] = out
    return _UCM_CACHE[root]
