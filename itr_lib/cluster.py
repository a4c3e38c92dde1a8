"""Where the study's work runs: one Dask client for every training run and notebook execution.

By default a local cluster (one worker process per core, one thread and one torch thread each: two single-threaded
runs use a small CPU better than one two-threaded run); with ``--scheduler ADDRESS`` or ``$DASK_SCHEDULER_ADDRESS``
an existing cluster (``dask scheduler`` + ``dask worker ADDRESS`` by hand, or Slurm through dask-jobqueue:
``docs/cluster.md``). Workers on other machines need the repository, the data root and the results folder at the
same paths (a shared filesystem); :func:`check_workers` verifies that on every worker before any run starts.

Who owns the queue: within one runner, the scheduler (each run is one task, keyed by its run name, so two runners
sharing a scheduler share the task); across runners with different schedulers on one results folder, a lock file per
run (:class:`RunLock`, ``runs/<run>.lock``, created with O_EXCL, holding host and pid, refreshed by a heartbeat) makes
the second runner wait for the first instead of training the same run again. A worker that dies mid-run (killed
process, lost machine) loses its task to another worker (the scheduler reschedules it; ``retries`` covers errors),
which takes over the dead holder's lock and resumes the run from its ``last.pt``.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from distributed import WorkerPlugin

log = logging.getLogger(__name__)

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"
CONNECT_TIMEOUT_S = 10
LOCK_HEARTBEAT_S = 15.0
LOCK_STALE_S = 120.0  # a lock of another host whose heartbeat is older than this is stale


class ClusterError(RuntimeError):
    """The scheduler cannot be reached or a worker cannot see the study's files; the message names what and the fix."""


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class TorchThreads(WorkerPlugin):
    """Sets torch's (and BLAS's) thread count on every worker, as today's single-threaded runs."""

    name = "itr-torch-threads"

    def __init__(self, threads: int = 1):
        self.threads = threads

    def setup(self, worker):
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(self.threads)
        import torch
        torch.set_num_threads(self.threads)


# The Dask configuration the study's workers start under (configs/dask/study.yaml, which says why: Dask's nannies set
# MALLOC_TRIM_THRESHOLD_, which slows training down). Other machines use the file through DASK_CONFIG (docs/cluster.md).
DASK_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "dask"


def training_worker_config() -> dict:
    """configs/dask/study.yaml as dotted keys for ``dask.config.set`` (a nested dict would replace whole sections)."""
    import yaml

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else k
            out.update(flat(v, key) if isinstance(v, dict) and v else {key: v})
        return out
    return flat(yaml.safe_load((DASK_CONFIG_DIR / "study.yaml").read_text()) or {})


def scheduler_address(scheduler: str | None = None) -> str | None:
    """The address given (``--scheduler``), else ``$DASK_SCHEDULER_ADDRESS``, else None (a local cluster)."""
    return scheduler or os.environ.get(SCHEDULER_ENV) or None


class sigint_deferred:
    """Within this block, Ctrl-C (SIGINT) and SIGTERM print ``message`` instead of raising (KeyboardInterrupt, or
    the runner's own SIGTERM handler); the previous handlers come back on exit. Only the main thread can set signal
    handlers: elsewhere this does nothing."""

    def __init__(self, message: str):
        self.message, self.previous, self.received = message, {}, 0

    def _handler(self, signum, frame) -> None:
        self.received += 1
        import sys
        print(f"\n{self.message}", file=sys.stderr, flush=True)

    def __enter__(self):
        import signal
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        import signal
        for sig, handler in self.previous.items():
            if handler is not None:
                signal.signal(sig, handler)


class Cluster:
    """A connected client, and the local cluster it owns (None when connected to an existing scheduler).
    A context manager: leaving it closes the client and a local cluster (killing its workers)."""

    def __init__(self, client, local=None):
        self.client, self.local = client, local

    @property
    def address(self) -> str:
        return self.client.scheduler.address

    @property
    def dashboard(self) -> str | None:
        try:
            return self.client.dashboard_link
        except Exception:  # noqa: BLE001 - no dashboard (bokeh missing) is not an error
            return None

    def n_workers(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1)["workers"])

    def close(self) -> None:
        """Close the client and the local cluster. A Ctrl-C while closing (the second one of an interrupted study)
        does not break the shutdown half-way (which printed tracebacks and could leave worker processes behind): it
        is reported and the shutdown finishes."""
        with sigint_deferred("the Dask cluster is shutting down; its worker processes stop in a few seconds"):
            self.client.close()
            if self.local is not None:
                self.local.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def slurm_cluster(jobs: int = 1, cores: int | None = None, memory: str | None = None, walltime: str | None = None,
                  queue: str | None = None, account: str | None = None, threads: int = 1, **kw):
    """A dask-jobqueue ``SLURMCluster`` whose jobs each run ``cores`` single-threaded worker processes with this
    repository's Python, from the repository root, torch and BLAS on ``threads`` thread(s); ``jobs`` jobs are
    requested. A field left None comes from dask-jobqueue's configuration (``~/.config/dask/jobqueue.yaml``,
    section ``jobqueue.slurm``), else: 4 cores, 16GB, 08:00:00. Needs the optional extra ``cluster``
    (``pip install -e '.[cluster]'``). ``cluster.job_script()`` shows the batch script sbatch receives."""
    import sys
    import dask.config
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as err:
        raise ClusterError("dask-jobqueue is not installed. Fix: pip install -e '.[cluster]'.") from err
    from .io import REPO_ROOT

    def conf(name, value, default):
        return value if value is not None else dask.config.get(f"jobqueue.slurm.{name}", None) or default
    cores = int(conf("cores", cores, 4))
    prologue = [f"cd {REPO_ROOT}", f"export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"]
    for var in ("ITR_DATA_ROOT", "ITR_CACHE_DIR", "HF_HUB_OFFLINE"):
        if os.environ.get(var):
            prologue.append(f"export {var}={os.environ[var]}")
    cluster = SLURMCluster(cores=cores, processes=max(1, cores // threads), memory=conf("memory", memory, "16GB"),
                           walltime=conf("walltime", walltime, "08:00:00"), queue=queue, account=account,
                           python=sys.executable, job_name="itr-study", job_script_prologue=prologue, **kw)
    if jobs:
        cluster.scale(jobs=jobs)
    return cluster


def tls_security(ca_file: str | None = None, cert: str | None = None, key: str | None = None):
    """The client's TLS credentials for a ``tls://`` scheduler: the files given (the ``--tls-ca-file`` / ``--tls-cert``
    / ``--tls-key`` of ``dask scheduler`` and ``dask worker``), else Dask's own configuration
    (``$DASK_DISTRIBUTED__COMM__TLS__CA_FILE``, ``..._CLIENT__CERT``, ``..._CLIENT__KEY`` or a Dask config file,
    ``distributed.comm.tls``); None when none is set. Encryption is required (no plain-TCP fallback)."""
    import dask.config
    from distributed.security import Security
    ca = ca_file or dask.config.get("distributed.comm.tls.ca-file", None)
    cert = cert or dask.config.get("distributed.comm.tls.client.cert", None)
    key = key or dask.config.get("distributed.comm.tls.client.key", None)
    if not (ca or cert or key):
        return None
    missing = [flag for flag, v in (("--tls-ca-file", ca), ("--tls-cert", cert)) if not v]
    if missing:
        raise ClusterError(f"TLS needs {' and '.join(missing)} as well. Fix: pass the CA file, this client's "
                           f"certificate and key (or set them in Dask's configuration: docs/cluster.md).")
    for path in (ca, cert, key):
        if path and not Path(path).is_file():
            raise ClusterError(f"TLS file {path} does not exist. Fix: check the path (docs/cluster.md makes them).")
    # the same files for every role: a client here, and the scheduler and workers of a Slurm cluster it starts
    return Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, tls_scheduler_cert=cert,
                    tls_scheduler_key=key, tls_worker_cert=cert, tls_worker_key=key, require_encryption=True)


def tls_env(security) -> dict:
    """Dask configuration variables that give a kernel (a client the notebook starts) the same TLS files."""
    if security is None or not getattr(security, "tls_ca_file", None):
        return {}
    env = {"DASK_DISTRIBUTED__COMM__TLS__CA_FILE": security.tls_ca_file,
           "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": security.tls_client_cert,
           "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": security.tls_client_key,
           "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"}
    return {k: str(v) for k, v in env.items() if v and ("-----BEGIN" not in str(v))}


def connect(scheduler: str | None = None, n_workers: int | None = None, threads: int = 1,
            timeout: float | None = None, dashboard_address: str | None = "127.0.0.1:0",
            jobqueue: str | None = None, jobs: int = 1, worker_config: dict | None = None,
            security=None) -> Cluster:
    """A client on ``scheduler`` (or ``$DASK_SCHEDULER_ADDRESS``); else, with ``jobqueue="slurm"``, on a Slurm
    cluster of ``jobs`` batch jobs (:func:`slurm_cluster`); else on a new local cluster of ``n_workers`` worker
    processes (default: one per core) with ``threads`` thread(s) each. Torch uses ``threads`` threads on every
    worker. An unreachable scheduler raises :class:`ClusterError` after ``timeout`` seconds (default
    ``CONNECT_TIMEOUT_S``). ``worker_config``: Dask configuration the local cluster's workers start under (default
    :func:`training_worker_config`, from ``configs/dask/study.yaml``). The local cluster's scheduler and dashboard
    listen on 127.0.0.1 only. A ``tls://`` scheduler needs ``security`` (a distributed ``Security``; default
    :func:`tls_security`, from Dask's configuration): docs/cluster.md."""
    from distributed import LocalCluster
    from .failures import QuietWorker, new_client
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    address = scheduler_address(scheduler)
    if jobqueue and not address:
        if jobqueue != "slurm":
            raise ClusterError(f"--jobqueue {jobqueue!r} is not supported. Fix: use --jobqueue slurm, or start the "
                               f"cluster yourself and pass --scheduler ADDRESS (docs/cluster.md).")
        security = security if security is not None else tls_security()
        local = slurm_cluster(jobs=jobs, threads=threads,
                              **({"protocol": "tls://", "security": security} if security is not None else {}))
        client = new_client(local, set_as_default=False)
    elif address:
        security = security if security is not None else tls_security()
        if address.startswith("tls://") and security is None:
            raise ClusterError(f"the scheduler {address} speaks TLS, and no TLS credentials are set. Fix: pass "
                               f"--tls-ca-file, --tls-cert and --tls-key (the files its workers use; docs/cluster.md).")
        try:
            client = new_client(address, timeout=f"{timeout}s", set_as_default=False,
                                **({"security": security} if security is not None else {}))
        except (OSError, TimeoutError) as err:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {address} within {timeout:.0f}s ({type(err).__name__}: {err}). "
                f"Fix: start it (`dask scheduler`, then `dask worker {address}` on each machine) and check the address "
                f"and port{', and the TLS files' if address.startswith('tls://') else ''}, or drop --scheduler and "
                f"unset ${SCHEDULER_ENV} to run on a local cluster.") from err
        local = None
    else:
        import dask.config
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        with dask.config.set(training_worker_config() if worker_config is None else worker_config), \
                _children_ignore_sigint():
            local = LocalCluster(n_workers=n_workers or default_workers(), threads_per_worker=threads, processes=True,
                                 host="127.0.0.1", dashboard_address=dashboard_address, silence_logs=logging.ERROR,
                                 env=env)
        client = new_client(local, set_as_default=False)
    client.register_plugin(TorchThreads(threads), name=TorchThreads.name)
    client.register_plugin(QuietWorker(local=local is not None and not jobqueue), name=QuietWorker.name)
    return Cluster(client, local)


class _children_ignore_sigint:
    """While the local cluster starts, SIGINT is ignored, so its nanny and worker processes inherit "ignore": a
    Ctrl-C at the terminal (sent to the whole process group) reaches the runner only, which shuts the cluster down
    in order, instead of every worker printing its own KeyboardInterrupt traceback. (Only an ignored signal survives
    the exec of a new process; the price: a Ctrl-C in the few seconds the cluster takes to start is ignored.)"""

    def __enter__(self):
        import signal
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        return self

    def __exit__(self, *exc):
        import signal
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


# ----------------------------------------------------------------------------------------------- start-up check
def _probe_paths(readable: list[str], writable: list[str]) -> dict:
    """Runs on a worker: which of the paths it cannot read or write (with the reason)."""
    problems = []
    for p in readable:
        if not os.path.isdir(p) or not os.access(p, os.R_OK | os.X_OK):
            problems.append(("read", p, "missing or not a readable folder"))
    for p in writable:
        probe = Path(p) / f".write-check-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        try:
            Path(p).mkdir(parents=True, exist_ok=True)
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            problems.append(("write", p, f"{type(err).__name__}: {err.strerror or err}"))
    return {"host": socket.gethostname(), "pid": os.getpid(), "problems": problems}


def check_workers(client, readable: list[str | Path] = (), writable: list[str | Path] = ()) -> int:
    """Check on every worker that each ``readable`` folder exists and each ``writable`` folder accepts a file;
    raise :class:`ClusterError` naming the worker and the path otherwise. Returns the number of workers checked."""
    readable = sorted({str(Path(p).resolve()) for p in readable})
    writable = sorted({str(Path(p).resolve()) for p in writable})
    info = client.run(_probe_paths, readable, writable)
    if not info:
        raise ClusterError(f"the scheduler {client.scheduler.address} has no workers. Fix: start some "
                           f"(`dask worker {client.scheduler.address}`).")
    bad = [f"worker {addr} (host {r['host']}, pid {r['pid']}) cannot {what} {path}: {why}"
           for addr, r in sorted(info.items()) for what, path, why in r["problems"]]
    if bad:
        raise ClusterError("; ".join(bad) + ". Fix: put the repository, the data root and the results folder on a "
                           "filesystem every worker mounts at the same path (docs/cluster.md), or start the workers "
                           "as a user who may write there.")
    return len(info)


# ----------------------------------------------------------------------------------------------- run locks
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``<run_dir>.lock``: held while one process trains the run. Created with O_EXCL and holding
    ``{host, pid, time}``; a heartbeat thread refreshes its mtime every ``heartbeat`` seconds. A lock is stale when
    its holder is a dead pid on this host, or its mtime is older than ``stale_after`` seconds (another host: a lost
    machine); a stale lock is taken over. ``acquire`` waits (polling) while a live holder trains the run."""

    def __init__(self, run_dir: str | Path, heartbeat: float = LOCK_HEARTBEAT_S, stale_after: float = LOCK_STALE_S,
                 poll: float = 1.0):
        run_dir = Path(run_dir)
        self.path = run_dir.with_name(run_dir.name + ".lock")
        self.heartbeat, self.stale_after, self.poll = heartbeat, stale_after, poll
        self.me = {"host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict | None:
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            h = json.loads(text)
        except ValueError:  # being written right now, or garbage: judge by age only
            h = {}
        h["age_s"] = age
        return h

    def stale(self, h: dict) -> bool:
        if h.get("host") == self.me["host"] and isinstance(h.get("pid"), int):
            return not _pid_alive(h["pid"]) or h["age_s"] > self.stale_after
        return h["age_s"] > self.stale_after

    def try_acquire(self) -> bool:
        """One attempt: True when this process now holds the lock (fresh, or taken over from a stale holder)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            h = self.holder()
            if h is None or not self.stale(h):
                return False
            # take over: move the stale lock aside (one contender wins the rename), check it was the one judged
            # stale (not a fresh lock a faster contender created meanwhile), then try the O_EXCL create again
            aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                return False
            moved = json.loads(aside.read_text() or "{}") if aside.stat().st_size else {}
            if moved.get("host") != h.get("host") or moved.get("pid") != h.get("pid") or \
                    moved.get("time") != h.get("time"):
                try:  # a fresh lock: put it back
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
                aside.unlink(missing_ok=True)
                return False
            aside.unlink(missing_ok=True)
            log.warning("taking over the stale lock %s of %s pid %s", self.path, h.get("host"), h.get("pid"))
            return self.try_acquire()
        with os.fdopen(fd, "w") as f:
            json.dump({**self.me, "time": time.time()}, f)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"lock-{self.path.name}")
        self._thread.start()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def acquire(self, timeout: float | None = None) -> None:
        t0, said = time.monotonic(), False
        while not self.try_acquire():
            if not said:
                h = self.holder() or {}
                log.warning("run %s is being trained by %s pid %s: waiting", self.path.stem, h.get("host"), h.get("pid"))
                said = True
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{self.path} is still held after {timeout:.0f}s")
            time.sleep(self.poll)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        h = self.holder()
        if h is not None and h.get("host") == self.me["host"] and h.get("pid") == self.me["pid"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def remove_dead_locks(results_dir: str | Path) -> list[Path]:
    """Remove the run locks under ``<results_dir>/runs/`` whose holder is a dead process on this host (a local
    worker stopped while it trained: an interrupted study). A later runner would take them over anyway; removing them
    on the way out leaves no lock behind. Locks of live processes and of other hosts stay. Returns those removed."""
    gone = []
    for path in sorted(Path(results_dir).glob("runs/*.lock")):
        lock = RunLock(path.with_suffix(""))
        h = lock.holder()
        if h and h.get("host") == lock.me["host"] and isinstance(h.get("pid"), int) and not _pid_alive(h["pid"]):
            path.unlink(missing_ok=True)
            gone.append(path)
    return gone
