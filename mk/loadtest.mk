# Load tests (docs/loadtest.md). Every variable below is optional; e.g.
#   make loadtest                                   # tiny random dev model served here, steps 1..32
#   make loadtest MODEL_DIR=/tmp/base/adapter COMPARE=1 LOADTEST_STEPS=1,4,16 LOADTEST_STEP_S=75
#   make loadtest TARGET_URL=http://127.0.0.1:8080 SLO_P95_MS=2000 SLO_ERROR_PCT=1
#   make loadtest LOADTEST_TARGET=sagemaker ENDPOINT_NAME=my-endpoint AWS_REGION=eu-west-1

# DialogSum's dev split when this checkout sits next to the shared data, else the small
# hand-written sample shipped in the repo.
DIALOGSUM_DEV ?= ../shared/data/dialogsum/dialogsum.dev.jsonl
LOADTEST_DATA ?= $(firstword $(wildcard $(DIALOGSUM_DEV)) loadtest/data/sample.jsonl)
LOADTEST_STEPS ?= 1,2,4,8,16,32
LOADTEST_STEP_S ?= 30
LOADTEST_WARMUP_S ?=
LOADTEST_MAX_NEW_TOKENS ?= 40
LOADTEST_PARAMS ?= typical
LOADTEST_OUT ?= loadtest/out/$(shell date +%Y%m%d-%H%M%S)
LOADTEST_TARGET ?= http
LOADTEST_ARGS ?=
TARGET_URL ?=
BASELINE_URL ?=
ENDPOINT_NAME ?=
AWS_REGION ?=
COMPARE ?=
ALLOW_REMOTE ?=
SLO_P95_MS ?=
SLO_ERROR_PCT ?=
SLO_LABELS ?=

_truthy = $(filter 1 yes true on,$(1))
LOADTEST_FLAGS = --data $(LOADTEST_DATA) --steps $(LOADTEST_STEPS) --step-seconds $(LOADTEST_STEP_S) \
	--max-new-tokens $(LOADTEST_MAX_NEW_TOKENS) --params-profile $(LOADTEST_PARAMS) --target $(LOADTEST_TARGET) \
	$(if $(LOADTEST_WARMUP_S),--warmup-seconds $(LOADTEST_WARMUP_S)) \
	$(if $(TARGET_URL),--target-url $(TARGET_URL)) $(if $(BASELINE_URL),--baseline-url $(BASELINE_URL)) \
	$(if $(and $(MODEL_DIR),$(if $(TARGET_URL),,1)),--model-dir $(MODEL_DIR)) \
	--devmodel-dir $(DEV_MODEL_DIR) \
	$(if $(ENDPOINT_NAME),--endpoint-name $(ENDPOINT_NAME)) $(if $(AWS_REGION),--region $(AWS_REGION)) \
	$(if $(call _truthy,$(COMPARE)),--compare) $(if $(call _truthy,$(ALLOW_REMOTE)),--allow-remote) \
	$(if $(SLO_P95_MS),--slo-p95-ms $(SLO_P95_MS)) $(if $(SLO_ERROR_PCT),--slo-error-pct $(SLO_ERROR_PCT)) \
	$(if $(SLO_LABELS),--slo-labels $(SLO_LABELS)) $(LOADTEST_ARGS)

.PHONY: loadtest loadtest-compare loadtest-report

# Installs the venv only when its python is missing (a shared VENV=... is used as it is).
loadtest: $(if $(wildcard $(PY)),,install) ## Step load test + report + SLO gate (see docs/loadtest.md)
	PYTHONPATH=.$(if $(PYTHONPATH),:$(PYTHONPATH)) $(PY) -m loadtest.run --out $(LOADTEST_OUT) $(LOADTEST_FLAGS)

loadtest-compare: COMPARE = 1
loadtest-compare: loadtest ## Same load against batching on and MAX_BATCH_SIZE=1, one report

loadtest-report: ## Rebuild report/plots/SLO verdict of LOADTEST_OUT=<an existing output folder>
	PYTHONPATH=. $(PY) -m loadtest.report $(LOADTEST_OUT) \
	$(if $(LOADTEST_WARMUP_S),--warmup-seconds $(LOADTEST_WARMUP_S)) \
	$(if $(SLO_P95_MS),--slo-p95-ms $(SLO_P95_MS)) $(if $(SLO_ERROR_PCT),--slo-error-pct $(SLO_ERROR_PCT)) \
	$(if $(SLO_LABELS),--slo-labels $(SLO_LABELS))
