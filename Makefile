# Users' entry points. Each concern's targets live in mk/<concern>.mk (image, aws, k8s,
# loadtest, bench, train); this file holds the shared variables and the core loop.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch must be the CPU build on machines without a GPU: a plain `torch` pulls several GB of CUDA.
# Empty it where pip already finds a CPU wheel (CI: a local wheel directory); when it cannot be
# reached, install falls back to pip's own sources and says so.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# `make install` adds these extras to what serving needs (`make serving-env`).
EXTRAS ?= ctranslate2,train,tracking,loadtest,dev,browser,sagemaker-toolkit
EXTRAS_SPEC = -e ".[$(EXTRAS)]"

HOST ?= 127.0.0.1
PORT ?= 8080
# Unset: /opt/ml/model if present, else HF_MODEL_ID (google/flan-t5-base, needs the hub).
MODEL_DIR ?=
DEV_MODEL_DIR ?= models/tiny

.PHONY: help install serving-env serve serve-dev devmodel test test-fast test-stress lint docs clean

help: ## List targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | sort | awk 'BEGIN{FS=":.*?## "}{printf "  %-16s %s\n", $$1, $$2}'

# pip install $(1), with PyTorch's index for torch. An unreachable TORCH_INDEX would stall pip
# for minutes; it is checked in seconds first and dropped when it does not answer.
define pip_install
@idx="$(TORCH_INDEX)"; \
	if [ -n "$$idx" ] && ! $(PYTHON) -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$$idx/" >/dev/null 2>&1; then \
	  echo "note: $$idx is unreachable; torch==2.13.0 comes from pip's own sources (make sure they hold the CPU build)"; idx=""; \
	fi; \
	set -x; \
	$(PIP) install -q $${idx:+--extra-index-url $$idx} $(1)
endef

# The floor of pyproject's requires-python, checked before anything is created: on 3.10 the server
# starts but its batcher dies at the first batching delay (asyncio's TimeoutError is not the builtin
# one there), so an older Python must fail here, loudly, not later.
PYTHON_MIN := 3.11
define check_python
@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < tuple(map(int, "$(PYTHON_MIN)".split("."))))' 2>/dev/null || { \
	  found=$$($(PYTHON) -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || echo "not runnable"); \
	  echo "make: t5-serving needs Python >= $(PYTHON_MIN), but PYTHON=$(PYTHON) is $$found;" \
	       "install a newer one and run e.g. make install PYTHON=python3.11" >&2; exit 1; }
endef

# What serving needs and no more: torch (CPU build) and the base dependencies.
$(VENV)/.serving: pyproject.toml
	$(check_python)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q "pip<26"
	$(call pip_install,torch==2.13.0)
	$(call pip_install,-e .)
	touch $@

# The tests, tools and lint on top: the extras in EXTRAS.
$(VENV)/.installed: $(VENV)/.serving
	$(call pip_install,$(EXTRAS_SPEC))
	touch $@

install: $(VENV)/.installed ## Create .venv with the server, tests and tools (CPU torch)

serving-env: $(VENV)/.serving ## Create .venv with only what the server needs (CPU torch, no test stack)

serve: serving-env ## Serve MODEL_DIR (or /opt/ml/model, or the hub model) on $(HOST):$(PORT)
	$(VENV)/bin/serve --host $(HOST) --port $(PORT) $(if $(MODEL_DIR),--model-dir $(MODEL_DIR))

$(DEV_MODEL_DIR)/config.json: | serving-env
	$(PY) -m tools.devmodel $(DEV_MODEL_DIR) --shape tiny --adapter

devmodel: $(DEV_MODEL_DIR)/config.json ## Write a tiny random T5 (+ LoRA adapter) to models/tiny

serve-dev: devmodel ## Serve the tiny random model's adapter (offline; output text is meaningless)
	$(VENV)/bin/serve --host $(HOST) --port $(PORT) --model-dir $(DEV_MODEL_DIR)/adapter

PYTEST_ARGS ?=

test: install ## The whole test suite (what CI runs; Docker tests skip without an engine)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install ## Unit and in-process tests (a minute or two): neither Docker nor the slow end-to-end ones
	$(PY) -m pytest -q -m "not docker and not slow"

lint: install ## ruff (pyflakes, pycodestyle, import order) on the repository, mypy on serving/ and tools/
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The tests that compare two computations' outputs (tests/support/equivalence.py): run STRESS_ROUNDS times
# at 1 and at 2 torch threads, each time in a new random order, to show they never flip.
# The contract suite runs one engine at a time, so shuffling does not restart its server per test.
EQUIVALENCE_TESTS ?= tests/support/test_equivalence.py tests/engines/test_multi_adapter.py \
	tests/http/test_models_routes.py tests/engines/test_ctranslate2.py
STRESS_ROUNDS ?= 5

test-stress: install ## The output-equivalence tests STRESS_ROUNDS x at 1 and 2 threads, random order
	@set -e; for threads in 1 2; do for round in $$(seq $(STRESS_ROUNDS)); do \
	  echo "== threads=$$threads round=$$round"; \
	  random="-p random_order --random-order-bucket=module --random-order-seed=$$threads$$round"; \
	  OMP_NUM_THREADS=$$threads $(PY) -m pytest -q -p no:cacheprovider $$random $(EQUIVALENCE_TESTS); \
	  for engine in torch torch-request ctranslate2-float32 ctranslate2-int8; do \
	    CONTRACT_ENGINE=$$engine OMP_NUM_THREADS=$$threads $(PY) -m pytest -q -p no:cacheprovider $$random tests/contract; \
	  done; \
	done; done

docs: ## Regenerate docs/configuration.md from serving/settings/fields.py
	$(PY) -m serving.settings --markdown > docs/configuration.md

clean:
	rm -rf .pytest_cache build dist *.egg-info

-include mk/*.mk
