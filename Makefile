# The one entry point for people and CI. Every target bootstraps .venv when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint bench bench-ingest bench-train bench-accuracy bench-activation bench-runtime-pool bench-api bench-fleet bench-planner bench-replay bench-soak bench-soak-docker bench-cycle bench-warehouse-age screenshots clean-data

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "prewarm needs Python 3.11, found " + sys.version' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/prewarm demo

test: $(STAMP)
	$(BIN)/python -m pytest

# Style and types: ruff, then mypy over the packages (settings in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

# Every benchmark this machine runs as it is; bench-fleet and bench-soak-docker need dockerd
# and root (see their targets); bench-cycle builds its model caches the first time (~1.5 h).
bench: bench-ingest bench-train bench-accuracy bench-activation bench-planner bench-replay \
	bench-soak bench-runtime-pool bench-warehouse-age bench-api bench-cycle

bench-ingest: $(STAMP)
	$(BIN)/python bench/ingest.py

# Release the pool first: containers or processes outliving their warehouse would be
# strays to the next one.
clean-data:
	-test -x $(BIN)/prewarm && test -f data/warehouse.duckdb && $(BIN)/prewarm pools --release-all
	rm -rf data mlruns/mlflow.db mlruns/artifacts

bench-activation: $(STAMP)
	$(BIN)/python bench/activation.py

# One process-runtime call's cost at pool sizes 50 to 2,000; BASELINE=<git ref> measures that
# ref's code in the same run (before/after ratios).
BASELINE ?=
bench-runtime-pool: $(STAMP)
	$(BIN)/python bench/runtime_pool.py $(if $(BASELINE),--baseline $(BASELINE))

# The cycle's reads of prediction runs as a warehouse ages to its 2-day retention.
bench-warehouse-age: $(STAMP)
	$(BIN)/python bench/warehouse_age.py $(if $(BASELINE),--baseline $(BASELINE))

# The client API on 127.0.0.1 (its own small warehouse, process runtime; Docker when up).
bench-api: $(STAMP)
	$(BIN)/python bench/api.py

# Three extra dockerds as three hosts (needs root, dockerd, ip, openssl, like tests/fleet),
# then training on the shared control plane: Dask, MLflow and Prefect on PostgreSQL.
bench-fleet: $(STAMP)
	$(BIN)/python bench/fleet.py
	$(BIN)/python bench/control_plane.py

bench-planner: $(STAMP)
	$(BIN)/python bench/planner.py

bench-replay: $(STAMP)
	$(BIN)/python bench/replay.py

# The loop left running on the Azure trace, live against its simulation (issue 11).
TRACE ?= ../shared/traces/azure-functions-2019
bench-soak: $(STAMP)
	$(BIN)/prewarm soak --trace $(TRACE) --warmup 240 --minutes 120 --speed 60 --runtime process \
		--workdir data/soak --json bench/results/soak.json --plot docs/img/soak.png

bench-soak-docker: $(STAMP)
	$(BIN)/prewarm soak --trace $(TRACE) --warmup 240 --minutes 60 --speed 60 --runtime docker \
		--workdir data/soak-docker --json bench/results/soak-docker.json --plot docs/img/soak-docker.png

bench-train: $(STAMP)
	$(BIN)/python bench/train.py

bench-accuracy: $(STAMP)
	$(BIN)/python bench/accuracy.py

# One full cycle at 1,000 / 3,000 / 10,000 clients (issue 16); models cached in bench/.cache/cycle.
bench-cycle: $(STAMP)
	$(BIN)/python bench/cycle.py --clients 1000 3000 10000 --models-from 1000

# Refresh the README's pictures: the e2e browser test writes them to docs/img.
screenshots: $(STAMP)
	PREWARM_SCREENSHOTS_DIR=docs/img $(BIN)/python -m pytest tests/e2e -q
