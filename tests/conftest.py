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


@pytest.fixture
def mini_cfg(tmp_path, mini_cache, fixture_root):
    """A factory of small TrainConfigs on the mini fixture's cached features (run folder ``tmp_path/run``)."""
    from itr_lib.config import TrainConfig
    root, _ = mini_cache

    def make(**kw):
        base = dict(dataset="mini", data_root=str(fixture_root), cache_dir=str(root), dim=64, batch_size=8,
                    epochs=3, lr=2e-3, progress=False, region_drop=0.0, token_drop=0.0, pooling="gpo")
        base.update(kw)
        return TrainConfig(**base, run_dir=str(tmp_path / "run"))
    return make



@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread avoids OpenMP waits on a busy 2-core machine; restored after the module."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
