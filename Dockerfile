# One image for SageMaker real-time endpoints, SageMaker training and Kubernetes.
#
#   docker run IMAGE serve     HTTP server on $HOST:$SAGEMAKER_BIND_TO_PORT (0.0.0.0:8080)
#   docker run IMAGE train     LoRA training with SageMaker's /opt/ml layout
#
# Needs BuildKit (RUN --mount): default in Docker >= 23; with Docker 20.10 set
# DOCKER_BUILDKIT=1. `make build` passes the right flags; docs/image.md lists every build
# arg. No "# syntax=" line on purpose: that would pull a frontend image from Docker Hub.
#
# Build args (all optional):
#   DEVICE            cpu (default) | gpu: which base and which torch build.
#   BASE_IMAGE        the base, overriding DEVICE's default (e.g. a mirror when Docker Hub is
#                     unreachable, or container/build-base.sh's debootstrap image). It needs
#                     a shell and either python3 with venv, or apt to install them.
#   BASE_IMAGE_CPU / BASE_IMAGE_GPU   the two defaults BASE_IMAGE picks from.
#   TORCH_INDEX_URL   where torch comes from; default PyTorch's own cpu / $TORCH_CUDA index.
#   TORCH_CUDA        CUDA flavour of the GPU torch wheel (cu128 -> .../whl/cu128).
#   TORCH_WHEEL       file name of a torch wheel in container/wheels/ to install instead.
#   PIP_INDEX_URL     the index for everything else (a PyPI mirror / proxy).
#   EXTRAS            project extras to install besides the server (default: train).
#   MODEL_DIR         a model dir inside the build context to bake in at /opt/ml/model
#                     (Kubernetes without S3). Default: none baked; SageMaker mounts it.
#   VERSION, GIT_SHA, CREATED   OCI labels.
# Extra CA certificates: put *.crt into container/certs/ (see container/certs/README.md).

ARG DEVICE=cpu
ARG BASE_IMAGE_CPU=python:3.11-slim-bookworm
# "base" flavour: CUDA runtime libraries come with torch's own wheels (nvidia-* packages),
# so the bigger "runtime"/"cudnn" flavours would only duplicate them.
ARG BASE_IMAGE_GPU=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG BASE_IMAGE=base-${DEVICE}
# Default container/no-model holds only a README and bakes nothing.
ARG MODEL_DIR=container/no-model

# Only the stage BASE_IMAGE names is pulled (BuildKit skips unreachable stages).
FROM ${BASE_IMAGE_CPU} AS base-cpu
FROM ${BASE_IMAGE_GPU} AS base-gpu

# The model to bake, staged on its own: the runtime stage bind-mounts it, so the default
# (no model) adds nothing to the image.
FROM scratch AS bake-model
ARG MODEL_DIR
COPY ${MODEL_DIR}/ /model/

FROM ${BASE_IMAGE} AS system
ARG DEVICE
SHELL ["/bin/sh", "-eu", "-c"]

ENV LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    # pip and Python's ssl trust the system store (with any extra CA from container/certs),
    # not pip's bundled certifi, which knows nothing of a TLS-intercepting proxy.
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    AWS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=120

# --- system layer: python, CA trust, user, writable dirs --------------------------------
# Bases without python3 (the CUDA one) get it from apt; bases with it skip apt entirely,
# which is what lets the debootstrap base build without any package mirror.
RUN --mount=type=bind,source=container/certs,target=/tmp/certs \
    if ! python3 -c 'import venv, ensurepip, ssl' 2>/dev/null || ! [ -f /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates libgomp1; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    if ls /tmp/certs/*.crt >/dev/null 2>&1; then \
        mkdir -p /usr/local/share/ca-certificates/t5serving; \
        cp /tmp/certs/*.crt /usr/local/share/ca-certificates/t5serving/; \
        update-ca-certificates >/dev/null; \
    fi; \
    # Numeric uid/gid 1000 so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    groupadd --gid 1000 t5s 2>/dev/null || groupadd --gid 1000 -o t5s; \
    useradd --uid 1000 --gid 1000 -o --no-create-home --home-dir /tmp --shell /usr/sbin/nologin t5s; \
    # SageMaker mounts over /opt/ml/model (read-only) and the training dirs; creating them
    # owned by t5s lets local runs and `train` write without a mount.
    mkdir -p /opt/ml/model /opt/ml/input/config /opt/ml/input/data /opt/ml/output /opt/ml/code; \
    chown -R 1000:1000 /opt/ml; \
    python3 -m venv /opt/venv

# --- requirement lists, in a side stage ---------------------------------------------------
# The install layers below COPY only these generated lists, and BuildKit caches COPY by
# content: an edit to pyproject.toml that leaves the torch pin alone keeps the torch layer,
# and one that touches only extras the image does not install keeps both layers.
FROM system AS requirements
ARG EXTRAS=train
COPY pyproject.toml container/requirements.py /tmp/build/
RUN mkdir /reqs; \
    python3 /tmp/build/requirements.py /tmp/build/pyproject.toml --only torch > /reqs/torch.txt; \
    python3 /tmp/build/requirements.py /tmp/build/pyproject.toml --extras "$EXTRAS" --exclude torch \
        > /reqs/requirements.txt

# --- dependency layers ---------------------------------------------------------------------
FROM system AS runtime
ARG DEVICE
# torch first and alone: the largest layer, and the one whose source differs (CPU / CUDA
# index, or a local wheel).
ARG TORCH_CUDA=cu128
ARG TORCH_INDEX_URL=
ARG TORCH_WHEEL=
ARG PIP_INDEX_URL=https://pypi.org/simple
COPY --from=requirements /reqs/torch.txt /tmp/build/torch.txt
RUN --mount=type=bind,source=container/wheels,target=/tmp/wheels \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ -n "$TORCH_WHEEL" ]; then \
        [ -f "/tmp/wheels/$TORCH_WHEEL" ] || { echo "TORCH_WHEEL=$TORCH_WHEEL is not in container/wheels/" >&2; exit 1; }; \
        pip install --index-url "$PIP_INDEX_URL" "/tmp/wheels/$TORCH_WHEEL"; \
    else \
        case "$DEVICE" in \
            cpu) index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
            gpu) index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/$TORCH_CUDA}" ;; \
            *) echo "DEVICE must be cpu or gpu, not $DEVICE" >&2; exit 1 ;; \
        esac; \
        # --index-url, not --extra-index-url: PyPI's torch is the CUDA build (GBs).
        pip install --index-url "$index" -r /tmp/build/torch.txt; \
    fi; \
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'

COPY --from=requirements /reqs/requirements.txt /tmp/build/requirements.txt
RUN --mount=type=bind,source=container/wheels,target=/tmp/wheels \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    # setuptools/wheel: the editable install below builds without network (no isolation).
    pip install --index-url "$PIP_INDEX_URL" --find-links /tmp/wheels \
        -r /tmp/build/requirements.txt "setuptools>=68,<81" wheel; \
    pip check

# --- code layers (change with every commit; small) --------------------------------------
WORKDIR /opt/program
# README* : pyproject.toml names README.md, which a trimmed checkout may lack.
COPY pyproject.toml README* ./
COPY serving/ serving/
COPY code/ code/
# Editable so the package keeps /opt/program as its root: the server falls back to the
# image's own code/inference.py next to serving/. Bytecode precompiled because a read-only
# root filesystem cannot write __pycache__ at run time.
RUN [ -f README.md ] || echo '# t5-serving' > README.md; \
    pip install --no-deps --no-build-isolation --no-index -e /opt/program >/dev/null; \
    python3 -m compileall -q /opt/program/serving /opt/program/code; \
    command -v serve; command -v train

# --- optional baked model (Kubernetes without S3) ---------------------------------------
ARG MODEL_DIR
RUN --mount=type=bind,from=bake-model,source=/model,target=/tmp/bake-model \
    if [ -f /tmp/bake-model/config.json ] || [ -f /tmp/bake-model/adapter_config.json ]; then \
        cp -a /tmp/bake-model/. /opt/ml/model/; chown -R 1000:1000 /opt/ml/model; \
        echo "baked model from $MODEL_DIR"; \
    fi

# --- runtime -------------------------------------------------------------------------
# HOST=0.0.0.0: SageMaker and Kubernetes connect from outside the container (the server's
# own default is loopback). Caches point at /tmp so a read-only root filesystem with a
# tmpfs/emptyDir at /tmp works. HF_HUB_OFFLINE is deliberately unset: with network access
# HF_MODEL_ID / BASE_MODEL_ID hub ids load; set HF_HUB_OFFLINE=1 to forbid hub calls.
ENV HOST=0.0.0.0 \
    SAGEMAKER_BIND_TO_PORT=8080 \
    HOME=/tmp \
    HF_HOME=/tmp/hf \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCHINDUCTOR_CACHE_DIR=/tmp/.cache/torchinductor \
    NLTK_DATA=/tmp/nltk_data \
    MODEL_CACHE_DIR=/tmp/t5serving-models \
    PYTHONDONTWRITEBYTECODE=1
EXPOSE 8080
USER 1000:1000
WORKDIR /tmp

ARG VERSION=0.1.0
ARG GIT_SHA=unknown
ARG CREATED=
ENV T5SERVING_VERSION=${VERSION} \
    T5SERVING_GIT_SHA=${GIT_SHA}
LABEL org.opencontainers.image.title="t5-serving" \
      org.opencontainers.image.description="FLAN-T5 + LoRA summarization server for SageMaker and Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_SHA}" \
      org.opencontainers.image.created="${CREATED}" \
      t5serving.device="${DEVICE}"

# No ENTRYPOINT: SageMaker runs `docker run IMAGE serve|train`, which replaces CMD, so the
# console script is exec'd directly and Python is PID 1. The server installs its own
# SIGTERM handler (PID 1 gets no default one), so `docker stop` drains and exits at once.
CMD ["serve"]
