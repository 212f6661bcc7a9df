#!/bin/sh
# Entry point of the lab's origin and agent containers: route the other side of the
# WAN through the router (the lab's networks are internal: docker gives them no
# gateway), make the organisation key once for all agents, then run `canopy <args>`
# (or, for the lab's lying peer and the automated runs' idle hosts, the command).
set -eu
ip route replace "$LAB_ROUTE" via "$LAB_GATEWAY"
# The lab has no name service (its hosts use addresses), and Docker's embedded DNS
# does not answer on an engine run with --iptables=false: a lookup would wait 10 s
# for its timeout. Nothing listens on the loopback's port 53, so lookups fail at once.
echo 'nameserver 127.0.0.1' > /etc/resolv.conf
if [ "${LAB_SWARM_KEY:-}" != "" ] && [ ! -f "$LAB_SWARM_KEY" ]; then
  # Agents start together: create under a temporary name, link atomically, and the
  # first link wins.
  canopy keygen > "$LAB_SWARM_KEY.$$"
  ln "$LAB_SWARM_KEY.$$" "$LAB_SWARM_KEY" 2>/dev/null || true
  rm -f "$LAB_SWARM_KEY.$$"
fi
# The automated runs (packages/lab/src/compose-lab.ts) wait for this before they
# start processes here.
: > /run/canopy-lab-ready
case "$1" in
  node|sleep) exec "$@" ;;
  *) exec canopy "$@" ;;
esac
