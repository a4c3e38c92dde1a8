"""What the study promises under faults (docs/faults.md): a full disk stops a run with one line and leaves no temp
file; a record is published complete or not at all; a damaged record stops the tables before anything is written."""
import errno
import os
import subprocess

import numpy as np
import pytest

from itr_lib import io as itr_io
from itr_lib.io import DiskFullError


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (a really full disk); skipped where mounting is not allowed (not root)."""
    d = tmp_path / "disk"
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield d
    subprocess.run(["umount", str(d)], check=True)


def _enospc_after(monkeypatch, n_ok: int = 0, match: str = ""):
    """Fault-injected writer: the atomic writes of files whose name contains ``match`` write half their bytes, then
    fail with ENOSPC (after ``n_ok`` successful ones), like a disk that fills up."""
    real, seen = itr_io._write_all, []

    def write_all(f, data):
        if match in os.path.basename(f.name):
            seen.append(f.name)
            if len(seen) > n_ok:
                f.write(data[:len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)
    monkeypatch.setattr(itr_io, "_write_all", write_all)


def test_a_full_disk_is_one_line_naming_the_folder_and_the_space_needed(small_disk):
    with pytest.raises(DiskFullError) as err:
        itr_io.atomic_write_bytes(small_disk / "big.bin", b"x" * 200_000)
    msg = str(err.value)
    assert "\n" not in msg and str(small_disk) in msg and "needed about 0.2 MB" in msg and "Fix:" in msg
    assert err.value.errno == errno.ENOSPC and err.value.needed == 200_000
    assert list(small_disk.iterdir()) == []  # the temp file is gone: the disk is not kept full


def test_checkpoint_on_a_full_disk_removes_its_temp_file(small_disk):
    import torch
    from itr_lib import checkpoints
    checkpoints.save(small_disk / "last.pt", {"model": {"w": torch.zeros(4)}}, {"epoch": 0})
    before = (small_disk / "last.pt").read_bytes()
    with pytest.raises(DiskFullError, match=str(small_disk)):
        checkpoints.save(small_disk / "last.pt", {"model": {"w": torch.zeros(100_000)}}, {"epoch": 1})
    assert [p.name for p in small_disk.iterdir()] == ["last.pt"] and (small_disk / "last.pt").read_bytes() == before


def test_training_on_a_full_disk_stops_with_one_line_and_no_temp_files(tmp_path, monkeypatch, mini_cfg):
    from itr_lib.train import train
    cfg = mini_cfg(epochs=2)
    _enospc_after(monkeypatch, n_ok=1, match=".last.pt.")  # epoch 0 saved, epoch 1's last.pt hits the full disk
    with pytest.raises(DiskFullError) as err:
        train(cfg)
    run = tmp_path / "run"
    assert str(run) in str(err.value) and "\n" not in str(err.value)
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]
    monkeypatch.undo()
    out = train(cfg)  # space freed: the run resumes from epoch 0's last.pt and finishes
    assert [h["epoch"] for h in out["history"]] == [0, 1]
