#!/usr/bin/env bash
# ENGINE=ctranslate2: its own tests (tests/test_ctranslate2.py: conversion, parity with the torch
# engine, parameter mapping) and the whole hosting-contract suite against a ctranslate2 server.
#   needs: the venv with the `ctranslate2` extra (make install installs it); nothing else.
#   env:   VENV (default .venv), PY (default $VENV/bin/python).
#   time:  ~3-4 min on a 2-core machine (tiny model; the contract suite runs twice).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PY:-$VENV/bin/python}
[ -x "$PY" ] || { echo "ct2.sh: $PY not found; create the venv first (make install)" >&2; exit 2; }
# A missing ctranslate2 would turn every test into a skip: fail loudly instead.
"$PY" -c 'import ctranslate2' || { echo "ct2.sh: ctranslate2 is not installed (the ctranslate2 extra)" >&2; exit 2; }

PYTHONPATH=. "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_ctranslate2.py "$@"
# The contract suite (its fixture reads CONTRACT_ENGINE; the server inherits COMPUTE_TYPE):
# float32 in full (token-identical to torch, so every batching-equality check applies), then
# int8, the CPU default, minus the one test that expects /info's dtype to be float32.
CONTRACT_ENGINE=ctranslate2 COMPUTE_TYPE=float32 PYTHONPATH=. \
    "$PY" -m pytest -q -rs -p no:cacheprovider tests/contract "$@"
CONTRACT_ENGINE=ctranslate2 COMPUTE_TYPE=int8 PYTHONPATH=. \
    "$PY" -m pytest -q -rs -p no:cacheprovider tests/contract -k "not test_info_describes_model_and_knobs" "$@"
