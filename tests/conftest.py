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



# ----------------------------------------------------------------------------------------------- a clean tree
REPO = Path(__file__).resolve().parents[1]
TOOL_CACHES = ("__pycache__/", ".pytest_cache/")  # Python's and pytest's own, written by any run


def repo_files_outside_git() -> set[str]:
    """Untracked and ignored paths of the repository (git's collapsed view, plus the entries of ``cache/features``,
    which git shows as one ``cache/`` line), without Python's and pytest's own caches; empty outside a git tree."""
    import subprocess
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=normal"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    if out.returncode:
        return set()
    paths = {line[3:] for line in out.stdout.splitlines() if line[:2] in ("??", "!!")}
    paths |= {str(p.relative_to(REPO)) for p in (REPO / "cache" / "features").glob("*")}
    return {p for p in paths if not p.endswith(TOOL_CACHES)}


@pytest.fixture(scope="session", autouse=True)
def tests_leave_the_repository_alone():
    """Every test writes into temporary folders: the session fails when the repository gained an untracked or
    ignored path (a feature cache under cache/features, a results folder, ...). ITR_CHECK_CLEAN=0 turns the check
    off (e.g. while a training run writes into the same worktree)."""
    if os.environ.get("ITR_CHECK_CLEAN", "1") == "0":
        yield
        return
    before = repo_files_outside_git()
    yield
    new = sorted(repo_files_outside_git() - before)
    assert not new, (f"the tests wrote into the repository {REPO}: {new}. Fix: point the test that writes them at a "
                     f"temporary folder (tmp_path / tmp_path_factory).")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread avoids OpenMP waits on a busy 2-core machine; restored after the module."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config_factory(tmp_path, cache_root, fixture_root):
    """Tiny TrainConfigs (D 32, batch 8, 1 epoch, InfoNCE, mean pooling, no drop) on the mini fixture's caches in
    ``cache_root`` (run folder ``tmp_path/run``): the backbone-top tests' configs."""
    from itr_lib.config import TrainConfig

    def make(**kw):
        base = dict(dataset="mini", data_root=str(fixture_root), cache_dir=str(cache_root), dim=32, batch_size=8,
                    epochs=1, lr=2e-3, progress=False, region_drop=0.0, token_drop=0.0, pooling="mean",
                    base_loss="infonce")
        base.update(kw)
        return TrainConfig(**base, run_dir=str(tmp_path / "run"))
    return make
