"""Checkpoints load without running code from them: a crafted pickle is refused before it acts, old-format files
only through the explicit trust opt-in, and what training writes loads with weights_only=True."""
import dataclasses
import pickle

import numpy as np
import pytest
import torch

from itr_lib import checkpoints
from itr_lib.checkpoints import UntrustedCheckpointError
from itr_lib.train import load_checkpoint, train


class _Payload:
    """Unpickling this calls ``exec``, which writes a marker file (what a crafted checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def _malicious(tmp_path, legacy: bool):
    marker = tmp_path / "marker"
    path = tmp_path / ("legacy.pt" if legacy else "best.pt")
    obj = {"model": {}, "config": {}, "hook": _Payload(marker)}
    if legacy:  # a plain pickle, not torch's zip container
        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path)
    return path, marker


@pytest.mark.parametrize("legacy", [False, True])
def test_crafted_checkpoint_is_refused_before_it_runs(tmp_path, monkeypatch, legacy):
    monkeypatch.delenv(checkpoints.TRUST_ENV, raising=False)
    path, marker = _malicious(tmp_path, legacy)
    with pytest.raises(UntrustedCheckpointError, match=str(path)) as err:
        load_checkpoint(path)
    assert "ITR_TRUST_CHECKPOINTS=1" in str(err.value) and "Fix:" in str(err.value)
    assert not marker.exists()


def test_evaluate_cli_refuses_a_crafted_checkpoint(tmp_path, monkeypatch, capsys, fixture_root):
    from itr_lib.evaluate import main
    monkeypatch.delenv(checkpoints.TRUST_ENV, raising=False)
    path, marker = _malicious(tmp_path, legacy=False)
    rc = main(["--checkpoint", str(path), "--dataset", "mini", "--data-root", str(fixture_root)])
    err = capsys.readouterr().err
    assert rc == 2 and str(path) in err and "refused" in err and err.count("\n") == 1
    assert not marker.exists()


def test_trust_opt_in_loads_an_old_format_checkpoint_and_convert_makes_it_safe(tmp_path, monkeypatch, mini_cfg):
    monkeypatch.delenv(checkpoints.TRUST_ENV, raising=False)
    cfg = mini_cfg(epochs=1)
    train(cfg)
    ck = checkpoints.load(tmp_path / "run" / "best.pt")
    old = tmp_path / "old.pt"  # how checkpoints were written before: numpy scalars in the pickle
    torch.save({"model": ck["model"], "config": ck["config"], "epoch": np.int64(0), "val_rsum": np.float64(1.5)}, old)
    with pytest.raises(UntrustedCheckpointError, match="old.pt"):
        load_checkpoint(old)
    model, got = load_checkpoint(old, trust=True)
    assert got == dataclasses.replace(cfg, run_dir=str(tmp_path))  # the run folder: where the file lies
    monkeypatch.setenv(checkpoints.TRUST_ENV, "1")
    load_checkpoint(old)
    monkeypatch.delenv(checkpoints.TRUST_ENV)
    assert checkpoints.main(["--convert", str(old)]) == 0
    back = checkpoints.load(old, trust=False)
    assert back["epoch"] == 0 and back["val_rsum"] == 1.5
    assert all(torch.equal(back["model"][k], ck["model"][k]) for k in ck["model"])


def test_training_checkpoints_load_with_weights_only(tmp_path, mini_cfg):
    cfg = mini_cfg(epochs=1)
    train(cfg)
    for name in ("best.pt", "last.pt"):
        raw = torch.load(tmp_path / "run" / name, weights_only=True)  # raises on anything beyond plain data
        assert raw["format"] == checkpoints.FORMAT and isinstance(raw["meta"], str)
    last = checkpoints.load(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 0 and len(last["history"]) == 1 and last["config_identity"] == cfg.identity()
    assert last["torch_rng"].dtype == torch.uint8
