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
EXTRAS ?= ctranslate2,train,tracking,loadtest,dev,browser,sagemaker-toolkit

HOST ?= 127.0.0.1
PORT ?= 8080
# Unset: /opt/ml/model if present, else HF_MODEL_ID (google/flan-t5-base, needs the hub).
MODEL_DIR ?=
DEV_MODEL_DIR ?= models/tiny

.PHONY: help install serve serve-dev devmodel test test-fast test-stress docs clean

help: ## List targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | sort | awk 'BEGIN{FS=":.*?## "}{printf "  %-16s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q "pip<26"
	@# An unreachable TORCH_INDEX would stall pip for minutes; check it in seconds first.
	@idx="$(TORCH_INDEX)"; \
	if [ -n "$$idx" ] && ! $(PYTHON) -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$$idx/" >/dev/null 2>&1; then \
	  echo "note: $$idx is unreachable; torch==2.13.0 comes from pip's own sources (make sure they hold the CPU build)"; idx=""; \
	fi; \
	set -x; \
	$(PIP) install -q $${idx:+--extra-index-url $$idx} torch==2.13.0 && \
	$(PIP) install -q $${idx:+--extra-index-url $$idx} -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed ## Create .venv with the server, tests and tools (CPU torch)

serve: install ## Serve MODEL_DIR (or /opt/ml/model, or the hub model) on $(HOST):$(PORT)
	$(VENV)/bin/serve --host $(HOST) --port $(PORT) $(if $(MODEL_DIR),--model-dir $(MODEL_DIR))

$(DEV_MODEL_DIR)/config.json: | install
	$(PY) -m serving.devmodel $(DEV_MODEL_DIR) --shape tiny --adapter

devmodel: $(DEV_MODEL_DIR)/config.json ## Write a tiny random T5 (+ LoRA adapter) to models/tiny

serve-dev: devmodel ## Serve the tiny random model's adapter (offline; output text is meaningless)
	$(VENV)/bin/serve --host $(HOST) --port $(PORT) --model-dir $(DEV_MODEL_DIR)/adapter

PYTEST_ARGS ?=

test: install ## The whole test suite (what CI runs; Docker tests skip without an engine)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install ## Tests that need neither Docker nor the SageMaker toolkit
	$(PY) -m pytest -q -m "not docker and not slow"

# The tests that compare two computations' outputs (tests/equivalence.py): run STRESS_ROUNDS times
# at 1 and at 2 torch threads, each time in a new random order, to show they never flip.
# The contract suite runs one engine at a time, so shuffling does not restart its server per test.
EQUIVALENCE_TESTS ?= tests/test_equivalence.py tests/test_adapters.py tests/test_multi_model.py \
	tests/test_ctranslate2.py
STRESS_ROUNDS ?= 5

test-stress: install ## The output-equivalence tests STRESS_ROUNDS x at 1 and 2 threads, random order
	@set -e; for threads in 1 2; do for round in $$(seq $(STRESS_ROUNDS)); do \
	  echo "== threads=$$threads round=$$round"; \
	  random="-p random_order --random-order-bucket=module --random-order-seed=$$threads$$round"; \
	  OMP_NUM_THREADS=$$threads $(PY) -m pytest -q -p no:cacheprovider $$random $(EQUIVALENCE_TESTS); \
	  for engine in torch ctranslate2-float32 ctranslate2-int8; do \
	    CONTRACT_ENGINE=$$engine OMP_NUM_THREADS=$$threads $(PY) -m pytest -q -p no:cacheprovider $$random tests/contract; \
	  done; \
	done; done

docs: ## Regenerate docs/configuration.md from serving/settings.py
	$(PY) -m serving.settings --markdown > docs/configuration.md

clean:
	rm -rf .pytest_cache build dist *.egg-info

-include mk/*.mk
