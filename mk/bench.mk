# Benchmarks: long, noisy-machine-aware runs that write results under benchmarks/results/.
BENCH_MODEL_DIR ?= models/flan-t5-base
BENCH_ARGS ?=

.PHONY: bench bench-model bench-realistic soak

$(BENCH_MODEL_DIR)/config.json: | install
	$(PY) -m tools.devmodel $(BENCH_MODEL_DIR) --shape flan-t5-base --adapter

bench-model: $(BENCH_MODEL_DIR)/config.json ## FLAN-T5-base-shaped random model (+ adapter) for benchmarks

bench: bench-model ## Batching vs unbatched server vs in-process generate (minutes; results in benchmarks/results/)
	$(PY) -m benchmarks.bench_batching --model-dir $(BENCH_MODEL_DIR) $(BENCH_ARGS)

REALISTIC_ARGS ?=

bench-realistic: bench-model ## Continuous vs request-level batching on realistic and uniform traffic, closed + open loop (~25 min on 2 cores)
	PYTHONPATH=. flock /tmp/bench.lock $(PY) -m benchmarks.bench_realistic --model-dir $(BENCH_MODEL_DIR) $(REALISTIC_ARGS)

# The soak test: not part of CI (10 minutes of CPU). Results in benchmarks/results/soak-<time>.{json,md}.
SOAK_S ?= 600
SOAK_ARGS ?=

soak: $(if $(wildcard $(PY)),,install) ## 10 min of mixed good/bad traffic: RSS growth, errors, /health/live latency -> benchmarks/results/
	PYTHONPATH=. $(PY) -m benchmarks.soak --duration $(SOAK_S) $(SOAK_ARGS)
