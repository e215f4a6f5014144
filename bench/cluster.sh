# Starts a three-node ClusterKit on loopback for the scripts in bench/:
# source it after setting KEEP (optional), then call start_cluster. It
# sets WORK (a temporary directory, removed on exit unless KEEP is set),
# BIN (CLUSTERKIT_BIN or a build of this tree) and ADDRS (the KV
# addresses), and stops the nodes on exit. NODE_PIDS[i] is node-i's
# process; stop_cluster stops the nodes and deletes their data, so that
# start_cluster (with another BIN, say) starts afresh.

cd "$(dirname "${BASH_SOURCE[0]}")/.."
WORK=$(mktemp -d /tmp/ck-bench.XXXXXX)
PIDS=()
NODE_PIDS=()
cleanup() {
	# A node stopped with SIGSTOP (bench/rejoin.sh) takes SIGTERM only
	# once continued.
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; kill -CONT "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [[ -z ${KEEP:-} ]]; then rm -rf "$WORK"; else echo "kept $WORK"; fi
}
trap cleanup EXIT

BIN=${CLUSTERKIT_BIN:-}
if [[ -z $BIN ]]; then
	BIN=$WORK/clusterkit
	go build -o "$BIN" .
fi
ADDRS=127.0.0.1:29081,127.0.0.1:29082,127.0.0.1:29083

start_cluster() { # start_cluster [ENV=VALUE ...]: extra settings for every node
	local i join
	for i in 1 2 3; do
		join=()
		if ((i == 1)); then join=(BOOTSTRAP=true); else join=(JOIN_ADDR=127.0.0.1:28081); fi
		env NODE_ID="node-$i" HTTP_ADDR="127.0.0.1:2808$i" KV_ADDR="127.0.0.1:2908$i" \
			RAFT_ADDR="127.0.0.1:2818$i" GOSSIP_ADDR="127.0.0.1:2828$i" \
			DATA_DIR="$WORK/node$i" STATUS_INTERVAL=0 "${join[@]}" "$@" "$BIN" >"$WORK/node$i.log" 2>&1 &
		PIDS+=($!)
		NODE_PIDS[i]=$!
	done
	wait_settled http://127.0.0.1:28081 "$WORK"
}

# wait_settled URL LOGDIR [CURL_ARGS...]: wait until the cluster whose node
# serves its management API at URL has every partition stable with two
# in-sync replicas (and has partitions: before the cluster is initialised
# the list is empty); after 90 s, show LOGDIR's node logs and exit.
wait_settled() {
	local url=$1 logs=$2 deadline=$((SECONDS + 90)) body
	shift 2
	until body=$(curl -sf --max-time 2 "$@" "$url/partitions") && [[ -n $body ]] &&
		jq -e '.copies_in_progress == 0 and (.partitions | length > 0 and all(.state == "stable" and (.in_sync_replicas | length) == 2))' <<<"$body" >/dev/null; do
		if ((SECONDS > deadline)); then
			tail -20 "$logs"/node*.log >&2
			echo "cluster at $url not settled in 90s" >&2
			exit 1
		fi
		sleep 1
	done
}

stop_cluster() { # stop_cluster: stop the nodes, keep their logs, delete their data
	local p
	for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	PIDS=()
	NODE_PIDS=()
	rm -rf "$WORK"/node1 "$WORK"/node2 "$WORK"/node3
}
