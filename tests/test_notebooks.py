"""Committed notebooks are clean and parameterised; the runner checks names; the chain runs end to end."""
import ast
import json
from pathlib import Path

import pandas as pd
import pytest

from itr_lib.study import StudyError, check_parameters, run_study

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_notebooks_exist_in_order():
    names = [p.stem[:2] for p in NOTEBOOKS]
    assert names == sorted(names) and {"00", "01", "02", "03", "05"} <= set(names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_stripped_with_python3_kernel(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert "papermill" not in nb["metadata"]
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, path.name
            assert "papermill" not in cell.get("metadata", {})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_of_annotated_commented_literals(path):
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1
    src = "".join(cells[0]["source"])
    tree = ast.parse(src)
    for node in tree.body:
        assert isinstance(node, ast.AnnAssign), ast.dump(node)
        ast.literal_eval(node.value)  # literals only
    for line in src.strip().splitlines():
        assert "#" in line, f"{path.name}: parameter line without a comment: {line}"
    names = {n.target.id for n in tree.body}
    import papermill as pm
    assert set(pm.inspect_notebook(str(path))) == names  # papermill sees every declared parameter
    assert "RESULTS_DIR" in names
    if path.stem[:2] in ("00", "01", "02", "03"):  # computing notebooks run unchanged on a GPU machine
        assert "DEVICE" in names


def test_unknown_parameter_is_an_error():
    with pytest.raises(StudyError, match=r"unknown parameter\(s\) \['EPOCSH'\]"):
        check_parameters(ROOT / "notebooks" / "01_train.ipynb", {"EPOCSH": 3})


@pytest.mark.slow
def test_whole_chain_through_papermill(tmp_path):
    out = tmp_path / "study"
    # the fixture's feature caches in the temporary folder too (the default is <repo>/cache/features)
    run_study(str(ROOT / "tests" / "fixtures" / "profile_mini.yaml"), results_dir=out,
              overrides={"CACHE_DIR": str(tmp_path / "cache")})
    executed = sorted(p.name for p in (out / "executed").glob("*.ipynb"))
    assert executed == ["00_data_prep-mini.ipynb", "01_train-selfalign.ipynb", "01_train-tgdt-2.ipynb",
                        "02_ablations.ipynb", "03_word_object.ipynb", "05_results.ipynb", "06_explore.ipynb",
                        "07_recipe.ipynb"]
    manifest = json.loads((out / "study.json").read_text())
    assert len(manifest["executions"]) == 8 and manifest["git_commit"]  # both parallel runs recorded
    abl = pd.read_csv(out / "tables" / "ablation_mini.csv")
    variants = set(abl.variant)
    assert {"baseline | infonce +FN-mask | 2 ep | D=32", "LCA K=16 | infonce +FN-mask | 2 ep | D=32", "CRA | infonce +FN-mask | 2 ep | D=32",
            "LCA+CRA K=16 | infonce +FN-mask | 2 ep | D=32"} <= variants
    # the codebook sweep (SWEEP_EPOCHS: 1) with the baseline of its own schedule, never pooled with the 2-epoch rows
    assert {"LCA+CRA K=8 | infonce +FN-mask | 1 ep | D=32", "LCA+CRA K=16 | infonce +FN-mask | 1 ep | D=32",
            "baseline | infonce +FN-mask | 1 ep | D=32"} <= variants
    assert "LCA K=16 w_lca=0.5 | infonce +FN-mask | 2 ep | D=32" in variants  # the LCA weight's sensitivity, 1 seed
    assert (abl[abl.variant.str.contains("| 2 ep", regex=False) & ~abl.variant.str.contains("w_lca")].n_seeds == 2).all()
    assert (abl[abl.variant.str.contains("| 1 ep", regex=False)].n_seeds == 1).all()
    for d in ("i2t", "t2i"):
        assert ((abl[f"{d}_r1"] <= abl[f"{d}_r5"]) & (abl[f"{d}_r5"] <= abl[f"{d}_r10"])).all()
    assert abl[["i2t_r1", "t2i_r10", "mr"]].apply(lambda c: c.between(0, 100)).all().all()
    assert ((abl.rsum - abl.mr * 6).abs() < 1e-2).all()  # the CSV keeps 4 decimals
    sa = abl[abl.method != "baseline"]
    assert sa.delta_rsum.notna().all() and (sa.ci_lo <= sa.delta_rsum + 1e-9).all()
    main = pd.read_csv(out / "tables" / "main_mini.csv")
    assert {"method", "variant", "n_seeds", "i2t_r1", "rsum", "mr", "mr_std", "published"} <= set(main.columns)
    assert not main.published.any()
    tgdt = main[main.method.str.lower().str.startswith("tgdt") & (main.setting == "ablation")]  # 01's TGDT run,
    # one row per inference mode
    assert len(tgdt) >= 3 and (tgdt.n_seeds == 1).all()
    # the fair comparison: every planned run recorded, one protocol, TGDT's modes as rows, claims with verdicts
    plan = pd.read_csv(out / "tables" / "comparison_plan.csv")
    assert len(plan) == 2 * 3 + 3 and plan.recorded.all()
    comp = pd.read_csv(out / "tables" / "comparison_mini.csv")
    study = comp[comp.setting == "study loss"]
    assert set(study.key) == {"baseline", "lca+cra", "tgdt"} and (study.n_seeds == 2).all()
    assert set(study[study.key == "tgdt"]["mode"]) == {"global", "two_stage", "exhaustive"}
    assert ((study.mr_pessimistic <= study.mr + 1e-6) & (study.mr <= study.mr_optimistic + 1e-6)).all()
    claims = pd.read_csv(out / "tables" / "claims.csv")
    assert set(claims.verdict) <= {"holds", "does not hold", "inconclusive", "not run"}
    ran = claims[claims.verdict != "not run"]
    assert {"selfalign_vs_baseline", "tgdt_two_stage_vs_global", "strongest"} <= set(ran.claim)
    assert ((ran.ci_lo_mr <= ran.delta_mr + 1e-9) & (ran.delta_mr <= ran.ci_hi_mr + 1e-9)).all()
    sa = ran.set_index("claim").loc["selfalign_vs_baseline"]
    assert sa.delta_mr == pytest.approx(sa.mr_b - sa.mr_a, abs=1e-6)  # expected-rule hits average to the table's mR
    loss = pd.read_csv(out / "tables" / "loss_ablation_mini.csv")
    assert len(loss) == 4 and loss.delta_mr.notna().sum() == 3
    ceil = pd.read_csv(out / "tables" / "ceilings.csv")
    assert ceil.set_index("dataset").loc["mini", "mr"] <= 100.0
    # the recipe (07): its lever table, and its rows in the main table (05 runs after it)
    levers = pd.read_csv(out / "tables" / "recipe_mini.csv")
    assert levers.lever.tolist()[:2] == ["reference", "InfoNCE temperature 0.07"]
    assert (main.setting == "recipe").sum() == 2  # baseline and LCA+CRA under the chosen recipe
    assert (main[main.setting == "recipe"].ms_per_query > 0).all()  # with their latency (04's protocol)
    for f in ("ablation_mini.png", "main_mini.png", "data_captions_mini.png", "comparison_mini.png",
              "recipe_levers_mini.png", "recipe_frontier_mini.png"):
        assert (out / "figures" / f).stat().st_size > 1000
    # a rerun skips finished training runs and keeps their metrics
    before = {str(p): p.stat().st_mtime for p in (out / "runs").glob("*/metrics.json")}
    run_study(str(ROOT / "tests" / "fixtures" / "profile_mini.yaml"), results_dir=out, only=["02"])
    after = {str(p): p.stat().st_mtime for p in (out / "runs").glob("*/metrics.json")}
    assert before == after


def test_runner_kernel_starts_without_the_unencrypted_tcp_warning(tmp_path, capfd):
    """ipykernel >= 7.3 warns on every start that the kernel runs over TCP without encryption; the runner's kernel
    manager provisions CurveZMQ keys, so an executed notebook starts quietly (and still runs)."""
    import nbformat
    import papermill as pm
    from itr_lib.study import encrypted_kernel_manager
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print(6 * 7)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, dst = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    nbformat.write(nb, src)
    pm.execute_notebook(str(src), str(dst), kernel_name="python3", progress_bar=False,
                        kernel_manager_class=encrypted_kernel_manager())
    out = nbformat.read(dst, as_version=4).cells[0].outputs[0]["text"]
    assert out.strip() == "42"
    assert "without encryption" not in capfd.readouterr().err


def test_command_line_overrides_go_to_the_notebooks_that_declare_them(tmp_path):
    from itr_lib.study import executions, load_profile
    prof = load_profile("smoke")
    todo = executions(prof, tmp_path, only=["01", "05"], overrides={"EPOCHS": 1, "N_BOOT": 7})
    by_nb = {}
    for t in todo:
        by_nb.setdefault(t["notebook"].name, []).append(t["parameters"])
    assert by_nb["01_train.ipynb"] and all(p["EPOCHS"] == 1 and "N_BOOT" not in p for p in by_nb["01_train.ipynb"])
    assert all(p["N_BOOT"] == 7 and "EPOCHS" not in p for p in by_nb["05_results.ipynb"])
    with pytest.raises(StudyError, match=r"-p EPOCSH: no selected notebook takes it \(selected: 01_train.ipynb"):
        executions(prof, tmp_path, only=["01"], overrides={"EPOCSH": 1})


def test_end_of_run_summary_shows_the_study_loss_comparison(tmp_path):
    from itr_lib.study import summary
    tables = tmp_path / "tables"
    tables.mkdir()
    pd.DataFrame({"run": ["a"], "setting": ["study loss"]}).to_csv(tables / "comparison_plan.csv", index=False)
    pd.DataFrame({"setting": ["study loss", "authors' loss", "study loss"], "variant": ["baseline", "tgdt", "cra"],
                  "mr": [19.4, 25.0, 20.4], "n_seeds": [3, 1, 2]}).to_csv(tables / "comparison_rsicd.csv", index=False)
    text = summary(tmp_path, 90)
    assert "1.5 min" in text and "comparison_plan" not in text and "tgdt" not in text
    assert text.index("cra") < text.index("baseline") and "20.40  (n=2)" in text
