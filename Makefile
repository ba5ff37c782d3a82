# vitlab's front door. `make train` and `make test` set everything up on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vitlab-installed
PYTEST_ARGS ?=
# make test runs the suite on TEST_WORKERS pytest-xdist processes (one core each); TEST_WORKERS=0 runs it in one process.
# --dist loadfile: a test module runs on one worker (its module fixtures, e.g. a training run, are made once), in
# the order tests/conftest.py sorts them (--no-loadscope-reorder keeps it): slow-process modules first, small last.
TEST_WORKERS ?= 2

.PHONY: help install pip-install lock lock-check train test test-slow lint format clean bench-data bench sweep report docs

help:
	@echo "make train      set up .venv, then run the quickstart (ViT vs BiT on digits, one table)"
	@echo "make test       set up .venv, then run the default test suite"
	@echo "make test-slow  the slow tests too (accuracy targets of the quickstart)"
	@echo "make lock       refresh uv.lock from pyproject.toml (make lock-check: do they agree?)"
	@echo "make lint       ruff, and lint-imports (the layers of docs/architecture.md)"
	@echo "make bench      training/eval img/s, MFU, memory: vitlab.train vs plain PyTorch vs timm; the default job, per-callback costs (BENCH_ARGS=...)"
	@echo "make bench-data input-pipeline img/s: vitlab's ImageNet loader vs torchvision ImageFolder"
	@echo "make sweep      data-scaling study: vit_micro vs bit_micro on 4 sizes of shapes (CPU, target < 20 min on 2 cores; SWEEP_ARGS=...)"
	@echo "make report     table + paper figures (Fig. 3/4, Fig. 5) + HTML from the latest sweep (SWEEP_DIR=...)"
	@echo "make docs       generate docs/reference/ from the code and conf/, build the site strictly into site/"
	@echo "make clean      remove logs and caches (keeps .venv)"

# Install: from uv.lock (exact versions of the whole environment) with uv; pip + constraints.txt is the fallback,
# used automatically when uv cannot be set up or `uv sync` fails, or on request: make train INSTALLER=pip.
# uv is installed (pinned) into .tools/uv, not into the project venv (`uv sync` removes what the lock lacks).
# Both paths leave compiled bytecode in the venv (uv: --compile-bytecode; pip compiles by default): without it
# every first start of a job recompiles torch, Lightning and timm (docs/how-to/install.md measures it).
INSTALLER ?= uv
UV_VERSION ?= 0.13.9
UV := .tools/uv/bin/uv

# uv's wheel into .tools/uv with the system pip (5 s; a venv with its own pip first costs 12 s), else through a venv.
$(UV):
	$(PYTHON) -m pip install -q --disable-pip-version-check --root-user-action=ignore --target .tools/uv "uv==$(UV_VERSION)" \
		|| ($(PYTHON) -m venv .tools/uv && .tools/uv/bin/python -m pip install -q "uv==$(UV_VERSION)")

$(STAMP): pyproject.toml constraints.txt uv.lock
	@if [ "$(INSTALLER)" = uv ] && $(MAKE) -s $(UV) && UV_PYTHON=$(PYTHON) $(UV) sync --frozen --compile-bytecode --extra dev; then \
		echo "[vitlab] installed from uv.lock"; \
	else \
		echo "[vitlab] installing with pip + constraints.txt (INSTALLER=$(INSTALLER); uv path unavailable or failed)"; \
		$(MAKE) -s pip-install; \
	fi
	@touch $(STAMP)

# The fallback: every pip install goes through constraints.txt (torch/torchvision pins; see DEVELOPERS.md).
pip-install:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PY) -m pip install -q -c constraints.txt -e ".[dev]"

# Refresh uv.lock after editing pyproject.toml (commit both); CI runs `make lock-check`.
lock: $(UV)
	$(UV) lock

lock-check: $(UV)
	$(UV) lock --check

install: $(STAMP)

train: $(STAMP)
	$(PY) -m vitlab.train experiment=quickstart

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "slow or not slow" --durations=15 $(PYTEST_ARGS)

bench-data: $(STAMP)
	$(PY) -m vitlab.bench.data $(BENCH_DATA_ARGS)

bench: $(STAMP)
	$(PY) -m vitlab.bench $(BENCH_ARGS)

# Scaling studies (docs/scaling.md): a Hydra multirun, then the report of the newest multirun dir.
SWEEP_DIR ?= latest
sweep: $(STAMP)
	$(PY) -m vitlab.train sweep=data_scaling $(SWEEP_ARGS)

report: $(STAMP)
	$(PY) -m vitlab.report sweep_dir=$(SWEEP_DIR) $(REPORT_ARGS)

# The docs site (docs/explanation/docs-site.md): docs/reference/ is generated from the code and conf/ at every build
# (gitignored, so it cannot drift), then `mkdocs build --strict` fails on any broken link or missing page.
docs: $(STAMP)
	$(PY) -m vitlab.docs docs/reference
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests tools
	$(VENV)/bin/lint-imports  # the layers of docs/architecture.md ([tool.importlinter] in pyproject.toml)

format: $(STAMP)
	$(VENV)/bin/ruff format src tests tools
	$(VENV)/bin/ruff check --fix src tests tools

clean:
	rm -rf logs outputs multirun .pytest_cache .ruff_cache site docs/reference
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
