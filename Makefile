# Targets a newcomer can guess. PYTHON may point at a virtual environment's interpreter.
PYTHON ?= python3
PROFILE ?= full
DATASETS ?= rsicd ucm

.PHONY: setup test test-fast features smoke study bench bench-train probe clean-smoke strip

setup:            ## install the package, its dependencies and the notebook tooling
	$(PYTHON) -m pip install -e ".[dev]"
	$(PYTHON) -m ipykernel install --sys-prefix --name python3 >/dev/null

test:             ## the whole test suite (unit tests, notebook chain, nbval over the committed notebooks)
	$(PYTHON) -m pytest -q
	$(PYTHON) -m pytest -q --nbval-lax notebooks/

test-fast:        ## unit tests only (no notebook execution)
	$(PYTHON) -m pytest -q -m "not slow"

features:         ## build (or reuse) the frozen feature caches of every dataset
	for d in $(DATASETS); do $(PYTHON) -m itr_lib.features --dataset $$d || exit 1; done

smoke:            ## the quick profile: UCM, few epochs, one seed (results/smoke/)
	$(PYTHON) -m itr_lib.study --profile smoke

study:            ## the full profile: both datasets, all ablations and methods, 3 seeds (results/full/)
	$(PYTHON) -m itr_lib.study --profile $(PROFILE)

bench:            ## efficiency benchmarks (query cost, hardware floor, scaling) into results/
	$(PYTHON) -m itr_lib.study --profile $(PROFILE) --only 04

bench-train:      ## training and encoding cost: seconds per step by variant, whole 6-epoch runs, whole-split encoding (idle machine)
	$(PYTHON) scripts/bench_train_step.py --dataset rsicd --threads 1 2 --variants baseline lca cra lca+cra --append
	$(PYTHON) scripts/bench_train_run.py --dataset rsicd --variants lca+cra baseline --epochs 6 --threads 2
	$(PYTHON) scripts/bench_encode.py --dataset rsicd --split test --threads 1 2

probe:            ## capacity probe of LCA+CRA on RSICD (seed 0, chosen on val), then the choice over 3 seeds
	$(PYTHON) scripts/probe_capacity.py --dataset rsicd --workers 2
	$(PYTHON) scripts/probe_capacity.py --dataset rsicd --confirm chosen --seeds 0 1 2 --workers 2

strip:            ## strip outputs and papermill metadata from the committed notebooks
	nbstripout --extra-keys "metadata.papermill cell.metadata.papermill" notebooks/*.ipynb

clean-smoke:
	rm -rf results/smoke
