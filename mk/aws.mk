# AWS targets (docs/aws.md). Included by the main Makefile after its shared variables.
#   make push       [REGISTRY=host:port]           tag + push $(IMAGE_NAME):$(IMAGE_TAG) (ECR by default)
#   make package    [PACKAGE_MODEL_DIR=dir] [MODEL_S3_URI=s3://bucket/prefix]
#   make deploy     ENDPOINT_NAME=... SAGEMAKER_ROLE_ARN=... [IMAGE_URI=...] [MODEL_DATA=...]
#                   [ASYNC=1 ASYNC_S3_URI=s3://bucket/prefix]   (an asynchronous endpoint)
#                   [SERVERLESS=1 SERVERLESS_MEMORY_MB=3072]      (a serverless endpoint)
#   make invoke     ENDPOINT_NAME=... [INVOKE_TEXT=...|INVOKE_FILE=x.jsonl] [ENDPOINT_URL=http://127.0.0.1:8080]
#   make invoke-async ENDPOINT_NAME=... [INVOKE_TEXT=...|INVOKE_FILE=x.jsonl]
#   make endpoint-status / endpoint-delete ENDPOINT_NAME=...
#   make train-job  SAGEMAKER_ROLE_ARN=... [TRAIN_DATA_S3_URI=s3://...] [TRAIN_HP="max_steps=500 ..."]
#   make transform  SAGEMAKER_ROLE_ARN=... TRANSFORM_INPUT_S3_URI=s3://... [MODEL_DATA=...]
# IMAGE_NAME / IMAGE_TAG / IMAGE come from mk/image.mk; they are only read inside recipes here
# (this file is included first, alphabetically), so its defaults always win.
# Every other setting is an environment variable of `python -m deploy` (docs/aws.md lists
# them all); a variable given on make's command line reaches the recipe's environment.

AWS_OUT ?= build/aws
# Empty: <account>.dkr.ecr.<region>.amazonaws.com of the caller (via STS).
REGISTRY ?=
# What make package ships. The dev model's adapter + its base (under base/) by default.
PACKAGE_MODEL_DIR ?= $(DEV_MODEL_DIR)/adapter
PACKAGE_BASE_DIR ?= $(if $(filter $(DEV_MODEL_DIR)/adapter,$(PACKAGE_MODEL_DIR)),$(DEV_MODEL_DIR))
# Empty: build model.tar.gz only. s3://bucket/prefix: also upload (content-addressed key).
MODEL_S3_URI ?=
# Container environment for make deploy: space-separated KEY=VALUE (names from serving/settings/fields.py).
DEPLOY_ENV ?=
INVOKE_TEXT ?= \#Person1\#: Are you coming to the meeting at three? \#Person2\#: Yes, I will bring the slides.
INVOKE_FILE ?=
# A serving container to invoke directly instead of SageMaker (e.g. make serve / docker run).
ENDPOINT_URL ?=
# The project's one config file: serving settings at the top, hyperparameters under training:.
PROJECT_CONFIG ?= config/t5-serving.yaml
# Training data: TRAIN_DATA_S3_URI (holding train/ and validation/), else what `make data
# DATA_ARGS="--s3-uri s3://..."` uploaded, as its report says.
TRAIN_DATA_REPORT ?= $(DATA_DIR)/report.json
# Hyperparameter overrides on top of PROJECT_CONFIG's training: section, NAME=VALUE ...
TRAIN_HP ?=

.PHONY: push package deploy invoke endpoint-status endpoint-delete test-aws sdk-venv \
        train-job transform transform-evaluate invoke-async

push: ## Tag + push the image to ECR (login, create repo) or REGISTRY=host:port
	@mkdir -p $(AWS_OUT)
	$(PY) -m deploy push \
	  $(if $(IMAGE),--local-image $(IMAGE)) \
	  $(if $(IMAGE_NAME),--image-name $(IMAGE_NAME)) \
	  --image-tag $(or $(IMAGE_TAG),$(shell git rev-parse --short HEAD)) \
	  $(if $(REGISTRY),--registry $(REGISTRY)) \
	  --result-file $(AWS_OUT)/image_uri

package: ## Build model.tar.gz from PACKAGE_MODEL_DIR (+ upload to MODEL_S3_URI)
	@mkdir -p $(AWS_OUT)
	$(PY) -m deploy package --model-dir $(PACKAGE_MODEL_DIR) \
	  $(if $(PACKAGE_BASE_DIR),--base-dir $(PACKAGE_BASE_DIR)) \
	  --output $(AWS_OUT)/model.tar.gz \
	  $(if $(MODEL_S3_URI),--s3-uri $(MODEL_S3_URI)) \
	  --result-file $(AWS_OUT)/model_data

# IMAGE_URI / MODEL_DATA default to what make push / make package (with MODEL_S3_URI) or
# make train-job wrote. ASYNC=1 (with ASYNC_S3_URI) makes an asynchronous endpoint, SERVERLESS=1
# a serverless one (docs/aws.md).
deploy: ## Create or blue/green-update the SageMaker endpoint ENDPOINT_NAME (+ autoscaling; ASYNC=1, SERVERLESS=1)
	IMAGE_URI="$${IMAGE_URI:-$$(cat $(AWS_OUT)/image_uri 2>/dev/null)}" \
	MODEL_DATA="$${MODEL_DATA:-$$(grep '^s3://' $(AWS_OUT)/model_data 2>/dev/null)}" \
	$(PY) -m deploy deploy $(foreach e,$(DEPLOY_ENV),--env $(e))

invoke: ## Summarize INVOKE_TEXT (or INVOKE_FILE) with ENDPOINT_NAME (or ENDPOINT_URL)
	$(PY) -m deploy.invoke \
	  $(if $(ENDPOINT_URL),--endpoint-url $(ENDPOINT_URL) --container) \
	  $(if $(INVOKE_FILE),--file $(INVOKE_FILE),--text "$(INVOKE_TEXT)")

invoke-async: ## One request to the asynchronous endpoint ENDPOINT_NAME via S3; waits for the answer
	$(PY) -m deploy invoke-async \
	  $(if $(INVOKE_FILE),--file $(INVOKE_FILE),--text "$(INVOKE_TEXT)")

train-job: ## SageMaker training job with this image; writes the model URI to $(AWS_OUT)/model_data
	@mkdir -p $(AWS_OUT)
	IMAGE_URI="$${IMAGE_URI:-$$(cat $(AWS_OUT)/image_uri 2>/dev/null)}" \
	$(PY) -m deploy train --config $(PROJECT_CONFIG) --data-report $(TRAIN_DATA_REPORT) \
	  $(foreach h,$(TRAIN_HP),--hp $(h)) --result-file $(AWS_OUT)/model_data

transform: ## Batch transform of TRANSFORM_INPUT_S3_URI (JSON Lines) -> $(AWS_OUT)/transform/
	IMAGE_URI="$${IMAGE_URI:-$$(cat $(AWS_OUT)/image_uri 2>/dev/null)}" \
	MODEL_DATA="$${MODEL_DATA:-$$(grep '^s3://' $(AWS_OUT)/model_data 2>/dev/null)}" \
	$(PY) -m deploy transform --download $(AWS_OUT)/transform

transform-evaluate: ## ROUGE of each downloaded transform output in $(AWS_OUT)/transform/ (offline)
	@set -e; for f in $(AWS_OUT)/transform/*.out; do \
	  $(PY) -m tools.evaluate "$$f" --transform-output --out "$${f%.out}.report.json"; \
	done

endpoint-status: ## Describe ENDPOINT_NAME
	$(PY) -m deploy status

endpoint-delete: ## Delete ENDPOINT_NAME, its autoscaling and the models/configs deploy made
	$(PY) -m deploy delete

test-aws: ## Deploy, training-job, transform and async tests against moto + Stubber (no Docker, never real AWS)
	$(PY) -m pytest -q tests/deploy

sdk-venv: ## Separate venv with the SageMaker Python SDK (local-mode test)
	bash .ci/aws.sh sdk-venv
