"""itr_lib.io: atomic writes keep the permissions a plain write would give (sidecars were 0600)."""
import os

import numpy as np

from itr_lib.io import atomic_save_npy, read_json, write_json


def test_atomic_writes_have_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        atomic_save_npy(tmp_path / "b.npy", np.arange(3))
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a.json": 0o644, "b.npy": 0o644, "plain.txt": 0o644}
    assert read_json(tmp_path / "a.json") == {"x": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    import pytest
    write_json(tmp_path / "a.json", {"x": 1})
    atomic_save_npy(tmp_path / "b.npy", np.arange(3))

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_save_npy(tmp_path / "b.npy", np.arange(5))
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        write_json(tmp_path / "a.json", {"x": 2})
    assert read_json(tmp_path / "a.json") == {"x": 1}
    assert np.load(tmp_path / "b.npy").tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.npy"]
