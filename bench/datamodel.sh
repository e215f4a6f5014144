#!/usr/bin/env bash
# What the data model's operations cost, in one run on a fresh 3-node
# ClusterKit on loopback: plain sets, compare-and-set (a get and a set with
# if_revision), and sets in batches of 10 and 100, each for DURATION, with
# ops/s, keys/s and latency percentiles from `clusterkit bench`.
#
#   bash bench/datamodel.sh
#
# Environment: DURATION=15s C=32 KEYS=100000 CLUSTERKIT_BIN=path KEEP=1.
set -euo pipefail
DURATION=${DURATION:-15s}
C=${C:-32}
KEYS=${KEYS:-100000}

# shellcheck source=bench/cluster.sh
source "$(dirname "$0")/cluster.sh"
start_cluster

printf '%-10s %10s %10s %9s %9s %9s %8s %10s\n' workload ops/s keys/s p50ms p99ms p999ms errors conflicts
run() { # run NAME ARGS...
	local name=$1
	shift
	"$BIN" bench -addrs "$ADDRS" -c "$C" -keys "$KEYS" -d "$DURATION" -quiet -json "$@" >"$WORK/$name.json"
	jq -r --arg n "$name" '[$n, (.ops_per_sec|floor), (.keys_per_sec|floor), .p50_ms, .p99_ms, .p999_ms, .errors, (.conflicts // 0)] |
		"\(.[0]) \(.[1]) \(.[2]) \(.[3]) \(.[4]) \(.[5]) \(.[6]) \(.[7])"' "$WORK/$name.json" |
		awk '{printf "%-10s %10d %10d %9.2f %9.2f %9.2f %8d %10d\n", $1, $2, $3, $4, $5, $6, $7, $8}'
}
run set
run cas -workload cas
run batch10 -batch 10
run batch100 -batch 100
