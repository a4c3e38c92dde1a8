"""The study runner: execute the numbered notebooks in order with papermill, per profile.

    python -m itr_lib.study --profile smoke|full [--only 00 02 ...] [-p NAME VALUE ...] [--timeout S]
                            [--scheduler tcp://HOST:8786] [--workers N]

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

``--retrain GLOB`` calls :func:`itr_lib.runs.retrain`: checkpoints are not committed, so a fresh clone that needs
them (04_efficiency times the lowest-seed checkpoint of each method, 03 reads two) retrains those runs from the
configs recorded in ``metrics/<run>.json`` and reports how far the new test mR lies from the recorded one.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .io import REPO_ROOT, git_commit, read_json, write_json

log = logging.getLogger(__name__)

NOTEBOOKS = REPO_ROOT / "notebooks"
CONFIGS = REPO_ROOT / "configs"


class StudyError(ValueError):
    pass


def profile_dir(profile: str) -> Path:
    return REPO_ROOT / "results" / profile


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
                         "group": len(todo) if i == 0 else todo[-1]["group"], "workers": int(entry.get("workers", 1))})
    unknown = sorted(set(overrides) - used)
    if unknown:
        raise StudyError(f"-p {', '.join(unknown)}: no selected notebook takes {'it' if len(unknown) == 1 else 'them'} "
                         f"(selected: {', '.join(selected) or 'none'}). Fix: check the name, or select the notebook "
                         f"that declares it with --only.")
    return todo


def encrypted_kernel_manager():
    """A kernel manager that provisions CurveZMQ keys when pyzmq and the kernelspec support them (ipykernel >= 7.3
    otherwise warns on every start that the kernel runs over TCP without encryption); plain TCP where they do not."""
    import zmq
    from jupyter_client.manager import KernelManager

    class EncryptedKernelManager(KernelManager):
        def __init__(self, **kw):
            super().__init__(**kw)
            if zmq.has("curve"):
                self.transport_encryption = "auto"
    return EncryptedKernelManager


def _execute_notebook(notebook: str, output: str, parameters: dict, timeout: int, scheduler: str) -> float:
    """Execute one notebook with papermill; the task a Dask worker runs (importable by any worker). The kernel
    inherits ``$DASK_SCHEDULER_ADDRESS``, so the notebook's training runs go to the same cluster; the task secedes
    from the worker's thread pool while the notebook runs, so those runs can use every worker."""
    import papermill as pm
    from .cluster import SCHEDULER_ENV
    # set for the kernel this task starts, then put back: an in-process cluster shares os.environ with the caller,
    # which must not keep pointing at a scheduler that closes with the study
    previous = os.environ.get(SCHEDULER_ENV)
    os.environ[SCHEDULER_ENV] = scheduler
    try:
        try:
            from distributed import secede
            secede()
        except ValueError:  # not inside a Dask task (called directly)
            pass
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        pm.execute_notebook(notebook, output, parameters=parameters, kernel_name="python3", cwd=str(REPO_ROOT),
                            execution_timeout=timeout, progress_bar=False, log_output=False,
                            kernel_manager_class=encrypted_kernel_manager())
        return time.perf_counter() - t0
    finally:
        if previous is None:
            os.environ.pop(SCHEDULER_ENV, None)
        else:
            os.environ[SCHEDULER_ENV] = previous


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


def dry_run_estimate(todo: list[dict], out_dir: Path, profile: str) -> dict:
    """The estimated cost of the planned executions from scratch (:func:`itr_lib.cost.execution_estimates`), from
    the records of ``out_dir`` or, when it has none, of ``results/<profile>``; ``{}`` when neither has records."""
    from .cost import execution_estimates, lever_speedups
    speedups = lever_speedups(REPO_ROOT / "results" / "benchmarks" / "speed_levers.csv")
    for src in (out_dir, profile_dir(profile_name(profile))):
        try:
            return {"estimate_from": str(src), "estimates": execution_estimates(todo, src, speedups)}
        except ValueError:
            continue
    return {}


def format_estimate(res: dict) -> str:
    """The dry run's estimate as lines: per execution and the total, core-hours as recorded and with the levers."""
    if not res.get("estimates"):
        return "no run records to estimate the cost from (results/<profile>/metrics is empty)"
    lines = [f"estimated cost from scratch (core-hours, from the records in {res['estimate_from']}; "
             f"'levers': training divided by the measured speed-ups of results/benchmarks/speed_levers.csv):",
             f"  {'execution':<48} {'core-h':>8} {'levers':>8}"]
    import math
    tot, unknown = [0.0, 0.0], []
    for e in res["estimates"]:
        if math.isnan(e["core_h"]):
            unknown.append(e["execution"])
            lines.append(f"  {e['execution'][:48]:<48} {'-':>8} {'-':>8}")
            continue
        lines.append(f"  {e['execution'][:48]:<48} {e['core_h']:8.2f} {e['core_h_levers']:8.2f}")
        tot = [tot[0] + e["core_h"], tot[1] + e["core_h_levers"]]
    lines.append(f"  {'total':<48} {tot[0]:8.2f} {tot[1]:8.2f}" + (f"  (no record of {', '.join(unknown)})"
                                                                  if unknown else ""))
    return "\n".join(lines)


def run_study(profile: str, only: list[str] | None = None, timeout: int | None = None, dry_run: bool = False,
              results_dir: str | Path | None = None, overrides: dict | None = None, scheduler: str | None = None,
              n_workers: int | None = None, jobqueue: str | None = None, jobs: int = 1) -> dict:
    """Execute the profile's notebooks on a Dask cluster (:mod:`itr_lib.cluster`): a local one of ``n_workers``
    processes (default: one per core), the scheduler ``scheduler`` / ``$DASK_SCHEDULER_ADDRESS``, or ``jobs`` Slurm
    jobs (``jobqueue="slurm"``, :func:`itr_lib.cluster.slurm_cluster`). Before any
    execution, every worker must see the repository and the data root and be able to write the results folder."""
    from distributed import as_completed
    from .cluster import check_workers, connect
    prof = load_profile(profile)
    out_dir = Path(results_dir).resolve() if results_dir else profile_dir(profile_name(profile))
    todo = executions(prof, out_dir, only, overrides)
    for t in todo:  # check every execution before running any
        check_parameters(t["notebook"], t["parameters"])
    manifest_path = out_dir / "study.json"
    manifest = read_json(manifest_path) if manifest_path.is_file() else {"profile": profile, "executions": {}}
    if dry_run:
        return {"planned": [str(t["output"]) for t in todo], **dry_run_estimate(todo, out_dir, profile)}
    timeout = timeout or prof.get("timeout", 3600)
    t_study = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    cluster = connect(scheduler, n_workers=n_workers, jobqueue=jobqueue, jobs=jobs)
    if jobqueue:
        cluster.client.wait_for_workers(1)
    try:
        n = check_workers(cluster.client, readable=shared_paths(todo), writable=[out_dir])
        where = "local cluster" if cluster.local is not None else f"scheduler {cluster.address}"
        print(f"[study] {where}: {n} workers; dashboard {cluster.dashboard}", flush=True)

        def record(t: dict, secs: float) -> None:
            # re-read: another runner (e.g. a concurrent --only) may have recorded executions meanwhile
            if manifest_path.is_file():
                manifest["executions"] = {**manifest["executions"], **read_json(manifest_path).get("executions", {})}
            manifest["executions"][t["output"].name] = {"notebook": t["notebook"].name, "parameters": t["parameters"],
                                                         "seconds": round(secs, 1), "git_commit": git_commit(),
                                                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            write_json(manifest_path, manifest)
            print(f"[study]   {t['output'].name} done in {secs:.0f}s", flush=True)

        # the executions of one profile entry run ``workers`` at a time (e.g. 01_train runs side by side); entries
        # run in order, each after the previous one finished (notebooks talk through files)
        groups: dict[int, list[dict]] = {}
        for t in todo:
            groups.setdefault(t["group"], []).append(t)
        client, futs = cluster.client, {}
        try:
            for items in groups.values():
                queue, window = list(items), max(1, items[0]["workers"])
                running = as_completed(loop=client.loop)

                def submit() -> None:
                    t = queue.pop(0)
                    print(f"[study] {t['notebook'].name} -> {t['output']}", flush=True)
                    f = client.submit(_execute_notebook, str(t["notebook"]), str(t["output"]), t["parameters"],
                                      timeout, cluster.address, key=f"notebook-{t['output'].stem}-{time.time_ns()}",
                                      retries=1)
                    futs[f] = t
                    running.add(f)
                while queue and running.count() < window:
                    submit()
                for f in running:
                    record(futs.pop(f), f.result())
                    if queue:
                        submit()
        except BaseException:  # Ctrl-C or a failed notebook: cancel what is queued or running
            if futs:
                client.cancel(list(futs), force=True)
            raise
    finally:
        cluster.close()
    if manifest_path.is_file():
        manifest["executions"] = {**manifest["executions"], **read_json(manifest_path).get("executions", {})}
    manifest["last_study_seconds"] = round(time.perf_counter() - t_study, 1)
    manifest["git_commit"] = git_commit()
    write_json(manifest_path, manifest)
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m itr_lib.study", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="smoke", help="configs/<profile>.yaml (smoke | full) or a YAML path")
    p.add_argument("--results-dir", default=None, help="output folder (default: results/<profile>)")
    p.add_argument("--only", nargs="*", default=None, help="notebook name prefixes to run (e.g. 00 02)")
    p.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override a notebook parameter for every selected execution, VALUE read as YAML "
                        "(e.g. --only 01 -p DATASET ucm -p EPOCHS 1); a name the notebook lacks is an error")
    p.add_argument("--timeout", type=int, default=None, help="per-cell execution timeout in seconds")
    p.add_argument("--dry-run", action="store_true", help="check the profile and parameters, run nothing")
    p.add_argument("--retrain", nargs="+", default=None, metavar="GLOB",
                   help="instead of running notebooks: retrain the finished runs matching these run-name globs "
                        "whose checkpoints are missing (e.g. 'rsicd-*-s0-*'), from their recorded configs")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on this Dask scheduler (e.g. tcp://host:8786; default: $DASK_SCHEDULER_ADDRESS, else a "
                        "local cluster); workers must share the repository, data root and results folder "
                        "(docs/cluster.md)")
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
    from .cluster import ClusterError
    if a.retrain:
        out = Path(a.results_dir).resolve() if a.results_dir else profile_dir(profile_name(a.profile))
        from .runs import RunStoreError, retrain
        from .tables import retrain_check
        try:
            rows = retrain(out, a.retrain, workers=a.workers, dry_run=a.dry_run, scheduler=a.scheduler)
        except (RunStoreError, ClusterError) as err:
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
    import yaml
    overrides = {name: yaml.safe_load(value) for name, value in a.param}
    try:
        res = run_study(a.profile, a.only, a.timeout, a.dry_run, a.results_dir, overrides, a.scheduler, a.workers,
                        a.jobqueue, a.jobs)
    except (StudyError, ClusterError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs and notebooks are kept; rerun the same command to resume.",
              file=sys.stderr)
        return 130
    if a.dry_run:
        print(json.dumps({"planned": res["planned"]}, indent=2))
        print(format_estimate(res))
        return 0
    out = Path(a.results_dir).resolve() if a.results_dir else profile_dir(profile_name(a.profile))
    print(summary(out, res.get("last_study_seconds")))
    return 0


def summary(out: Path, seconds: float | None) -> str:
    """What a finished study prints: where its results are and the headline numbers."""
    import pandas as pd
    lines = [f"study finished in {(seconds or 0) / 60:.1f} min; results in {out}/ (tables/, figures/, "
             f"executed/{', RESULTS.md' if (out / 'RESULTS.md').is_file() else ''})"]
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
