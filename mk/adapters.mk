# Many LoRA adapters on one base (docs/adapters.md).
.PHONY: test-adapters bench-adapters bench-adapters-kernel serve-adapters

test-adapters: ## Tests of multi-adapter serving and the SageMaker MME routes (tiny model, ~1.5 min)
	$(PY) -m pytest -q tests/engines/test_multi_adapter.py tests/http/test_models_routes.py

bench-adapters: ## Mixed vs grouped vs merged adapters on FLAN-T5-base's shape (takes /tmp/bench.lock)
	PYTHONPATH=. flock /tmp/bench.lock $(PY) -m benchmarks.bench_adapters

serve-adapters: devmodel ## Serve the tiny model's base with its adapter preloaded, per-request adapters on
	MULTI_ADAPTER=true $(VENV)/bin/serve --host $(HOST) --port $(PORT) --model-dir $(DEV_MODEL_DIR)/adapter

bench-adapters-kernel: ## peft's mixed-LoRA loop vs the stacked kernel, in-process (takes /tmp/bench.lock)
	PYTHONPATH=. flock /tmp/bench.lock $(PY) -m benchmarks.bench_adapters_kernel
