"""The explorer's widgets (ipywidgets), built on :class:`itr_lib.explore.Explorer`; shown by 06_explore.

Above the tabs: the dataset, the query, a status line (the test split's size, the methods on offer and, folded into
one collapsed line, the configurations whose checkpoint is absent with the command that trains them) and, when
nothing of the dataset is trained, an offer to train the cheapest deployed model (the baseline) with its progress,
after which the page searches. The method lists offer the deployed methods (the README table's rows, best recorded
mR first); a toggle adds the authors'-loss variants and earlier runs (:mod:`itr_lib.explore_catalog`).

Four tabs: text -> image (query, method, top-k thumbnails with scores, captions and the ground-truth marker; a
result's "captions" button opens it in the next tab), image -> text (a test image's top captions, its own
marked), why (the query's word -> region maps on a chosen result), side by side (several methods' top-k for one
query, each with its latency). Every message goes into the page (no traceback): an :class:`ExploreError`
verbatim, anything else as one line naming the exception. CSS classes ``itr-result``, ``itr-score``,
``itr-truth``, ``itr-message`` let a browser test find what it asserts on.
"""
from __future__ import annotations

import html
import logging
import threading
import time

import ipywidgets as W

from .explore import Explorer, ExploreError, default_methods
from .explore_catalog import cheapest_to_train, missing_summary, train_progress, trained_methods

log = logging.getLogger(__name__)

TRUTH = "&#10004; ground truth"
OWN = "&#10004; own caption"


def _msg(text: str, kind: str = "warn", cls: str = "itr-message") -> W.HTML:
    color = {"warn": "#a61", "info": "#333", "error": "#b00"}[kind]
    w = W.HTML(f"<div style='color:{color};white-space:pre-wrap'>{html.escape(text)}</div>")
    w.add_class(cls)
    return w


class ExplorerApp:
    """The page: ``ExplorerApp(results_dir, datasets, ...).widget`` (display it)."""

    def __init__(self, results_dir, datasets: list[str], data_root: str = "", cache_dir: str = "",
                 query: str = "", k: int = 8, device: str = "cpu"):
        self.results_dir, self.data_root, self.cache_dir, self.device = results_dir, data_root, cache_dir, device
        self.explorers: dict[str, Explorer | ExploreError] = {}
        self.dataset = W.Dropdown(options=list(datasets), description="dataset")
        self.status = W.VBox()
        self.more = W.Checkbox(value=False, description="also authors'-loss variants and earlier runs", indent=False)
        self.more.add_class("itr-more")
        self.train_go = W.Button(description="Train", button_style="success", layout=W.Layout(width="auto"))
        self.train_go.add_class("itr-train")
        self.train_bar = W.IntProgress(value=0, min=0, max=1, description="epochs")
        self.train_note = W.HTML()
        self.train_note.add_class("itr-train-progress")
        self.train_box = W.VBox()
        self.training: threading.Thread | None = None
        self.query = W.Text(value=query, placeholder="type a description, e.g. many buildings near a road",
                            description="query", layout=W.Layout(width="60%"))
        self.query.add_class("itr-query")
        self.k = W.IntSlider(value=k, min=1, max=30, description="top k")
        self.method = W.Dropdown(description="method", layout=W.Layout(width="60%"))
        self.search = W.Button(description="Search", button_style="primary")
        self.search.add_class("itr-search")
        self.t2i_out = W.VBox()
        self.t2i_out.add_class("itr-t2i")
        self.image = W.Dropdown(description="image", layout=W.Layout(width="60%"))
        self.i2t_method = W.Dropdown(description="method", layout=W.Layout(width="60%"))
        self.i2t_go = W.Button(description="Top captions")
        self.i2t_out = W.VBox()
        self.why_method = W.Dropdown(description="method", layout=W.Layout(width="60%"))
        self.why_image = W.Dropdown(description="result", layout=W.Layout(width="60%"))
        self.why_go = W.Button(description="Word maps")
        self.why_out = W.VBox()
        self.side = W.SelectMultiple(description="methods", rows=5, layout=W.Layout(width="70%"))
        self.side_go = W.Button(description="Compare")
        self.side_out = W.HBox()
        self.side_out.add_class("itr-side")
        self.tabs = W.Tab(children=[
            W.VBox([W.HBox([self.method]), W.HBox([self.k, self.search]), self.t2i_out]),
            W.VBox([self.i2t_method, W.HBox([self.image, self.i2t_go]), self.i2t_out]),
            W.VBox([W.HTML("the query of the first tab, word by word, over one image"), self.why_method,
                    W.HBox([self.why_image, self.why_go]), self.why_out]),
            W.VBox([self.side, self.side_go, self.side_out])])
        for i, t in enumerate(["text → image", "image → text", "why", "side by side"]):
            self.tabs.set_title(i, t)
        self.widget = W.VBox([W.HBox([self.dataset, self.more]), self.query, self.status, self.train_box, self.tabs])
        self.search.on_click(lambda _: self._guard(self.t2i_out, self.run_search))
        self.query.on_submit(lambda _: self._guard(self.t2i_out, self.run_search))
        self.i2t_go.on_click(lambda _: self._guard(self.i2t_out, self.run_i2t))
        self.why_go.on_click(lambda _: self._guard(self.why_out, self.run_why))
        self.side_go.on_click(lambda _: self._guard(self.side_out, self.run_side))
        self.dataset.observe(lambda ch: self._guard(self.status, self.switch), names="value")
        self.more.observe(lambda ch: self._guard(self.status, self.switch), names="value")
        self.train_go.on_click(lambda _: self._guard(self.train_note, self.train_cheapest))
        self._guard(self.status, self.switch)

    # ------------------------------------------------------------------------------------------- plumbing
    def _guard(self, out: W.Box, fn) -> None:
        """Run a callback; its message (or an unexpected error's one line) replaces ``out``'s content."""
        try:
            fn()
        except ExploreError as err:
            out.children = [_msg(str(err))]
        except Exception as err:  # noqa: BLE001 - the page must stay up; the log keeps the traceback
            log.exception("explorer callback failed")
            out.children = [_msg(f"unexpected error ({type(err).__name__}): {err}", "error")]

    def explorer(self) -> Explorer:
        d = self.dataset.value
        if d not in self.explorers:
            try:
                self.explorers[d] = Explorer(self.results_dir, d, data_root=self.data_root or None,
                                             cache_dir=self.cache_dir or None, device=self.device)
            except ExploreError as err:
                self.explorers[d] = err
        ex = self.explorers[d]
        if isinstance(ex, ExploreError):
            raise ex
        return ex

    def switch(self) -> None:
        for box in (self.t2i_out, self.i2t_out, self.why_out, self.side_out):
            box.children = []
        if self.training is None or not self.training.is_alive():
            self.train_box.children = []
        try:
            ex = self.explorer()
        except ExploreError:
            if self.offer_training():
                return
            raise
        labels = ex.labels(every_variant=self.more.value)
        picks = [lab for lab in default_methods(ex.available) if lab in labels] or labels[:1]
        self.method.options = labels
        self.method.value = picks[0]
        self.i2t_method.options = labels
        self.i2t_method.value = picks[0]
        wordy = [lab for lab in labels if ex.entries[lab].method in ("baseline", "selfalign")]
        self.why_method.options = wordy or labels
        self.side.options = labels
        self.side.value = tuple(picks)
        self.image.options = [(f"{i}: {f}", i) for i, f in enumerate(ex.split.filenames)]
        self.why_image.options = self.image.options
        hidden = len(ex.entries) - len(labels)
        line = (f"{ex.dataset} {ex.split_name}: {ex.split.n_images} images, {ex.split.n_texts} captions; "
                f"{len(labels)} method(s) on offer" + (f" ({hidden} more behind the toggle)." if hidden else "."))
        self.status.children = [_msg(line, "info")] + self._missing_line(ex.dataset, ex.missing)
        if not self.query.value:
            self.query.value = ex.split.captions[0]

    def _missing_line(self, dataset: str, missing) -> list[W.HTML]:
        """The configurations without a checkpoint as one collapsed line; unfolded, the command that trains them."""
        summary = missing_summary(self.results_dir, dataset, missing)
        if summary is None:
            return []
        line, command = summary
        w = W.HTML(f"<details><summary style='color:#666'>{html.escape(line)}: how to train them</summary>"
                   f"<code style='white-space:pre-wrap'>{html.escape(command)}</code></details>")
        w.add_class("itr-missing")
        return [w]

    # ------------------------------------------------------------------------------------------- first visit
    def offer_training(self) -> bool:
        """Nothing of the dataset is trained: offer to train the cheapest deployed model (True when offered)."""
        d = self.dataset.value
        _, missing = trained_methods(self.results_dir, d)
        row = cheapest_to_train(missing)
        if row is None:
            return False
        minutes = f"about {row.train_minutes:.0f} min on the machine that recorded it" \
            if row.train_minutes == row.train_minutes else "minutes"
        self.status.children = [_msg(f"Nothing of {d} is trained under {self.results_dir} yet: {len(missing)} "
                                     f"configuration(s) are recorded, their checkpoints (not committed) are absent.",
                                     "info")] + self._missing_line(d, missing)
        self.train_go.description = f"Train {row.label} now ({minutes}), then search"
        self.train_go.disabled = self.training is not None and self.training.is_alive()
        if not self.train_box.children:
            self.train_box.children = [self.train_go, W.HBox([self.train_bar, self.train_note])]
        return True

    def train_cheapest(self, wait: bool = False) -> None:
        """Retrain the cheapest deployed model of the dataset from its record (:func:`itr_lib.runs.retrain`) in a
        background thread, its epochs on the progress bar; when it ends, the page reloads the dataset and
        searches. ``wait``: return only then (tests)."""
        from .runs import retrain
        d = self.dataset.value
        _, missing = trained_methods(self.results_dir, d)
        row = cheapest_to_train(missing)
        if row is None:
            raise ExploreError(f"nothing of {d} to train: no deployed configuration is recorded without a checkpoint.")
        if self.training is not None and self.training.is_alive():
            raise ExploreError("a training run is already under way; its progress is shown above.")
        from .io import read_json
        epochs = int(read_json(row.metrics_path)["config"]["epochs"])
        self.train_go.disabled = True
        self.train_bar.max, self.train_bar.value = epochs, 0
        self.train_note.value = f"training {html.escape(row.label)} ({row.run}) ..."
        outcome: dict = {}

        def work() -> None:
            try:
                outcome["rows"] = retrain(self.results_dir, [row.run], workers=1, threads=1)
            except Exception as err:  # noqa: BLE001 - shown in the page
                log.exception("explorer: training %s failed", row.run)
                outcome["error"] = err

        def watch() -> None:
            t0 = time.monotonic()
            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            while worker.is_alive():
                worker.join(2.0)
                n, rec = train_progress(self.results_dir, row.run)
                val = f", val rsum {rec['val_rsum']:.1f}" if rec and "val_rsum" in rec else ""
                self.train_bar.value = min(n, epochs)
                self.train_note.value = (f"training {html.escape(row.label)}: epoch {n} of {epochs} done{val}, "
                                         f"{time.monotonic() - t0:.0f} s")
            if "error" in outcome:
                err = outcome["error"]
                self.train_note.value = html.escape(f"training failed ({type(err).__name__}): {err}")
                self.train_go.disabled = False
                return
            self.train_bar.value = epochs
            self.train_note.value = f"trained {html.escape(row.label)} in {time.monotonic() - t0:.0f} s"
            self.explorers.pop(d, None)
            self._guard(self.status, self.switch)
            self.search_now()

        self.training = threading.Thread(target=watch, daemon=True)
        self.training.start()
        if wait:
            self.training.join()

    def _card(self, ex: Explorer, hit, rank: int, truth_label: str, with_button: bool = True) -> W.VBox:
        try:
            img = W.Image(value=ex.thumbnail(hit.index), format="png", width=140, height=140)
        except ExploreError as err:
            img = _msg(str(err))
        score = W.HTML(f"<b>#{rank}</b> score <span class='itr-score-value'>{hit.score:.4f}</span>")
        score.add_class("itr-score")
        parts = [img, score]
        if hit.truth:
            t = W.HTML(f"<span style='color:#080'>{truth_label}</span>")
            t.add_class("itr-truth")
            parts.append(t)
        parts.append(W.HTML(f"<small>{html.escape(hit.text)}</small>", layout=W.Layout(width="150px")))
        if with_button:
            b = W.Button(description="captions", layout=W.Layout(width="100px"))
            b.on_click(lambda _, i=hit.index: self._guard(self.i2t_out, lambda: self.open_image(i)))
            parts.append(b)
        card = W.VBox(parts, layout=W.Layout(width="160px", margin="4px"))
        card.add_class("itr-result")
        return card

    def _results(self, ex: Explorer, res) -> W.VBox:
        head = W.HTML(f"<b>{html.escape(res.method)}</b> ({res.search}): {res.seconds * 1000:.0f} ms")
        head.add_class("itr-latency")
        cards = [self._card(ex, h, r + 1, TRUTH) for r, h in enumerate(res.hits)]
        return W.VBox([head, W.Box(cards, layout=W.Layout(flex_flow="row wrap"))])

    # ------------------------------------------------------------------------------------------- actions
    def search_now(self) -> None:
        """Run the query in the box as the Search button does (a problem becomes the page's message)."""
        self._guard(self.t2i_out, self.run_search)

    def run_search(self) -> None:
        ex = self.explorer()
        self.t2i_out.children = [_msg("searching ...", "info", "itr-busy")]
        res = ex.text_to_image(self.query.value, self.method.value, self.k.value)
        self.t2i_out.children = [self._results(ex, res)]
        self.why_image.options = [(f"#{r + 1}: {ex.split.filenames[h.index]}", h.index)
                                  for r, h in enumerate(res.hits)]

    def open_image(self, index: int) -> None:
        self.image.value = index
        self.i2t_method.value = self.method.value
        self.tabs.selected_index = 1
        self.run_i2t()

    def run_i2t(self) -> None:
        ex = self.explorer()
        res = ex.image_to_text(self.image.value, self.i2t_method.value, self.k.value)
        try:
            pic = W.Image(value=ex.thumbnail(self.image.value, 224), format="png", width=224, height=224)
        except ExploreError as err:
            pic = _msg(str(err))
        rows = "".join(f"<tr><td>{r + 1}</td><td>{h.score:.4f}</td><td>{html.escape(h.text)}</td>"
                       f"<td style='color:#080'>{OWN if h.truth else ''}</td></tr>" for r, h in enumerate(res.hits))
        table = W.HTML(f"<b>{html.escape(res.method)}</b> ({res.search}): {res.seconds * 1000:.0f} ms"
                       f"<table><tr><th>#</th><th>score</th><th>caption</th><th></th></tr>{rows}</table>")
        self.i2t_out.children = [W.HBox([pic, table])]

    def run_why(self) -> None:
        ex = self.explorer()
        if self.why_image.value is None:
            raise ExploreError("Pick an image (search first: the results of the first tab are listed here).")
        png = ex.heatmap_png(self.query.value, self.why_image.value, self.why_method.value)
        self.why_out.children = [W.Image(value=png, format="png")]

    def run_side(self) -> None:
        ex = self.explorer()
        methods = list(self.side.value)
        if not methods:
            raise ExploreError("Select one or more methods (Ctrl-click for several).")
        cols = [self._results(ex, r) for r in ex.compare(self.query.value, methods, self.k.value)]
        for c in cols:
            c.layout = W.Layout(width=f"{100 // len(cols)}%")
        self.side_out.children = cols
