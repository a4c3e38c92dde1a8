"""The explorer's logic: search a dataset's test images by text with the study's trained checkpoints.

Why one module of ~480 lines: every panel of the page (text -> image, image -> text, why, side by side) goes through
one :class:`Explorer` holding the loaded models, gallery vectors and indexes of a dataset; the widgets
(:mod:`itr_lib.explore_app`) and the browser driver (:mod:`itr_lib.explore_browser`) are already apart.

:class:`Explorer` loads every method trained on a dataset whose checkpoint is present under
``<results_dir>/runs/`` (one entry per trained configuration, its lowest seed; looked up through
:func:`itr_lib.runs.find_runs`, never by a typed name) and serves:

- :meth:`Explorer.text_to_image`: a text query is encoded like a caption in training (the frozen MiniLM of
  :class:`itr_lib.features.TextEncoder`, its states rounded to the cache's float16, then the model's text side;
  GloVe ids for GRU models) and the test gallery is searched: a faiss inner-product index over the image vectors
  (:mod:`itr_lib.index`) for models whose vectors are their score; the global shortlist re-scored by the model
  (:func:`itr_lib.rerank.model_rescorer`: TGDT two-stage, ALADIN matching, MrSw) for models with a re-scorer;
  the model's own exhaustive score otherwise (SCAN). A result image whose captions include the query (same
  tokens) is marked as ground truth.
- :meth:`Explorer.image_to_text`: a test image's top captions, each marked when it is one of the image's own.
- :meth:`Explorer.compare`: two (or more) methods' top-k for one query, with each list's latency.
- :meth:`Explorer.why`: the query's word -> region maps on one image (:func:`itr_lib.wordobj.word_maps`, for
  baseline and SelfAlign models on MiniLM features).

Bad input raises :class:`ExploreError` with a message for the page (empty, too long or unknown-words-only
queries; a dataset without a trained checkpoint, naming the runs to retrain and the command; a missing image).
The web page (``make explore``) is ``notebooks/06_explore.ipynb`` served by Voila (:mod:`itr_lib.explore_app`).
"""
from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import dataset_name
from .data import DataError, caption_key, load_dataset, load_image, simple_tokenize
from .explore_catalog import (DEPLOYED, cheapest_to_train, default_methods, missing_summary, profile_of,  # noqa: F401
                              retrain_hint, trained_methods)

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 300   # longer text is refused before tokenising (a paste of a paragraph, not a query)
THUMB = 160             # thumbnail side in pixels


class ExploreError(ValueError):
    """Bad input or missing files, with a message meant for the page (what is wrong and how to fix it)."""


@dataclass
class Entry:
    """One trained configuration of a dataset: its label, run, method, search kind and (once loaded) model."""

    label: str
    run: str
    method: str
    variant: str
    checkpoint: str | None
    search: str = ""                       # "faiss", "two-stage" or "exhaustive" (set when loaded)
    model: object = None
    cfg: object = None
    gallery: dict = field(default_factory=dict)  # encoded images / captions, faiss indexes


@dataclass
class Hit:
    index: int        # image index (text -> image) or caption index (image -> text) in the split
    score: float
    text: str         # the image's first caption, or the caption
    truth: bool       # ground truth: the query is one of the image's captions / the caption is the image's own


@dataclass
class Result:
    method: str
    query: str
    hits: list[Hit]
    seconds: float    # the whole answer: query encoding + search (+ re-scoring)
    search: str


class Explorer:
    """Search the ``split`` of ``dataset`` with the methods trained under ``results_dir`` (see module doc)."""

    def __init__(self, results_dir: str | Path, dataset: str, split: str = "test", data_root: str | None = None,
                 cache_dir: str | None = None, device: str = "cpu"):
        self.results_dir, self.dataset, self.split_name = Path(results_dir), dataset, split
        self.data_root, self.cache_dir, self.device = data_root or None, cache_dir or None, device
        self.available, self.missing = trained_methods(self.results_dir, dataset)
        self.entries = {r.label: Entry(r.label, r.run, r.method, r.variant, r.checkpoint)
                        for r in self.available.itertuples()}
        if not self.entries:
            raise ExploreError(self.no_checkpoint_message())
        try:
            self.ds = load_dataset(dataset, self.data_root)
            self.split = self.ds.split(split)
        except (DataError, KeyError) as err:
            raise ExploreError(f"dataset {dataset!r}: {err}") from None
        self._tensors: dict[str, object] = {}
        self._encoder = None
        self._vocab: set[str] | None = None
        self._keys = [caption_key(t) for t in self.split.tokens]

    # ------------------------------------------------------------------------------------------- messages
    def no_checkpoint_message(self) -> str:
        where = self.results_dir / "runs"
        if len(self.missing):
            runs = list(self.missing.run)
            shown = "\n".join(f"  {retrain_hint(self.results_dir, r)}" for r in runs[:6])
            more = f"\n  ... and {len(runs) - 6} more" if len(runs) > 6 else ""
            return (f"No checkpoint of a {self.dataset} run under {where}: {len(runs)} run(s) are recorded in "
                    f"{self.results_dir / 'metrics'} but their checkpoints (best.pt, not committed) are absent. "
                    f"Fix: retrain the ones to explore, e.g.\n{shown}{more}\n(or `make explore RETRAIN=GLOB`).")
        return (f"No trained run of dataset {self.dataset!r} under {self.results_dir}. Fix: run a profile that "
                f"trains it (`make smoke` for UCM, `make study` for both), or point RESULTS_DIR at a results folder "
                f"that holds runs of {self.dataset}.")

    def missing_lines(self) -> list[str]:
        """One line per configuration whose checkpoint is absent, with the command that rebuilds it."""
        return [f"{lab}: checkpoint missing. Fix: {retrain_hint(self.results_dir, run)}"
                for lab, run in zip(self.missing.label, self.missing.run)]

    def missing_summary(self) -> tuple[str, str] | None:
        """``(line, command)``: every absent checkpoint in one line (:func:`itr_lib.explore_catalog.missing_summary`)."""
        return missing_summary(self.results_dir, self.dataset, self.missing)

    # ------------------------------------------------------------------------------------------- loading
    def labels(self, every_variant: bool = True) -> list[str]:
        """The methods on offer, deployed first (best recorded mR first); ``every_variant=False``: the deployed
        ones only (all of them when none is deployed)."""
        dep = [r.label for r in self.available.itertuples() if r.tier == DEPLOYED]
        return list(self.entries) if every_variant or not dep else dep

    def entry(self, label: str) -> Entry:
        if label not in self.entries:
            raise ExploreError(f"no method {label!r} for {self.dataset}. Choose one of {self.labels()}.")
        e = self.entries[label]
        if e.model is None:
            self._load(e)
        return e

    def _data(self, text_encoder: str, cut: int | None = None, text_cut: int | None = None):
        """The split's tensors for a model's text encoder; ``cut``: its image top's activations (not the grid);
        ``text_cut``: its text top's MiniLM hidden states (not the token states)."""
        if (text_encoder, cut, text_cut) not in self._tensors:
            from .features import CacheError, load_features
            from .splits import SplitTensors
            try:
                feats = load_features(self.ds, self.split_name, root=self.cache_dir, cut=cut, text_cut=text_cut)
            except CacheError as err:
                raise ExploreError(str(err)) from None
            self._tensors[(text_encoder, cut, text_cut)] = SplitTensors(feats, text_encoder)
        return self._tensors[(text_encoder, cut, text_cut)]

    def _load(self, e: Entry) -> None:
        from .scoring import encode_split, has_two_stage
        from .train import load_checkpoint
        from .index import EmbeddingIndex
        try:
            model, cfg = load_checkpoint(e.checkpoint, self.device)
        except (FileNotFoundError, ValueError) as err:
            raise ExploreError(f"{e.label}: {err}") from None
        data = self._data(cfg.text_encoder, cfg.image_cut, cfg.text_cut)
        if cfg.text_encoder == "gru":  # the model's vocabulary is its training dataset's
            from .glove import load_glove
            itos, _ = load_glove(cfg.dataset, self.data_root, self.cache_dir)
            e.gallery["stoi"] = {w: i for i, w in enumerate(itos)}
        two = has_two_stage(model)
        e.search = "two-stage" if two else ("faiss" if model.exact_vectors else "exhaustive")
        uniq, inverse = data.text_groups()
        outputs = "vectors" if e.search == "faiss" else "all"
        img, txt = encode_split(model, data, self.device, texts=uniq, outputs=outputs)
        iv = (img["vec"] if "vec" in img else model.image_vectors(img)).float().numpy()
        tv = (txt["vec"] if "vec" in txt else model.text_vectors(txt)).float().numpy()
        e.gallery.update(img=img, txt=txt, uniq=uniq, inverse=inverse, image_vectors=iv, text_vectors=tv,
                         image_index=EmbeddingIndex(iv.shape[1], normalize=False).add(iv),
                         text_index=EmbeddingIndex(tv.shape[1], normalize=False).add(tv))
        e.model, e.cfg = model, cfg
        log.info("explorer: loaded %s (%s, %s search)", e.label, e.run, e.search)

    # ------------------------------------------------------------------------------------------- queries
    def vocabulary(self) -> set[str]:
        if self._vocab is None:
            self._vocab = {t.lower() for s in self.ds.split_names for toks in self.ds.split(s).tokens for t in toks}
        return self._vocab

    def check_query(self, query) -> str:
        """The query stripped, or :class:`ExploreError` for an empty, over-long or unknown-words-only one."""
        q = (query or "").strip() if isinstance(query, str) or query is None else None
        if q is None:
            raise ExploreError(f"the query must be text, got {type(query).__name__}.")
        if not q:
            raise ExploreError("The query is empty. Type a few words describing an image, e.g. "
                               "'many buildings near a road'.")
        if len(q) > MAX_QUERY_CHARS:
            raise ExploreError(f"The query is {len(q)} characters long; at most {MAX_QUERY_CHARS} are accepted. "
                               f"Shorten it to a caption-like sentence.")
        words = simple_tokenize(q)
        if not words:
            raise ExploreError(f"The query {q!r} holds no words (letters or digits). Type a few words.")
        if not any(w in self.vocabulary() for w in words):
            raise ExploreError(f"None of the words of {q!r} occurs in any {self.dataset} caption, so every model "
                               f"would rank the images at random. Use words of the dataset's captions "
                               f"(e.g. {', '.join(self._example_words())}).")
        from .features import TEXT_MAX_LEN
        n_pieces = len(self.text_encoder().tokenizer(q, truncation=False)["input_ids"])
        if n_pieces > TEXT_MAX_LEN:
            raise ExploreError(f"The query is {n_pieces - 2} word pieces long; the models read at most "
                               f"{TEXT_MAX_LEN - 2} (the caption length of the feature cache). Shorten it.")
        return q

    def _example_words(self) -> list[str]:
        from collections import Counter
        c = Counter(t for toks in self.split.tokens for t in toks if len(t) > 3)
        return [w for w, _ in c.most_common(5)]

    def text_encoder(self):
        if self._encoder is None:
            from .features import TextEncoder
            self._encoder = TextEncoder(self.device)
        return self._encoder

    def truth_images(self, query: str) -> set[int]:
        """Images of the split one of whose captions has the query's tokens (the ground truth of a test caption)."""
        key = caption_key(simple_tokenize(query))
        return {int(self.split.txt2img[j]) for j, k in enumerate(self._keys) if k == key}

    def encode_query(self, e: Entry, query: str) -> dict:
        """The model's text outputs for one query (on CPU)."""
        if e.cfg.text_encoder == "gru":
            from .glove import glove_ids
            ids, lens = glove_ids([simple_tokenize(query)], e.gallery["stoi"])
            width = int(lens.max())
            text = torch.from_numpy(ids[:, :width])
            mask = torch.arange(width)[None, :] < torch.from_numpy(lens)[:, None]
            word = mask
        else:
            enc = self.text_encoder()
            ids, lengths = enc.tokenize([query])
            # as the cache stores them; a trainable text top: MiniLM to its cut, the model's top runs the rest
            states = enc.encode_query(ids, lengths, layer=e.cfg.text_cut).astype(np.float16)
            width = int(lengths.max())
            text = torch.from_numpy(states[:, :width])
            pos = torch.arange(width)[None, :]
            ln = torch.from_numpy(lengths.astype(np.int64))[:, None]
            mask = pos < ln
            word = mask & (pos > 0) & (pos < ln - 1)
        with torch.no_grad():
            out = e.model.encode_texts(text.to(self.device), mask.to(self.device), word.to(self.device))
        return {k: v.cpu() for k, v in out.items() if torch.is_tensor(v)}

    def _rank(self, e: Entry, direction: str, q: dict, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(ids, scores)`` of one encoded query against the gallery (images for t2i, unique captions
        for i2t), best first, ties to the lower id."""
        from .rerank import model_rescorer
        from .scoring import score_matrix
        g, model = e.gallery, e.model
        t2i = direction == "t2i"
        qvec = (q["vec"] if "vec" in q else (model.text_vectors(q) if t2i else model.image_vectors(q))).float()
        index = g["image_index"] if t2i else g["text_index"]
        n = index.ntotal
        k = min(int(k), n)
        if e.search == "faiss":
            scores, ids = index.search(qvec.numpy(), k)
            return ids[0], scores[0]
        if e.search == "two-stage":
            hp = getattr(model, "hp", {})
            short = min(n, max(k, hp.get("k_t2i", 100) if t2i else hp.get("k_i2t", 50)))
            cand = index.search(qvec.numpy(), short)[1][0]
            if t2i:
                sc = model_rescorer(model, g["img"], q, self.device)(cand, np.zeros(len(cand), dtype=np.int64))
            else:
                sc = model_rescorer(model, q, g["txt"], self.device)(np.zeros(len(cand), dtype=np.int64), cand)
        else:
            cand = np.arange(n)
            sc = (score_matrix(model, g["img"], q, self.device)[:, 0] if t2i else
                  score_matrix(model, q, g["txt"], self.device)[0])
        order = np.lexsort((cand, -np.asarray(sc, dtype=np.float64)))[:k]
        return cand[order], np.asarray(sc)[order]

    def text_to_image(self, query: str, method: str, k: int = 8) -> Result:
        """The top-``k`` test images of a text query for one method (label), ground truth marked."""
        q = self.check_query(query)
        e = self.entry(method)
        t0 = time.perf_counter()
        ids, scores = self._rank(e, "t2i", self.encode_query(e, q), k)
        secs = time.perf_counter() - t0
        truth = self.truth_images(q)
        hits = [Hit(int(i), float(s), self.split.captions[self.split.img2txt[int(i)][0]], int(i) in truth)
                for i, s in zip(ids, scores)]
        return Result(e.label, q, hits, secs, e.search)

    def compare(self, query: str, methods: list[str], k: int = 8) -> list[Result]:
        """Each method's top-``k`` for the same query (its own latency in each result)."""
        q = self.check_query(query)
        return [self.text_to_image(q, m, k) for m in methods]

    def image_to_text(self, image: int, method: str, k: int = 5) -> Result:
        """The top-``k`` test captions of test image ``image`` (distinct caption texts; own captions marked)."""
        e = self.entry(method)
        n = self.split.n_images
        if not 0 <= int(image) < n:
            raise ExploreError(f"image {image} is not in the {self.dataset} {self.split_name} split "
                               f"(0 .. {n - 1}).")
        t0 = time.perf_counter()
        q = {kk: v[int(image):int(image) + 1] for kk, v in e.gallery["img"].items()}
        uids, scores = self._rank(e, "i2t", q, k)
        secs = time.perf_counter() - t0
        own = set(self._keys[j] for j in self.split.img2txt[int(image)])
        hits = []
        for u, s in zip(uids, scores):
            j = int(e.gallery["uniq"][int(u)])
            hits.append(Hit(j, float(s), self.split.captions[j], self._keys[j] in own))
        return Result(e.label, self.split.filenames[int(image)], hits, secs, e.search)

    def why(self, query: str, image: int, method: str):
        """The query's word -> region maps on test image ``image`` (:func:`itr_lib.wordobj.word_maps`)."""
        from .wordobj import word_maps
        q = self.check_query(query)
        e = self.entry(method)
        if e.cfg.text_encoder != "minilm" or e.method not in ("baseline", "selfalign"):
            raise ExploreError(f"Word -> region maps are read from the pre-context word and region vectors of the "
                               f"baseline and SelfAlign models on MiniLM features (itr_lib.wordobj); {e.label} "
                               f"({e.method}, {e.cfg.text_encoder}) has none. Pick a baseline or SelfAlign method.")
        regions = self._data(e.cfg.text_encoder, e.cfg.image_cut, e.cfg.text_cut).images[int(image)]
        return word_maps(e.model, regions, q, self.text_encoder())

    # ------------------------------------------------------------------------------------------- images
    def image_path(self, image: int) -> Path:
        return Path(self.split.image_paths[int(image)])

    def thumbnail(self, image: int, size: int = THUMB) -> bytes:
        """PNG bytes of a test image (``size`` pixels square); :class:`ExploreError` naming a missing file."""
        from PIL import Image
        try:
            im = load_image(self.image_path(image))
        except DataError as err:
            raise ExploreError(str(err)) from None
        buf = io.BytesIO()
        im.resize((size, size), Image.BILINEAR).save(buf, format="PNG")
        return buf.getvalue()

    def heatmap_png(self, query: str, image: int, method: str, max_words: int = 8) -> bytes:
        """PNG of the query's word maps over the image (:func:`itr_lib.plots.images.plot_caption_word_maps`)."""
        import matplotlib.pyplot as plt
        from .plots.images import plot_caption_word_maps
        maps = self.why(query, image, method)
        path = self.image_path(image)
        if not path.is_file():
            raise ExploreError(f"image file {path} is missing. Fix: restore it under {path.parent}.")
        fig = plot_caption_word_maps(path, maps, caption=f"{method}: {query}", max_words=max_words)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        return buf.getvalue()


# ----------------------------------------------------------------------------------------------- serving
def parameterised_notebook(out_dir: Path, params: dict) -> Path:
    """``notebooks/06_explore.ipynb`` with ``params`` injected (papermill's own parameterisation), in ``out_dir``."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook
    from .io import REPO_ROOT, atomic_write_text
    src = REPO_ROOT / "notebooks" / "06_explore.ipynb"
    nb = parameterize_notebook(load_notebook_node(str(src)), params)
    out = Path(out_dir) / src.name
    atomic_write_text(out, nbformat.writes(nb))
    return out


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def voila_command(notebook: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "voila", str(notebook), f"--port={port}", "--no-browser",
            "--Voila.ip=127.0.0.1", "--show_tracebacks=False"]


def main(argv: list[str] | None = None) -> int:
    from .io import repo_path
    p = argparse.ArgumentParser(prog="python -m itr_lib.explore",
                                description="Serve the explorer (notebooks/06_explore.ipynb) with Voila on localhost.")
    p.add_argument("--profile", default="full", help="results/<profile> holds the runs (default full)")
    p.add_argument("--results-dir", default=None, help="results folder (default results/<profile>)")
    p.add_argument("--datasets", nargs="+", default=["rsicd", "ucm"])
    p.add_argument("--data-root", default="", help="folder of NAME/dataset_NAME.json (default $ITR_DATA_ROOT or "
                                                   "../shared/data)")
    p.add_argument("--cache-dir", default="", help="feature cache root (default $ITR_CACHE_DIR or ./cache/features)")
    p.add_argument("--port", type=int, default=0, help="localhost port (default: a free one)")
    p.add_argument("--retrain", nargs="+", default=None, metavar="GLOB",
                   help="first retrain the recorded runs matching these run-name globs whose checkpoints are "
                        "missing (e.g. 'ucm-baseline-*-s0-*': the small baseline, about a minute)")
    p.add_argument("--check", action="store_true", help="list the methods each dataset offers and exit")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = repo_path(a.results_dir) if a.results_dir else repo_path(f"results/{a.profile}")
    if a.retrain:
        from .runs import RunStoreError, retrain
        try:
            for r in retrain(results, a.retrain, workers=1):
                print(f"retrained {r['run']}")
        except RunStoreError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    usable, trainable, suggest = 0, 0, None
    for d in a.datasets:
        avail, missing = trained_methods(results, d)
        print(f"{d}: {len(avail)} method(s) with a checkpoint" + (f": {', '.join(avail.label)}" if len(avail) else ""))
        if a.check:  # every configuration, with its own command
            for lab, run in zip(missing.label, missing.run):
                print(f"  missing checkpoint: {lab}. Fix: {retrain_hint(results, run)}")
        elif (summary := missing_summary(results, d, missing)) is not None:  # serving: one line
            print(f"  {summary[0]}. Train them: {summary[1]}")
        usable += len(avail) > 0
        trainable += cheapest_to_train(missing) is not None
        base = missing[missing.method == "baseline"].sort_values("epochs_run")
        if len(base) and (suggest is None or d == "ucm"):  # UCM's is the smallest: about a minute to retrain
            suggest = base.run.iloc[0]
    if not usable and trainable and not a.check:
        print("nothing is trained yet: the page offers to train the cheapest deployed model (the baseline) first")
    elif not usable:
        print(f"error: no dataset of {a.datasets} has a trained checkpoint under {results / 'runs'}. Fix: retrain "
              f"one (commands above{f'; `make explore RETRAIN={suggest}` retrains a baseline, then serves' if suggest else ''}"
              f"), or run `make smoke` and use `make explore PROFILE=smoke`.", file=sys.stderr)
        return 2
    if a.check:
        return 0
    import subprocess
    import tempfile
    port = a.port or free_port()
    with tempfile.TemporaryDirectory(prefix="itr-explore-") as tmp:
        nb = parameterised_notebook(Path(tmp), {"RESULTS_DIR": str(results), "DATASETS": list(a.datasets),
                                                "DATA_ROOT": a.data_root, "CACHE_DIR": a.cache_dir})
        print(f"explorer: http://127.0.0.1:{port}/  (Ctrl-C stops it)", flush=True)
        import signal
        proc = subprocess.Popen(voila_command(nb, port))
        signal.signal(signal.SIGTERM, lambda *_: proc.terminate())  # a stopped `make explore` stops Voila too
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            return 0


if __name__ == "__main__":
    sys.exit(main())
