#!/usr/bin/env bash
# A private Docker engine and image registry for CI, on loopback only.
#
# Debian's docker.io engine runs here without systemd: dockerd is started by hand with its
# own socket, data root and exec root, no bridge and no iptables (containers use
# --network=host, and nothing outside the machine is reachable anyway). Docker Hub is
# unreachable, so the base image is built with debootstrap (container/build-base.sh) and
# cached under /var/cache/t5serving.
#
# Use it either way:
#   source .ci/docker.sh; docker_up; docker_build; ...; docker_down
#   bash .ci/docker.sh up|down|base|build|test|all
# `all` = up + build + pytest -m docker + down (what .ci/run calls).
#
# Env knobs (defaults in brackets):
#   T5S_DOCKER_RUN   run dir: socket, pid files, logs     [/run/t5serving-docker]
#   T5S_DOCKER_DATA  engine data root (image layers)      [/var/cache/t5serving/docker]
#                    Kept between CI runs on one machine, so an unchanged dependency
#                    layer is reused; delete it to start clean.
#   T5S_REGISTRY_PORT  loopback registry port             [5000]
#   T5S_IMAGE        tag to build                         [t5serving:ci]
# After docker_up: DOCKER_HOST, DOCKER (the client matching this engine) and T5S_REGISTRY
# (127.0.0.1:5000) are exported; after docker_build also T5S_IMAGE.

T5S_DOCKER_RUN="${T5S_DOCKER_RUN:-/run/t5serving-docker}"
T5S_DOCKER_DATA="${T5S_DOCKER_DATA:-/var/cache/t5serving/docker}"
T5S_REGISTRY_PORT="${T5S_REGISTRY_PORT:-5000}"
# Registry blobs are per run (deleted by docker_down): a push test must really upload.
T5S_REGISTRY_DATA="${T5S_REGISTRY_DATA:-/var/tmp/t5serving-registry}"
T5S_BASE_IMAGE="${T5S_BASE_IMAGE:-t5serving-base:bookworm}"
T5S_IMAGE="${T5S_IMAGE:-t5serving:ci}"
T5S_TORCH_WHEEL_SRC="${T5S_TORCH_WHEEL_SRC:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}"
T5S_CACHE="${T5S_CACHE:-/var/cache/t5serving}"

_dlog() { printf '[docker.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The Debian client speaks this engine's API and has the built-in BuildKit builder; a newer
# client elsewhere on PATH (e.g. /usr/local/bin/docker 28.x) needs the buildx plugin for that.
_docker_client() {
  if [[ -x /usr/bin/docker ]]; then echo /usr/bin/docker; else command -v docker; fi
}

docker_install() {
  local need=()
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v docker-registry >/dev/null || need+=(docker-registry)
  if ((${#need[@]})); then
    _dlog "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  fi
  # The package's postinst may start its own registry on 0.0.0.0 where an init system
  # exists; ours binds loopback only, so stop the packaged one if it runs.
  if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
    systemctl stop docker-registry || true
  fi
}

_pid_alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

docker_up() {
  docker_install
  mkdir -p "$T5S_DOCKER_RUN" "$T5S_DOCKER_DATA"
  export DOCKER_HOST="unix://$T5S_DOCKER_RUN/docker.sock"
  DOCKER="$(_docker_client)"; export DOCKER
  if "$DOCKER" version >/dev/null 2>&1; then
    _dlog "engine already running at $DOCKER_HOST, reusing it"
  else
    _dlog "starting dockerd (data root $T5S_DOCKER_DATA)"
    local start=$SECONDS
    # setsid: its own process group, so a CI step's Ctrl-C does not kill it mid-write.
    setsid dockerd \
      -H "$DOCKER_HOST" \
      --data-root "$T5S_DOCKER_DATA" \
      --exec-root "$T5S_DOCKER_RUN/exec" \
      --pidfile "$T5S_DOCKER_RUN/dockerd.pid" \
      --iptables=false --ip6tables=false --bridge=none \
      >"$T5S_DOCKER_RUN/dockerd.log" 2>&1 </dev/null &
    local i
    for ((i = 0; i < 60; i++)); do
      "$DOCKER" version >/dev/null 2>&1 && break
      sleep 0.5
    done
    if ! "$DOCKER" version >/dev/null 2>&1; then
      _dlog "dockerd did not come up; last log lines:"; tail -20 "$T5S_DOCKER_RUN/dockerd.log" >&2
      return 1
    fi
    _dlog "dockerd up in $((SECONDS - start)) s, storage driver $("$DOCKER" info -f '{{.Driver}}')"
  fi
  registry_up
}

registry_up() {
  local pidf="$T5S_DOCKER_RUN/registry.pid"
  export T5S_REGISTRY="127.0.0.1:$T5S_REGISTRY_PORT"
  if _pid_alive "$pidf"; then _dlog "registry already running"; return 0; fi
  mkdir -p "$T5S_REGISTRY_DATA"
  cat >"$T5S_DOCKER_RUN/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $T5S_REGISTRY_DATA
  delete:
    enabled: true
http:
  # Loopback only: this registry has no auth and must not be reachable from elsewhere.
  addr: 127.0.0.1:$T5S_REGISTRY_PORT
EOF
  setsid docker-registry serve "$T5S_DOCKER_RUN/registry.yml" \
    >"$T5S_DOCKER_RUN/registry.log" 2>&1 </dev/null &
  echo $! >"$pidf"
  local i
  for ((i = 0; i < 40; i++)); do
    curl -fsS "http://127.0.0.1:$T5S_REGISTRY_PORT/v2/" >/dev/null 2>&1 && break
    sleep 0.25
  done
  if ! curl -fsS "http://127.0.0.1:$T5S_REGISTRY_PORT/v2/" >/dev/null 2>&1; then
    _dlog "registry did not come up"; tail -20 "$T5S_DOCKER_RUN/registry.log" >&2; return 1
  fi
  _dlog "registry up at $T5S_REGISTRY"
}

_stop_pidfile() {  # name pidfile timeout_s
  local name=$1 pidf=$2 timeout=$3 pid i
  _pid_alive "$pidf" || { rm -f "$pidf"; return 0; }
  pid="$(cat "$pidf")"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 4; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  if kill -0 "$pid" 2>/dev/null; then _dlog "$name ($pid) ignored SIGTERM, killing"; kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$pidf"
  _dlog "$name stopped"
}

docker_down() {
  export DOCKER_HOST="unix://$T5S_DOCKER_RUN/docker.sock"
  DOCKER="${DOCKER:-$(_docker_client)}"
  # Containers the tests left behind (they remove their own; this is the safety net).
  if [[ -S "$T5S_DOCKER_RUN/docker.sock" ]]; then
    local ids
    ids="$("$DOCKER" ps -q --filter label=t5serving.test 2>/dev/null || true)"
    [[ -n "$ids" ]] && "$DOCKER" rm -f $ids >/dev/null 2>&1 || true
  fi
  _stop_pidfile registry "$T5S_DOCKER_RUN/registry.pid" 10
  rm -rf "$T5S_REGISTRY_DATA"
  # dockerd stops the containerd it started itself.
  _stop_pidfile dockerd "$T5S_DOCKER_RUN/dockerd.pid" 30
}

# Build the base (debootstrap, cached) and the image. The torch CPU wheel on this machine
# goes into the build context (container/wheels/) because a build cannot see local disk.
docker_build() {
  local start=$SECONDS t0
  [[ -n "${DOCKER_HOST:-}" ]] || docker_up
  t0=$SECONDS
  DOCKER="$DOCKER" CACHE_DIR="$T5S_CACHE/base" bash container/build-base.sh "$T5S_BASE_IMAGE" >/dev/null
  _dlog "base image ready in $((SECONDS - t0)) s"
  local wheel_args=()
  # A build cannot see local disk: mk/image.mk links the wheel into container/wheels/.
  [[ -f "$T5S_TORCH_WHEEL_SRC" ]] && wheel_args=(TORCH_WHEEL="$T5S_TORCH_WHEEL_SRC")
  t0=$SECONDS
  make --no-print-directory build \
    DOCKER="$DOCKER" IMAGE="$T5S_IMAGE" BASE_IMAGE="$T5S_BASE_IMAGE" \
    CA_CERTS_FROM=/usr/local/share/ca-certificates "${wheel_args[@]}" \
    DOCKER_BUILD_FLAGS="--network=host"
  _dlog "image $T5S_IMAGE built in $((SECONDS - t0)) s (docker setup + build $((SECONDS - start)) s)"
  # The data root persists between CI runs: drop superseded images and cap the build cache
  # so it cannot grow without bound (the current dependency layers stay cached).
  "$DOCKER" image prune -f >/dev/null
  "$DOCKER" builder prune -f --keep-storage 6gb >/dev/null
  export T5S_IMAGE
}

docker_test() {
  local py="${PY:-.venv/bin/python}"
  [[ -x "$py" ]] || py=python3
  DOCKER_HOST="$DOCKER_HOST" DOCKER="$DOCKER" T5S_IMAGE="$T5S_IMAGE" T5S_REGISTRY="127.0.0.1:$T5S_REGISTRY_PORT" \
    "$py" -m pytest -q -m docker tests/docker
}

docker_all() {
  local rc=0
  docker_up || return 1
  { docker_build && docker_test; } || rc=$?
  # Always stop the engine and registry, also when the build or the tests failed.
  docker_down
  return $rc
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
  cd "$(dirname "$0")/.."
  case "${1:-all}" in
    up) docker_up ;;
    down) docker_down ;;
    base) docker_up; DOCKER="$DOCKER" CACHE_DIR="$T5S_CACHE/base" bash container/build-base.sh "$T5S_BASE_IMAGE" ;;
    build) docker_up; docker_build ;;
    test) docker_up; docker_test ;;
    all) trap 'docker_down' INT TERM; docker_all ;;
    *) echo "usage: $0 up|down|base|build|test|all" >&2; exit 2 ;;
  esac
fi
