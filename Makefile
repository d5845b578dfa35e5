# One entry point for people and CI: `make demo` and `make test` each create or refresh .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --quiet --disable-pip-version-check
# The CPU torch these machines offer. A GPU user installs their own CUDA torch into .venv before the first
# `make`, and the torch step below then leaves it alone.
TORCH_SPEC ?= torch==2.13.0
# pip warns about every local index folder a package is missing from; those lines say nothing useful.
QUIET_PIP := 2> >(grep -v "is ignored: it is neither" >&2)
DEMO_DIR := runs/demo
# Every other package at the version the README's numbers were measured with (`make lock` rewrites it).
LOCK := constraints.txt

.PHONY: venv lock test lint typecheck unit demo bench clean

venv: $(VENV)/.installed

# The venv with torch in it (installed unless one is there already) and pinned in torch-constraint.txt.
define TORCH_FIRST
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || { echo "installing $(TORCH_SPEC)"; $(PIP) install "$(TORCH_SPEC)" $(QUIET_PIP); }
	@$(PY) -c "import torch; print('torch==' + torch.__version__)" 2>/dev/null > $(VENV)/torch-constraint.txt
endef

# Re-runs whenever pyproject.toml or the lock changes. torch goes in first and is then pinned to the installed
# build through a constraints file, so nothing the project asks for can swap it for another (CUDA) build;
# everything else comes at the lock's versions.
$(VENV)/.installed: pyproject.toml $(LOCK) Makefile
	$(TORCH_FIRST)
	@echo "installing xlreward[dev] (torch kept at $$(cat $(VENV)/torch-constraint.txt))"
	@$(PIP) install -c $(VENV)/torch-constraint.txt -c $(LOCK) -e ".[dev]" $(QUIET_PIP)
	@touch $@

# After a change to pyproject.toml's dependencies: install what it asks for unlocked, then record the versions.
lock:
	$(TORCH_FIRST)
	@$(PIP) install --upgrade -c $(VENV)/torch-constraint.txt -e ".[dev]" $(QUIET_PIP)
	@{ sed -n '1,/^[^#]/p' $(LOCK) | grep '^#'; $(PY) -m pip freeze --exclude-editable | grep -v -E '^(torch|xlreward)=='; } > $(LOCK).new
	@mv $(LOCK).new $(LOCK) && touch $(VENV)/.installed && echo "wrote $(LOCK)"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy clients service worker trainer

unit: venv
	$(PY) -m pytest

test: lint typecheck unit

# The method in miniature, offline: a synthetic three-language world, tiny pi_ref and pi^0, two iterations
# of `xlreward iterate` (+ the R_m ablation), `xlreward eval` against pi^0; prints a Table-2-shaped table and
# writes runs/demo/summary.json and runs/demo/win_rates.png. BROKER=redis://... annotates with Celery workers.
# SEEDS=0,1,2 runs it once per seed and adds the mean and spread (runs/demo/sweep.json).
demo: venv
	HF_HUB_OFFLINE=1 $(VENV)/bin/xlreward demo --out $(DEMO_DIR) $(if $(BROKER),--broker $(BROKER)) \
		$(if $(SEEDS),--seeds $(SEEDS))

# Scoring throughput and memory against a baseline of the reference code's loop; see bench/README.md.
bench: venv
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .cache runs .pytest_cache .mypy_cache .ruff_cache
