# CTranslate2 engine (docs/ctranslate2.md): convert ahead of time, serve with ENGINE=ctranslate2,
# test, benchmark against the torch engine.
# CT2_SOURCE: a model dir or LoRA adapter dir (merged into its base before conversion).
# CT2_OUT: where the converted model goes; the default, <CT2_SOURCE>/ctranslate2, is where the
# server looks first, so packaging CT2_SOURCE into model.tar.gz afterwards ships the conversion.
CT2_SOURCE ?= $(MODEL_DIR)
CT2_OUT ?= $(CT2_SOURCE)/ctranslate2
CT2_QUANTIZATION ?= int8
CT2_BENCH_ARGS ?=

.PHONY: ct2-convert serve-ct2 ct2-test bench-ct2

ct2-convert: install ## Merge the adapter and convert CT2_SOURCE (default MODEL_DIR) to CTranslate2 in CT2_OUT (int8)
	@test -n "$(CT2_SOURCE)" || { echo "set MODEL_DIR=... (or CT2_SOURCE=...) to the model or adapter dir" >&2; exit 2; }
	$(PY) -m serving.convert $(CT2_SOURCE) $(CT2_OUT) --quantization $(CT2_QUANTIZATION) --force

serve-ct2: devmodel ## Serve the tiny dev adapter with ENGINE=ctranslate2 (converted at start, cached)
	ENGINE=ctranslate2 $(VENV)/bin/serve --host $(HOST) --port $(PORT) --model-dir $(or $(MODEL_DIR),$(DEV_MODEL_DIR)/adapter)

ct2-test: install ## CTranslate2 engine tests + the hosting contract suite on both CTranslate2 compute types
	$(PY) -c 'import ctranslate2' || { echo "ctranslate2 is not installed (the ctranslate2 extra)" >&2; exit 2; }
	$(PY) -m pytest -q -rs tests/engines/test_ctranslate2.py tests/models/test_convert.py
	CONTRACT_ENGINE=ctranslate2-float32 $(PY) -m pytest -q -rs tests/contract
	CONTRACT_ENGINE=ctranslate2-int8 $(PY) -m pytest -q -rs tests/contract

bench-ct2: install ## CTranslate2 vs torch engine on the FLAN-T5-base shape (several minutes, under flock /tmp/bench.lock)
	test -f $(or $(BENCH_MODEL_DIR),models/flan-t5-base)/adapter/adapter_config.json || \
		$(PY) -m tools.devmodel $(or $(BENCH_MODEL_DIR),models/flan-t5-base) --shape flan-t5-base --adapter
	flock /tmp/bench.lock $(PY) -m benchmarks.bench_ctranslate2 --model-dir $(or $(BENCH_MODEL_DIR),models/flan-t5-base) $(CT2_BENCH_ARGS)
