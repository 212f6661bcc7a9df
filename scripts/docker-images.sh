#!/usr/bin/env bash
# Builds Canopy's Docker images without a remote container registry, and prints the
# tag of the one asked for (`lab`, the default, or `canopy`, the production image).
#
#   scripts/docker-images.sh [lab|canopy]
#
# The base image is built here from Debian's packages and the npm `node` package
# (scripts/docker-base.sh; cached by the hash of its inputs), not pulled from Docker
# Hub; the Dockerfile is built on top of it (`--build-arg BASE=`), and only Canopy's
# layers are rebuilt when the sources change.
#
# CANOPY_IMAGE_BASE=<image> (e.g. node:24-bookworm-slim, on a host that reaches
# Docker Hub) skips the local base and builds the Dockerfile on that image instead.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-lab}
case "$target" in lab|canopy) ;; *) echo "usage: $0 [lab|canopy]" >&2; exit 2 ;; esac

say () { echo "docker-images: $*" >&2; }
# Debian's docker.io 20.10 builds with the classic builder; a newer client without the
# buildx plugin refuses to build unless told to use it.
export DOCKER_BUILDKIT=0

base=${CANOPY_IMAGE_BASE:-}
[ -n "$base" ] || base=$(bash scripts/docker-base.sh)

tag="canopy:$target"
[ "$target" = canopy ] && tag=canopy:latest
say "building $tag on $base"
# --force-rm: a failed step leaves no container behind.
# --network host: the production install (npm ci) reaches the npm registry from the
# build, and the engine runs without NAT (dockerd --iptables=false).
# Local CAs (Debian's /usr/local/share/ca-certificates) are trusted for that install:
# the registry may be reached through a TLS-intercepting proxy.
extra_ca=$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true)
docker build --force-rm --network host --build-arg "BASE=$base" --build-arg "EXTRA_CA=$extra_ca" --target "$target" -t "$tag" . >&2
echo "$tag"
