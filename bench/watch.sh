#!/usr/bin/env bash
# What watches cost writes, and how fast their events arrive: on one fresh
# 3-node ClusterKit on loopback, the same write load (plain sets, DURATION
# each, the same seed) runs once per number of watchers in WATCHERS
# (default 0, 10 and 100 watch streams on the written prefix, spread over
# the three nodes, opened before the writes start). For each run it prints
# the writes' ops/s and latency, the delay from a write's 200 to its event
# on a watcher (over every event of every stream), the events delivered of
# those expected (acknowledged writes times streams), and the CPU the nodes
# and the load tool used.
#
#   bash bench/watch.sh
#
# On a host shared with other work the numbers drift from run to run:
# ROUNDS=N repeats the whole sequence N times (rows in the order run), so
# that a drift shows.
#
# Environment: DURATION=30s C=32 KEYS=100000 WATCHERS="0 10 100" ROUNDS=1
# CLUSTERKIT_BIN=path KEEP=1.
set -euo pipefail
DURATION=${DURATION:-30s}
C=${C:-32}
KEYS=${KEYS:-100000}
WATCHERS=${WATCHERS:-0 10 100}
ROUNDS=${ROUNDS:-1}

# shellcheck source=bench/cluster.sh
source "$(dirname "$0")/cluster.sh"
start_cluster

TICK=$(getconf CLK_TCK)
node_cpu() { # the nodes' CPU time so far, in clock ticks
	local p t=0
	for p in "${PIDS[@]}"; do
		t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
	done
	echo "$t"
}

host_busy() { # the host's busy CPU time so far (all CPUs, in clock ticks): what is not idle or iowait
	awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

# A short run first, not reported: the first measured run then does not
# pay for a cold cluster (connections, caches, the first leases).
"$BIN" bench -addrs "$ADDRS" -c "$C" -keys "$KEYS" -d 3s -seed 2 -quiet -json >"$WORK/warmup.json"

CMDS=()
ROWS=()
for round in $(seq 1 "$ROUNDS"); do
	for n in $WATCHERS; do
		args=(-addrs "$ADDRS" -c "$C" -keys "$KEYS" -d "$DURATION" -seed 1 -quiet -json)
		if ((n > 0)); then args+=(-watchers "$n"); fi
		if ((round == 1)); then CMDS+=("$BIN bench ${args[*]}"); fi
		c0=$(node_cpu) h0=$(host_busy)
		# Exit code 1: wrong events (duplicates, out of order, missing on
		# streams that stayed open); the table shows them.
		out=$WORK/watchers-$n-round-$round.json
		"$BIN" bench "${args[@]}" >"$out" || [[ $? == 1 ]]
		c1=$(node_cpu) h1=$(host_busy)
		# The nodes' CPU over the run and the wait for the last events.
		ROWS+=("$round|$(jq -r --arg n "$n" --argjson cpu "$((c1 - c0))" --argjson host "$((h1 - h0))" --argjson tick "$TICK" '
			(.seconds + (.watch.grace_seconds // 0)) as $s |
			[$n, (.ops_per_sec|floor), .p50_ms, .p99_ms, .errors,
			 (if .watch then .watch.p50_ms else null end), (if .watch then .watch.p99_ms else null end), (if .watch then .watch.max_ms else null end),
			 (if .watch then "\(.watch.delivered)/\(.watch.expected)" else "-" end),
			 (if .watch then .watch.missing else null end), (if .watch then .watch.duplicates else null end),
			 (if .watch then .watch.ended else null end),
			 ($cpu / $tick / $s), (.client_cpu_seconds / .seconds), ($host / $tick / $s)] | map(if . == null then "-" else tostring end) | join("|")' "$out")")
		echo "round $round: ran $n watchers" >&2
	done
done

fmt() { # fmt VALUE: a number with 2 decimals, or - for none
	if [[ $1 == - ]]; then echo -; else printf '%.2f' "$1"; fi
}
echo
echo "plain sets, c=$C, keys=$KEYS, value 100 B, $DURATION per run; event delay: from the write's 200 to its event on each watcher"
printf '%5s %8s %9s %8s %8s %6s | %8s %8s %9s %22s %7s %5s %5s | %8s %8s %9s\n' \
	round watchers "write/s" "p50ms" "p99ms" errors "ev p50" "ev p99" "ev max" "delivered/expected" missing dups cut "nodes" "tool" "host busy"
for row in "${ROWS[@]}"; do
	IFS='|' read -r round n ops p50 p99 errs ep50 ep99 emax de miss dup ended ncpu tcpu hcpu <<<"$row"
	printf '%5s %8s %9s %8s %8s %6s | %8s %8s %9s %22s %7s %5s %5s | %8s %8s %9s\n' \
		"$round" "$n" "$ops" "$(fmt "$p50")" "$(fmt "$p99")" "$errs" "$(fmt "$ep50")" "$(fmt "$ep99")" "$(fmt "$emax")" "$de" \
		"$miss" "$dup" "$ended" "$(fmt "$ncpu")" "$(fmt "$tcpu")" "$(fmt "$hcpu")"
done
echo "(CPU in cores, over the run and the wait for its last events: nodes, the three together; tool, the load tool;"
echo " host busy, all of the host's $(nproc) CPUs, so that what else ran on the host shows: host busy - nodes - tool)"
echo
echo "commands (the same in every round):"
for c in "${CMDS[@]}"; do echo "  $c"; done
echo "JSON results in $WORK/watchers-N-round-R.json (kept with KEEP=1)"
