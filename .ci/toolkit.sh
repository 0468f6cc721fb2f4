#!/usr/bin/env bash
# code/inference.py under AWS's sagemaker-inference toolkit + multi-model-server
# (tests/code/test_sagemaker_toolkit.py). Idempotent: installs only what is missing.
#   needs: a JRE (apt openjdk-17-jre-headless), the venv's `sagemaker-toolkit` extra.
#   env:   VENV (default .venv), PY (default $VENV/bin/python).
#   time:  ~1.5 min on a 2-core machine (plus the JRE install, ~1 min, when absent).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PY:-$VENV/bin/python}
[ -x "$PY" ] || { echo "toolkit.sh: $PY not found; create the venv first (make install)" >&2; exit 2; }

if ! command -v java >/dev/null 2>&1 && [ -z "${JAVA_HOME:-}" ]; then
    echo "toolkit.sh: installing a JRE for multi-model-server"
    export DEBIAN_FRONTEND=noninteractive
    # openjdk-17-jre-headless is Debian 12's JRE; the postinst wants the man dir on slim images.
    mkdir -p /usr/share/man/man1
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null
fi
java -version 2>&1 | head -1

# sagemaker-inference 1.10.1 imports pkg_resources (gone in setuptools 81).
if ! "$PY" -c 'import sagemaker_inference, mms, psutil, pkg_resources' >/dev/null 2>&1; then
    echo "toolkit.sh: installing the sagemaker-toolkit extra"
    "$PY" -m pip install -q "sagemaker-inference==1.10.1" "multi-model-server==1.1.11" "setuptools<81"
fi

# -m slow is not filtered here: this test IS the slow one. A skip would hide a broken setup,
# so the requirements are checked above and skips are reported (-rs).
PYTHONPATH=. "$PY" -m pytest -q -rs -p no:cacheprovider tests/code/test_sagemaker_toolkit.py "$@"
