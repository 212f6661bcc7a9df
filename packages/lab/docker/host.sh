#!/bin/sh
# Entry point of the lab's origin and agent containers: route the other side of the
# WAN through the router (docker gives each network its own gateway, the host), make
# the organisation key once for all agents, then run `canopy <args>` (or, for the
# lab's lying peer, `node <args>`).
set -eu
ip route replace "$LAB_ROUTE" via "$LAB_GATEWAY"
if [ "${LAB_SWARM_KEY:-}" != "" ] && [ ! -f "$LAB_SWARM_KEY" ]; then
  # Agents start together: create under a temporary name, link atomically, and the
  # first link wins.
  canopy keygen > "$LAB_SWARM_KEY.$$"
  ln "$LAB_SWARM_KEY.$$" "$LAB_SWARM_KEY" 2>/dev/null || true
  rm -f "$LAB_SWARM_KEY.$$"
fi
case "$1" in
  node) exec "$@" ;;
  *) exec canopy "$@" ;;
esac
