"""The explorer page in a real browser: Voila on a free localhost port, driven by headless Chromium (Playwright's
Python API pointed at Debian's ``chromium``; nothing is downloaded). Used by ``tests/test_explore_browser.py``
and by ``make explore-screenshot`` (the README's image: RSICD with the checkpoints of ``results/full``, a test
caption whose image the best deployed model ranks in its top 3; without ``--results-dir``, small runs trained on the
12-image fixture):

    python -m itr_lib.explore_browser --results-dir results/full --dataset rsicd
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .explore import free_port, parameterised_notebook, voila_command
from .io import REPO_ROOT

log = logging.getLogger(__name__)

CHROMIUM = os.environ.get("ITR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
INSTALL_HINT = ("Fix: install Debian's chromium (`make setup` does it as root: `apt-get update && apt-get install -y chromium`), "
                "or set ITR_CHROMIUM to a Chromium executable; ITR_SKIP_BROWSER=1 skips the browser test.")


class BrowserError(RuntimeError):
    pass


def chromium_or_error() -> str:
    if not Path(CHROMIUM).is_file():
        raise BrowserError(f"no Chromium at {CHROMIUM}. {INSTALL_HINT}")
    return CHROMIUM


def fixture_results(out: Path, methods: tuple[str, ...] = ("baseline", "selfalign", "tgdt")) -> tuple[Path, str, str]:
    """Train small runs of the fixture dataset (2 epochs, D=32) into ``out/mini`` with caches in ``out/cache``;
    returns ``(results_dir, data_root, cache_dir)``."""
    from .config import TrainConfig
    from .features import ensure_features
    from .runs import run_grid
    data_root, cache = str(REPO_ROOT / "tests" / "fixtures"), str(Path(out) / "cache")
    ensure_features("mini", data_root=data_root, root=cache, progress=False, benchmark=False)
    base = dict(dataset="mini", data_root=data_root, cache_dir=cache, dim=32, batch_size=8, epochs=2,
                progress=False, region_drop=0.0, token_drop=0.0, threads=1)
    extra = {"selfalign": dict(lca=True, cra=True, codebook_size=16), "tgdt": dict(val_images_per_epoch=2)}
    cfgs = [TrainConfig(method=m, **base, **extra.get(m, {})) for m in methods]
    results = Path(out) / "mini"
    run_grid(cfgs, results, progress=False)
    return results, data_root, cache


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status: the server is up)."""
    import urllib.error
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@contextlib.contextmanager
def voila_server(results_dir, datasets: list[str], data_root: str = "", cache_dir: str = "", query: str = "",
                 search: bool = False, timeout: float = 300.0):
    """Serve 06_explore for these runs on a free localhost port; yields the URL; stops the server on exit."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="itr-voila-") as tmp:
        nb = parameterised_notebook(Path(tmp), {"RESULTS_DIR": str(results_dir), "DATASETS": list(datasets),
                                                "DATA_ROOT": data_root, "CACHE_DIR": cache_dir, "QUERY": query,
                                                "SEARCH": search})
        logf = open(Path(tmp) / "voila.log", "w+")
        env = {**os.environ, "ITR_PROGRESS": "0"}
        proc = subprocess.Popen(voila_command(nb, port), stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        url = f"http://127.0.0.1:{port}/"
        try:
            t0 = time.monotonic()
            while True:
                if proc.poll() is not None:
                    logf.seek(0)
                    raise BrowserError(f"voila exited with code {proc.returncode}:\n{logf.read()[-3000:]}")
                if _answers(url + "voila/static/"):
                    break
                if time.monotonic() - t0 > timeout:
                    logf.seek(0)
                    raise BrowserError(f"voila did not answer on {url} within {timeout:.0f} s:\n{logf.read()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            logf.close()


def drive(url: str, query: str, k: int, screenshot: str | os.PathLike | None = None, timeout_s: float = 240.0,
          side_by_side: str | os.PathLike | None = None, height: int = 1000) -> dict:
    """Open the page, type ``query``, press Search, wait for ``k`` results; returns what the page shows:
    ``{"results": n cards, "scores": [float], "truth": n ground-truth markers, "messages": [str], "seconds"}``.
    ``screenshot``: a PNG of the page then; ``side_by_side``: also compare the default methods and save that tab;
    ``height``: the window's height in pixels (Voila scrolls inside it: a taller window shows more of the page)."""
    from playwright.sync_api import sync_playwright
    exe = chromium_or_error()
    ms = int(timeout_s * 1000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": int(height)})
            page.goto(url, timeout=ms)
            box = page.wait_for_selector(".itr-query input", timeout=ms)  # the notebook has run
            box.fill(query)
            t0 = time.perf_counter()
            page.click(".itr-search")
            page.wait_for_function(f"document.querySelectorAll('.itr-t2i .itr-result').length >= {int(k)} || "
                                   f"document.querySelectorAll('.itr-t2i .itr-message').length > 0", timeout=ms)
            seconds = time.perf_counter() - t0
            scores = [float(t) for t in page.locator(".itr-result .itr-score-value").all_inner_texts()]
            out = {"results": page.locator(".itr-result").count(), "scores": scores,
                   "truth": page.locator(".itr-result .itr-truth").count(),
                   "messages": page.locator(".itr-message").all_inner_texts(), "seconds": seconds}
            if screenshot:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            if side_by_side:
                page.locator(".lm-TabBar-tabLabel", has_text="side by side").click()
                page.locator("button", has_text="Compare").click()
                page.wait_for_function(f"document.querySelectorAll('.itr-side .itr-result').length >= {int(k)} || "
                                       f"document.querySelectorAll('.itr-side .itr-message').length > 0", timeout=ms)
                out["side_methods"] = page.locator(".itr-side .itr-latency").all_inner_texts()
                page.screenshot(path=str(side_by_side), full_page=True)
            return out
        finally:
            browser.close()


def pick_query(ex, method: str, k: int, min_words: int = 8, tops: tuple[int, ...] = (1, 3), limit: int = 300) -> str:
    """A test caption (the first caption of each test image in turn, at least ``min_words`` words) whose own image
    ``method`` ranks first (else in its top 3, ``tops``): a query whose ground truth the page shows."""
    captions = [ex.split.captions[ex.split.img2txt[i][0]] for i in range(min(limit, ex.split.n_images))]
    captions = [c for c in captions if len(c.split()) >= min_words]
    ranks = {}
    from .explore import ExploreError
    for caption in captions:
        try:
            hits = ex.text_to_image(caption, method, k).hits
        except ExploreError:  # a caption the page would refuse (over 30 word pieces)
            continue
        ranks[caption] = next((r for r, h in enumerate(hits, 1) if h.truth), k + 1)
        if ranks[caption] <= tops[0]:
            return caption
    for top in tops[1:]:
        for caption in captions:
            if ranks.get(caption, k + 1) <= min(top, k):
                return caption
    raise BrowserError(f"no test caption of {ex.dataset} among the first {limit} images has its image in the top "
                       f"{min(tops[-1], k)} of {method}. Fix: pass --query.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m itr_lib.explore_browser", description=__doc__.split("\n")[0])
    p.add_argument("--screenshot", default="results/figures/explore.png", help="PNG of the search tab")
    p.add_argument("--side-by-side", default="results/figures/explore_side_by_side.png",
                   help="PNG of the side-by-side tab")
    p.add_argument("--results-dir", default="", help="results folder whose runs/ hold the checkpoints (default: "
                                                     "train small runs on the 12-image fixture first)")
    p.add_argument("--dataset", default="rsicd", help="dataset shown with --results-dir (default rsicd)")
    p.add_argument("--query", default="", help="the query (default: a test caption whose image the first method "
                                              "ranks in its top 3)")
    p.add_argument("--k", type=int, default=0, help="results per list (default 8; 2 on the fixture, whose test "
                                                    "split has 2 images)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from .io import repo_path
    try:
        chromium_or_error()
        with tempfile.TemporaryDirectory(prefix="itr-explore-shot-") as tmp:
            if a.results_dir:
                results, dataset, data_root, cache = repo_path(a.results_dir), a.dataset, "", ""
            else:
                (results, data_root, cache), dataset = fixture_results(Path(tmp)), "mini"
            k = a.k or (8 if a.results_dir else 2)
            query = a.query
            if not query:
                from .explore import Explorer, default_methods
                ex = Explorer(results, dataset, data_root=data_root or None, cache_dir=cache or None)
                query = pick_query(ex, default_methods(ex.available)[0], k)
            with voila_server(results, [dataset], data_root, cache, query=query) as url:
                got = drive(url, query, k, repo_path(a.screenshot), side_by_side=repo_path(a.side_by_side),
                            height=1400 if a.results_dir else 1000)
    except BrowserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{dataset}: {query!r}: {got['results']} results, {got['truth']} ground-truth marker(s), answer in "
          f"{got['seconds']:.2f} s (browser round trip); side by side: {got.get('side_methods')} -> {a.screenshot}, "
          f"{a.side_by_side}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
