"""What the study promises under faults (docs/faults.md): a full disk stops a run with one line and leaves no temp
file; a record is published complete or not at all; a damaged record stops the tables before anything is written."""
import errno
import os
import subprocess

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


# ----------------------------------------------------------------------------------------------- damaged records
def _study(tmp_path, seeds=(0, 1, 2)):
    """A results folder with recorded baseline and LCA+CRA runs on ``seeds`` and a comparison plan for seeds 0-2."""
    import pandas as pd
    from itr_lib.config import TrainConfig
    from recorded_runs import record_run
    plan = []
    for key, kw in (("baseline", {"method": "baseline"}), ("lca+cra", {"method": "selfalign", "lca": True,
                                                                         "cra": True})):
        for s in (0, 1, 2):
            cfg = TrainConfig(dataset="rsicd", seed=s, **kw)
            if s in seeds:
                record_run(tmp_path, cfg, val_mr=20 + s + (key != "baseline"), hits_seed=10 * s + len(key))
            plan.append({"setting": "study loss", "key": key, "dataset": "rsicd", "method": cfg.method, "seed": s,
                         "run": cfg.run_name(), "recorded": s in seeds})
    (tmp_path / "tables").mkdir(exist_ok=True)
    pd.DataFrame(plan).to_csv(tmp_path / "tables" / "comparison_plan.csv", index=False)
    return pd.DataFrame(plan)


def test_a_truncated_record_stops_the_tables_and_the_report_naming_the_file(tmp_path):
    from itr_lib import tables
    from itr_lib.report import time_summary
    from itr_lib.runs import RunStoreError
    plan = _study(tmp_path)
    bad = tmp_path / "metrics" / f"{plan.run[1]}.json"
    bad.write_text(bad.read_text()[:200])  # truncated mid-file
    for read in (lambda: tables.study_frame(tmp_path), lambda: time_summary(tmp_path, "r")):
        with pytest.raises(RunStoreError, match=f"{bad}.*Fix: restore it") as err:
            read()
        assert "\n" not in str(err.value)


def test_the_results_notebook_reads_every_record_before_writing_anything():
    """05_results calls tables.study_frame (which stops on a damaged record) before its first write."""
    import json
    from itr_lib.io import REPO_ROOT
    nb = json.loads((REPO_ROOT / "notebooks" / "05_results.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    first_write = min(code.index(w) for w in ("write_table(", "plots.save(", "write_report(") if w in code)
    assert "tables.study_frame(" in code and code.index("tables.study_frame(") < first_write
    assert "runs_frame(" not in code  # no second, lenient reader of the records


def test_garbage_ranks_stop_the_tables_naming_the_file(tmp_path):
    from itr_lib import tables
    from itr_lib.runs import RunStoreError, load_hits
    plan = _study(tmp_path)
    bad = tmp_path / "metrics" / f"{plan.run[4]}.ranks.npz"
    bad.write_bytes(b"\x80\x04garbage that numpy would take for a pickle")
    with pytest.raises(RunStoreError, match=f"{bad} is not a readable ranks file.*Fix:"):
        tables.study_frame(tmp_path)
    with pytest.raises(RunStoreError, match=str(bad)):
        load_hits(tmp_path, plan.run[4])
    bad.write_bytes(b"PK\x03\x04 a truncated zip")
    with pytest.raises(RunStoreError, match=str(bad)):
        tables.study_frame(tmp_path)


def test_a_table_with_fewer_seeds_than_its_plan_says_so(tmp_path):
    from itr_lib import claims, tables
    from itr_lib.report import _missing_note
    _study(tmp_path, seeds=(0, 2))
    df, plan = tables.study_frame(tmp_path)
    t = tables.comparison_table(df.dropna(subset=["key"]), "rsicd")
    assert t.n_seeds.tolist() == [2, 2] and t.missing_seeds.tolist() == ["1", "1"]
    c = claims.claims_table(df.dropna(subset=["key"]), "rsicd", tmp_path, n_boot=50)
    row = c[c.claim == "selfalign_vs_baseline"].iloc[0]
    assert row.missing_seeds == "1" and "planned seeds 0,1,2, 1 not recorded" in row.note
    assert "missing seeds 1" in "\n".join(_missing_note(t))
    main = tables.main_table(df, "rsicd", include_published=False)
    assert main.missing_seeds.tolist() == ["1", "1"]
    _study(tmp_path)  # all three recorded: nothing to say
    df, _ = tables.study_frame(tmp_path)
    assert tables.comparison_table(df.dropna(subset=["key"]), "rsicd").missing_seeds.tolist() == ["", ""]


# ----------------------------------------------------------------------------------------------- publishing
def test_a_failed_ranks_copy_leaves_no_record_and_the_rerun_records_the_run(tmp_path, monkeypatch, mini_cfg):
    from itr_lib.recordio import read_ranks
    from itr_lib.runs import recorded, run_grid
    out = tmp_path / "results"
    cfg = mini_cfg(epochs=1)
    cfg.run_dir = None
    _enospc_after(monkeypatch, match=".ranks.npz.")  # the disk fills while the ranks are copied into metrics/
    with pytest.raises(DiskFullError):
        run_grid([cfg], out, progress=False, workers=1)
    metrics = out / "metrics"
    name = cfg.run_name()
    assert sorted(p.name for p in metrics.iterdir()) == []  # no JSON without its ranks, no .tmp (0-byte or not)
    assert recorded(cfg, out) is None
    monkeypatch.undo()
    again = run_grid([cfg], out, progress=False, workers=1)[0]  # not skipped: published from the run folder
    assert sorted(p.name for p in metrics.iterdir()) == [f"{name}.json", f"{name}.ranks.npz"]
    assert read_ranks(metrics / f"{name}.ranks.npz")["i2t"].shape == (2,) and recorded(cfg, out) == again


def test_a_record_without_readable_ranks_is_not_recorded(tmp_path, mini_cfg):
    from itr_lib.config import TrainConfig
    from itr_lib.runs import recorded
    from recorded_runs import record_run
    cfg = TrainConfig(dataset="rsicd", seed=0)
    record_run(tmp_path, cfg, val_mr=20, hits_seed=0)
    assert recorded(cfg, tmp_path)["run"] == cfg.run_name()
    ranks = tmp_path / "metrics" / f"{cfg.run_name()}.ranks.npz"
    ranks.write_bytes(b"")
    assert recorded(cfg, tmp_path) is None
    ranks.unlink()
    assert recorded(cfg, tmp_path) is None


# ----------------------------------------------------------------------------------------------- shared folders
def test_figures_get_the_permissions_of_a_plain_write(tmp_path):
    import matplotlib.pyplot as plt
    from itr_lib.plots import save
    fig = plt.figure()
    old = os.umask(0o022)
    try:
        written = save(fig, tmp_path / "fig.png", close=True)
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in written} == {"fig.png": 0o644, "fig.svg": 0o644}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "fig.svg"]


def _fake_papermill(monkeypatch, cells: int, fail: bool, truncate: bool = False):
    """papermill.execute_notebook replaced by a writer that writes the output notebook (as papermill does, in
    place), then fails if asked, leaving it valid or truncated."""
    import json
    import papermill

    def execute(notebook, output, **kw):
        text = json.dumps({"cells": [{"cell_type": "code", "source": str(i)} for i in range(cells)], "nbformat": 4})
        with open(output, "w") as f:
            f.write(text[:len(text) // 2] if truncate else text)
        if fail:
            raise RuntimeError("cell 2 failed")
    monkeypatch.setattr(papermill, "execute_notebook", execute)


def test_the_executed_notebook_is_replaced_in_one_rename(tmp_path, monkeypatch):
    import json
    from itr_lib import notebook_task
    out = tmp_path / "executed" / "01_train.ipynb"
    _fake_papermill(monkeypatch, cells=3, fail=False)
    old = os.umask(0o022)
    try:
        notebook_task.execute_notebook("nb.ipynb", str(out), {}, 60, "")
    finally:
        os.umask(old)
    assert len(json.loads(out.read_text())["cells"]) == 3 and out.stat().st_mode & 0o777 == 0o644
    _fake_papermill(monkeypatch, cells=5, fail=True, truncate=True)  # a run that dies mid-write (disk full)
    with pytest.raises(RuntimeError):
        notebook_task.execute_notebook("nb.ipynb", str(out), {}, 60, "")
    assert len(json.loads(out.read_text())["cells"]) == 3  # the previous notebook, whole
    _fake_papermill(monkeypatch, cells=4, fail=True)  # a failed cell: its notebook is kept for debugging
    with pytest.raises(RuntimeError, match="cell 2"):
        notebook_task.execute_notebook("nb.ipynb", str(out), {}, 60, "")
    assert len(json.loads(out.read_text())["cells"]) == 4
    assert sorted(p.name for p in out.parent.iterdir()) == ["01_train.ipynb"]  # no partial files
