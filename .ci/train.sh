#!/usr/bin/env bash
# CI step for the training concern: install the `tracking` extra (pinned mlflow-skinny, so the
# MLflow test runs instead of skipping) and run the training, data-prep and evaluation tests.
# Expects the project venv that `make install` builds (VENV, default .venv). ~3 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PIP_CACHE_DIR=${PIP_CACHE_DIR:-/var/cache/t5serving/pip}
mkdir -p "$PIP_CACHE_DIR"
if ! "$VENV/bin/python" -c "import mlflow" 2>/dev/null; then
  # The pin lives in pyproject.toml's `tracking` extra; read it there so the two cannot drift.
  pin=$("$VENV/bin/python" -c "import tomllib;print(tomllib.load(open('pyproject.toml','rb'))['project']['optional-dependencies']['tracking'][0])")
  "$VENV/bin/pip" install -q "$pin"
fi
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_dataprep.py tests/test_evaluate.py
