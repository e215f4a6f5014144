#!/usr/bin/env bash
# How long a replica that missed writes takes to be back in sync, before
# and after tail catch-up (45ab8eb): on a fresh 3-node ClusterKit on
# loopback per binary, KEYS keys (default 100,000) are loaded into one
# partition (hash tag {r}); then, REPEATS times, one in-sync replica of that
# partition (never the Raft leader) is stopped with SIGSTOP, MISSED writes
# (default 1,000) go to the partition (the first one drops the stopped
# replica from the in-sync set after the replication timeout), the replica
# is continued with SIGCONT, and the partition table is polled every 20 ms
# until it lists the replica in sync again. The time from SIGCONT to then
# is the rejoin time; the primary's log says how it caught the replica up
# ("by=tail writes=N" or "by=full copy") and how long that took.
#
#   bash bench/rejoin.sh
#
# BEFORE is commit BEFORE_REV (default 0bec935, the commit before the
# history: always a full copy), built from `git archive` in the temporary
# directory (the checkout is not touched). AFTER is CLUSTERKIT_BIN, or
# AFTER_REV built the same way, or else a build of the working tree. The
# load is `clusterkit bench` of the AFTER binary against both.
#
# FAILOVER_GRACE is raised (default 120s) so that the stopped node, which
# gossip declares dead after 3-4 s, keeps its place as a replica: what is
# measured is a replica's catch-up, not a failover.
#
# Environment: KEYS=100000 MISSED=1000 REPEATS=3 PARTITIONS=16
# BEFORE_REV=0bec935 AFTER_REV= CLUSTERKIT_BIN= FAILOVER_GRACE=120s KEEP=1.
set -euo pipefail
KEYS=${KEYS:-100000}
MISSED=${MISSED:-1000}
REPEATS=${REPEATS:-3}
PARTITIONS=${PARTITIONS:-16}
BEFORE_REV=${BEFORE_REV:-0bec935}
AFTER_REV=${AFTER_REV:-}
GRACE=${FAILOVER_GRACE:-120s}
PREFIX='{r}:k'
PROBE='%7Br%7D:k' # a key of the partition, URL-escaped

if [[ -n $AFTER_REV && -z ${CLUSTERKIT_BIN:-} ]]; then
	CLUSTERKIT_BIN=skip # built below, once WORK exists
fi
# shellcheck source=bench/cluster.sh
source "$(dirname "$0")/cluster.sh"

build_rev() { # build_rev REV OUT: build commit REV of this repository into OUT
	local src=$WORK/src-$1
	mkdir -p "$src"
	git archive "$1" | tar -x -C "$src"
	(cd "$src" && go build -o "$2" .)
}
if [[ -n $AFTER_REV && $BIN == skip ]]; then
	BIN=$WORK/clusterkit-after
	build_rev "$AFTER_REV" "$BIN"
fi
AFTER_BIN=$BIN
AFTER_DESC=${AFTER_REV:-${CLUSTERKIT_BIN:-working tree at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!bench' ':!loadgen' || echo ' + uncommitted changes')}}
BEFORE_BIN=$WORK/clusterkit-before
echo "building $BEFORE_REV into $BEFORE_BIN"
build_rev "$BEFORE_REV" "$BEFORE_BIN"
LOAD=$AFTER_BIN

# stamp sets NOW to the time in ms, without forking (a fork on a busy host
# can take tens of ms, which would count against the rejoin).
stamp() {
	local t=${EPOCHREALTIME/./}
	NOW=$((t / 1000))
}
# nap SECONDS: sleep without forking (read from a pipe no one writes to).
exec {NAPFD}<> <(:)
nap() { read -rt "$1" -u "$NAPFD" || true; }
part() { curl -sf --max-time 2 "http://127.0.0.1:$1/partitions/key?key=$PROBE"; }
# in_sync PORT NODE: whether the table at that management port lists NODE
# in the partition's in-sync set (one fork per call: curl).
in_sync() {
	local body
	body=$(part "$1") || return 1
	[[ $body =~ \"in_sync_replicas\":\[([^]]*)\] ]] && [[ ${BASH_REMATCH[1]} == *\"$2\"* ]]
}

declare -A RESULT
run_binary() { # run_binary LABEL BINARY
	local label=$1 r
	BIN=$2
	echo
	echo "== $label: $BIN"
	start_cluster FAILOVER_GRACE="$GRACE" PARTITIONS="$PARTITIONS"
	local t0 t1
	stamp
	t0=$NOW
	"$LOAD" bench -addrs "$ADDRS" -route-via 127.0.0.1:28081 -c 8 -keys "$KEYS" -key-prefix "$PREFIX" -preload -batch 500 -d 0 -timeout 5s -quiet -json >"$WORK/$label-load.json"
	stamp
	t1=$NOW
	local info pid primary
	info=$(part 28081)
	pid=$(jq -r .id <<<"$info")
	primary=$(jq -r .primary_node <<<"$info")
	echo "loaded $KEYS keys into $pid (primary $primary) in $((t1 - t0)) ms; stored on node-1: $(curl -sf http://127.0.0.1:29081/kv/stats | jq .local_keys) keys"
	for r in $(seq 1 "$REPEATS"); do
		local leader victim vn vpid before copies stopped written cont back line
		info=$(part 28081)
		leader=$(curl -sf --max-time 2 http://127.0.0.1:28081/consensus/leader | jq -r .leader_id)
		# An in-sync replica that is not the Raft leader (stopping the
		# leader would also measure an election).
		victim=$(jq -r --arg l "$leader" '[.in_sync_replicas[] | select(. != $l)][0] // empty' <<<"$info")
		if [[ -z $victim || $(jq -r .primary_node <<<"$info") != "$primary" ]]; then
			echo "round $r: no in-sync replica to stop, or the primary moved: $info" >&2
			exit 1
		fi
		vn=${victim#node-}
		vpid=${NODE_PIDS[$vn]}
		before=$(grep -c 'caught up and in sync' "$WORK/node${primary#node-}.log" || true)
		copies=$(grep -c "installed partition copy from primary.* partition=${pid#partition-} " "$WORK/node$vn.log" || true)
		kill -STOP "$vpid"
		stamp
		stopped=$NOW
		"$LOAD" bench -addrs "$ADDRS" -route-via 127.0.0.1:28081 -c 8 -keys "$MISSED" -key-prefix "$PREFIX" -preload -d 0 -timeout 10s -quiet -json >"$WORK/$label-writes-$r.json"
		stamp
		written=$NOW
		if in_sync 28081 "$victim"; then
			echo "round $r: $victim still listed in sync after the writes" >&2
			kill -CONT "$vpid"
			exit 1
		fi
		kill -CONT "$vpid"
		stamp
		cont=$NOW
		until in_sync 2808"${leader#node-}" "$victim"; do
			stamp
			if ((NOW - cont > 120000)); then
				echo "round $r: $victim not back in sync 120 s after SIGCONT" >&2
				exit 1
			fi
			nap 0.02
		done
		stamp
		back=$NOW
		sleep 0.2 # the primary logs just after the table changes
		line=$(grep 'caught up and in sync' "$WORK/node${primary#node-}.log" | tail -n +$((before + 1)) | grep "partition=${pid#partition-} " | tail -1 || true)
		local by took installed
		by=$(grep -o 'by=\("full copy"\|tail writes=[0-9]*\|[a-z]*\)' <<<"$line" || echo "by=-")
		took=$(grep -o 'took=[0-9.a-zµ]*' <<<"$line" || echo "took=-")
		# A full copy shows on the replica too (0bec935 logs no by=).
		installed=$(($(grep -c "installed partition copy from primary.* partition=${pid#partition-} " "$WORK/node$vn.log" || true) - copies))
		printf '%s round %d: stopped %s for %d ms (%d writes in %d ms, %d errors), back in sync %d ms after SIGCONT; primary: %s %s; copies installed on the replica: %d\n' \
			"$label" "$r" "$victim" $((cont - stopped)) "$MISSED" $((written - stopped)) "$(jq .errors "$WORK/$label-writes-$r.json")" $((back - cont)) "$by" "$took" "$installed"
		RESULT[$label,$r]="$((back - cont)) $by $took copies=$installed"
		echo "$label round $r: SIGSTOP $(date -u -d @$((stopped / 1000)).$(printf %03d $((stopped % 1000))) +%T.%3N)" \
			"writes done $(date -u -d @$((written / 1000)).$(printf %03d $((written % 1000))) +%T.%3N)" \
			"SIGCONT $(date -u -d @$((cont / 1000)).$(printf %03d $((cont % 1000))) +%T.%3N)" \
			"in sync $(date -u -d @$((back / 1000)).$(printf %03d $((back % 1000))) +%T.%3N) (UTC, as the logs)" >>"$WORK/times.txt"
		# Settled again before the next round.
		local deadline=$((SECONDS + 60))
		until curl -sf --max-time 2 http://127.0.0.1:28081/partitions | jq -e 'all(.partitions[]; .state == "stable" and (.in_sync_replicas | length) == 2)' >/dev/null; do
			((SECONDS > deadline)) && { echo "cluster not settled after round $r" >&2; exit 1; }
			sleep 0.2
		done
	done
	for f in "$WORK"/node?.log; do cp "$f" "$WORK/$label-$(basename "$f")"; done
	stop_cluster
}

run_binary before "$BEFORE_BIN"
run_binary after "$AFTER_BIN"

median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
echo
echo "rejoin of a replica that missed $MISSED writes to a partition of $KEYS keys ($REPEATS rounds, polled every 20 ms)"
printf '%-8s %-44s %12s   %s\n' binary build "median(ms)" "rounds: ms after SIGCONT (how, the primary's catch-up time, full copies the replica installed)"
for label in before after; do
	rounds=""
	ms=()
	for r in $(seq 1 "$REPEATS"); do
		read -r t rest <<<"${RESULT[$label,$r]}"
		ms+=("$t")
		rounds+="$t ($rest); "
	done
	if [[ $label == before ]]; then desc=$BEFORE_REV; else desc=$AFTER_DESC; fi
	printf '%-8s %-44s %12s   %s\n' "$label" "$desc" "$(printf '%s\n' "${ms[@]}" | median)" "${rounds%; }"
done
cat <<EOF

commands (per binary; the load is the AFTER binary's bench):
  start_cluster FAILOVER_GRACE=$GRACE PARTITIONS=$PARTITIONS        # bench/cluster.sh
  $LOAD bench -addrs $ADDRS -route-via 127.0.0.1:28081 -c 8 -keys $KEYS -key-prefix '$PREFIX' -preload -batch 500 -d 0 -timeout 5s -quiet -json
  per round: kill -STOP <in-sync replica of the partition, not the Raft leader>
             $LOAD bench -addrs $ADDRS -route-via 127.0.0.1:28081 -c 8 -keys $MISSED -key-prefix '$PREFIX' -preload -d 0 -timeout 10s -quiet -json
             kill -CONT <it>; poll curl http://127.0.0.1:<leader's 2808N>/partitions/key?key=$PROBE every 20 ms until it is in in_sync_replicas
             grep 'caught up and in sync' in the primary's log for by= and took=, and count
             'installed partition copy from primary' lines of the partition in the replica's log
the wall-clock times of each round (to set beside the logs) are in $WORK/times.txt (kept with KEEP=1);
the primary's took= ends when its in-sync update returns, which can be after the table already shows it
EOF
