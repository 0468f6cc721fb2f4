#!/usr/bin/env bash
# Multi-adapter serving and SageMaker MME routes: tests on a tiny random model (no network, no GPU).
# Needs the project venv (.ci/run installs it); installs nothing itself. ~1.5 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-${VENV:-.venv}/bin/python}"
PYTHONPATH=. "$PY" -m pytest -q -p no:cacheprovider tests/test_adapters.py tests/test_multi_model.py
