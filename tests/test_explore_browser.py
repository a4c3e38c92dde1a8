"""The explorer page in a real browser: Voila serves 06_explore on a free localhost port for runs trained on the
fixture; headless Chromium (Debian's, through Playwright) types a test caption and reads the answer."""
import os

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium():
    from itr_lib.explore_browser import BrowserError, chromium_or_error
    try:
        return chromium_or_error()
    except BrowserError as err:
        if os.environ.get("ITR_SKIP_BROWSER") == "1":
            pytest.skip(f"ITR_SKIP_BROWSER=1: {err}")
        pytest.fail(str(err))


def test_search_in_the_browser_shows_k_scored_results_and_the_truth_marker(chromium, tmp_path):
    from itr_lib.data import load_dataset
    from itr_lib.explore import Explorer
    from itr_lib.explore_browser import drive, fixture_results, voila_server
    results, data_root, cache = fixture_results(tmp_path, methods=("baseline",))
    split = load_dataset("mini", data_root).split("test")
    query = split.captions[-1]                  # a test caption of the second image: its image is the truth
    k = split.n_images                          # the fixture's test split has 2 images
    ex = Explorer(results, "mini", data_root=data_root, cache_dir=cache)
    expected = ex.text_to_image(query, ex.labels()[0], k)  # the same search without the page
    shot = tmp_path / "explore.png"
    with voila_server(results, ["mini"], data_root, cache, query=split.captions[0]) as url:
        got = drive(url, query, k, screenshot=shot)
    assert got["results"] == k, got["messages"]
    assert got["scores"] == pytest.approx([round(h.score, 4) for h in expected.hits], abs=1e-4)
    assert got["truth"] == sum(h.truth for h in expected.hits) >= 1
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"
