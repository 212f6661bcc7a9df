#!/usr/bin/env bash
# Builds Canopy's base image from sources this machine reaches (Debian's packages and
# the npm registry), not from Docker Hub, and prints its tag:
# `debootstrap --variant=minbase` of Debian 12 with iproute2, curl and iputils-ping (the
# lab's router and hosts; the `background` scenario's competing download and pings), the Node 24 binary the project already installs from the npm `node`
# package, and npm (the registry's tarball) for the production install, where the
# official Node images keep them (/usr/local/bin). It is tagged canopy-base:<hash of
# this script and the Node and npm versions> and built only when no image has that
# tag: the first build takes about a minute (docs/LAB.md), later ones nothing.
#
#   scripts/docker-base.sh          (scripts/docker-images.sh calls it)
set -euo pipefail
cd "$(dirname "$0")/.."
say () { echo "docker-base: $*" >&2; }

NPM_VERSION=11.21.3
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

node_bin=$(readlink -f node_modules/.bin/node)
[ -x "$node_bin" ] || { say "no Node binary in node_modules (run npm ci first)"; exit 1; }
node_version=$("$node_bin" --version)
# The base's identity: how it is made (this script) and what goes in.
hash=$( { cat scripts/docker-base.sh; echo "$node_version $NPM_VERSION $SUITE"; } | sha256sum | cut -c1-12)
base="canopy-base:$hash"
if docker image inspect "$base" >/dev/null 2>&1; then
  say "base $base is cached"
else
  command -v debootstrap >/dev/null || { say "debootstrap is missing (apt-get install debootstrap), or set CANOPY_IMAGE_BASE=node:24-bookworm-slim"; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  rootfs="$work/rootfs"
  say "building $base: debootstrap $SUITE from $MIRROR, Node $node_version, npm $NPM_VERSION"
  started=$SECONDS
  debootstrap --variant=minbase --include=iproute2,curl,iputils-ping,ca-certificates "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  # Where the official Node images keep node and npm, so the Dockerfile works on both.
  install -D -m 0755 "$node_bin" "$rootfs/usr/local/bin/node"
  (cd "$work" && npm pack --silent "npm@$NPM_VERSION" >/dev/null)
  mkdir -p "$rootfs/usr/local/lib/node_modules/npm"
  tar -xzf "$work/npm-$NPM_VERSION.tgz" -C "$rootfs/usr/local/lib/node_modules/npm" --strip-components=1
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
  # What a container never needs: downloaded .debs, package lists, docs, man pages, locales.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
  tar -C "$rootfs" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["node"]' - "$base" >/dev/null
  rm -rf "$work"
  trap - EXIT
  say "built $base in $((SECONDS - started)) s"
  # Older bases (other inputs) are no longer used.
  for old in $(docker image ls canopy-base --format '{{.Repository}}:{{.Tag}}'); do
    [ "$old" = "$base" ] || docker image rm "$old" >/dev/null 2>&1 || true
  done
fi
echo "$base"
