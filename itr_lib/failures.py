"""Which failures the study retries, and the one line it prints for the others.

Only a lost worker is worth another try: a worker process that died (killed, out of memory, a lost machine) or a
connection that closed under a task (distributed's ``KilledWorker``, ``CommClosedError``). Every other error is
deterministic (a bad parameter value, a missing dataset or cache, a full disk, a ``ConfigError`` / ``DataError`` /
``CacheError``): retrying it repeats the same failure (and the training before it), so it is raised at once, and the
runner prints its message once, as one line without ANSI colour codes. A notebook that failed
(papermill's ``PapermillExecutionError``) is judged by the exception its kernel raised.
"""
from __future__ import annotations

import errno
import logging
import re

from distributed import WorkerPlugin

# exception names (the class or any base class, or a notebook kernel's ``ename``) that mean "a worker was lost"
WORKER_LOSS = frozenset({"KilledWorker", "CommClosedError", "StreamClosedError"})
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def _names(err: BaseException) -> set[str]:
    ename = getattr(err, "ename", None)  # PapermillExecutionError: the kernel's exception
    return {ename} if ename else {c.__name__ for c in type(err).__mro__}


def worker_lost(err: BaseException) -> bool:
    """Whether ``err`` says a worker (or its connection) was lost: the only failure retried."""
    return bool(_names(err) & WORKER_LOSS)


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def one_line(err: BaseException) -> str:
    """The message of ``err`` as the runner prints it: ``Name: message`` (the kernel's exception for a failed
    notebook), ANSI codes removed, surrounding blank lines dropped."""
    ename = getattr(err, "ename", None)
    if ename:
        text = f"{ename}: {getattr(err, 'evalue', '')}"
    elif isinstance(err, OSError) and err.errno == errno.ENOSPC:
        text = f"no space left on device: {err.filename or err}. Fix: free space there, then rerun to resume."
    else:
        text = f"{type(err).__name__}: {err}"
    return strip_ansi(text).strip()


class _DropPrefixed(logging.Filter):
    """Drops the log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


COMPUTE_FAILED = "Compute Failed"
# a local cluster's scheduler lives in the runner's process: a worker whose heartbeat finds it gone is watching the
# runner stop (Ctrl-C, SIGTERM, the end of a study), which the runner reports in its own one line; between the
# scheduler closing and its nanny stopping it, such a worker logs a 30-line CommClosedError traceback (seen in CI)
HEARTBEAT_TO_GONE_SCHEDULER = "Failed to communicate with scheduler during heartbeat"


class QuietWorker(WorkerPlugin):
    """A worker that reports a task's error once, and stops quietly: it drops its "Compute Failed" log block (key,
    task, exception, traceback, full of the kernel's ANSI codes; the error goes back to whoever submitted the task,
    which reports it once), and its progress bars hold no multiprocessing semaphore that a worker stopped mid-run
    would leak (the resource tracker's "leaked semaphore" warning). A worker of a local cluster (``local=True``)
    also drops the heartbeat traceback it logs when the runner, and with it the scheduler, stops; a remote worker
    keeps it (its scheduler going away is news to whoever reads that worker's log)."""

    name = "itr-quiet-worker"

    def __init__(self, local: bool = False):
        self.local = local

    def setup(self, worker):
        import threading
        from tqdm import tqdm
        # tqdm's default lock is a multiprocessing semaphore: a worker stopped mid-run (an interrupted study) leaves
        # it behind, and the resource tracker warns about it at exit; the worker's bars need a thread lock only
        tqdm.set_lock(threading.RLock())
        logger = logging.getLogger("distributed.worker")
        for prefix in (COMPUTE_FAILED,) + ((HEARTBEAT_TO_GONE_SCHEDULER,) if self.local else ()):
            if not any(isinstance(f, _DropPrefixed) and f.prefix == prefix for f in logger.filters):
                logger.addFilter(_DropPrefixed(prefix))


def new_client(*args, **kw):
    """``distributed.Client(*args, **kw)``, where a Client that fails to start (a refused or unreachable scheduler)
    is finalised here, before the error is raised, not later by the garbage collector. distributed's
    ``Client.__del__`` stops the client's loop under ``LoopRunner._lock``, one lock for the whole process; run by a
    collection that starts inside the next Client's start (which holds that lock), it deadlocks that thread, and
    every Client after it waits on the same lock. Seen in this repository's TLS test: after a refused client, the
    next client and the test cluster's shutdown hung until CI's time ran out. The error is re-raised without the
    traceback of the failed start (its frames hold the half-built client); its type and message are kept."""
    import gc
    from distributed import Client
    try:
        return Client(*args, **kw)
    except BaseException as err:  # noqa: BLE001 - re-raised below, once the half-built client is gone
        failure = err
    seen, e = set(), failure
    while e is not None and id(e) not in seen:  # the chain's tracebacks hold the same frames
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
    gc.collect()
    raise failure
