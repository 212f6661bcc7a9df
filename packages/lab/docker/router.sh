#!/bin/sh
# The lab's router container: forwards between the WAN and the branch networks and
# shapes both directions of the WAN with tc tbf (NET_ADMIN): WAN_TBF is the whole
# qdisc (the automated runs give the namespace lab's, topology.ts tbfArguments), else
# WAN_RATE with a 32 KiB bucket (10 ms at 26 Mbit/s) and at most 50 ms of queue.
# Its interfaces are found by the addresses the compose file gives it.
set -eu
wan_if=$(ip -o -4 addr show | awk -v a="$ROUTER_WAN/" 'index($4, a) == 1 { print $2 }')
lan_if=$(ip -o -4 addr show | awk -v a="$ROUTER_LAN/" 'index($4, a) == 1 { print $2 }')
[ -n "$wan_if" ] && [ -n "$lan_if" ] || { echo "router: no interface with $ROUTER_WAN or $ROUTER_LAN" >&2; exit 1; }
qdisc=${WAN_TBF:-tbf rate ${WAN_RATE:-20mbit} burst 32768 latency 50ms}
for dev in "$wan_if" "$lan_if"; do
  # shellcheck disable=SC2086 # the qdisc's words
  tc qdisc replace dev "$dev" root $qdisc
done
: > /run/canopy-lab-ready
echo "router: WAN $wan_if <-> branch $lan_if, each way: $qdisc"
exec sleep infinity
