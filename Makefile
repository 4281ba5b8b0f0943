# compat-embed: `make demo` runs the whole pipeline, `make test` runs the tests.
# Both create .venv and install requirements.txt when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?=
CONFIG ?= configs/demo.yaml
PYTEST_ARGS ?=

.PHONY: demo test test-slow results sweep lineage bench env data clean

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-common.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

data:
	@bash scripts/fetch_data.sh

# configs/realsize*.yaml read colour images and a team's exported model that these rules write first.
REALSIZE_IMAGES := data/colour-fashion-mnist
REALSIZE_TEAM := outputs/realsize-team
$(REALSIZE_IMAGES)/.written: scripts/colour_fashion_mnist.py
	@bash scripts/fetch_data.sh
	PYTHONPATH=. $(PY) scripts/colour_fashion_mnist.py --out $(REALSIZE_IMAGES) && touch $@
$(REALSIZE_TEAM)/.written: $(REALSIZE_IMAGES)/.written scripts/realsize_team_model.py
	PYTHONPATH=. $(PY) scripts/realsize_team_model.py --images $(REALSIZE_IMAGES) --out $(REALSIZE_TEAM) && touch $@

demo: env $(if $(filter configs/realsize.yaml configs/realsize/%,$(CONFIG)),$(REALSIZE_TEAM)/.written)
ifeq ($(strip $(DATA)),)
	@bash scripts/fetch_data.sh
	$(PY) -m jobs.pipeline --config $(CONFIG)
else
	$(PY) -m jobs.pipeline --config $(CONFIG) --data "$(DATA)"
endif

# Every scenario of configs/scenarios (3 seeds each), then docs/results.md; DATA=<path> runs
# them on your own images and writes the tables under outputs/ instead. SCENARIO=<name> (or
# names) runs only those; the tables take the other scenarios from their finished runs.
SCENARIO ?=
RESULTS_ARGS := $(if $(strip $(SCENARIO)),--run $(SCENARIO))
results: env
ifeq ($(strip $(DATA)),)
	@bash scripts/fetch_data.sh
	$(PY) -m jobs.results $(RESULTS_ARGS)
else
	$(PY) -m jobs.results --data "$(DATA)" $(RESULTS_ARGS)
endif

# A Ray Tune sweep of LCE's sizes, margin and weights (tuning/configs/demo.yaml, or SWEEP=<yaml>).
SWEEP ?= tuning/configs/demo.yaml
sweep: env
	@bash scripts/fetch_data.sh
	$(PY) -m tuning.sweep --config $(SWEEP)

# Three models trained one after the other (configs/lineage.yaml, or LINEAGE=<yaml>), registered
# in MLflow, and the lineage's compatibility report (matrix, AC/AM, backfill curves, verdicts).
LINEAGE ?= configs/lineage.yaml
lineage: env
	@bash scripts/fetch_data.sh
	$(PY) -m jobs.lineage --config $(LINEAGE)

# Benchmarks (bench/): each writes bench/results/<name>.json and its rows in docs/performance.md.
bench: env
	@bash scripts/fetch_data.sh
	$(PY) -m bench.training_step
	$(PY) -m bench.ray_train
	$(PY) -m bench.ray_data
	$(PY) -m bench.scoring
	$(PY) -m bench.streaming
	$(PY) -m bench.ivfpq_scale
	$(PY) -m bench.scoring_nodes

# Two pytest sessions: the multi-node tests start their own Ray cluster (`ray start`), which
# cannot share the machine with the other tests' local one. The tests marked slow (a sweep, a
# streamed rerun, multi-node ones that a faster test shows in part) run in `make test-slow`, to
# keep `make test` within 20 min.
test: env data
	@bash scripts/ensure_chromium.sh
	$(PY) -m pytest -m "not cluster and not slow" $(PYTEST_ARGS)
	$(PY) -m pytest -m "cluster and not slow" $(PYTEST_ARGS)

test-slow: env data
	$(PY) -m pytest -m "slow and not cluster" $(PYTEST_ARGS)
	$(PY) -m pytest -m "slow and cluster" $(PYTEST_ARGS)

clean:
	rm -rf outputs data .pytest_cache
