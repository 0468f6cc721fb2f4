# Container image targets (docs/image.md). Included by the main Makefile.
#   make build                       CPU image $(IMAGE_NAME):$(IMAGE_TAG)
#   make build DEVICE=gpu            CUDA base + CUDA torch
#   make build BASE_IMAGE=my.mirror/python:3.11-slim-bookworm
#   make build-base                  debootstrap base for hosts without Docker Hub
# push / deploy live in mk/aws.mk.

DOCKER ?= docker
IMAGE_NAME ?= t5serving
IMAGE_TAG ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
IMAGE ?= $(IMAGE_NAME):$(IMAGE_TAG)
# cpu | gpu: picks the base image and torch's wheel index.
DEVICE ?= cpu
# Empty: the Dockerfile's default for DEVICE (python:3.11-slim-bookworm or nvidia/cuda).
BASE_IMAGE ?=
# A torch wheel file to install instead of PyTorch's index (CI: the CPU wheel on disk).
TORCH_WHEEL ?=
# A directory of *.crt files to trust at build and run time (TLS-intercepting proxies).
CA_CERTS_FROM ?=
# A model directory inside the repo to bake into /opt/ml/model (Kubernetes without S3).
BAKE_MODEL_DIR ?=
# Project extras installed in the image: train for `docker run IMAGE train`, ctranslate2 for
# ENGINE=ctranslate2 (the CPU fast path; PyPI's wheel also carries CUDA support).
IMAGE_EXTRAS ?= train,ctranslate2
# Extra flags for docker build, e.g. --network=host, --pull, --no-cache.
DOCKER_BUILD_FLAGS ?=
BASE_TAG ?= t5serving-base:bookworm

IMAGE_VERSION := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -1)
IMAGE_GIT_SHA := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)

.PHONY: build build-base image-run

build: ## Build the serving/training image $(IMAGE) (DEVICE=cpu|gpu, BASE_IMAGE=...)
	@if [ -n "$(TORCH_WHEEL)" ]; then \
	  test -f "$(TORCH_WHEEL)" || { echo "TORCH_WHEEL=$(TORCH_WHEEL): no such file" >&2; exit 1; }; \
	  ln -f "$(TORCH_WHEEL)" container/wheels/ 2>/dev/null || cp -f "$(TORCH_WHEEL)" container/wheels/; \
	fi
	@if [ -n "$(CA_CERTS_FROM)" ]; then \
	  ls "$(CA_CERTS_FROM)"/*.crt >/dev/null 2>&1 || { echo "CA_CERTS_FROM=$(CA_CERTS_FROM) has no *.crt" >&2; exit 1; }; \
	  cp -f "$(CA_CERTS_FROM)"/*.crt container/certs/; \
	fi
	DOCKER_BUILDKIT=1 $(DOCKER) build $(DOCKER_BUILD_FLAGS) \
	  --build-arg DEVICE=$(DEVICE) \
	  $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	  $(if $(TORCH_WHEEL),--build-arg TORCH_WHEEL=$(notdir $(TORCH_WHEEL))) \
	  $(if $(BAKE_MODEL_DIR),--build-arg MODEL_DIR=$(BAKE_MODEL_DIR)) \
	  --build-arg EXTRAS=$(IMAGE_EXTRAS) \
	  --build-arg VERSION=$(IMAGE_VERSION) \
	  --build-arg GIT_SHA=$(IMAGE_GIT_SHA) \
	  --build-arg CREATED=$(shell date -u +%Y-%m-%dT%H:%M:%SZ) \
	  -t $(IMAGE) .
	@echo "built $(IMAGE)"

build-base: ## Build a Debian base image with debootstrap (no Docker Hub needed): $(BASE_TAG)
	DOCKER=$(DOCKER) bash container/build-base.sh $(BASE_TAG)

image-run: ## Run $(IMAGE) on 127.0.0.1:$(PORT) serving MODEL_DIR (mounted read-only at /opt/ml/model)
	@test -n "$(MODEL_DIR)" || { echo "set MODEL_DIR=<a model or adapter dir>" >&2; exit 1; }
	$(DOCKER) run --rm -p 127.0.0.1:$(PORT):8080 \
	  -v $(abspath $(MODEL_DIR)):/opt/ml/model:ro $(IMAGE) serve
