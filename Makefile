# Targets a newcomer can guess. `make setup` creates .venv and installs into it; PYTHON may point elsewhere.
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
PROFILE ?= full
DATASETS ?= rsicd ucm
# torch first, pinned: this project's machines carry the CPU wheel of 2.13.0. On a machine with internet and no GPU,
# `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu` avoids pulling the large CUDA build.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: setup test test-timing test-fast nbval features smoke study bench bench-train-step bench-train bench-encode probe \
	clean-smoke strip chromium explore explore-check explore-screenshot

setup: $(VENV)/bin/python  ## create .venv, install CPU torch, the package with its tooling, register the kernel, build the MrSw max kernel
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PYTHON) -m pip install -q -e ".[dev]"
	$(PYTHON) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(PYTHON) -m itr_lib.maxkernel
	@$(MAKE) --no-print-directory chromium
	@echo "ready: . $(VENV)/bin/activate (or prefix commands with $(PYTHON))"

# The explorer's browser test (part of `make test`) drives Debian's chromium through Playwright; nothing is downloaded
# by Playwright itself. As root with apt-get it is installed; otherwise one line says what to run.
CHROMIUM ?= $(or $(ITR_CHROMIUM),/usr/bin/chromium)
chromium:         ## install Debian's chromium for the browser test (as root with apt-get), else say how
	@if [ -x "$(CHROMIUM)" ]; then echo "chromium: $(CHROMIUM)"; \
	elif [ "$(CHROMIUM)" = /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium (the explorer's browser test needs it; ~350 MB)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && echo "chromium: $(CHROMIUM)"; \
	else echo "make setup: no Chromium at $(CHROMIUM), which the explorer's browser test in \`make test\` needs: run \`sudo apt-get update && sudo apt-get install -y chromium\` (or set ITR_CHROMIUM=/path/to/chromium; ITR_SKIP_BROWSER=1 skips that test)"; fi

$(VENV)/bin/python:
	python3 -m venv $(VENV)

test:             ## the README's test command: unit tests and the whole notebook chain on the 12-image fixture (temp folders only)
	ITR_PROGRESS=0 $(PYTHON) -m pytest -q

test-timing:      ## the timing checks (measured search times vs the read-bandwidth floor); run on an idle machine
	$(PYTHON) -m pytest -q -m timing

test-fast:        ## unit tests only (no notebook execution)
	$(PYTHON) -m pytest -q -m "not slow"

nbval:            ## execute the committed notebooks with their defaults under nbval (slow: UCM; writes results/adhoc, cache/)
	$(PYTHON) -m pytest -q --nbval-lax notebooks/

features:         ## build (or reuse) the frozen feature caches of every dataset
	for d in $(DATASETS); do $(PYTHON) -m itr_lib.features --dataset $$d || exit 1; done

smoke:            ## the quick profile: UCM, few epochs, one seed (results/smoke/)
	$(PYTHON) -m itr_lib.study --profile smoke

study:            ## the full profile: both datasets, all ablations and methods, 3 seeds (results/full/)
	$(PYTHON) -m itr_lib.study --profile $(PROFILE)

bench:            ## efficiency benchmarks (query cost, hardware floor, scaling) into results/
	$(PYTHON) -m itr_lib.study --profile $(PROFILE) --only 04

bench-train-step: ## seconds per training step by phase (itr_lib.train's own step), per variant, 1 and 2 threads (idle machine)
	$(PYTHON) -m itr_lib.bench train-step --dataset rsicd --threads 1 2 --variants baseline lca cra lca+cra

bench-train:      ## whole training runs of the study's configs (6 epochs, temporary folders) (idle machine)
	$(PYTHON) -m itr_lib.bench train-run --dataset rsicd --variants lca+cra baseline --threads 2

bench-encode:     ## encoding a whole split with the study's trained checkpoints (looked up by config in results/$(PROFILE))
	$(PYTHON) -m itr_lib.bench encode --dataset rsicd --split test --threads 1 2 --profile $(PROFILE)

probe:            ## capacity probe of LCA+CRA on RSICD and the follow-ups (02_ablations; recorded runs are reused)
	$(PYTHON) -m itr_lib.study --profile $(PROFILE) --only 02

explore:          ## serve the explorer (06_explore) with Voila on localhost, prints the URL; RETRAIN='GLOB' retrains missing checkpoints first
	$(PYTHON) -m itr_lib.explore --profile $(PROFILE) --datasets $(DATASETS) $(if $(RETRAIN),--retrain '$(RETRAIN)') $(if $(PORT),--port $(PORT))

explore-check:    ## the methods the explorer offers per dataset of results/$(PROFILE) (missing checkpoints with the retrain command)
	$(PYTHON) -m itr_lib.explore --profile $(PROFILE) --datasets $(DATASETS) --check

explore-screenshot: ## the README's image (results/figures/explore*.png): RSICD on results/$(PROFILE)'s checkpoints in headless chromium (FIXTURE=1: runs trained on the 12-image fixture)
	ITR_PROGRESS=0 $(PYTHON) -m itr_lib.explore_browser $(if $(FIXTURE),,--results-dir results/$(PROFILE) --dataset rsicd)

strip:            ## strip outputs and papermill metadata from the committed notebooks
	nbstripout --extra-keys "metadata.papermill cell.metadata.papermill" notebooks/*.ipynb

clean-smoke:
	rm -rf results/smoke
