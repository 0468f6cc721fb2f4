# Training concern: dataset preparation, LoRA training, ROUGE evaluation (docs/training.md).
# Offline defaults: the hand-written sample in data/sample and the tiny random dev model.
DATA_SOURCES ?= data/sample/train.jsonl
DATA_VALIDATION ?= data/sample/validation.jsonl
DATA_DIR ?= build/data
DATA_ARGS ?=
BASE_MODEL ?= $(DEV_MODEL_DIR)
TRAIN_OUT ?= build/train
TRAIN_ARGS ?= --max-steps 30 --batch-size 4 --learning-rate 5e-3 --max-target-length 32
EVAL_DATA ?= $(DATA_DIR)/validation/validation.jsonl
EVAL_REPORT ?= build/evaluate/report.json
EVAL_ARGS ?=
# Set to score a SageMaker endpoint (boto3 sagemaker-runtime) instead of http://$(HOST):$(PORT).
ENDPOINT_NAME ?=

.PHONY: data train evaluate test-train

data: install $(if $(filter $(DEV_MODEL_DIR),$(BASE_MODEL)),devmodel) ## JSON/JSONL/CSV sources -> $(DATA_DIR)/{train,validation} channels + report.json
	$(PY) -m tools.dataprep $(DATA_SOURCES) $(if $(DATA_VALIDATION),--validation-source $(DATA_VALIDATION)) \
		--out $(DATA_DIR) $(if $(wildcard $(BASE_MODEL)/tokenizer*.json),--tokenizer $(BASE_MODEL)) $(DATA_ARGS)

$(DATA_DIR)/train/train.jsonl:
	$(MAKE) data

train: install devmodel $(DATA_DIR)/train/train.jsonl ## LoRA-train BASE_MODEL on $(DATA_DIR) -> $(TRAIN_OUT)/model (serve it with MODEL_DIR=...)
	$(VENV)/bin/train --base-model $(BASE_MODEL) --train-file $(DATA_DIR)/train \
		--validation-file $(DATA_DIR)/validation --model-dir $(TRAIN_OUT)/model \
		--output-data-dir $(TRAIN_OUT)/data --checkpoint-dir $(TRAIN_OUT)/checkpoints $(TRAIN_ARGS)

evaluate: install ## ROUGE of a running endpoint (http://$(HOST):$(PORT), or ENDPOINT_NAME) on EVAL_DATA -> EVAL_REPORT
	$(PY) -m tools.evaluate $(EVAL_DATA) \
		$(if $(ENDPOINT_NAME),--endpoint-name $(ENDPOINT_NAME),--url http://$(HOST):$(PORT)) \
		--out $(EVAL_REPORT) --predictions $(basename $(EVAL_REPORT)).predictions.jsonl $(EVAL_ARGS)

test-train: install ## Training, data-prep and evaluation tests (tiny model, ~2-3 min)
	$(PY) -m pytest -q tests/code/test_train.py tests/tools/test_dataprep.py tests/tools/test_evaluate.py \
	  tests/tools/test_dialogsum.py
