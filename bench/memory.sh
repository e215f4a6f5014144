#!/usr/bin/env bash
# Memory of a loaded three-node ClusterKit: preload KEYS keys of VALUE bytes,
# then run a 90%-read workload for SOAK while sampling every node's resident
# memory (VmRSS) every SAMPLE seconds, to show the memory a node needs for
# its keys and that it does not keep growing.
#
#   bash bench/memory.sh                      # 1M keys, 10-minute soak
#   KEYS=100000 SOAK=60s bash bench/memory.sh # quicker
#
# It uses ports 127.0.0.1:3808x-3838x and a temporary directory, and stops
# everything it started on exit.
set -euo pipefail

KEYS=${KEYS:-1000000}
VALUE=${VALUE:-100}
SOAK=${SOAK:-600s}
SAMPLE=${SAMPLE:-30}
C=${C:-64}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d -t clusterkit-memory.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "$(date -u +%H:%M:%S) $*" >&2; }

(cd "$ROOT" && go build -o "$WORK/clusterkit" .)
for i in 1 2 3; do
	join=(JOIN_ADDR=127.0.0.1:38081)
	((i == 1)) && join=(BOOTSTRAP=true)
	env NODE_ID="node-$i" HTTP_ADDR="127.0.0.1:3808$i" KV_ADDR="127.0.0.1:3908$i" \
		RAFT_ADDR="127.0.0.1:3818$i" GOSSIP_ADDR="127.0.0.1:3828$i" \
		DATA_DIR="$WORK/n$i" STATUS_INTERVAL=0 "${join[@]}" \
		"$WORK/clusterkit" >"$WORK/n$i.log" 2>&1 &
	PIDS+=($!)
done

settled() {
	curl -sf --max-time 2 http://127.0.0.1:38081/partitions/stats |
		jq -e '.partitions_per_node | length == 3 and all(.[]; . > 0)' >/dev/null &&
		curl -sf --max-time 2 http://127.0.0.1:38081/partitions |
		jq -e '.copies_in_progress == 0 and (.partitions | all(.state == "stable" and (.in_sync_replicas | length) == 2))' >/dev/null
}
deadline=$((SECONDS + 90))
until settled; do
	((SECONDS < deadline)) || { tail -20 "$WORK"/n*.log >&2; echo "cluster did not settle" >&2; exit 1; }
	sleep 1
done
sleep 2

rss() { awk '/VmRSS/ {printf "%d", $2/1024}' "/proc/$1/status"; }
sample() {
	local line="$1"
	for p in "${PIDS[@]}"; do line+=$(printf ' %8s' "$(rss "$p")"); done
	line+=$(printf ' %10s' "$(curl -sf http://127.0.0.1:39081/kv/stats | jq -r .local_keys)")
	echo "$line"
}

ADDRS=127.0.0.1:39081,127.0.0.1:39082,127.0.0.1:39083
printf '%-22s %8s %8s %8s %10s\n' "when" "n1 MiB" "n2 MiB" "n3 MiB" "n1 keys"
sample "$(printf '%-22s' 'empty')"
log "preloading $KEYS keys of ${VALUE}B"
start=$SECONDS
"$WORK/clusterkit" bench -addrs "$ADDRS" -c "$C" -keys "$KEYS" -value-size "$VALUE" -preload -d 1s -quiet >/dev/null
log "preloaded in $((SECONDS - start))s"
sample "$(printf '%-22s' 'after preload')"
log "soak: 90% reads for $SOAK"
"$WORK/clusterkit" bench -addrs "$ADDRS" -c 32 -keys "$KEYS" -value-size "$VALUE" -reads 0.9 -d "$SOAK" -quiet -json >"$WORK/soak.json" &
bench=$!
t=0
while kill -0 "$bench" 2>/dev/null; do
	sleep "$SAMPLE"
	t=$((t + SAMPLE))
	kill -0 "$bench" 2>/dev/null && sample "$(printf '%-22s' "soak +${t}s")"
done
wait "$bench" || true
sample "$(printf '%-22s' 'after soak')"
jq -r '"soak: \(.ops_per_sec|floor) ops/s, p99 \(.p99_ms)ms, errors \(.errors), misses \(.misses)"' "$WORK/soak.json"
