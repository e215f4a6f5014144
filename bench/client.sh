#!/usr/bin/env bash
# What the Go client package costs next to the load tool's lean HTTP
# client: on one fresh 3-node ClusterKit on loopback, the same load (C
# workers, DURATION each, the same seed, KEYS preloaded keys) runs for
# writes (plain sets) and for a 90%-read mix, through
#
#   lean-rr      the load tool's lean HTTP/1.1 client, to the nodes in turn (its default)
#   lean-routed  the same client with -route-via: each key to its primary
#   client       the client package (its own HTTP/1.1 transport), RoutePrimary: each key to its primary
#   client-rr    the client package with RoundRobin routing
#
# and prints ops/s, p50/p99 latency, and the CPU per operation of the load
# tool itself and of the three nodes. The load tool and the nodes share
# the host, so CPU the client spends is CPU the nodes do not get.
#
#   bash bench/client.sh
#
# Environment: DURATION=15s C=32 KEYS=10000 CLUSTERKIT_BIN=path KEEP=1.
set -euo pipefail
DURATION=${DURATION:-15s}
C=${C:-32}
KEYS=${KEYS:-10000}

# shellcheck source=bench/cluster.sh
source "$(dirname "$0")/cluster.sh"
start_cluster
MGMT=127.0.0.1:28081

TICK=$(getconf CLK_TCK)
node_cpu() { # the nodes' CPU time so far, in clock ticks
	local p t=0
	for p in "${PIDS[@]}"; do
		t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
	done
	echo "$t"
}

# Preload every key (so reads hit), and warm the cluster up.
"$BIN" bench -addrs "$ADDRS" -c "$C" -keys "$KEYS" -preload -d 2s -seed 2 -quiet -json >"$WORK/warmup.json"

declare -A MODE_ARGS=(
	[lean-rr]=""
	[lean-routed]="-route-via $MGMT"
	[client]="-client $MGMT"
	[client-rr]="-client $MGMT -client-routing round-robin"
)
MODES=(lean-rr lean-routed client client-rr)

printf '%-7s %-12s %10s %8s %8s %14s %14s %7s\n' mix mode ops/s p50_ms p99_ms client_us/op nodes_us/op errors
for mix in writes reads90; do
	reads=0
	if [[ $mix == reads90 ]]; then reads=0.9; fi
	for mode in "${MODES[@]}"; do
		# shellcheck disable=SC2206
		extra=(${MODE_ARGS[$mode]})
		out=$WORK/$mix-$mode.json
		c0=$(node_cpu)
		"$BIN" bench -addrs "$ADDRS" "${extra[@]}" -c "$C" -keys "$KEYS" -reads "$reads" -d "$DURATION" -seed 1 -quiet -json >"$out"
		c1=$(node_cpu)
		jq -r --arg mix "$mix" --arg mode "$mode" --argjson ncpu "$(((c1 - c0)))" --argjson tick "$TICK" \
			'[$mix, $mode, (.ops_per_sec | floor), .p50_ms, .p99_ms,
			  (if .ops > 0 then (.client_cpu_seconds / .ops * 1e6 | floor) else 0 end),
			  (if .ops > 0 then ($ncpu / $tick / .ops * 1e6 | floor) else 0 end), .errors] |
			 "\(.[0])\t\(.[1])\t\(.[2])\t\(.[3])\t\(.[4])\t\(.[5])\t\(.[6])\t\(.[7])"' "$out" |
			awk -F'\t' '{printf "%-7s %-12s %10s %8.2f %8.2f %14s %14s %7s\n", $1, $2, $3, $4, $5, $6, $7, $8}'
	done
done
echo "(C=$C workers, DURATION=$DURATION per run, KEYS=$KEYS preloaded keys, 100-byte values; one 3-node cluster on loopback)"
