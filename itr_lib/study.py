"""The study runner: execute the numbered notebooks in order with papermill, per profile.

    python -m itr_lib.study --profile smoke|full [--only 00 02 ...] [--timeout S]

A profile is ``configs/<profile>.yaml``: a list of notebook executions, each with its parameters. Every
parameter name is checked against the notebook's ``parameters`` cell (``papermill.inspect_notebook``):
a typo is an error, not papermill's warning. Notebooks run with kernel ``python3``, the repository root as
working directory, absolute output paths and an execution timeout; executed copies go to
``results/<profile>/executed/``, and ``results/<profile>/study.json`` records the parameters, the git
commit and the time of each execution. An entry with ``workers: N`` executes its ``runs`` N at a time
(separate kernels; give them ``THREADS: 1`` on a small CPU). Training runs inside the notebooks are skipped when already
finished, so rerunning an interrupted study resumes it.

Also here: ``run_grid`` (the library call the ablation notebooks use to train many configurations) and
``retrain`` (``--retrain GLOB``): checkpoints are not committed, so a fresh clone that needs them (04_efficiency
times the lowest-seed checkpoint of each method, 03 reads two) retrains those runs from the configs recorded in
``metrics/<run>.json`` and reports how far the new test mR lies from the recorded one.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
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


def executions(prof: dict, out_dir: Path, only: list[str] | None = None) -> list[dict]:
    """Expand the profile into concrete executions (notebook, output, parameters).

    The profile's top-level ``parameters`` apply to every notebook that declares them; a notebook entry's
    own ``parameters`` and ``runs`` items must all be declared by that notebook (checked later)."""
    import papermill as pm
    common = dict(prof.get("parameters", {}))
    todo = []
    for entry in prof["notebooks"]:
        name = entry["notebook"]
        if only and not any(name.startswith(o) for o in only):
            continue
        nb = notebook_path(name)
        declared = set(pm.inspect_notebook(str(nb)))
        shared = {k: v for k, v in {**common, "RESULTS_DIR": str(out_dir)}.items() if k in declared}
        for i, item in enumerate(entry.get("runs") or [{}]):
            params = {**shared, **entry.get("parameters", {}), **item}
            suffix = item.get("_suffix") or "-".join(str(v) for v in item.values() if isinstance(v, (str, int)))
            params.pop("_suffix", None)
            stem = nb.stem + (f"-{suffix}" if suffix else "")
            todo.append({"notebook": nb, "output": out_dir / "executed" / f"{stem}.ipynb", "parameters": params,
                         "group": len(todo) if i == 0 else todo[-1]["group"], "workers": int(entry.get("workers", 1))})
    return todo


def run_study(profile: str, only: list[str] | None = None, timeout: int | None = None, dry_run: bool = False,
              results_dir: str | Path | None = None) -> dict:
    import papermill as pm
    prof = load_profile(profile)
    out_dir = Path(results_dir).resolve() if results_dir else profile_dir(profile_name(profile))
    todo = executions(prof, out_dir, only)
    for t in todo:  # check every execution before running any
        check_parameters(t["notebook"], t["parameters"])
    manifest_path = out_dir / "study.json"
    manifest = read_json(manifest_path) if manifest_path.is_file() else {"profile": profile, "executions": {}}
    if dry_run:
        return {"planned": [str(t["output"]) for t in todo]}
    timeout = timeout or prof.get("timeout", 3600)
    t_study = time.perf_counter()
    lock = threading.Lock()

    def execute(t: dict) -> None:
        t["output"].parent.mkdir(parents=True, exist_ok=True)
        print(f"[study] {t['notebook'].name} -> {t['output']}", flush=True)
        t0 = time.perf_counter()
        pm.execute_notebook(str(t["notebook"]), str(t["output"]), parameters=t["parameters"],
                            kernel_name="python3", cwd=str(REPO_ROOT), execution_timeout=timeout,
                            progress_bar=False, log_output=False)
        secs = time.perf_counter() - t0
        with lock:  # re-read: another runner (e.g. a concurrent --only) may have recorded executions meanwhile
            if manifest_path.is_file():
                manifest["executions"] = {**manifest["executions"], **read_json(manifest_path).get("executions", {})}
            manifest["executions"][t["output"].name] = {"notebook": t["notebook"].name, "parameters": t["parameters"],
                                                         "seconds": round(secs, 1), "git_commit": git_commit(),
                                                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            write_json(manifest_path, manifest)
        print(f"[study]   {t['output'].name} done in {secs:.0f}s", flush=True)

    # the runs of one profile entry execute ``workers`` at a time (e.g. 01_train runs side by side, 1 thread each)
    groups: dict[int, list[dict]] = {}
    for t in todo:
        groups.setdefault(t["group"], []).append(t)
    for items in groups.values():
        workers = items[0]["workers"]
        if workers <= 1:
            for t in items:
                execute(t)
        else:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for f in [pool.submit(execute, t) for t in items]:
                    f.result()
    if manifest_path.is_file():
        manifest["executions"] = {**manifest["executions"], **read_json(manifest_path).get("executions", {})}
    manifest["last_study_seconds"] = round(time.perf_counter() - t_study, 1)
    manifest["git_commit"] = git_commit()
    write_json(manifest_path, manifest)
    return manifest


# ----------------------------------------------------------------------------------------------- training grids
def _train_one(cfg_dict: dict, threads: int | None) -> dict:
    """Worker entry point (importable, so spawned processes can run it)."""
    import torch
    from .train import TrainConfig, train
    if threads:
        torch.set_num_threads(threads)
    return train(TrainConfig.from_dict(cfg_dict))


def _publish(cfg, results_dir: Path) -> None:
    """Copy a finished run's metrics.json and test ranks into ``<results_dir>/metrics/`` (atomically)."""
    import shutil
    run = Path(cfg.run_dir)
    for src, dst in ((run / "metrics.json", results_dir / "metrics" / f"{run.name}.json"),
                     (run / "test_ranks.npz", results_dir / "metrics" / f"{run.name}.ranks.npz")):
        if src.is_file() and (not dst.is_file() or dst.stat().st_mtime < src.stat().st_mtime):
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)


def _recorded(cfg, results_dir: Path) -> dict | None:
    """The published metrics of ``cfg``'s run (``<results_dir>/metrics/<run>.json``), or None when not recorded."""
    run = Path(cfg.run_dir).name
    path = Path(results_dir) / "metrics" / f"{run}.json"
    if not path.is_file():
        return None
    rec = read_json(path)
    if rec.get("config_identity") != cfg.identity():
        raise StudyError(f"{path} records another configuration (field 'config_identity' differs from run "
                         f"{run}). Fix: delete {path} (and runs/{run}) to retrain it.")
    return rec


def run_grid(configs: list, results_dir: str | Path, progress: bool | None = None, workers: int = 1,
             threads: int | None = None, publish: bool = True) -> list[dict]:
    """Train (or reuse) every config; each run lives in ``<results_dir>/runs/<run_name>/`` and its metrics
    (and test ranks) are copied to ``<results_dir>/metrics/``. Returns the metrics of all runs, in order.
    A run recorded in ``metrics/`` is reused as recorded, whether or not its run folder exists (checkpoints are
    not committed; ``retrain`` rebuilds them), so a study rerun on a fresh clone trains only what is missing.

    ``workers`` > 1 trains that many runs at once in spawned processes with ``threads`` torch threads each
    (default 1): on a small CPU, two single-threaded runs use the cores far better than one two-threaded run
    (small ops such as GPO's GRU stall on thread barriers). Finished runs are skipped either way.
    ``publish=False`` leaves ``metrics/`` untouched (the retrained runs of ``retrain``)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing as mp
    from tqdm.auto import tqdm
    from .io import progress_enabled
    from .train import train
    results_dir = Path(results_dir)
    (results_dir / "metrics").mkdir(parents=True, exist_ok=True)
    for cfg in configs:
        if cfg.run_dir is None:
            cfg.run_dir = str(results_dir / "runs" / cfg.run_name())
    out: list[dict | None] = [None] * len(configs)
    if publish:  # a run already recorded in metrics/ is finished, even where its checkpoint is gone (fresh clone)
        for i, cfg in enumerate(configs):
            out[i] = _recorded(cfg, results_dir)
    todo = [i for i in range(len(configs)) if out[i] is None]
    bar = tqdm(total=len(todo), desc="runs", disable=not progress_enabled(progress))
    if workers <= 1:
        for i in todo:
            cfg = configs[i]
            if threads:
                import torch
                torch.set_num_threads(threads)
            out[i] = train(cfg)
            if publish:
                _publish(cfg, results_dir)
            bar.update()
    else:
        from dataclasses import asdict
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futs = {pool.submit(_train_one, asdict(configs[i]), threads or 1): i for i in todo}
            for f in as_completed(futs):
                i = futs[f]
                out[i] = f.result()
                if publish:
                    _publish(configs[i], results_dir)
                bar.update()
                log.info("finished %s", configs[i].run_name())
    bar.close()
    return out


def retrain(results_dir: str | Path, patterns: list[str], workers: int = 1, threads: int | None = None,
            dry_run: bool = False) -> list[dict]:
    """Retrain the finished runs of ``<results_dir>/metrics/`` whose name matches one of the glob ``patterns``
    and whose checkpoint (``runs/<run>/best.pt``) is missing, from the config each run recorded. The run name
    is recomputed from that config and must match (else the recorded config is not the one that named the run:
    an error). ``metrics/`` keeps the recorded metrics (the tables were built from them); the retrained run's own
    ``runs/<run>/metrics.json`` holds its scores. Returns one row per run: run, recorded test mR, retrained test mR
    (None in a dry run)."""
    import fnmatch
    from .train import TrainConfig
    results_dir = Path(results_dir)
    metrics = sorted((results_dir / "metrics").glob("*.json"))
    chosen = [m for m in metrics if any(fnmatch.fnmatch(m.stem, pat) for pat in patterns)]
    if not chosen:
        raise StudyError(f"no run in {results_dir / 'metrics'} matches {patterns}. Fix: pass globs of run names "
                         f"such as 'rsicd-*-s0-*' (the file names without .json).")
    recs = {m: read_json(m) for m in chosen}
    chosen.sort(key=lambda m: -float(recs[m].get("train_seconds") or 0))  # longest first: the pool ends together
    rows, configs = [], []
    for m in chosen:
        rec = recs[m]
        if (results_dir / "runs" / m.stem / "best.pt").is_file():
            continue
        d = dict(rec["config"])
        for key in ("data_root", "cache_dir"):  # a path of another machine: fall back to the defaults here
            if d.get(key) and not Path(d[key]).exists():
                d[key] = None
        d.update(run_dir=str(results_dir / "runs" / m.stem), progress=False)
        cfg = TrainConfig.from_dict(d)
        if cfg.run_name() != m.stem:
            raise StudyError(f"{m}: field 'config' names run {cfg.run_name()}, not {m.stem}. Fix: this metrics file "
                             f"was written by another version of TrainConfig; retrain it with 01_train instead.")
        configs.append(cfg)
        rows.append({"run": m.stem, "recorded_mr": rec["test"]["standard"]["mr"], "retrained_mr": None})
    if dry_run or not configs:
        return rows
    done = run_grid(configs, results_dir, workers=workers, threads=threads, publish=False)
    for row, met, cfg in zip(rows, done, configs):
        row["retrained_mr"] = met["test"]["standard"]["mr"]
        write_json(Path(cfg.run_dir) / "retrained.json", {"recorded": str(results_dir / "metrics" / f"{row['run']}.json"),
                                                          "retrained": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return rows


def retrain_check(results_dir: str | Path):
    """Recorded vs retrained test scores of every run ``retrain`` rebuilt (its folder holds ``retrained.json``):
    a reproducibility check (same config and seed, another process and feature build). Written to
    ``tables/retrain_check.csv`` when there is any."""
    import pandas as pd
    from .tables import write_table
    results_dir = Path(results_dir)
    rows = []
    for marker in sorted((results_dir / "runs").glob("*/retrained.json")):
        new, rec_path = marker.parent / "metrics.json", results_dir / "metrics" / f"{marker.parent.name}.json"
        if not (new.is_file() and rec_path.is_file()):
            continue
        rec, ret = read_json(rec_path)["test"]["standard"], read_json(new)["test"]["standard"]
        rows.append({"run": new.parent.name, "recorded_mr": rec["mr"], "retrained_mr": ret["mr"],
                     "diff_mr": ret["mr"] - rec["mr"], "recorded_rsum": rec["rsum"], "retrained_rsum": ret["rsum"]})
    df = pd.DataFrame(rows)
    if len(df):
        write_table(df, "retrain_check", results_dir / "tables", floatfmt=".2f")
    return df


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m itr_lib.study", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="smoke", help="configs/<profile>.yaml (smoke | full) or a YAML path")
    p.add_argument("--results-dir", default=None, help="output folder (default: results/<profile>)")
    p.add_argument("--only", nargs="*", default=None, help="notebook name prefixes to run (e.g. 00 02)")
    p.add_argument("--timeout", type=int, default=None, help="per-cell execution timeout in seconds")
    p.add_argument("--dry-run", action="store_true", help="check the profile and parameters, run nothing")
    p.add_argument("--retrain", nargs="+", default=None, metavar="GLOB",
                   help="instead of running notebooks: retrain the finished runs matching these run-name globs "
                        "whose checkpoints are missing (e.g. 'rsicd-*-s0-*'), from their recorded configs")
    p.add_argument("--workers", type=int, default=2, help="with --retrain: runs trained at once (1 thread each)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if a.retrain:
        out = Path(a.results_dir).resolve() if a.results_dir else profile_dir(profile_name(a.profile))
        try:
            rows = retrain(out, a.retrain, workers=a.workers, dry_run=a.dry_run)
        except StudyError as err:
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
    try:
        res = run_study(a.profile, a.only, a.timeout, a.dry_run, a.results_dir)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(res if a.dry_run else {"profile": a.profile, "seconds": res.get("last_study_seconds")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
