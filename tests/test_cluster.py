"""Training grids on a real local Dask cluster (two worker processes): same metrics as the serial runner, a worker
killed mid-run, an unreachable scheduler, the start-up check of shared paths, and the per-run lock file."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from itr_lib.cluster import ClusterError, RunLock, check_workers, connect
from itr_lib.config import TrainConfig
from itr_lib.runs import METRICS, run_grid


@pytest.fixture(scope="module")
def cluster():
    with connect(n_workers=2, threads=1) as c:
        yield c


def _grid(mini_cache, fixture_root, epochs=1, seeds=(0, 1)):
    root, _ = mini_cache
    base = dict(dataset="mini", data_root=str(fixture_root), cache_dir=str(root), dim=32, batch_size=4,
                epochs=epochs, lr=2e-3, progress=False, region_drop=0.0, token_drop=0.0, pooling="gpo")
    methods = {"baseline": {}, "selfalign": {"lca": True, "codebook_size": 16}}
    return [TrainConfig(**base, method=m, seed=s, **kw) for m, kw in methods.items() for s in seeds]


def _scores(m: dict) -> dict:
    return {f"{split}.{k}": m[split]["standard"][k] for split in ("val", "test") for k in METRICS}


def _assert_same(got: list[dict], want: list[dict]):
    assert [g["run"] for g in got] == [w["run"] for w in want]
    for g, w in zip(got, want):
        assert _scores(g) == pytest.approx(_scores(w), abs=1e-6), g["run"]


@pytest.fixture(scope="module")
def serial(tmp_path_factory, mini_cache, fixture_root):
    """The serial reference: the same grid trained one run after the other in this process, 1 torch thread."""
    out = tmp_path_factory.mktemp("serial")
    return out, run_grid(_grid(mini_cache, fixture_root, epochs=3), out, progress=False, workers=1, threads=1)


def test_grid_on_two_workers_matches_the_serial_runner(cluster, serial, tmp_path, mini_cache, fixture_root):
    ref_dir, ref = serial
    got = run_grid(_grid(mini_cache, fixture_root, epochs=3), tmp_path, progress=False, client=cluster.client)
    _assert_same(got, ref)
    # the same results layout: one published metrics file and ranks per run, every run folder finished
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == \
        sorted(p.name for p in (ref_dir / "metrics").iterdir())
    assert all((tmp_path / "runs" / r["run"] / "best.pt").is_file() for r in got)
    assert not list(tmp_path.glob("runs/*.lock"))  # every lock released
    # the runs really ran on the workers (other processes), not in this one
    pids = {p for p in cluster.client.run(os.getpid).values()}
    assert os.getpid() not in pids and len(pids) == 2
    # a rerun trains nothing: everything is recorded
    again = run_grid(_grid(mini_cache, fixture_root, epochs=3), tmp_path, progress=False, client=cluster.client)
    from itr_lib.recordio import read_record  # the records as readers see them: run_dir resolved here
    assert again == [read_record(tmp_path / "metrics" / f"{r['run']}.json") for r in got]


def test_a_worker_killed_mid_run_loses_nothing(cluster, serial, tmp_path, mini_cache, fixture_root):
    _, ref = serial
    cfgs = _grid(mini_cache, fixture_root, epochs=3)
    killed: dict = {}

    def killer():  # SIGKILL the worker process training the first run seen between two epochs
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for last in tmp_path.glob("runs/*/last.pt"):
                lock = last.parent.with_name(last.parent.name + ".lock")
                try:
                    holder = json.loads(lock.read_text())
                except (OSError, ValueError):
                    continue
                if not (last.parent / "metrics.json").exists() and holder.get("pid") != os.getpid():
                    os.kill(holder["pid"], signal.SIGKILL)
                    killed.update(holder, run=last.parent.name)
                    return
            time.sleep(0.005)

    t = threading.Thread(target=killer)
    t.start()
    result: list = []  # in a thread, so that a retried task stuck on the dead holder's lock fails instead of hanging
    grid = threading.Thread(target=lambda: result.append(run_grid(cfgs, tmp_path, progress=False,
                                                                  client=cluster.client)), daemon=True)
    grid.start()
    grid.join(300)
    t.join()
    assert result, "the grid did not finish within 300 s after the worker was killed"
    got = result[0]
    assert killed, "no run was caught between two epochs: the grid finished before the kill"
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)
    _assert_same(got, ref)  # the interrupted run resumed from last.pt and scored as if never interrupted
    assert not list(tmp_path.glob("runs/*.lock"))
    cluster.client.wait_for_workers(2, timeout=30)  # the nanny restarted the killed worker


def test_unreachable_scheduler_is_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=rf"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}.*Fix: start "
                                           r"it \(`dask scheduler`"):
        connect(f"tcp://127.0.0.1:{port}", timeout=2)
    assert time.monotonic() - t0 < 30


def test_a_client_that_fails_to_start_is_gone_before_its_error_is_raised():
    """A refused Client left to the garbage collector deadlocks a later Client's start (its __del__ takes distributed's
    process-wide LoopRunner lock, which that start holds): the TLS test hung CI that way. new_client finalises it
    first and keeps the error's type and message."""
    import gc
    from distributed import Client
    from itr_lib.failures import new_client
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gc.collect()
    before = sum(type(o) is Client for o in gc.get_objects())
    for _ in range(3):
        with pytest.raises(OSError, match=rf"Timed out trying to connect to tcp://127.0.0.1:{port} after 1 s"):
            new_client(f"tcp://127.0.0.1:{port}", timeout="1s", set_as_default=False)
        assert sum(type(o) is Client for o in gc.get_objects()) == before


def test_scheduler_address_from_the_environment(monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:1")
    with pytest.raises(ClusterError, match=r"tcp://127.0.0.1:1"):
        connect(timeout=1)


def test_a_worker_that_cannot_see_the_data_root_is_named(cluster, tmp_path):
    missing = tmp_path / "no-data-here"
    with pytest.raises(ClusterError, match=rf"worker tcp://\S+ \(host \S+, pid \d+\) cannot read {missing}"):
        check_workers(cluster.client, readable=[missing], writable=[tmp_path])
    blocked = tmp_path / "a-file" / "results"  # a results folder under a regular file cannot be created
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ClusterError, match=rf"cannot write {blocked}: NotADirectoryError"):
        check_workers(cluster.client, readable=[tmp_path], writable=[blocked])
    assert check_workers(cluster.client, readable=[tmp_path], writable=[tmp_path]) == 2


def test_lock_file_keeps_a_second_runner_waiting(tmp_path, mini_cache, fixture_root):
    cfg = _grid(mini_cache, fixture_root, epochs=1, seeds=(0,))[0]
    cfg.run_dir = str(tmp_path / "runs" / cfg.run_name())
    other = RunLock(cfg.run_dir)  # "another runner" holds the run
    assert other.try_acquire()
    assert not RunLock(cfg.run_dir).try_acquire()  # held by a live process: not stale
    done = []
    t = threading.Thread(target=lambda: done.append(run_grid([cfg], tmp_path, progress=False, workers=1)))
    t.start()
    time.sleep(2.0)
    assert not done and not Path(cfg.run_dir, "last.pt").exists()  # waiting, not training
    other.release()
    t.join(60)
    assert done and done[0][0]["run"] == cfg.run_name()


def test_a_dead_holders_lock_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = RunLock(tmp_path / "run")
    lock.path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "time": 1.0}))
    assert lock.try_acquire()
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock.path.exists()
    # another host's lock is stale only once its heartbeat is old
    far = RunLock(tmp_path / "run", stale_after=60)
    far.path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": 1.0}))
    assert not far.try_acquire()
    os.utime(far.path, (time.time() - 120, time.time() - 120))
    assert far.try_acquire()
    far.release()


def test_the_study_runner_names_an_unreachable_scheduler(tmp_path, capsys, monkeypatch):
    from itr_lib import cluster as cluster_mod
    from itr_lib.study import main
    monkeypatch.setattr(cluster_mod, "CONNECT_TIMEOUT_S", 2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    profile = str(Path(__file__).parent / "fixtures" / "profile_mini.yaml")
    rc = main(["--profile", profile, "--only", "05", "--results-dir", str(tmp_path), "--scheduler",
               f"tcp://127.0.0.1:{port}"])
    assert rc == 2
    assert f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "executed").exists()  # nothing ran


def test_slurm_recipe_builds_the_job_script_of_docs_cluster_md(monkeypatch, tmp_path):
    """The Slurm recipe of docs/cluster.md up to the batch script (no Slurm here): one job of 4 single-threaded
    workers running this repository's Python from the repository root, its workers on TLS."""
    import shutil
    pytest.importorskip("dask_jobqueue")
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make the test certificate")
    from itr_lib.cluster import slurm_cluster, tls_security
    from itr_lib.io import REPO_ROOT
    monkeypatch.setenv("ITR_DATA_ROOT", "/shared/data")
    pem, key = _self_signed(tmp_path, "study")
    tls = tls_security(pem, pem, key)
    cluster = slurm_cluster(jobs=0, cores=4, memory="16GB", walltime="08:00:00", queue="cpu", account="lab",
                            protocol="tls://", security=tls)
    try:
        script = cluster.job_script()
        assert cluster.scheduler_address.startswith("tls://")
    finally:
        cluster.close()
    assert "--tls-ca-file" in script and "--tls-cert" in script and "--tls-key" in script
    for line in ("#SBATCH -p cpu", "#SBATCH -A lab", "#SBATCH --cpus-per-task=4", "#SBATCH -t 08:00:00",
                 f"cd {REPO_ROOT}", "export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1", "export ITR_DATA_ROOT=/shared/data"):
        assert line in script.splitlines(), line
    assert f"{sys.executable} -m distributed.cli.dask_worker tls://" in script
    assert "--nthreads 1" in script and "--nworkers 4" in script
    doc = (REPO_ROOT / "docs" / "cluster.md").read_text()
    assert 'slurm_cluster(jobs=2, cores=4, memory="16GB", walltime="08:00:00", queue="cpu", account="lab",\n' \
           '                        protocol="tls://", security=tls)' in doc


def test_ctrl_c_while_the_cluster_closes_does_not_break_the_shutdown(capsys):
    import os
    import signal
    from itr_lib.cluster import Cluster

    closed = []

    class FakeClient:
        def close(self):
            os.kill(os.getpid(), signal.SIGINT)  # the user's second Ctrl-C, during the shutdown
            closed.append("client")

    class FakeLocal:
        def close(self):
            closed.append("local")
    # Python's own Ctrl-C handler (an imported dask_jobqueue replaces it process-wide with sys.exit)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        Cluster(FakeClient(), FakeLocal()).close()  # no KeyboardInterrupt escapes
        assert closed == ["client", "local"]  # the shutdown finished
        assert "shutting down" in capsys.readouterr().err
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again afterwards
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            import time
            time.sleep(1)
    finally:
        signal.signal(signal.SIGINT, outer)


def _stop(procs: list) -> None:
    """Terminate the CLI scheduler / worker processes of a test, newest first (killed after 20 s)."""
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_by_hand_recipe_of_docs_cluster_md(tmp_path, serial, mini_cache, fixture_root):
    """docs/cluster.md's two-machine commands, on one machine: `dask scheduler`, `dask worker ADDRESS --nworkers 2
    --nthreads 1` with DASK_CONFIG=configs/dask, then a grid on that scheduler: the serial metrics, and workers
    started without Dask's MALLOC_TRIM_THRESHOLD_."""
    from itr_lib.failures import new_client
    root = Path(__file__).resolve().parents[1]
    dask_cli = str(Path(sys.executable).parent / "dask")
    env = dict(os.environ, DASK_CONFIG=str(root / "configs" / "dask"))
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], env=env, cwd=root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen([dask_cli, "worker", address, "--nworkers", "2", "--nthreads", "1"], env=env,
                                      cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with new_client(address, timeout="30s", set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
            trim = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
            assert set(trim.values()) == {None}, trim  # configs/dask/study.yaml reached the nannies
        out, want = serial
        got = run_grid(_grid(mini_cache, fixture_root, epochs=3), tmp_path, progress=False, scheduler=address)
        _assert_same(got, want)
    finally:
        _stop(procs)


def test_the_local_cluster_starts_workers_without_dasks_malloc_trim_setting(cluster):
    trim = cluster.client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert set(trim.values()) == {None}, trim


def test_the_local_clusters_scheduler_and_dashboard_listen_on_localhost_only(cluster):
    from urllib.parse import urlparse
    assert urlparse(cluster.dashboard).hostname == "127.0.0.1"  # the printed link
    http = cluster.local.scheduler.http_server  # the dashboard's sockets: bound to the loopback address only
    bound = {s.getsockname()[0] for s in http._sockets.values()}
    assert bound == {"127.0.0.1"}, bound
    assert cluster.address.startswith("tcp://127.0.0.1:")


def _within(seconds: float, fn):
    """``fn()``'s result, its exception re-raised, or a failure (not a hang) when it takes longer than ``seconds``."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            box["error"] = err
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"still waiting after {seconds:.0f}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _self_signed(folder: Path, name: str) -> tuple[str, str]:
    """A self-signed certificate and its key (openssl), the recipe of docs/cluster.md."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", f"/CN={name}"], check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def test_a_tls_scheduler_runs_tasks_and_refuses_clients_without_its_certificate(tmp_path):
    """docs/cluster.md's TLS recipe on 127.0.0.1: `dask scheduler --protocol tls` and `dask worker tls://...` with
    the --tls-* files; a client with them runs a task, a client without them (or with another certificate, or over
    plain TCP) is refused."""
    import shutil
    from distributed.security import Security
    from itr_lib.cluster import tls_security
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make the test certificates")
    cert, key = _self_signed(tmp_path, "study")
    other_cert, other_key = _self_signed(tmp_path, "stranger")
    tls = ["--tls-ca-file", cert, "--tls-cert", cert, "--tls-key", key]
    dask_cli = str(Path(sys.executable).parent / "dask")
    port = _free_port()
    address = f"tls://127.0.0.1:{port}"
    procs = [subprocess.Popen([dask_cli, "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", "127.0.0.1:0", *tls],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        procs.append(subprocess.Popen([dask_cli, "worker", address, "--nworkers", "1", "--nthreads", "1",
                                       "--no-dashboard", *tls], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        def with_credentials():
            with connect(address, timeout=30, security=tls_security(cert, cert, key)) as c:
                c.client.wait_for_workers(1, timeout=60)
                workers = list(c.client.scheduler_info()["workers"])
                return c.client.submit(lambda x: x + 1, 41).result(timeout=60), workers
        answer, workers = _within(150, with_credentials)
        assert answer == 42 and workers and all(a.startswith("tls://") for a in workers)
        with pytest.raises(ClusterError, match=r"speaks TLS, and no TLS credentials are set\. Fix: pass --tls-ca-file"):
            connect(address, timeout=5)
        stranger = Security(tls_ca_file=other_cert, tls_client_cert=other_cert, tls_client_key=other_key,
                            require_encryption=True)
        # another certificate (the TLS handshake fails) or plain TCP (the connection is closed): refused, a few
        # times over, and a client with the credentials still connects afterwards (a refused client once deadlocked
        # the next one: new_client)
        for _ in range(3):
            for kw, addr in (({"security": stranger}, address), ({}, f"tcp://127.0.0.1:{port}")):
                with pytest.raises(ClusterError, match=r"cannot reach the Dask scheduler .*(FatalCommClosedError|"
                                                       r"CommClosedError|TimeoutError|OSError)"):
                    _within(60, lambda: connect(addr, timeout=5, **kw))
        assert _within(150, with_credentials)[0] == 42
    finally:
        _stop(procs)
