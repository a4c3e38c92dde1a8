"""The study's report, generated from the committed tables (nothing typed by hand).

``write_report(results_dir)`` writes ``<results_dir>/RESULTS.md`` (every table and figure, the time the profile
took) and replaces the text between ``<!-- RESULTS:BEGIN -->`` and ``<!-- RESULTS:END -->`` in README.md with a
short headline block (the fair comparison, the claims' verdicts, a link to RESULTS.md).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .io import REPO_ROOT, atomic_write_text
from .recordio import read_record
from .recipe.summary import recipe_summary
from .report_claims import claims_lines
from .tables import fmt_ci as _ci, to_markdown

BEGIN, END = "<!-- RESULTS:BEGIN -->", "<!-- RESULTS:END -->"
SHOW = ["method", "variant", "n_seeds", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "mr"]


def _rel(path) -> Path:
    """``path`` relative to the repository when inside it (for links in the README), else as given."""
    path = Path(path)
    return path.relative_to(REPO_ROOT) if path.is_absolute() and REPO_ROOT in path.parents else path


def _fmt(df: pd.DataFrame, cols=SHOW) -> str:
    from .tables import format_mean_std, tie_cells
    t = format_mean_std(df).assign(**{"ties [pess., opt.]": tie_cells(df)})  # every row its bracket (or its rule)
    cols = [c for c in [*cols, "ties [pess., opt.]", "delta_rsum", "ci_lo", "ci_hi"] if c in t.columns]
    t = t[cols].copy()
    for c in ("delta_rsum", "ci_lo", "ci_hi"):
        if c in t:
            t[c] = [("" if pd.isna(v) else f"{v:+.1f}") for v in t[c]]
    return to_markdown(t, index=False)


def time_summary(results_dir: Path, rel) -> list[str]:
    """How long the profile took: training compute from every run's metrics.json (robust to a study that was
    interrupted and resumed), and the study from scratch in core-hours per notebook and method (itr_lib.cost)."""
    results_dir = Path(results_dir)
    lines = []
    runs = [read_record(p) for p in sorted((results_dir / "metrics").glob("*.json"))]  # a damaged one: named, stops
    if runs:
        secs = pd.DataFrame([{"method": r.get("method"), "dataset": r.get("dataset"),
                              "s": sum(float(r.get(k) or 0) for k in ("train_seconds", "val_eval_seconds",
                                                                     "test_eval_seconds", "load_seconds"))}
                             for r in runs])
        per = secs.groupby(["dataset", "method"]).s.agg(["count", "sum"]).reset_index()
        detail = "; ".join(f"{d} {m}: {int(c)} runs, {s / 60:.0f} min" for d, m, c, s in per.itertuples(index=False))
        lines += [f"Training (train + val selection + test scoring, summed over the {len(runs)} runs' `metrics.json`, "
                  f"one torch thread each, two runs side by side on this 2-core CPU): {secs.s.sum() / 3600:.1f} h of "
                  f"run time, about {secs.s.sum() / 7200:.1f} h of wall time ({detail}).", ""]
    from .cost import cost_markdown
    lines += cost_markdown(results_dir)
    return lines


def feature_summary(csv_path: Path) -> list[str]:
    """One line per dataset from the feature-extraction benchmark: total seconds, images/s, captions/s, load."""
    if not Path(csv_path).is_file():
        return []
    df = pd.read_csv(csv_path)
    lines = []
    for ds, d in df.groupby("dataset", sort=False):
        img, txt = d[d.kind == "image"], d[d.kind == "text"]
        load = f", 1-min load {d.load_1min.max():.1f}" if "load_1min" in d and d.load_1min.notna().all() else ""
        lines.append(f"- {ds.upper()}: {int(img['items'].sum()):,} images and {int(txt['items'].sum()):,} captions in "
                     f"{d.seconds.sum():.0f} s ({img['items'].sum() / img.seconds.sum():.1f} images/s, "
                     f"{txt['items'].sum() / txt.seconds.sum():.0f} captions/s{load})")
    return ["Frozen-feature extraction (`results/benchmarks/feature_extraction.csv`, "
            f"{df.cpus.iloc[0]} CPU cores):", ""] + lines + [""]


def _benchmark_table(df: pd.DataFrame, caption: str, cols: list[str], floatfmt: str) -> list[str]:
    """A benchmark CSV's chosen columns (those present) as a Markdown table under a one-line caption."""
    return [caption, "", to_markdown(df[[c for c in cols if c in df]], index=False, floatfmt=floatfmt), ""]


def step_cost_summary(csv_path: Path) -> list[str]:
    """The training-step benchmark (`make bench-train-step`) as a table: where a step's time goes, per variant."""
    if not Path(csv_path).is_file():
        return []
    df = pd.read_csv(csv_path)
    load = f", 1-min load {df.load_1min.min():.1f}-{df.load_1min.max():.1f}" if "load_1min" in df else ""
    return _benchmark_table(
        df, f"Seconds per training step on real batches (`{_rel(csv_path)}`, `make bench-train-step`; B = 128 "
            f"images; the ablation variants with all their captions; the other methods' rows, timed before the fair "
            f"comparison, with one caption per image{load}):",
        ["variant", "threads", "texts_per_step", "batch_s", "encode_s", "loss_s", "backward_s", "optimizer_s",
         "step_s", "steps_per_epoch", "train_s_per_epoch"], ".3g")


def run_time_summary(csv_path: Path) -> list[str]:
    """Whole training runs timed by `make bench-train` (wall seconds and where they went)."""
    if not Path(csv_path).is_file():
        return []
    df = pd.read_csv(csv_path)
    if "git_commit" in df:  # the code each row timed (rows accumulate as the code changes)
        df["commit"] = "`" + df.git_commit.astype(str).str[:7] + "`"  # quoted: an all-digit hash is not a number
    return _benchmark_table(
        df, f"Whole training runs, one at a time on the idle machine (`{_rel(csv_path)}`, `make bench-train`, "
            "oldest first; train = the epochs' steps, val_select = per-epoch val scoring, final_eval = val + test "
            "scoring of the chosen checkpoint):",
        ["commit", "variant", "epochs", "threads", "wall_s", "train_s", "val_select_s", "final_eval_s", "load_s",
         "test_mr", "load_1min"], ".1f")


def encode_summary(csv_path: Path) -> list[str]:
    """Whole-split encoding times (`make bench-encode`): cached features -> retrieval vectors, per model."""
    if not Path(csv_path).is_file():
        return []
    return _benchmark_table(
        pd.read_csv(csv_path), f"Encoding a whole split with a trained model, cached features to retrieval vectors "
                               f"(`{_rel(csv_path)}`, `make bench-encode`, median of the repeats):",
        ["variant", "dim", "threads", "n_images", "n_texts", "vector_dim", "encode_s_median", "encode_s_min",
         "repeats"], ".3g")


def results_markdown(results_dir: str | Path) -> str:
    results_dir = Path(results_dir)
    rel = _rel(results_dir)
    tables, figs = results_dir / "tables", results_dir / "figures"
    lines = [f"# Results (`{rel}`, generated by `05_results`)", ""]
    lines += time_summary(results_dir, rel)
    lines += comparison_sections(results_dir, rel, full=True)
    lines += feature_summary(REPO_ROOT / "results" / "benchmarks" / "feature_extraction.csv")
    lines += step_cost_summary(REPO_ROOT / "results" / "benchmarks" / "train_step_rsicd.csv")
    lines += run_time_summary(REPO_ROOT / "results" / "benchmarks" / "train_run_rsicd.csv")
    lines += encode_summary(REPO_ROOT / "results" / "benchmarks" / "encode_split_rsicd.csv")
    lines += ["All numbers: test split, standard protocol (a caption counts only for its own image), checkpoint chosen "
              "on val rsum, mean ± std over seeds. Rows marked *published* are copied from the papers "
              "(METHODS.md), not rerun. A variant label ending in `| key=value` sets a method hyper-parameter off its "
              "default (`warmup_epochs=1`: one epoch of summed hinges before the hardest negative; in the full profile "
              "a diagnostic of TGDT and ALADIN on RSICD), so it is never pooled with the default runs.", ""]
    for ds in ("rsicd", "ucm"):
        main = tables / f"main_{ds}.csv"
        if main.is_file():
            df = pd.read_csv(main)
            lines += [f"### {ds.upper()}: every run by setting (comparison / ablation / history of the fine-grained methods under the authors\' triplet, 3 epochs)", "", _fmt(df, ["setting"] + SHOW + ["published"]), ""]
            if (figs / f"main_{ds}.png").is_file():
                lines += [f"![{ds} results]({rel}/figures/main_{ds}.png)", ""]
        sched = tables / f"schedule_{ds}.csv"
        if sched.is_file():
            lines += [schedule_caption(ds, pd.read_csv(sched)), "", to_markdown(pd.read_csv(sched), index=False), ""]
        abl = tables / f"ablation_{ds}.csv"
        if abl.is_file():
            df = pd.read_csv(abl)
            lines += [f"### {ds.upper()}: SelfAlign ablation (gain = rsum difference to the baseline of the same "
                      f"loss, 95% paired bootstrap CI over seeds and test queries)", "", _fmt(df), ""]
            for f in (f"ablation_{ds}.png", f"codebook_{ds}.png"):
                if (figs / f).is_file():
                    lines += [f"![{f}]({rel}/figures/{f})", ""]
        probe = tables / f"probe_{ds}.csv"
        if probe.is_file():
            lines += [f"### {ds.upper()}: capacity probe (02_ablations, `itr_lib.probe`: LCA+CRA seed 0, one knob "
                      f"changed from the ablation's setting at a time, compared on val mR; test mR shown, not used to choose; "
                      f"train_min per run, two runs side by side at 1 thread each)", "",
                      to_markdown(pd.read_csv(probe).drop(columns=["run"], errors="ignore"), index=False), ""]
        confirm = tables / f"probe_confirm_{ds}.csv"
        if confirm.is_file():
            lines += [f"### {ds.upper()}: the probes chosen on val (each round), over seeds (each baseline has the same "
                      f"change; gain = "
                      f"rsum difference, 95% paired bootstrap CI over seeds and test queries)", "",
                      _fmt(pd.read_csv(confirm), ["probe"] + SHOW), ""]
        for extra in (f"efficiency_{ds}.csv", f"pointing_game_{ds}.csv"):
            if (tables / extra).is_file():
                lines += [f"`{rel}/tables/{extra}`:", "", to_markdown(pd.read_csv(tables / extra), index=False, floatfmt=".3g"), ""]
        for f in (f"efficiency_frontier_{ds}.png", f"pointing_game_{ds}.png"):
            if (figs / f).is_file():
                lines += [f"![{f}]({rel}/figures/{f})", ""]
    if (tables / "efficiency_targets.csv").is_file():
        t = pd.read_csv(tables / "efficiency_targets.csv")
        if "holds" in t:
            t["holds"] = ["n/a" if pd.isna(v) else ("yes" if str(v).lower() in ("true", "1", "1.0") else "no")
                          for v in t["holds"]]
        lines += ["### Efficiency targets (`04_efficiency`; n/a where the size was not measured)", "",
                  to_markdown(t, index=False, floatfmt=".3g"), ""]
    if (figs / "efficiency_scaling.png").is_file():
        lines += [f"![scaling]({rel}/figures/efficiency_scaling.png)", ""]
    lines += scale_summary(results_dir, rel, full=True)
    lines += recipe_summary(results_dir, rel, full=True)
    if (tables / "retrain_check.csv").is_file():
        c = pd.read_csv(tables / "retrain_check.csv")
        lines += [f"Reproducibility: {len(c)} runs retrained from their recorded configs on a fresh checkout (features "
                  f"re-extracted) scored test mR within {c.diff_mr.abs().max():.2f} of the record (mean |difference| "
                  f"{c.diff_mr.abs().mean():.2f}; `{rel}/tables/retrain_check.csv`).", ""]
    return "\n".join(lines).rstrip() + "\n"


def schedule_caption(ds: str, sched: pd.DataFrame) -> str:
    """The schedule table's heading: what val preferred (read from the table) and what the study trains (the
    comparison's epochs, :data:`itr_lib.experiments.COMPARISON_BASE`: a cost cap where val preferred another)."""
    from .experiments import COMPARISON_BASE
    used, best = COMPARISON_BASE["epochs"], sched.loc[sched.val_mr.idxmax()]
    curve = " / ".join(f"{v:.2f}" for v in sched.val_mr) + " at " + " / ".join(str(int(e)) for e in sched.epochs)
    rule = (f"the study trains {used}, the val choice" if int(best.epochs) == used else
            f"the study trains {used} for every method, a cost cap, not the val choice")
    return (f"### {ds.upper()}: schedule (val mR of the baseline {curve} epochs: val prefers {int(best.epochs)}; "
            f"{rule}; test mR shown, not used to choose)")


def _drop_shared_parts(labels: pd.Series) -> tuple[pd.Series, list[str]]:
    """Variant labels without the ``|``-separated parts every label shares (said once above the table)."""
    split = [re.match(r"^(.*?)(\s*\[[^\]]*\])?$", str(v)).groups() for v in labels]  # "... [two_stage]": the mode
    parts = [[p.strip() for p in body.split("|")] for body, _ in split]
    shared = [p for p in parts[0][1:] if all(p in q[1:] for q in parts)] if parts else []
    short = [" | ".join([q[0]] + [p for p in q[1:] if p not in shared]) + (mode or "")
             for q, (_, mode) in zip(parts, split)]
    return pd.Series(short, index=labels.index), shared


def _schedule_note(t: pd.DataFrame) -> list[str]:
    """Per setting: how many runs chose their schedule's last epoch on val (``best_epochs`` "5,6,4 of 6"); where
    many did, val would likely take more epochs, so the schedule is a cost cap there, not a val choice."""
    if "best_epochs" not in t:
        return []
    parts = []
    for st, g in t.drop_duplicates(["setting", "variant"] if "mode" not in t else ["setting", "key"]).groupby(
            "setting", sort=False):
        last = total = 0
        for cell in g.best_epochs.dropna().astype(str):
            eps, _, of = cell.partition(" of ")
            eps = [e for e in eps.split(",") if e.isdigit()]
            total += len(eps)
            last += sum(of.isdigit() and int(e) == int(of) for e in eps)
        if total:
            parts.append(f"{st}: {last} of {total} runs chose the last epoch")
    return ["Best epoch on val (`best_epochs`, per seed): " + "; ".join(parts) + ". A run that chose the last "
            "epoch would likely gain from more: the schedule is the protocol's cost cap, not a val choice.", ""] \
        if parts else []


def comparison_sections(results_dir: Path, rel, full: bool) -> list[str]:
    """The fair comparison per dataset (mR mean ± std, tie bounds, seeds), the claims with verdicts, the loss
    ablation and the duplicate-caption ceilings; ``full=False``: the README's short form."""
    from .tables import deployed_mask, format_mean_std, published_rows, tie_cells
    tables, figs = Path(results_dir) / "tables", Path(results_dir) / "figures"
    lines, shared, shared_all = [], [], set()
    for ds in ("rsicd", "ucm"):
        f = tables / f"comparison_{ds}.csv"
        if not f.is_file():
            continue
        t = pd.read_csv(f)
        if not full:  # the study loss, one row per method: its deployed inference mode
            t = t[(t.setting == "study loss") & deployed_mask(t)]
        t = format_mean_std(t)
        if not full:
            t["variant"], shared = _drop_shared_parts(t.variant)
            shared_all |= set(shared)
        t["ties [pess., opt.]"] = tie_cells(t)
        cols = (["setting"] if full else []) + ["variant", "n_seeds", "seeds"] + \
            (["i2t_r1", "t2i_r1", "rsum"] if full else []) + ["mr", "ties [pess., opt.]", "train_min"] + \
            (["best_epochs"] if full and "best_epochs" in t else [])
        lines += [f"### {ds.upper()}: every method under one protocol" + (" (study loss)" if not full else ""), ""]
        if not full and shared:
            lines += [f"Every row: `{' | '.join(shared)}`; fine-grained methods in their deployed inference mode "
                      "(every mode in RESULTS.md).", ""]
        lines += [
                  to_markdown(t[cols], index=False, floatfmt=".1f", compact=not full), ""]
        lines += _bucketed_note(t) + _missing_note(t) + (_schedule_note(t) if full else [])
        if not full:
            pub = published_rows(ds)
            if len(pub):
                lines += ["Published (test mR, their backbones; `configs/published.yaml`): " + "; ".join(
                    f"{m.replace(' (published)', '')} ({v}) {mr:.2f}" for m, v, mr in
                    zip(pub.method, pub.variant.str.replace(r" \(best.*\)", "", regex=True), pub.mr)) + ".", ""]
        if (figs / f"comparison_{ds}.png").is_file():
            lines += [f"![{ds} comparison]({rel}/figures/comparison_{ds}.png)", ""]
    lines += claims_lines(tables, figs, rel, full, shared_all)
    if full:
        for ds in ("rsicd", "ucm"):
            f = tables / f"loss_ablation_{ds}.csv"
            if f.is_file():
                t = format_mean_std(pd.read_csv(f))
                t["vs study loss, mR [95% CI]"] = [_ci(v, lo, hi) for v, lo, hi in
                                                   zip(t.get("delta_mr", pd.Series(dtype=float)),
                                                       t.get("ci_lo_mr", pd.Series(dtype=float)),
                                                       t.get("ci_hi_mr", pd.Series(dtype=float)))] \
                    if "delta_mr" in t else ""
                lines += [f"### {ds.upper()}: loss ablation (baseline; one knob of the study loss changed at a time)",
                          "", to_markdown(t[["setting", "variant", "n_seeds", "rsum", "mr",
                                             "vs study loss, mR [95% CI]"]], index=False), ""]
    if full and (tables / "ceilings.csv").is_file():  # RESULTS.md only: the README stays a front door
        c = pd.read_csv(tables / "ceilings.csv")
        lines += ["Ceilings from duplicate captions (identical strings score identically, so no model exceeds these; "
                  f"`{rel}/tables/ceilings.csv`):", "",
                  to_markdown(c, index=False, floatfmt=".1f"), ""]
    return lines


def headline_markdown(results_dir: str | Path) -> str:
    """The README's short results block."""
    results_dir = Path(results_dir)
    rel = _rel(results_dir)
    lines = [f"## Results (`{rel}`, generated by `05_results`; every table and figure: "
             f"[{rel}/RESULTS.md]({rel}/RESULTS.md))", "",
             "Test split, checkpoint chosen on val, mean ± std over the seeds listed. Ranks of tied scores (identical "
             "captions score identically) are the expected rank under random tie-breaking; the bracket gives mR with "
             "ties resolved against (pessimistic) and for (optimistic) the query.", ""]
    lines += comparison_sections(results_dir, rel, full=False)
    figs = [f for f in ("efficiency_frontier_rsicd.png", "efficiency_frontier_ucm.png")
            if (results_dir / "figures" / f).is_file()]
    if figs:
        lines += ["### Accuracy against query latency (`04_efficiency`; every method's best row, Pareto front dashed)", ""]
        lines += [f"![{f[:-4]}]({rel}/figures/{f})" for f in figs] + [""]
    lines += scale_summary(results_dir, rel, full=False)
    lines += recipe_summary(results_dir, rel, full=False)
    return "\n".join(lines).rstrip() + "\n"


SCALE_COLS = ["index", "n_items", "ms_per_query", "ms_per_query_batched", "recall_at_10", "floor_ms", "vs_floor",
              "bytes_per_item", "build_s", "params", "extrapolated"]


def _bucketed_note(t: pd.DataFrame) -> list[str]:
    """A line naming the rows whose runs encoded captions in length groups (``bucketed_seeds`` of a comparison
    table): their ``train_min`` mixes step speeds."""
    if "bucketed_seeds" not in t:
        return []
    b = t.bucketed_seeds.fillna("").astype(str).str.replace(r"\.0\b", "", regex=True)
    rows = sorted({(v.split(" [")[0], s) for v, s in zip(t.variant, b) if s})
    if not rows:
        return []
    return ["Trained with `length_buckets` (the captions of a step encoded in groups of similar length: the same "
            "model and loss, faster steps, other dropout draws), so their `train_min` is not comparable with the "
            "other seeds': " + "; ".join(f"{v} seeds {s}" for v, s in rows) + ".", ""]


def _missing_note(t: pd.DataFrame) -> list[str]:
    """A line naming the rows with fewer seeds than the comparison plan asked for (``missing_seeds``)."""
    miss = t["missing_seeds"].fillna("").astype(str).str.replace(r"\.0\b", "", regex=True) if "missing_seeds" in t \
        else pd.Series(dtype=str)
    rows = sorted({(v.split(" [")[0], m) for v, m in zip(t.variant, miss) if m})
    return ["**Fewer seeds than planned** (the plan's runs not recorded; their mean and std cover the recorded "
            "seeds only): " + "; ".join(f"{v} missing seeds {m}" for v, m in rows) + ".", ""] if rows else []


def scale_rows(scaling: pd.DataFrame) -> pd.DataFrame:
    """The largest sizes of the scaling study's first gallery: each vector index at its largest measured size, and
    every row (measured or extrapolated) past flat's largest measured size (the streamed one, flat extrapolated)."""
    s = scaling
    if "gallery_kind" in s and s.gallery_kind.notna().any():
        s = s[s.gallery_kind == s.gallery_kind.dropna().iloc[0]]
    s = s[s["index"].isin(["flat", "ivf", "ivfpq", "ivfpq_sq8", "hnsw"])]
    measured = s[~s.extrapolated.astype(bool)]
    if measured.empty:
        return measured
    top = measured.loc[measured.groupby("index").n_items.idxmax()]
    flat = measured[measured["index"] == "flat"]
    big = s[s.n_items > (flat.n_items.max() if len(flat) else top.n_items.min())]
    out = pd.concat([top, big]).drop_duplicates().sort_values(["n_items", "ms_per_query"])
    return out[[c for c in SCALE_COLS if c in out]]


def scale_summary(results_dir: Path, rel, full: bool = True) -> list[str]:
    """Efficiency findings from the tables. ``full`` (RESULTS.md): the largest gallery sizes measured
    (``scaling.csv``) and which part of a text query's latency dominates (``query_side.csv``); else (the README):
    the targets' verdicts (``efficiency_targets.csv``) and a pointer to RESULTS.md."""
    tables = results_dir / "tables"
    lines = []
    if not full:
        if (tables / "efficiency_targets.csv").is_file():
            t = pd.read_csv(tables / "efficiency_targets.csv")
            if {"target", "holds", "detail"} <= set(t):
                verdict = {True: "holds", False: "does not hold"}
                lines += [f"Efficiency targets (`efficiency_targets.csv`; each with the numbers compared, the scaling "
                          f"table and what dominates a query's latency: [RESULTS.md]({rel}/RESULTS.md)):", ""]
                for _, r in t.iterrows():
                    v = "n/a" if pd.isna(r.holds) else verdict[str(r.holds).lower() in ("true", "1", "1.0")]
                    lines.append(f"- {r.target}: **{v}**")
                lines.append("")
        return lines
    if (tables / "scaling.csv").is_file():
        s = pd.read_csv(tables / "scaling.csv")
        rows = scale_rows(s)
        if len(rows):
            kind = s.gallery_kind.dropna().iloc[0] if "gallery_kind" in s and s.gallery_kind.notna().any() else ""
            d = int(s.dim.dropna().iloc[0]) if "dim" in s and s.dim.notna().any() else None
            lines += [f"### Search at scale (`04_efficiency`: {kind} gallery grown from the baseline's embeddings"
                      + (f", {d}-d" if d else "") + "; text-to-image, one thread; approximate indexes tuned to "
                      "recall@10 >= 0.95 against exact search; floor = the read-bandwidth / GEMM lower bound; "
                      "`extrapolated` rows are predictions, not measurements)", "",
                      to_markdown(rows, index=False, floatfmt=".4g"), ""]
    if (tables / "query_side.csv").is_file():
        q = pd.read_csv(tables / "query_side.csv")
        if {"method", "search", "n_items", "encode_ms", "search_ms", "dominant"} <= set(q):
            q = q[q.search.isin(["flat"]) | (q.search == q.method)]
            piv = q.pivot_table(index=["method", "search"], columns="n_items", values="dominant", aggfunc="first")
            piv.columns = [f"{int(c):,} items" for c in piv.columns]
            piv = piv.fillna("")
            lines += ["What dominates a text query's latency, encoding (MiniLM + the method's layers) or search "
                      "(exact flat for vector methods, the method's own scoring otherwise; `query_side.csv`):", "",
                      to_markdown(piv.reset_index(), index=False), ""]
    return lines


def write_report(results_dir: str | Path, readme: Path | None = None, readme_block: bool = True) -> list[Path]:
    """Write ``<results_dir>/RESULTS.md`` and, with ``readme_block`` (the full profile), the README's headline
    block; returns the paths written."""
    results_dir = Path(results_dir)
    path = results_dir / "RESULTS.md"
    atomic_write_text(path, results_markdown(results_dir))
    return [path, update_readme(results_dir, readme)] if readme_block else [path]


def update_readme(results_dir: str | Path, readme: Path | None = None) -> Path:
    readme = readme or REPO_ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} has no {BEGIN} ... {END} markers. Fix: add them where the results go.")
    new = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: f"{BEGIN}\n{headline_markdown(results_dir)}{END}",
                 text, flags=re.S)
    atomic_write_text(readme, new)
    return readme
