"""The study runner: execute the numbered notebooks in order with papermill, per profile.

    python -m itr_lib.study --profile smoke|full [--only 00 02 ...] [-p NAME VALUE ...] [--timeout S]
                            [--scheduler tls://HOST:8786 --tls-ca-file CA --tls-cert CERT --tls-key KEY] [--workers N]

A profile is ``configs/<profile>.yaml``: a list of notebook executions, each with its parameters. Every
parameter name is checked against the notebook's ``parameters`` cell (``papermill.inspect_notebook``):
a typo is an error, not papermill's warning. Notebooks run with kernel ``python3``, the repository root as
working directory, absolute output paths and an execution timeout; executed copies go to
``results/<profile>/executed/``, and ``results/<profile>/study.json`` records the parameters, the git
commit and the time of each execution. An entry with ``workers: N`` executes its ``runs`` N at a time
(separate kernels; give them ``THREADS: 1`` on a small CPU). Training runs inside the notebooks are skipped when already
finished, so rerunning an interrupted study resumes it.

Everything executes on one Dask cluster (:mod:`itr_lib.cluster`, ``docs/cluster.md``): the notebook executions are
tasks, and the kernels send their training runs to the same scheduler (``$DASK_SCHEDULER_ADDRESS``). By default a local
cluster (one worker process per core, one thread each); ``--scheduler ADDRESS`` (or ``$DASK_SCHEDULER_ADDRESS``) runs
on an existing cluster whose workers share the repository, the data root and the results folder.

Before anything starts, parameter names and values are checked (``-p EPOCHS -1`` is one line naming the parameter,
the value and the allowed range) and missing feature caches are built (:mod:`itr_lib.prepare`). A run with ``-p``
overrides writes to ``results/adhoc`` unless ``--results-dir`` says otherwise. A failed notebook is not retried
unless its worker was lost (:mod:`itr_lib.failures`); its one message is printed once (exit 1). Ctrl-C and SIGTERM
stop the kernels and the cluster, remove the locks of stopped runs and print one line (exit 130 / 143).

``--retrain GLOB`` calls :func:`itr_lib.runs.retrain`: checkpoints are not committed, so a fresh clone that needs
them (04_efficiency times the lowest-seed checkpoint of each method, 03 reads two) retrains those runs from the
configs recorded in ``metrics/<run>.json`` and reports how far the new test mR lies from the recorded one.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path

from .failures import strip_ansi
from .io import REPO_ROOT, git_commit, read_json, write_json
from .cost import dry_run_estimate, format_estimate
from .notebook_task import encrypted_kernel_manager  # noqa: F401  (the runner's kernel manager, for callers)

log = logging.getLogger(__name__)

NOTEBOOKS = REPO_ROOT / "notebooks"
CONFIGS = REPO_ROOT / "configs"


class StudyError(ValueError):
    pass


def profile_dir(profile: str) -> Path:
    return REPO_ROOT / "results" / profile


def results_folder(profile: str, results_dir: str | Path | None = None, overrides: dict | None = None) -> Path:
    """Where a study writes: ``results_dir`` when given; else ``results/adhoc`` for a run with ``-p`` overrides (as
    notebooks opened by hand do: ad-hoc runs never mix into a profile's tables); else ``results/<profile>``."""
    if results_dir:
        return Path(results_dir).resolve()
    return REPO_ROOT / "results" / "adhoc" if overrides else profile_dir(profile_name(profile))


def profile_name(profile: str) -> str:
    return Path(profile).stem if profile.endswith((".yaml", ".yml")) else profile


def load_profile(profile: str) -> dict:
    """``configs/<profile>.yaml``, or a YAML file given by path."""
    path = Path(profile) if profile.endswith((".yaml", ".yml")) else CONFIGS / f"{profile}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem != "published")
        raise StudyError(f"profile file {path} not found. Fix: use one of {options}, or create {path.name}.")
    import yaml
    prof = yaml.safe_load(path.read_text()) or {}
    if not isinstance(prof.get("notebooks"), list):
        raise StudyError(f"{path}: field 'notebooks' (a list of {{notebook, parameters}}) is missing.")
    return prof


def notebook_path(name: str) -> Path:
    matches = sorted(NOTEBOOKS.glob(f"{name}*.ipynb"))
    if not matches:
        raise StudyError(f"no notebook matches '{name}' in {NOTEBOOKS}. Fix: check the profile's 'notebook' field.")
    return matches[0]


def check_parameters(nb: Path, params: dict) -> None:
    """Raise StudyError for parameter names the notebook's ``parameters`` cell does not define."""
    import papermill as pm
    declared = pm.inspect_notebook(str(nb))
    if not declared:
        raise StudyError(f"{nb} has no cell tagged 'parameters'. Fix: tag its parameter cell.")
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise StudyError(f"{nb.name}: unknown parameter(s) {unknown}; it takes {sorted(declared)}. "
                         f"Fix: correct the name in the profile or the call.")


def executions(prof: dict, out_dir: Path, only: list[str] | None = None,
               overrides: dict | None = None) -> list[dict]:
    """Expand the profile into concrete executions (notebook, output, parameters).

    The profile's top-level ``parameters`` apply to every notebook that declares them; a notebook entry's
    own ``parameters`` and ``runs`` items must all be declared by that notebook (checked later). ``overrides``
    (``-p NAME VALUE`` on the command line) apply last to every selected execution whose notebook declares them;
    an override that no selected notebook declares is an error."""
    import papermill as pm
    common = dict(prof.get("parameters", {}))
    overrides, used, selected = dict(overrides or {}), set(), []
    todo = []
    for entry in prof["notebooks"]:
        name = entry["notebook"]
        if only and not any(name.startswith(o) for o in only):
            continue
        nb = notebook_path(name)
        declared = set(pm.inspect_notebook(str(nb)))
        selected.append(nb.name)
        mine = {k: v for k, v in overrides.items() if k in declared}
        used |= set(mine)
        shared = {k: v for k, v in {**common, "RESULTS_DIR": str(out_dir)}.items() if k in declared}
        for i, item in enumerate(entry.get("runs") or [{}]):
            params = {**shared, **entry.get("parameters", {}), **item, **mine}
            suffix = item.get("_suffix") or "-".join(str(v) for v in item.values() if isinstance(v, (str, int)))
            params.pop("_suffix", None)
            stem = nb.stem + (f"-{suffix}" if suffix else "")
            todo.append({"notebook": nb, "output": out_dir / "executed" / f"{stem}.ipynb", "parameters": params,
                         "overrides": mine, "group": len(todo) if i == 0 else todo[-1]["group"],
                         "workers": int(entry.get("workers", 1))})
    unknown = sorted(set(overrides) - used)
    if unknown:
        raise StudyError(f"-p {', '.join(unknown)}: no selected notebook takes {'it' if len(unknown) == 1 else 'them'} "
                         f"(selected: {', '.join(selected) or 'none'}). Fix: check the name, or select the notebook "
                         f"that declares it with --only.")
    return todo


def execution_entry(t: dict, secs: float, previous: dict | None) -> dict:
    """The ``study.json`` entry of a finished execution. One run with ``-p`` overrides (a ``METHODS`` subset, say)
    is not the profile's execution: it records its ``overrides`` and carries the last execution without overrides
    under ``full`` (its seconds, commit and time), which the cost tables read (:mod:`itr_lib.cost`)."""
    entry = {"notebook": t["notebook"].name, "parameters": t["parameters"], "seconds": round(secs, 1),
             "git_commit": git_commit(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    overrides = t.get("overrides") or {}
    if overrides:
        entry["overrides"] = overrides
        full = (previous or {}).get("full") if (previous or {}).get("overrides") else previous
        if full:
            entry["full"] = {k: full[k] for k in ("seconds", "git_commit", "finished") if k in full}
    return entry


def shared_paths(todo: list[dict]) -> list[Path]:
    """The folders every worker must read: the repository and each data root the executions name."""
    from .data import data_root
    roots = {REPO_ROOT}
    for t in todo:
        root = t["parameters"].get("DATA_ROOT")
        try:
            roots.add(data_root(REPO_ROOT / root if root else None))
        except ValueError:  # missing here too: the notebook reports it with its own fix
            pass
    return sorted(roots)


class NotebookFailed(StudyError):
    """A notebook raised: the message is the kernel's exception, once, and the executed notebook to read."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as an interruption (exit code 143)."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _reused_lines(executed: Path, most: int = 3) -> list[str]:
    """The ``reused <run>, test mR x`` lines an executed notebook printed (:func:`itr_lib.runs.run_grid`)."""
    try:
        nb = read_json(executed)
    except (OSError, ValueError):
        return []
    lines = [ln for c in nb.get("cells", []) for o in c.get("outputs", []) if o.get("name") == "stdout"
             for ln in "".join(o.get("text", "")).splitlines() if ln.startswith("reused ")]
    return lines[:most] + ([f"... and {len(lines) - most} more reused"] if len(lines) > most else [])


def run_study(profile: str, only: list[str] | None = None, timeout: int | None = None, dry_run: bool = False,
              results_dir: str | Path | None = None, overrides: dict | None = None, scheduler: str | None = None,
              n_workers: int | None = None, jobqueue: str | None = None, jobs: int = 1, security=None,
              notebook_retries: int = 1) -> dict:
    """Execute the profile's notebooks on a Dask cluster (:mod:`itr_lib.cluster`): a local one of ``n_workers``
    processes (default: one per core), the scheduler ``scheduler`` / ``$DASK_SCHEDULER_ADDRESS`` (``security``: its
    TLS credentials), or ``jobs`` Slurm jobs (``jobqueue="slurm"``, :func:`itr_lib.cluster.slurm_cluster`).

    Before anything starts, every parameter name and value is checked (:func:`check_parameters`,
    :func:`itr_lib.prepare.value_problems`) and the feature caches the selected notebooks need are built where
    missing (:func:`itr_lib.prepare.build_missing_caches`); then every worker must see the repository and the data root and be able to write
    the results folder (:func:`results_folder`: ``results/adhoc`` for a run with overrides). A notebook that fails is
    not retried, unless its worker was lost (at most ``notebook_retries`` times): :class:`NotebookFailed` carries
    the kernel's one message. However the study ends, the cluster is closed and no lock of a stopped worker remains."""
    from distributed import as_completed
    from . import notebook_task as tasks  # a module of its own: under `python -m` this one is __main__, whose
    # functions Dask would ship by value (each worker with its own copy of the kernel list)
    from .cluster import check_workers, connect, remove_dead_locks, tls_env
    from .failures import one_line, worker_lost
    from .prepare import build_missing_caches, value_problems
    prof = load_profile(profile)
    out_dir = results_folder(profile, results_dir, overrides)
    todo = executions(prof, out_dir, only, overrides)
    for t in todo:  # check every execution before running any
        check_parameters(t["notebook"], t["parameters"])
    problems = value_problems(todo)
    if problems:
        raise StudyError(problems)
    manifest_path = out_dir / "study.json"
    manifest = read_json(manifest_path) if manifest_path.is_file() else {"profile": profile, "executions": {}}
    if dry_run:
        return {"planned": [str(t["output"]) for t in todo], "results_dir": str(out_dir),
                **dry_run_estimate(todo, out_dir, profile_dir(profile_name(profile)))}
    timeout = timeout or prof.get("timeout", 3600)
    t_study = time.perf_counter()
    build_missing_caches(todo, say=lambda m: print(f"[study] {m}", flush=True))
    out_dir.mkdir(parents=True, exist_ok=True)
    cluster = connect(scheduler, n_workers=n_workers, jobqueue=jobqueue, jobs=jobs, security=security)
    if jobqueue:
        cluster.client.wait_for_workers(1)
    try:
        n = check_workers(cluster.client, readable=shared_paths(todo), writable=[out_dir])
        where = "local cluster" if cluster.local is not None else f"scheduler {cluster.address}"
        print(f"[study] {where}: {n} workers; dashboard {cluster.dashboard}", flush=True)
        if cluster.local is None and cluster.address.startswith("tcp://") and \
                not cluster.address.startswith(("tcp://127.", "tcp://localhost:", "tcp://[::1]")):
            print(f"[study] warning: {cluster.address} is plain TCP: anyone who reaches that port runs code as the "
                  f"workers' user. Use TLS (docs/cluster.md).", flush=True)

        def record(t: dict, secs: float) -> None:
            # re-read: another runner (e.g. a concurrent --only) may have recorded executions meanwhile
            if manifest_path.is_file():
                manifest["executions"] = {**manifest["executions"], **read_json(manifest_path).get("executions", {})}
            name = t["output"].name
            manifest["executions"][name] = execution_entry(t, secs, manifest["executions"].get(name))
            write_json(manifest_path, manifest)
            print(f"[study]   {t['output'].name} done in {secs:.0f}s", flush=True)
            for line in _reused_lines(t["output"]):
                print(f"[study]     {line}", flush=True)

        # the executions of one profile entry run ``workers`` at a time (e.g. 01_train runs side by side); entries
        # run in order, each after the previous one finished (notebooks talk through files)
        groups: dict[int, list[dict]] = {}
        for t in todo:
            groups.setdefault(t["group"], []).append(t)
        client, futs, env = cluster.client, {}, tls_env(cluster.client.security)
        try:
            for items in groups.values():
                queue, window = list(items), max(1, items[0]["workers"])
                running = as_completed(loop=client.loop)

                def submit(t: dict | None = None, attempt: int = 0) -> None:
                    t = t or queue.pop(0)
                    print(f"[study] {t['notebook'].name} -> {t['output']}", flush=True)
                    f = client.submit(tasks.execute_notebook, str(t["notebook"]), str(t["output"]), t["parameters"],
                                      timeout, cluster.address, env, retries=0,
                                      key=f"notebook-{t['output'].stem}-{time.time_ns()}")
                    futs[f] = (t, attempt)
                    running.add(f)
                while queue and running.count() < window:
                    submit()
                for f in running:
                    t, attempt = futs.pop(f)
                    if f.status == "error":
                        err = f.exception()
                        if worker_lost(err) and attempt < notebook_retries:
                            print(f"[study]   {t['output'].name}: a worker was lost ({one_line(err)}); "
                                  f"running it again", flush=True)
                            submit(t, attempt + 1)
                            continue
                        raise NotebookFailed(f"{t['notebook'].name} failed: {one_line(err)} (the executed notebook: "
                                             f"{t['output']})")
                    record(t, f.result())
                    if queue:
                        submit()
        except BaseException:  # Ctrl-C, SIGTERM or a failed notebook: cancel what is queued or running
            if futs:
                client.cancel(list(futs), force=True)
                try:  # the kernels of notebooks still running: stop them before their workers go
                    client.run(tasks.stop_kernels)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            raise
    finally:
        cluster.close()
        remove_dead_locks(out_dir)
    if manifest_path.is_file():
        manifest["executions"] = {**manifest["executions"], **read_json(manifest_path).get("executions", {})}
    manifest["last_study_seconds"] = round(time.perf_counter() - t_study, 1)
    manifest["git_commit"] = git_commit()
    write_json(manifest_path, manifest)
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m itr_lib.study", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="smoke", help="configs/<profile>.yaml (smoke | full) or a YAML path")
    p.add_argument("--results-dir", default=None,
                   help="output folder (default: results/<profile>; with -p overrides: results/adhoc)")
    p.add_argument("--only", nargs="*", default=None, help="notebook name prefixes to run (e.g. 00 02)")
    p.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override a notebook parameter for every selected execution, VALUE read as YAML "
                        "(e.g. --only 01 -p DATASET ucm -p EPOCHS 1; results go to results/adhoc unless "
                        "--results-dir says otherwise); a name the notebook lacks, or a value outside its range, "
                        "is an error")
    p.add_argument("--timeout", type=int, default=None, help="per-cell execution timeout in seconds")
    p.add_argument("--dry-run", action="store_true", help="check the profile and parameters, run nothing")
    p.add_argument("--retrain", nargs="+", default=None, metavar="GLOB",
                   help="instead of running notebooks: retrain the finished runs matching these run-name globs "
                        "whose checkpoints are missing (e.g. 'rsicd-*-s0-*'), from their recorded configs")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on this Dask scheduler (e.g. tls://host:8786; default: $DASK_SCHEDULER_ADDRESS, else a "
                        "local cluster); workers must share the repository, data root and results folder "
                        "(docs/cluster.md)")
    for flag, what in (("--tls-ca-file", "CA certificate"), ("--tls-cert", "this client's certificate"),
                       ("--tls-key", "this client's private key")):
        p.add_argument(flag, default=None, metavar="PEM",
                       help=f"a tls:// scheduler: the {what} (as `dask worker {flag}`; default: Dask's configuration)")
    p.add_argument("--workers", type=int, default=None,
                   help="local cluster: worker processes, 1 thread each (default: one per core)")
    p.add_argument("--jobqueue", choices=["slurm"], default=None,
                   help="start the cluster as Slurm jobs through dask-jobqueue (extra 'cluster'; docs/cluster.md)")
    p.add_argument("--jobs", type=int, default=1, help="with --jobqueue: batch jobs to request")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import distributed  # noqa: F401  (its import configures its own loggers, some at INFO: quiet them after it)
    for name in ["distributed"] + [n for n in logging.root.manager.loggerDict if n.startswith("distributed.")]:
        logging.getLogger(name).setLevel(logging.WARNING)  # the scheduler's INFO lines drown the study's
    import signal
    from .cluster import ClusterError, remove_dead_locks, tls_security
    from .failures import one_line, worker_lost
    import yaml
    overrides = {name: yaml.safe_load(value) for name, value in a.param}
    out = results_folder(a.profile, a.results_dir, overrides)
    previous = signal.signal(signal.SIGTERM, _raise_terminated) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        security = tls_security(a.tls_ca_file, a.tls_cert, a.tls_key)
        if a.retrain:
            return _retrain(out, a)
        res = run_study(a.profile, a.only, a.timeout, a.dry_run, a.results_dir, overrides, a.scheduler, a.workers,
                        a.jobqueue, a.jobs, security)
    except (StudyError, ClusterError) as err:
        print(f"error: {strip_ansi(str(err))}", file=sys.stderr)
        return 1 if isinstance(err, NotebookFailed) else 2
    except KeyboardInterrupt as err:
        remove_dead_locks(out)
        how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        print(f"\n{how}: finished runs and notebooks are kept; rerun the same command to resume.",
              file=sys.stderr, flush=True)
        return 143 if isinstance(err, Terminated) else 130
    except (ValueError, OSError) as err:  # deterministic (a DataError, a CacheError, a full disk): one line
        if worker_lost(err):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if a.dry_run:
        print(json.dumps({"planned": res["planned"], "results_dir": res["results_dir"]}, indent=2))
        print(format_estimate(res), file=sys.stderr)  # stdout stays one JSON document
        return 0
    print(summary(out, res.get("last_study_seconds")))
    return 0


def _retrain(out: Path, a) -> int:
    """``--retrain GLOB``: rebuild the checkpoints of recorded runs (their missing caches first)."""
    from .runs import RunStoreError, retrain
    from .tables import retrain_check
    try:
        rows = retrain(out, a.retrain, workers=a.workers, dry_run=a.dry_run, scheduler=a.scheduler)
    except RunStoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for r in rows:
        new = "-" if r["retrained_mr"] is None else f"{r['retrained_mr']:.2f}"
        print(f"{r['run']:<55} recorded mR {r['recorded_mr']:.2f}  retrained mR {new}")
    if not a.dry_run:
        check = retrain_check(out)
        if len(check):
            print(f"retrained vs recorded test mR over {len(check)} runs: mean |diff| "
                  f"{check.diff_mr.abs().mean():.2f}, max {check.diff_mr.abs().max():.2f} "
                  f"-> {out / 'tables' / 'retrain_check.csv'}")
    return 0


def summary(out: Path, seconds: float | None) -> str:
    """What a finished study prints: where its results are and the headline numbers."""
    import pandas as pd
    made = [f"{d}/" for d in ("tables", "figures", "executed") if (out / d).is_dir()] + \
        (["RESULTS.md"] if (out / "RESULTS.md").is_file() else [])
    lines = [f"study finished in {(seconds or 0) / 60:.1f} min; results in {out}/ ({', '.join(made) or 'nothing new'})"]
    comparison = [f for f in sorted((out / "tables").glob("comparison_*.csv")) if f.stem != "comparison_plan"]
    for f in comparison or sorted((out / "tables").glob("main_*.csv")):
        t = pd.read_csv(f)
        if "mr" not in t:
            continue
        if "setting" in t:
            t = t[t.setting == "study loss"] if comparison else t[t.setting != "history"]
        t = t[~t.get("published", pd.Series(False, index=t.index)).astype(bool)]
        top = t.sort_values("mr", ascending=False).head(8)
        lines.append(f"\n{f.stem} (test mR, mean over seeds):")
        lines += [f"  {r.variant[:70]:<70} {r.mr:6.2f}  (n={int(r.n_seeds)})" for r in top.itertuples()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
