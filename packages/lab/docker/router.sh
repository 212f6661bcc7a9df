#!/bin/sh
# The lab's router container: forwards between the WAN and the branch networks and
# shapes both directions of the WAN with tc tbf (docker-compose.yml, NET_ADMIN).
# Its interfaces are found by the addresses docker-compose.yml gives it.
set -eu
wan_if=$(ip -o -4 addr show | awk -v a="$ROUTER_WAN/" 'index($4, a) == 1 { print $2 }')
lan_if=$(ip -o -4 addr show | awk -v a="$ROUTER_LAN/" 'index($4, a) == 1 { print $2 }')
[ -n "$wan_if" ] && [ -n "$lan_if" ] || { echo "router: no interface with $ROUTER_WAN or $ROUTER_LAN" >&2; exit 1; }
for dev in "$wan_if" "$lan_if"; do
  tc qdisc replace dev "$dev" root tbf rate "$WAN_RATE" burst 64kb latency 50ms
done
echo "router: WAN $wan_if <-> branch $lan_if, shaped to $WAN_RATE each way"
exec sleep infinity
