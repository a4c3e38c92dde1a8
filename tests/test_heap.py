"""The heap setting of a training run (itr_lib.heap): where large tensors come from, never what is computed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError, AttributeError):
        return False

TRAIN = """
import json, sys
from itr_lib.config import TrainConfig
from itr_lib.train import train
kw = json.loads(sys.argv[1])
m = train(TrainConfig(**kw))
print(json.dumps({"heap": m["heap"], "val": m["val"], "test": m["test"],
                  "losses": [h["loss_total"] for h in m["history"]]}))
"""


def _train_in_process(kw: dict, heap_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ITR_HEAP", "MALLOC_MMAP_THRESHOLD_")}
    env.update(heap_env, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", TRAIN, json.dumps(kw)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def text_cut_cache(tmp_path_factory, fixture_root):
    from itr_lib.features import ensure_features
    root = tmp_path_factory.mktemp("cache")
    ensure_features("mini", data_root=fixture_root, root=root, progress=False, threads=1, text_cut=[5])
    return root


@pytest.mark.skipif(not _glibc(), reason="the threshold is set through glibc's mallopt")
def test_itr_heap_mmap_sets_the_threshold_records_it_and_trains_to_identical_numbers(tmp_path, text_cut_cache,
                                                                                          fixture_root):
    from itr_lib.heap import THRESHOLD
    kw = dict(dataset="mini", data_root=str(fixture_root), cache_dir=str(text_cut_cache), dim=32, batch_size=8,
              epochs=2, lr=2e-3, progress=False, pooling="gpo", region_drop=0.1, token_drop=0.1)
    top = {**kw, "text_top_layers": 1}
    new = _train_in_process({**top, "run_dir": str(tmp_path / "new")}, {"ITR_HEAP": "mmap"})
    old = _train_in_process({**top, "run_dir": str(tmp_path / "old")}, {})
    env = _train_in_process({**top, "run_dir": str(tmp_path / "env")}, {"MALLOC_MMAP_THRESHOLD_": "131072"})
    frozen = _train_in_process({**kw, "run_dir": str(tmp_path / "frozen")}, {"ITR_HEAP": "mmap"})
    assert THRESHOLD == 1 << 20 and new["heap"]["mmap_threshold"] == THRESHOLD == frozen["heap"]["mmap_threshold"]
    assert new["heap"]["set_by"].startswith("mallopt")
    assert old["heap"] == {"mmap_threshold": None,
                           "why": "the C library's default allocator (ITR_HEAP=mmap bounds the heap)"}
    assert env["heap"] == {"mmap_threshold": 131072, "set_by": "MALLOC_MMAP_THRESHOLD_"}
    assert new["losses"] == old["losses"] == env["losses"] and len(new["losses"]) == 2
    assert new["val"] == old["val"] == env["val"] and new["test"] == old["test"] == env["test"]
    assert frozen["losses"] != new["losses"]  # the top trained: another model, so the comparison above can fail


def test_limit_heap_is_set_once_per_process_and_refuses_an_unknown_mode(monkeypatch):
    from itr_lib import heap
    monkeypatch.setattr(heap, "_done", None)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("ITR_HEAP", "fast")
    with pytest.raises(ValueError, match="ITR_HEAP='fast'"):
        heap.limit_heap()
    monkeypatch.setenv("ITR_HEAP", "default")
    first = heap.limit_heap()
    monkeypatch.setenv("ITR_HEAP", "mmap")
    assert heap.limit_heap(1 << 20) is first and first["mmap_threshold"] is None
