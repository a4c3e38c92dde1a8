import os
from pathlib import Path

import pytest

os.environ.setdefault("ITR_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def fixture_root() -> Path:
    """Data root holding the committed mini dataset (12 real RSICD images, 60 captions)."""
    return FIXTURES


@pytest.fixture(scope="session")
def mini_cache(tmp_path_factory, fixture_root):
    """Feature caches of the mini dataset, built once per test session."""
    from itr_lib.features import ensure_features
    root = tmp_path_factory.mktemp("cache")
    rows = ensure_features("mini", data_root=fixture_root, root=root, progress=False, benchmark=False)
    return root, rows


def shared_data_or_skip() -> Path:
    if not (SHARED_DATA / "rsicd" / "dataset_rsicd.json").is_file():
        pytest.skip("../shared/data is not beside the repository")
    return SHARED_DATA
