#!/usr/bin/env bash
# TTL at scale: loads KEYS keys (default 1,000,000) with a TTL into a
# 3-node ClusterKit on loopback, then runs a foreground load (90% reads,
# 10% sets, on keys without a TTL) in windows of WINDOW while the keys
# expire and the primaries sweep them, and prints per window the stored
# keys left on the three nodes and the foreground's ops/s and p99. At the
# end it prints the data directories' size before the load, after it and
# after the sweep.
#
#   bash bench/ttl-sweep.sh
#
# Environment: KEYS=1000000 TTL=45s WINDOW=5s C=16 CLUSTERKIT_BIN=path
# (default: build HEAD) KEEP=1 (keep the temporary directory).
set -euo pipefail

KEYS=${KEYS:-1000000}
TTL=${TTL:-45s}
WINDOW=${WINDOW:-5s}
C=${C:-16}
FG_KEYS=10000

# shellcheck source=bench/cluster.sh
source "$(dirname "$0")/cluster.sh"
start_cluster

stored() { # the keys stored on the three nodes together
	local n=0 i v
	for i in 1 2 3; do
		v=$(curl -sf --max-time 5 "http://127.0.0.1:2908$i/kv/stats" | jq -r '.local_keys')
		n=$((n + v))
	done
	echo "$n"
}
disk() { du -sm "$WORK"/node1 "$WORK"/node2 "$WORK"/node3 | awk '{s += $1} END {print s " MiB"}'; }

echo "cluster up; data directories $(disk)"
start=$SECONDS
"$BIN" bench -addrs "$ADDRS" -c 32 -keys "$KEYS" -preload -batch 100 -ttl "$TTL" -d 1s -quiet -json >"$WORK/load.json"
load_s=$((SECONDS - start))
echo "loaded $KEYS keys with ttl=$TTL in ${load_s}s ($(jq -r '.errors' "$WORK/load.json") errors); stored copies $(stored); data directories $(disk)"

# The foreground keys are set without a TTL (a plain set clears one), so
# they outlive the sweep.
"$BIN" bench -addrs "$ADDRS" -c "$C" -keys "$FG_KEYS" -preload -d 1s -quiet -json >/dev/null
printf '%8s %12s %10s %10s %8s\n' "t(s)" "stored" "ops/s" "p99(ms)" "errors"
t0=$SECONDS
empty=0
while :; do
	"$BIN" bench -addrs "$ADDRS" -c "$C" -keys "$FG_KEYS" -reads 0.9 -d "$WINDOW" -quiet -json >"$WORK/w.json"
	left=$(stored)
	printf '%8d %12d %10.0f %10.2f %8d\n' $((SECONDS - t0)) "$left" "$(jq -r '.ops_per_sec' "$WORK/w.json")" \
		"$(jq -r '.p99_ms' "$WORK/w.json")" "$(jq -r '.errors' "$WORK/w.json")"
	# Done two windows after only the foreground keys (three copies each)
	# are left.
	if ((left <= 3 * FG_KEYS)); then
		empty=$((empty + 1))
		((empty >= 2)) && break
	fi
	if ((SECONDS - t0 > 600)); then
		echo "expired keys still stored after 600s" >&2
		exit 1
	fi
done
echo "after the sweep: data directories $(disk)"
