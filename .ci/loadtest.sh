#!/usr/bin/env bash
# CI step for the load-test concern (docs/loadtest.md): plan/report/SLO unit tests, Locust
# against a fake loopback server (failure causes), and `make loadtest COMPARE=1` end to end on
# the tiny random model (two servers, two 3 s steps each, report + PNGs, impossible SLO fails).
# Expects the project venv that `make install` builds (VENV, default .venv) with the `loadtest`
# extra (locust, matplotlib) and `dev` (pytest); needs `make`. Installs nothing else.
# ~75 s on 2 cores, all loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export VENV
"$VENV/bin/python" -c "import locust, matplotlib" || {
  echo "loadtest.sh: $VENV lacks the loadtest extra; run make install (EXTRAS includes loadtest)" >&2
  exit 2
}
command -v make >/dev/null || { echo "loadtest.sh: needs make (apt-get install -y make)" >&2; exit 2; }
PYTHONPATH=. "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_loadtest.py
