#!/usr/bin/env bash
# What security costs, measured so that the host's drift cancels out: one
# 3-node ClusterKit per configuration, all running side by side on
# loopback, each preloaded once; then ROUNDS rounds in which every
# configuration in turn gets the same load (C workers, DURATION, the same
# seed) while the others idle. Each line is one load: ops/s, p50/p99, the
# load tool's CPU per operation and the three loaded nodes' CPU per
# operation (from /proc, during that load only). The summary gives each
# configuration's median against plain's.
#
#   bash bench/security.sh
#
# Configurations (VARIANTS): plain (no secrets, as the quick start), key
# (CLUSTER_KEY: encrypted gossip, mutually authenticated TLS between
# nodes), tls (TLS with client certificates on the client listeners; the
# load tool speaks TLS too) and key+tls.
#
# Environment: VARIANTS="plain tls key+tls" ROUNDS=4 DURATION=8s C=32
# KEYS=100000 READS=0.9 CLUSTERKIT_BIN=path KEEP=1.
set -euo pipefail
VARIANTS=${VARIANTS:-plain tls key+tls}
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-8s}
C=${C:-32}
KEYS=${KEYS:-100000}
READS=${READS:-0.9}

# WORK, BIN, PIDS and the cleanup on exit; its start_cluster is not used.
# shellcheck source=bench/cluster.sh
source "$(dirname "$0")/cluster.sh"
"$BIN" tls ca -dir "$WORK/tls" >/dev/null
for i in 1 2 3; do "$BIN" tls cert -dir "$WORK/tls" -name "node-$i" >/dev/null; done
"$BIN" tls cert -dir "$WORK/tls" -name client -client >/dev/null
KEY=$("$BIN" keygen)
TICK=$(getconf CLK_TCK)

declare -A ADDRS PIDS_OF LOAD_ARGS CURL_ARGS MGMT
start_variant() { # start_variant NAME INDEX
	local name=$1 v=$2 i join scheme=http env pids=()
	local kv=()
	for i in 1 2 3; do
		env=(NODE_ID="node-$i" HTTP_ADDR="127.0.0.1:3${v}08$i" KV_ADDR="127.0.0.1:3${v}18$i"
			RAFT_ADDR="127.0.0.1:3${v}28$i" GOSSIP_ADDR="127.0.0.1:3${v}38$i"
			DATA_DIR="$WORK/$name/node$i" STATUS_INTERVAL=0 CLUSTER_NAME="security-$v")
		if ((i == 1)); then join=(BOOTSTRAP=true); else join=(JOIN_ADDR="127.0.0.1:3${v}081"); fi
		case $name in key | key+tls) env+=(CLUSTER_KEY="$KEY") ;; esac
		case $name in tls | key+tls)
			env+=(TLS_CERT_FILE="$WORK/tls/node-$i.pem" TLS_KEY_FILE="$WORK/tls/node-$i-key.pem" TLS_CA_FILE="$WORK/tls/ca.pem")
			scheme=https
			;;
		esac
		mkdir -p "$WORK/$name"
		env "${env[@]}" "${join[@]}" "$BIN" >"$WORK/$name/node$i.log" 2>&1 &
		pids+=($!)
		PIDS+=($!)
		kv+=("127.0.0.1:3${v}18$i")
	done
	PIDS_OF[$name]="${pids[*]}"
	ADDRS[$name]=$(
		IFS=,
		echo "${kv[*]}"
	)
	MGMT[$name]="$scheme://127.0.0.1:3${v}081"
	LOAD_ARGS[$name]=""
	CURL_ARGS[$name]=""
	if [[ $scheme == https ]]; then
		LOAD_ARGS[$name]="-tls-ca $WORK/tls/ca.pem -tls-cert $WORK/tls/client.pem -tls-key $WORK/tls/client-key.pem"
		CURL_ARGS[$name]="--cacert $WORK/tls/ca.pem --cert $WORK/tls/client.pem --key $WORK/tls/client-key.pem"
	fi
}

settle() { # settle NAME: every partition stable with two in-sync replicas
	# shellcheck disable=SC2206
	local curl_args=(${CURL_ARGS[$1]})
	wait_settled "${MGMT[$1]}" "$WORK/$1" "${curl_args[@]}"
}

node_cpu() { # node_cpu NAME: the variant's nodes' CPU time so far, in clock ticks
	local p t=0
	for p in ${PIDS_OF[$1]}; do
		t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
	done
	echo "$t"
}

v=0
for name in $VARIANTS; do
	start_variant "$name" "$v"
	v=$((v + 1))
done
for name in $VARIANTS; do
	settle "$name"
	# shellcheck disable=SC2206
	load_args=(${LOAD_ARGS[$name]})
	"$BIN" bench -addrs "${ADDRS[$name]}" "${load_args[@]}" -c "$C" -keys "$KEYS" -preload -d 2s -seed 2 -quiet -json >"$WORK/$name-warmup.json"
done

printf '%-6s %-8s %10s %8s %8s %14s %14s %7s\n' round config ops/s p50_ms p99_ms client_us/op nodes_us/op errors
for r in $(seq "$ROUNDS"); do
	for name in $VARIANTS; do
		# shellcheck disable=SC2206
		load_args=(${LOAD_ARGS[$name]})
		out=$WORK/$name-$r.json
		c0=$(node_cpu "$name")
		"$BIN" bench -addrs "${ADDRS[$name]}" "${load_args[@]}" -c "$C" -keys "$KEYS" -reads "$READS" -d "$DURATION" -seed 1 -quiet -json >"$out"
		c1=$(node_cpu "$name")
		jq -r --arg r "$r" --arg name "$name" --argjson ncpu "$((c1 - c0))" --argjson tick "$TICK" \
			'[$r, $name, (.ops_per_sec | floor), .p50_ms, .p99_ms,
			  (if .ops > 0 then (.client_cpu_seconds / .ops * 1e6 | floor) else 0 end),
			  (if .ops > 0 then ($ncpu / $tick / .ops * 1e6 | floor) else 0 end), .errors] | @tsv' "$out" |
			tee -a "$WORK/results.tsv" |
			awk -F'\t' '{printf "%-6s %-8s %10s %8.2f %8.2f %14s %14s %7s\n", $1, $2, $3, $4, $5, $6, $7, $8}'
	done
done

echo
echo "median over $ROUNDS rounds, and against plain (C=$C, DURATION=$DURATION, KEYS=$KEYS, reads $READS):"
awk -F'\t' '
	{ ops[$2] = ops[$2] " " $3; cpu[$2] = cpu[$2] " " $7; names[$2] = 1; if (!($2 in order)) order[$2] = ++n }
	function median(list,   a, k, i, j, t) {
		k = split(list, a, " ")
		for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
		return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
	}
	END {
		base_ops = median(ops["plain"]); base_cpu = median(cpu["plain"])
		for (name in names) idx[order[name]] = name
		for (i = 1; i <= n; i++) {
			name = idx[i]; o = median(ops[name]); c = median(cpu[name])
			if (base_ops > 0) printf "%-8s %8d ops/s (%.2fx plain)   nodes %4d us/op (%.2fx plain)\n", name, o, o / base_ops, c, c / base_cpu
			else printf "%-8s %8d ops/s   nodes %4d us/op\n", name, o, c
		}
	}' "$WORK/results.tsv"
