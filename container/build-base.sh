#!/usr/bin/env bash
# Build a minimal Debian bookworm + Python 3.11 base image without Docker Hub.
#
# Where Docker Hub is reachable, the Dockerfile's default base (python:3.11-slim-bookworm)
# needs none of this. Behind a firewall that only lets Debian's apt mirror through, this
# script makes an equivalent base with debootstrap and `docker import`s it, so the build
# can run with --build-arg BASE_IMAGE=<tag printed here>.
#
# The root filesystem tarball is cached (CACHE_DIR) keyed by the package list and the
# suite, so a second run on the same machine skips debootstrap (minutes) and only imports
# (seconds). Usage:
#   container/build-base.sh [TAG]        # default tag: t5serving-base:bookworm
# Env: DOCKER (client, default docker), CACHE_DIR (default /var/cache/t5serving/base),
#      DEBIAN_MIRROR (default http://deb.debian.org/debian), FORCE=1 to rebuild the tarball.
set -euo pipefail

TAG="${1:-t5serving-base:bookworm}"
DOCKER="${DOCKER:-docker}"
CACHE_DIR="${CACHE_DIR:-/var/cache/t5serving/base}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
# python3-venv: the image installs into its own venv (Debian's python is "externally
# managed", PEP 668). libgomp1: OpenMP runtime for torch's CPU kernels (the manylinux wheel
# bundles one, but other wheels such as ctranslate2 expect the system's). ca-certificates:
# TLS to PyPI, S3 and the hub, and update-ca-certificates for extra CAs.
PACKAGES="python3,python3-venv,python3-pip,ca-certificates,libgomp1"

key="$(printf '%s %s %s' "$SUITE" "$PACKAGES" "v1" | sha256sum | cut -c1-12)"
tarball="$CACHE_DIR/rootfs-$SUITE-$key.tar"

log() { printf '[build-base] %s\n' "$*" >&2; }

if [[ -z "${FORCE:-}" ]] && "$DOCKER" image inspect "$TAG" >/dev/null 2>&1 \
    && [[ "$("$DOCKER" image inspect -f '{{index .Config.Labels "t5serving.base-key"}}' "$TAG" 2>/dev/null)" == "$key" ]]; then
  log "$TAG already present (key $key)"
  echo "$TAG"
  exit 0
fi

if [[ -n "${FORCE:-}" || ! -s "$tarball" ]]; then
  command -v debootstrap >/dev/null || { log "debootstrap missing: apt-get install -y debootstrap"; exit 2; }
  mkdir -p "$CACHE_DIR"
  rootfs="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
  trap 'rm -rf "$rootfs"' EXIT
  log "debootstrap $SUITE into $rootfs (takes a few minutes)"
  start=$SECONDS
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1 \
    || { tail -30 "$CACHE_DIR/debootstrap.log" >&2; exit 1; }
  # What an image does not need: package lists, caches, docs, man pages.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* \
         "$rootfs"/var/log/*.log "$rootfs"/debootstrap
  # debootstrap copies the host's resolv.conf / hostname; the engine supplies its own.
  : >"$rootfs/etc/resolv.conf"
  echo t5serving >"$rootfs/etc/hostname"
  tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  log "rootfs tarball $(du -h "$tarball" | cut -f1) in $((SECONDS - start)) s"
fi

log "docker import $tarball as $TAG"
"$DOCKER" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL t5serving.base-key=$key" \
  --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase + python3 (debootstrap)\"" \
  --change 'CMD ["/bin/bash"]' \
  "$tarball" "$TAG" >/dev/null
echo "$TAG"
