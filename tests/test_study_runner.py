"""The study runner under faults and bad input: what is retried (a lost worker only), what is refused up front (values
out of range, unknown datasets), where ad-hoc runs go, what a fresh clone builds (missing caches), and how Ctrl-C /
SIGTERM end a study (one line, exit 130 / 143, no lock, no tracebacks)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from itr_lib.config import ConfigError, TrainConfig
from itr_lib.features import CacheError
from itr_lib.runs import run_grid

ROOT = Path(__file__).resolve().parents[1]


def _cfg(mini_cache, fixture_root, **kw) -> TrainConfig:
    root, _ = mini_cache
    base = dict(dataset="mini", data_root=str(fixture_root), cache_dir=str(root), dim=32, batch_size=4, epochs=1,
                lr=2e-3, progress=False, region_drop=0.0, token_drop=0.0, pooling="gpo")
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def thread_client():
    """A Dask client on an in-process cluster (a worker thread): a monkeypatched function is what its tasks run."""
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc, set_as_default=False) as client:
        yield client


# ----------------------------------------------------------------------------------------------- retries
def test_a_deterministic_error_is_attempted_once(thread_client, monkeypatch, tmp_path, mini_cache, fixture_root):
    import itr_lib.train
    calls = []

    def failing(cfg):
        calls.append(cfg.run_name())
        raise CacheError("feature cache /x/train.npy does not exist. Fix: build it")
    monkeypatch.setattr(itr_lib.train, "train", failing)
    with pytest.raises(CacheError, match="does not exist"):
        run_grid([_cfg(mini_cache, fixture_root)], tmp_path, progress=False, client=thread_client)
    assert len(calls) == 1  # neither Dask's retries nor a loop of ours repeat it


def test_a_lost_worker_is_the_one_failure_tried_again(thread_client, monkeypatch, tmp_path, mini_cache,
                                                      fixture_root):
    import itr_lib.train
    from distributed.comm.core import CommClosedError
    calls = []

    def flaky(cfg):
        calls.append(1)
        if len(calls) == 1:
            raise CommClosedError("the worker's connection closed")
        return {"run": cfg.run_name(), "test": {"standard": {"mr": 12.5}}}
    monkeypatch.setattr(itr_lib.train, "train", flaky)
    cfg = _cfg(mini_cache, fixture_root)
    assert run_grid([cfg], tmp_path, progress=False, client=thread_client)[0]["run"] == cfg.run_name()
    assert len(calls) == 2


def test_failure_messages_are_one_clean_line():
    from papermill.exceptions import PapermillExecutionError
    from itr_lib.failures import one_line, worker_lost
    err = PapermillExecutionError(3, 3, "run_grid(...)", "CacheError", "\x1b[0;31mfeature cache x missing\x1b[0m",
                                  ["\x1b[0;31mTraceback\x1b[0m"])
    assert one_line(err) == "CacheError: feature cache x missing" and not worker_lost(err)
    lost = PapermillExecutionError(3, 3, "", "KilledWorker", "task train-x marked as failed", [])
    assert worker_lost(lost)
    import errno
    assert "no space left on device: /r/runs/x" in one_line(OSError(errno.ENOSPC, "No space left", "/r/runs/x"))
    assert not worker_lost(OSError(errno.ENOSPC, "No space left"))


@pytest.mark.parametrize("local", [True, False])
def test_a_local_worker_drops_the_heartbeat_traceback_of_a_stopping_runner(local):
    """CI once saw a Ctrl-C end with a worker's 30-line heartbeat traceback after the runner's one line: the worker
    of a local cluster drops that record (and a task's "Compute Failed" block); a remote worker keeps the heartbeat."""
    import logging
    from itr_lib.failures import QuietWorker
    logger = logging.getLogger("distributed.worker")
    before = list(logger.filters)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())
    handler = Keep()
    logger.addHandler(handler)
    try:
        QuietWorker(local=local).setup(worker=None)
        logger.error("Failed to communicate with scheduler during heartbeat.")
        logger.error("Compute Failed\nKey: x")
        logger.error("some other worker error")
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = before
    assert seen == (["some other worker error"] if local else
                    ["Failed to communicate with scheduler during heartbeat.", "some other worker error"])


# ----------------------------------------------------------------------------------------------- values up front
@pytest.mark.parametrize("field, value", [("epochs", 0), ("epochs", -1), ("seed", -1), ("batch_size", 0),
                                          ("lr", 0.0), ("lr_decay_frac", 1.5), ("region_drop", 1.0),
                                          ("base_loss", "hinge"), ("pooling", "avg")])
def test_trainconfig_refuses_values_out_of_range(field, value):
    with pytest.raises(ConfigError, match=rf"{field} = {re.escape(repr(value))} \(allowed: "):
        TrainConfig(**{field: value})


def test_notebook_guard_refuses_values_out_of_range():
    from itr_lib import params
    ns: dict = {}
    guard = params.Guard(ns)
    ns.update({"__annotations__": {"EPOCHS": "int", "SEEDS": "list"}, "EPOCHS": -1, "SEEDS": [0, -2]})
    with pytest.raises(params.ParameterError, match=r"EPOCHS = -1: must be an integer >= 1; SEEDS = \[0, -2\]: "
                                                    r"must be a list of integers >= 0"):
        guard.check(ns)


def test_a_negative_epoch_count_is_one_line_before_anything_starts(tmp_path, capsys):
    from itr_lib.study import main
    out = tmp_path / "results"
    rc = main(["--profile", "smoke", "--only", "01", "-p", "EPOCHS", "-1", "--results-dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.count("\n") == 0 and "EPOCHS = -1 (01_train): must be an integer >= 1" in err, err
    assert not out.exists()  # no results folder, no run folder: nothing started
    rc = main(["--profile", "smoke", "--only", "07", "-p", "OVERRIDES", "{epochs: 0}", "--dry-run"])
    assert rc == 2 and "OVERRIDES.epochs = 0 (07_recipe): must be an integer >= 1" in capsys.readouterr().err
    rc = main(["--profile", "smoke", "--only", "01", "-p", "DATASET", "nosuch", "--dry-run"])
    assert rc == 2 and "dataset 'nosuch' (01_train): dataset JSON" in capsys.readouterr().err
    rc = main(["--profile", "smoke", "--only", "01", "-p", "METHOD", "nosuch", "--dry-run"])  # the registry's names
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().count("\n") == 0, err
    assert "METHOD = 'nosuch' (01_train): must be one of aladin | baseline | mrsw | scan | selfalign | tgdt" in err
    assert main(["--profile", "smoke", "--only", "01", "-p", "METHOD", "tgdt", "--dry-run"]) == 0


def test_the_committed_profiles_pass_the_value_checks(capsys):
    from itr_lib.study import main
    for prof in ("smoke", "full", str(ROOT / "tests" / "fixtures" / "profile_mini.yaml")):
        assert main(["--profile", prof, "--dry-run"]) == 0, capsys.readouterr().err


def test_a_failed_run_leaves_no_empty_run_folder(monkeypatch, tmp_path, mini_cache, fixture_root):
    import itr_lib.train

    def failing(cfg):
        Path(cfg.run_dir).mkdir(parents=True)
        (Path(cfg.run_dir) / "log.jsonl").write_text("")
        raise ValueError("no epoch finished")
    monkeypatch.setattr(itr_lib.train, "train", failing)
    with pytest.raises(ValueError, match="no epoch finished"):
        run_grid([_cfg(mini_cache, fixture_root)], tmp_path, progress=False, workers=1)
    assert not (tmp_path / "runs").exists() and not list(tmp_path.glob("runs/*.lock"))


# ----------------------------------------------------------------------------------------------- where, what is reused
def test_a_run_with_overrides_goes_to_results_adhoc(capsys):
    from itr_lib.study import main
    assert main(["--profile", "smoke", "--only", "01", "-p", "EPOCHS", "1", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["results_dir"] == str(ROOT / "results" / "adhoc")
    assert main(["--profile", "smoke", "--only", "01", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["results_dir"] == str(ROOT / "results" / "smoke")


def test_a_reused_recorded_run_says_so(tmp_path, capsys, mini_cache, fixture_root):
    from recorded_runs import record_run
    cfg = _cfg(mini_cache, fixture_root)
    record_run(tmp_path, cfg, val_mr=30.0, hits_seed=0)
    got = run_grid([_cfg(mini_cache, fixture_root)], tmp_path, progress=False, workers=1)
    assert got[0]["run"] == cfg.run_name()
    assert f"reused {cfg.run_name()}, test mR 29.00" in capsys.readouterr().out


def test_the_summary_names_only_folders_that_exist(tmp_path):
    from itr_lib.study import summary
    (tmp_path / "executed").mkdir()
    first = summary(tmp_path, 60).splitlines()[0]
    assert first.endswith("(executed/)") and "tables/" not in first


def test_retrain_on_a_fresh_clone_builds_the_missing_caches(tmp_path, capsys, fixture_root):
    """A fresh clone: records, no feature cache; --retrain (and any training) builds them, as 00_data_prep does,
    instead of stopping on a CacheError."""
    from recorded_runs import record_run
    from itr_lib.runs import retrain
    cache, results = tmp_path / "cache", tmp_path / "results"
    cache.mkdir()
    cfg = TrainConfig(dataset="mini", data_root=str(fixture_root), cache_dir=str(cache), dim=32, batch_size=4,
                      epochs=1, progress=False)
    record_run(results, cfg, val_mr=30.0, hits_seed=0)
    rows = retrain(results, ["*"], workers=1)
    assert rows[0]["run"] == cfg.run_name() and rows[0]["retrained_mr"] is not None
    assert "feature caches of mini: 6 missing under" in capsys.readouterr().out
    assert len(list((cache / "mini").glob("*.npy"))) >= 6 and (results / "runs" / cfg.run_name() / "best.pt").is_file()


def test_features_help_names_only_make_targets_that_exist(capsys):
    from itr_lib.features import main
    with pytest.raises(SystemExit):
        main(["--help"])
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    named = re.findall(r"make ([\w-]+)", capsys.readouterr().out)
    assert set(named) <= targets, named


# ----------------------------------------------------------------------------------------------- the runner, end to end
def _runner(tmp_path, mini_cache, epochs: int, *extra: str) -> tuple[subprocess.Popen, Path]:
    root, _ = mini_cache
    profile = tmp_path / "p.yaml"
    profile.write_text(f"timeout: 600\nparameters: {{DATA_ROOT: tests/fixtures, DEVICE: cpu, CACHE_DIR: {root}}}\n"
                       f"notebooks:\n  - notebook: 01_train\n    parameters: {{DATASET: mini, EPOCHS: {epochs}, "
                       f"BATCH_SIZE: 8, DIM: 32, THREADS: 1, METHOD: baseline}}\n")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT), ITR_PROGRESS="0", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "itr_lib.study", "--profile", str(profile), "--results-dir",
                             str(out), "--workers", "2", *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, out


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[0] + "\n(killed: the runner did not stop)"


NOISE = ("Traceback", "KeyboardInterrupt", "CancelledError", "Parent appears", "leaked semaphore", "Compute Failed",
         "\x1b[")


@pytest.mark.slow
def test_a_failed_notebook_is_run_once_and_its_message_printed_once(tmp_path, mini_cache):
    # values that pass the up-front checks but fail inside the notebook (an unknown METHOD is refused before)
    proc, out = _runner(tmp_path, mini_cache, 1, "-p", "METHOD", "selfalign", "-p", "LCA", "false", "-p", "CRA", "false")
    text = _finish(proc, 300)
    assert proc.returncode == 1, text
    assert text.count("needs lca=True and/or cra=True") == 1, text
    assert text.count("[study] 01_train.ipynb ->") == 1, text  # one attempt of the notebook
    assert not [n for n in NOISE if n in text], text
    assert not list(out.glob("runs/*"))  # the failed run left no folder


@pytest.mark.slow
@pytest.mark.parametrize("sig, group, code, said", [(signal.SIGINT, True, 130, "interrupted:"),
                                                     (signal.SIGTERM, False, 143, "terminated (SIGTERM):")])
def test_ctrl_c_and_sigterm_end_with_one_line_and_no_lock(tmp_path, mini_cache, sig, group, code, said):
    """Ctrl-C at a terminal reaches the runner's whole process group (workers included); SIGTERM (``kill PID``) the
    runner alone. Either way: the one line with the resume hint, its exit code, no traceback, no lock left."""
    proc, out = _runner(tmp_path, mini_cache, 400)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list(out.glob("runs/*/last.pt")) and proc.poll() is None:
        time.sleep(0.2)
    assert list(out.glob("runs/*.lock")), "training never started"
    (os.killpg if group else os.kill)(proc.pid, sig)
    text = _finish(proc)
    assert proc.returncode == code, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines[-1] == f"{said} finished runs and notebooks are kept; rerun the same command to resume.", text
    assert sum(said in ln for ln in lines) == 1 and not [n for n in NOISE if n in text], text
    time.sleep(1.0)
    assert not list(out.glob("runs/*.lock"))


# ----------------------------------------------------------------------------------------------- the smoke profile
def test_markdown_tables_keep_seed_lists_as_text_and_blank_missing_values(tmp_path):
    import numpy as np
    import pandas as pd
    from itr_lib.tables import write_table
    df = pd.DataFrame({"variant": ["baseline", "lca+cra"], "n_seeds": [1, 1], "seeds": ["0", "0"], "mr": [40.0, 41.0],
                       "mr_std": [0.0, 0.0], "mr_optimistic": [45.0, np.nan], "published": [False, False]})
    _, md = write_table(df, "main_x", tmp_path)
    rows = md.read_text().splitlines()[2:]
    assert all(r.split("|")[3].strip() == "0" for r in rows), rows  # the seed list "0", not 0.00
    assert "nan" not in md.read_text() and "45.00" in md.read_text()


def test_ivfpq_on_a_small_gallery_trains_without_faiss_warnings(capfd):
    import numpy as np
    from itr_lib.efficiency.indexes import build_faiss
    x = np.random.default_rng(0).standard_normal((2000, 64)).astype(np.float32)
    index = build_faiss("ivfpq", x)
    assert index.ntotal == 2000
    assert "please provide at least" not in capfd.readouterr().err


def test_the_smoke_profile_writes_results_md_and_leaves_the_readme(tmp_path):
    import yaml
    from itr_lib.report import write_report
    smoke = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    params = next(e["parameters"] for e in smoke["notebooks"] if e["notebook"] == "05_results")
    assert params.get("WRITE_REPORT") is True and not params.get("README_BLOCK")
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- RESULTS:BEGIN -->\nold\n<!-- RESULTS:END -->\n")
    assert write_report(tmp_path, readme=readme, readme_block=False) == [tmp_path / "RESULTS.md"]
    assert (tmp_path / "RESULTS.md").read_text().startswith("# Results") and "old" in readme.read_text()


def test_the_runner_builds_the_caches_of_the_selected_notebooks_unless_00_does(monkeypatch, tmp_path):
    import itr_lib.prepare
    from itr_lib.prepare import build_missing_caches
    from itr_lib.study import executions, load_profile
    built = []
    monkeypatch.setattr(itr_lib.prepare, "ensure_caches", lambda ds, root, cache, **kw: built.append((ds, root)))
    prof = load_profile(str(ROOT / "tests" / "fixtures" / "profile_mini.yaml"))
    build_missing_caches(executions(prof, tmp_path, ["01", "03"]))  # --only 01 03: nothing builds mini's caches
    assert built == [("mini", ROOT / "tests" / "fixtures")]
    built.clear()
    build_missing_caches(executions(prof, tmp_path, ["00", "01"]))  # 00_data_prep builds them itself
    assert built == []


def test_the_runner_echoes_the_reused_runs_a_notebook_printed(tmp_path):
    from itr_lib.study import _reused_lines
    nb = {"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "stream", "name": "stdout", "text": ["ucm-selfalign-x\n", "reused ucm-selfalign-x, test mR 43.21\n"]}]}]}
    (tmp_path / "01.ipynb").write_text(json.dumps(nb))
    assert _reused_lines(tmp_path / "01.ipynb") == ["reused ucm-selfalign-x, test mR 43.21"]


def test_the_runner_builds_no_cache_up_front_for_02_and_07(monkeypatch, tmp_path):
    """02 and 07 rebuild their tables from the records; a run they must train builds its own caches (run_grid), so
    the runner builds none for them (a clone without caches rebuilds the tables)."""
    import itr_lib.prepare
    from itr_lib.prepare import build_missing_caches
    from itr_lib.study import executions, load_profile
    built = []
    monkeypatch.setattr(itr_lib.prepare, "ensure_caches", lambda ds, root, cache, **kw: built.append((ds, root)))
    prof = load_profile(str(ROOT / "tests" / "fixtures" / "profile_mini.yaml"))
    build_missing_caches(executions(prof, tmp_path, ["02", "07"]))
    assert built == []
