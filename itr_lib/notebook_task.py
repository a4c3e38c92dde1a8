"""The task a Dask worker runs for one notebook execution of the study runner (:mod:`itr_lib.study`), and what stops
its kernel when the study is interrupted.

A module of its own so that its functions reach the workers by name: under ``python -m itr_lib.study`` the runner's
module is ``__main__``, whose functions Dask would pickle by value (each worker with its own copy of the kernel list).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

from .io import REPO_ROOT, umask_mode

_KERNELS: list = []  # the kernel managers of the notebooks this process executes (stop_kernels ends them)


def encrypted_kernel_manager():
    """A kernel manager that provisions CurveZMQ keys when pyzmq and the kernelspec support them (ipykernel >= 7.3
    otherwise warns on every start that the kernel runs over TCP without encryption); plain TCP where they do not.
    Each manager is remembered, so an interrupted study can stop its kernels (:func:`stop_kernels`)."""
    import zmq
    from jupyter_client.manager import KernelManager

    class EncryptedKernelManager(KernelManager):
        def __init__(self, **kw):
            super().__init__(**kw)
            if zmq.has("curve"):
                self.transport_encryption = "auto"
            _KERNELS.append(self)
    return EncryptedKernelManager


def stop_kernels() -> int:
    """Stop (SIGTERM to its process group) every kernel this process started that still runs; run on each worker
    when a study is interrupted, before the workers stop (a kernel orphaned by its worker would otherwise go on,
    then print "Parent appears to have exited"). Returns how many were stopped."""
    import signal
    n = 0
    while _KERNELS:
        km = _KERNELS.pop()
        proc = getattr(getattr(km, "provisioner", None), "process", None)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the kernel leads its own session (jupyter_client)
                proc.wait(timeout=10)
                n += 1
            except (OSError, Exception):  # noqa: BLE001 - gone meanwhile, or not a group leader
                pass
    return n


def execute_notebook(notebook: str, output: str, parameters: dict, timeout: int, scheduler: str,
                      env: dict | None = None) -> float:
    """Execute one notebook with papermill; the task a Dask worker runs (importable by any worker). The kernel
    inherits ``$DASK_SCHEDULER_ADDRESS`` (and ``env``: the TLS files of a ``tls://`` scheduler), so the notebook's
    training runs go to the same cluster; the task secedes from the worker's thread pool while the notebook runs, so
    those runs can use every worker."""
    import papermill as pm
    from .cluster import SCHEDULER_ENV
    # set for the kernel this task starts, then put back: an in-process cluster shares os.environ with the caller,
    # which must not keep pointing at a scheduler that closes with the study
    env = {SCHEDULER_ENV: scheduler, **(env or {})}
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        try:
            from distributed import secede
            secede()
        except ValueError:  # not inside a Dask task (called directly)
            pass
        t0 = time.perf_counter()
        with executed_notebook(output) as partial:
            pm.execute_notebook(notebook, partial, parameters=parameters, kernel_name="python3", cwd=str(REPO_ROOT),
                                execution_timeout=timeout, progress_bar=False, log_output=False,
                                kernel_manager_class=encrypted_kernel_manager())
        return time.perf_counter() - t0
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def executed_notebook(output: str | os.PathLike):
    """A temp path beside ``output`` for papermill to write the executed notebook to as it runs; it replaces
    ``output`` in one rename at the end (the umask's permissions), so two runners never leave a truncated notebook.
    When the execution fails, its notebook (the error in its cell) still replaces ``output`` if it is readable
    JSON, for debugging; a truncated one is removed and ``output`` kept as it was."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.stem}.", suffix=".partial.ipynb")
    os.close(fd)
    try:
        yield tmp
    except BaseException:
        if _readable(tmp):
            os.chmod(tmp, umask_mode())
            os.replace(tmp, output)
        else:
            Path(tmp).unlink(missing_ok=True)
        raise
    os.chmod(tmp, umask_mode())
    os.replace(tmp, output)


def _readable(notebook: str) -> bool:
    try:
        json.loads(Path(notebook).read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False
