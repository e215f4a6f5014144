#!/usr/bin/env bash
# Runs a 3-member etcd and a 3-node ClusterKit on loopback, one after the
# other, drives both with the same load code (loadgen.RunTarget, through
# bench/compare) and prints the ratios. See README.md beside this file.
#
#   bash bench/compare/run.sh
#
# Environment:
#   DURATION=20s      length of each measured run
#   C=32              concurrent clients
#   KEYS=100000       key space
#   VALUE=100         value size in bytes
#   SYSTEMS="ceiling etcd clusterkit"   which systems to run, in this order;
#                     ceiling is three servers that only parse and answer the
#                     same HTTP requests (the most any HTTP/JSON API can do here)
#   CLUSTERKIT_BIN=path         run this clusterkit binary instead of building HEAD
#   CK_ROUTE=owner    send each ClusterKit request to the key's primary (a
#                     cluster-aware client) instead of to the nodes in turn
#   CK_VARIANTS=plain ClusterKit configurations, run one after the other with
#                     every workload: plain (no secrets, as the quick start),
#                     key (CLUSTER_KEY: encrypted gossip, mutually
#                     authenticated TLS between nodes), tls (TLS with client
#                     certificates on the client listeners), key+tls (both).
#                     With more than one, the report adds each variant's
#                     ops/s and p99 against the first: what security costs
#   WORKLOADS="write read90"    write: 100% sets; read90: 90% gets after a preload
#   ETCD_CLIENTS=1    clientv3 clients the etcd workers share (see README.md)
#   KEEP=1            keep the temporary directory (data and logs)
set -euo pipefail

DURATION=${DURATION:-20s}
C=${C:-32}
KEYS=${KEYS:-100000}
VALUE=${VALUE:-100}
SYSTEMS=${SYSTEMS:-ceiling etcd clusterkit}
WORKLOADS=${WORKLOADS:-write read90}
CK_VARIANTS=${CK_VARIANTS:-plain}
ETCD_CLIENTS=${ETCD_CLIENTS:-1}
KEEP=${KEEP:-}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=$(mktemp -d -t clusterkit-compare.XXXXXX)
PIDS=()

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# stop_all ends the servers this script started, by pid: TERM, then KILL
# whatever is still there after 10 s. (ClusterKit nodes that all get TERM at
# once each try to hand their partitions to the others before leaving, and
# give up only after their 30 s drain timeout.)
stop_all() {
	local pid left
	((${#PIDS[@]})) || return 0
	kill -TERM "${PIDS[@]}" 2>/dev/null || true
	for _ in $(seq 100); do
		left=0
		for pid in "${PIDS[@]}"; do
			kill -0 "$pid" 2>/dev/null && left=1
		done
		((left)) || break
		sleep 0.1
	done
	# fd 2 goes to /dev/null here only to drop bash's "Killed" job notices.
	{
		for pid in "${PIDS[@]}"; do
			if kill -0 "$pid" 2>/dev/null; then
				log "pid $pid did not stop within 10s of SIGTERM; killing it" 2>&3
				kill -KILL "$pid" || true
			fi
			wait "$pid" || true
		done
	} 3>&2 2>/dev/null
	PIDS=()
}

cleanup() {
	local rc=$?
	stop_all
	if [[ -n $KEEP ]]; then
		log "kept $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# dump_logs prints the end of every server log, for a failed start.
dump_logs() {
	local f
	for f in "$WORK"/"$1"/*.log; do
		[[ -f $f ]] || continue
		echo "--- $f" >&2
		tail -n 20 "$f" >&2
	done
}

need_free_ports() {
	local p
	for p in "$@"; do
		if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "port 127.0.0.1:$p is in use; stop what holds it first" >&2
			exit 1
		fi
	done
}

# ---- tools ---------------------------------------------------------------

for tool in jq curl; do
	command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
if [[ " $SYSTEMS " == *" etcd "* ]] && ! command -v etcd >/dev/null; then
	log "installing etcd-server (apt-get)"
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y etcd-server >"$WORK/apt.log" 2>&1; then
		apt-get update >>"$WORK/apt.log" 2>&1
		apt-get install -y etcd-server >>"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log" >&2; exit 1; }
	fi
fi

log "building clusterkit and the compare tool in $WORK"
mkdir -p "$WORK/bin"
if [[ -n ${CLUSTERKIT_BIN:-} ]]; then
	# A prebuilt binary, e.g. an older commit's, to measure a change.
	cp "$CLUSTERKIT_BIN" "$WORK/bin/clusterkit"
else
	(cd "$ROOT" && go build -o "$WORK/bin/clusterkit" .)
fi
(cd "$ROOT/bench/compare" && go build -o "$WORK/bin/compare" .)

# ---- clusters ------------------------------------------------------------

ETCD_ENDPOINTS=127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793
CK_ENDPOINTS=127.0.0.1:19081,127.0.0.1:19082,127.0.0.1:19083
CEILING_ENDPOINTS=127.0.0.1:17081,127.0.0.1:17082,127.0.0.1:17083

start_ceiling() {
	local i
	need_free_ports 17081 17082 17083
	mkdir -p "$WORK/ceiling"
	for i in 1 2 3; do
		"$WORK/bin/compare" -serve-ceiling "127.0.0.1:1708$i" -value-size "$VALUE" >"$WORK/ceiling/s$i.log" 2>&1 &
		PIDS+=($!)
	done
	await_probe ceiling "$CEILING_ENDPOINTS" 20
}

# await_probe SYSTEM ENDPOINTS SECONDS waits until a probe write and read
# work, or fails the script with the servers' logs.
await_probe() {
	local deadline=$((SECONDS + $3))
	until "$WORK/bin/compare" -system "$1" -endpoints "$2" -check 2>"$WORK/$1/check.log"; do
		if ((SECONDS > deadline)); then
			cat "$WORK/$1/check.log" >&2
			dump_logs "$1"
			echo "$1 did not become healthy in $3s" >&2
			exit 1
		fi
		sleep 0.5
	done
}

start_etcd() {
	local i cluster="m1=http://127.0.0.1:23801,m2=http://127.0.0.1:23802,m3=http://127.0.0.1:23803"
	need_free_ports 23791 23792 23793 23801 23802 23803
	mkdir -p "$WORK/etcd"
	for i in 1 2 3; do
		# Default durability: the WAL is fsynced on every commit.
		etcd --name "m$i" --data-dir "$WORK/etcd/m$i" \
			--listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
			--listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
			--initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "compare-$$" \
			--logger zap --log-outputs stderr >"$WORK/etcd/m$i.log" 2>&1 &
		PIDS+=($!)
	done
	await_probe etcd "$ETCD_ENDPOINTS" 60
}

# ck_env and ck_client_args are what a ClusterKit variant adds to the
# nodes' environment and to the load tool's flags; CURL_CK to curl.
ck_env() { # ck_env VARIANT NODE
	case $1 in
	key | key+tls) echo "CLUSTER_KEY=$CK_KEY" ;;
	esac
	case $1 in
	tls | key+tls) echo "TLS_CERT_FILE=$WORK/tls/node-$2.pem TLS_KEY_FILE=$WORK/tls/node-$2-key.pem TLS_CA_FILE=$WORK/tls/ca.pem" ;;
	esac
}
ck_client_args() {
	case $1 in
	tls | key+tls) echo "-tls-ca $WORK/tls/ca.pem -tls-cert $WORK/tls/client.pem -tls-key $WORK/tls/client-key.pem" ;;
	esac
}

start_clusterkit() { # start_clusterkit [VARIANT]
	local i variant=${1:-plain}
	need_free_ports 18081 18082 18083 19081 19082 19083 18181 18182 18183 18281 18282 18283
	rm -rf "$WORK/clusterkit"
	mkdir -p "$WORK/clusterkit"
	CURL_CK=(curl -sf --max-time 2) CK_SCHEME=http
	case $variant in
	plain | key) ;;
	tls | key+tls)
		CURL_CK+=(--cacert "$WORK/tls/ca.pem" --cert "$WORK/tls/client.pem" --key "$WORK/tls/client-key.pem")
		CK_SCHEME=https
		;;
	*) echo "unknown ClusterKit variant $variant (want plain, key, tls or key+tls)" >&2; exit 2 ;;
	esac
	for i in 1 2 3; do
		local join=() 
		if ((i == 1)); then join=(BOOTSTRAP=true); else join=(JOIN_ADDR=127.0.0.1:18081); fi
		# Default durability: every in-sync copy fsyncs a write before it
		# is acknowledged.
		# shellcheck disable=SC2046
		env NODE_ID="node-$i" NODE_NAME="Server-$i" \
			HTTP_ADDR="127.0.0.1:1808$i" KV_ADDR="127.0.0.1:1908$i" \
			RAFT_ADDR="127.0.0.1:1818$i" GOSSIP_ADDR="127.0.0.1:1828$i" \
			DATA_DIR="$WORK/clusterkit/node$i" STATUS_INTERVAL=0 "${join[@]}" $(ck_env "$variant" "$i") \
			"$WORK/bin/clusterkit" >"$WORK/clusterkit/node$i.log" 2>&1 &
		PIDS+=($!)
	done
	# Healthy: every node sees three nodes and a leader; every node is
	# primary for some partitions, every partition is stable with its
	# replicas in sync and no copy running, and the partition map did not
	# change over the last second (the rebalance after a join is done);
	# then a probe write and read.
	local deadline=$((SECONDS + 90)) prev="" v=""
	# shellcheck disable=SC2046
	until v=$(ck_map_version) && [[ $v == "$prev" ]] &&
		"$WORK/bin/compare" -system clusterkit -endpoints "$CK_ENDPOINTS" $(ck_client_args "$variant") -check 2>"$WORK/clusterkit/check.log"; do
		if ((SECONDS > deadline)); then
			cat "$WORK/clusterkit/check.log" >&2 || true
			dump_logs clusterkit
			echo "clusterkit did not become healthy in 90s" >&2
			exit 1
		fi
		prev=$v
		sleep 1
	done
}

# ck_map_version prints the partition map version if the cluster looks
# settled, and fails otherwise.
ck_map_version() {
	local i
	for i in 1 2 3; do
		"${CURL_CK[@]}" "$CK_SCHEME://127.0.0.1:1808$i/health/detailed" |
			jq -e '.healthy and .node_count == 3' >/dev/null || return 1
	done
	"${CURL_CK[@]}" "$CK_SCHEME://127.0.0.1:18081/partitions/stats" |
		jq -e '.partitions_per_node | length == 3 and all(.[]; . > 0)' >/dev/null || return 1
	"${CURL_CK[@]}" "$CK_SCHEME://127.0.0.1:18081/partitions" | jq -er '
		select(.copies_in_progress == 0 and
		       (.partitions | all(.state == "stable" and (.replica_nodes | length) == 2 and
		                          (.in_sync_replicas | length) == (.replica_nodes | length))))
		| .version'
}

# ---- runs ----------------------------------------------------------------

# route_args makes ClusterKit's client cluster-aware when CK_ROUTE=owner.
route_args() {
	if [[ $1 == clusterkit && ${CK_ROUTE:-} == owner ]]; then echo "-route-via 127.0.0.1:18081"; fi
}

workload_args() {
	case $1 in
	write) echo "-reads 0" ;;
	read90) echo "-reads 0.9 -preload" ;;
	*) echo "unknown workload $1 (want write or read90)" >&2; exit 2 ;;
	esac
}

# rss prints each server's resident memory now.
rss() {
	local sys=$1 pid i=0 kb
	for pid in "${PIDS[@]}"; do
		i=$((i + 1))
		kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo "?")
		printf '%s-%d:%s\n' "$sys" "$i" "$kb"
	done
}

# cpu_us_per_op OUT WORKLOAD: the servers' CPU per operation of a run, in
# µs (preloaded writes count as operations).
cpu_us_per_op() {
	local ops
	ops=$(jq '.ops + .preloaded' "$WORK/$1-$2.json" 2>/dev/null) || { echo 0; return; }
	awk -v t="$(cat "$WORK/$1-$2.ticks")" -v hz="$CLK_TCK" -v n="$ops" 'BEGIN { if (n == 0) print 0; else printf "%.0f", t / hz * 1e6 / n }'
}

# cpu_ticks prints the CPU time (user + system, in clock ticks) the servers
# under test have used so far.
cpu_ticks() {
	local pid total=0 f
	for pid in "${PIDS[@]}"; do
		f=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
		f=${f##*) } # fields after the command name
		read -r -a a <<<"$f"
		total=$((total + a[11] + a[12]))
	done
	echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# run_system SYSTEM [VARIANT]: start it, run every workload, stop it. A
# ClusterKit variant's results are clusterkit-VARIANT-WORKLOAD.json; the
# first variant's are also clusterkit-WORKLOAD.json, for the main report.
RSS_LINES=()
run_system() {
	local sys=$1 variant=${2:-} endpoints extra="" label=$1 out
	case $sys in
	etcd) endpoints=$ETCD_ENDPOINTS ;;
	clusterkit) endpoints=$CK_ENDPOINTS ;;
	ceiling) endpoints=$CEILING_ENDPOINTS ;;
	*) echo "unknown system $sys (want ceiling, etcd or clusterkit)" >&2; exit 2 ;;
	esac
	[[ -z $variant ]] || { label="$sys ($variant)"; extra=$(ck_client_args "$variant"); }
	log "starting 3-member $label"
	t0=$SECONDS
	"start_$sys" $variant
	log "$label healthy after $((SECONDS - t0))s"
	for wl in $WORKLOADS; do
		log "$label $wl: c=$C d=$DURATION keys=$KEYS value=${VALUE}B"
		out=$sys
		[[ -z $variant ]] || out="$sys-$variant"
		rc=0
		# The measured run's share of the servers' CPU: the preload of
		# read90 is in it too, so CPU per operation is counted over both.
		local ticks0
		ticks0=$(cpu_ticks)
		# shellcheck disable=SC2046
		"$WORK/bin/compare" -system "$sys" -endpoints "$endpoints" -etcd-clients "$ETCD_CLIENTS" $(route_args "$sys") $extra \
			-c "$C" -d "$DURATION" -keys "$KEYS" -value-size "$VALUE" $(workload_args "$wl") \
			-json -quiet >"$WORK/$out-$wl.json" 2>"$WORK/$out-$wl.err" || rc=$?
		echo $(($(cpu_ticks) - ticks0)) >"$WORK/$out-$wl.ticks"
		# Exit 1 with a result means misses; anything else is a failed run.
		if ! jq -e .ops "$WORK/$out-$wl.json" >/dev/null 2>&1; then
			cat "$WORK/$out-$wl.err" >&2
			dump_logs "$sys"
			echo "$label $wl failed (exit $rc)" >&2
			exit 1
		fi
		if [[ -n $variant && $variant == "${CK_VARIANTS%% *}" ]]; then
			cp "$WORK/$out-$wl.json" "$WORK/$sys-$wl.json"
		fi
		jq -r --arg s "$label $wl" --argjson us "$(cpu_us_per_op "$out" "$wl")" \
			'"\($s): \(.ops_per_sec|floor) ops/s p50 \(.p50_ms*100|round/100)ms p99 \(.p99_ms*100|round/100)ms errors \(.errors) misses \(.misses); servers CPU \($us) µs/op"' "$WORK/$out-$wl.json" >&2
	done
	if [[ $sys != ceiling ]]; then
		mapfile -t lines < <(rss "${label// /}")
		RSS_LINES+=("${lines[@]}")
	fi
	log "stopping $label"
	stop_all
	log "$label stopped"
}

if [[ " $SYSTEMS " == *" clusterkit "* && "$CK_VARIANTS" != plain ]]; then
	CK_KEY=$("$WORK/bin/clusterkit" keygen)
	"$WORK/bin/clusterkit" tls ca -dir "$WORK/tls" >/dev/null
	for i in 1 2 3; do "$WORK/bin/clusterkit" tls cert -dir "$WORK/tls" -name "node-$i" >/dev/null; done
	"$WORK/bin/clusterkit" tls cert -dir "$WORK/tls" -name client -client >/dev/null
fi
for sys in $SYSTEMS; do
	if [[ $sys == clusterkit ]]; then
		for variant in $CK_VARIANTS; do run_system clusterkit "$variant"; done
	else
		run_system "$sys"
	fi
done

# ---- report --------------------------------------------------------------

field() { # field SYSTEM WORKLOAD JQ-EXPR
	local f="$WORK/$1-$2.json"
	if [[ -f $f ]]; then jq -r "$3" "$f"; else echo "-"; fi
}
ratio() { # ratio A B: A/B to two places, or "-"
	if [[ $1 == - || $2 == - ]]; then echo "-"; else awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'; fi
}

dirty=""
if [[ -n $(cd "$ROOT" && git status --porcelain --untracked-files=no 2>/dev/null) ]]; then dirty=" (working tree has uncommitted changes)"; fi
echo
echo "ClusterKit vs etcd, 3 members each on loopback, same load code (loadgen.RunTarget)"
echo "date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "machine:  nproc=$(nproc), the load tool and the three servers under test share it"
echo "commit:   $(cd "$ROOT" && git rev-parse --short HEAD)$dirty"
[[ -z ${CLUSTERKIT_BIN:-} ]] || echo "clusterkit binary: $CLUSTERKIT_BIN (not built from this commit)"
echo "etcd:     $(etcd --version 2>/dev/null | head -n1 | sed 's/etcd Version: //') server, clientv3 $(cd "$ROOT/bench/compare" && go list -m -f '{{.Version}}' go.etcd.io/etcd/client/v3), $ETCD_CLIENTS client(s), linearizable gets"
echo "workload: c=$C, $DURATION per run, keys=$KEYS, value=${VALUE}B; write = 100% sets; read90 = 90% gets, 10% sets, keys preloaded"
echo "clusterkit: ${CK_VARIANTS// /, } (the main table shows ${CK_VARIANTS%% *})"
if [[ ${CK_ROUTE:-} == owner ]]; then
	echo "routing:  ClusterKit requests go to each key's primary (CK_ROUTE=owner)"
else
	echo "routing:  ClusterKit requests go to the nodes in turn (2 in 3 forwarded)"
fi
echo
fmt='%-8s | %9s %8s %8s | %9s %8s %8s | %8s %8s | %-22s %-22s\n'
printf "$fmt" workload "etcd ops/s" p50 p99 "ck ops/s" p50 p99 "ops/s" "p99" "etcd errors/misses" "ck errors/misses"
printf "$fmt" "" "" "(ms)" "(ms)" "" "(ms)" "(ms)" "ck/etcd" "ck/etcd" "" ""
for wl in $WORKLOADS; do
	eo=$(field etcd "$wl" '.ops_per_sec|floor') e50=$(field etcd "$wl" '.p50_ms*100|round/100') e99=$(field etcd "$wl" '.p99_ms*100|round/100')
	co=$(field clusterkit "$wl" '.ops_per_sec|floor') c50=$(field clusterkit "$wl" '.p50_ms*100|round/100') c99=$(field clusterkit "$wl" '.p99_ms*100|round/100')
	eerr=$(field etcd "$wl" '"\(.errors)/\(.misses)" + (if .error_kinds then " " + ([.error_kinds|to_entries[]|"\(.key)=\(.value)"]|join(",")) else "" end)')
	cerr=$(field clusterkit "$wl" '"\(.errors)/\(.misses)" + (if .error_kinds then " " + ([.error_kinds|to_entries[]|"\(.key)=\(.value)"]|join(",")) else "" end)')
	printf "$fmt" "$wl" "$eo" "$e50" "$e99" "$co" "$c50" "$c99" "$(ratio "$co" "$eo")" "$(ratio "$c99" "$e99")" "$eerr" "$cerr"
done
echo
echo "ops/s ck/etcd above 1: ClusterKit does more; p99 ck/etcd above 1: ClusterKit is slower at the tail."
if [[ " $SYSTEMS " == *" ceiling "* ]]; then
	echo
	echo "ceiling: three servers that only parse and answer the same HTTP/JSON requests"
	echo "(nothing stored, nothing forwarded), driven by ClusterKit's client; each system's"
	echo "ops/s as a share of it:"
	cfmt='%-8s | %13s | %12s | %12s\n'
	printf "$cfmt" workload "ceiling ops/s" "etcd/ceiling" "ck/ceiling"
	for wl in $WORKLOADS; do
		no=$(field ceiling "$wl" '.ops_per_sec|floor')
		eo=$(field etcd "$wl" '.ops_per_sec|floor') co=$(field clusterkit "$wl" '.ops_per_sec|floor')
		printf "$cfmt" "$wl" "$no" "$(ratio "$eo" "$no")" "$(ratio "$co" "$no")"
	done
fi
read -r -a variants <<<"$CK_VARIANTS"
if ((${#variants[@]} > 1)); then
	echo
	echo "ClusterKit configurations against ${variants[0]}, same run (what security costs):"
	vfmt='%-8s | %-8s | %9s %8s %10s | %13s %13s %13s\n'
	printf "$vfmt" workload variant "ops/s" "p99 (ms)" "CPU µs/op" "ops/s vs ${variants[0]}" "p99 vs ${variants[0]}" "CPU vs ${variants[0]}"
	for wl in $WORKLOADS; do
		bo=$(field "clusterkit-${variants[0]}" "$wl" '.ops_per_sec|floor') b99=$(field "clusterkit-${variants[0]}" "$wl" '.p99_ms*100|round/100')
		bc=$(cpu_us_per_op "clusterkit-${variants[0]}" "$wl")
		for v in "${variants[@]}"; do
			o=$(field "clusterkit-$v" "$wl" '.ops_per_sec|floor') p=$(field "clusterkit-$v" "$wl" '.p99_ms*100|round/100')
			cu=$(cpu_us_per_op "clusterkit-$v" "$wl")
			printf "$vfmt" "$wl" "$v" "$o" "$p" "$cu" "$(ratio "$o" "$bo")" "$(ratio "$p" "$b99")" "$(ratio "$cu" "$bc")"
		done
	done
	echo "CPU µs/op: the three nodes' user and system CPU during the run (preload included) per operation."
fi
echo
echo "resident memory after the runs (VmRSS):"
for l in "${RSS_LINES[@]}"; do
	kb=${l#*:}
	if [[ $kb =~ ^[0-9]+$ ]]; then printf '  %-14s %6d MiB\n' "${l%%:*}" $((kb / 1024)); else printf '  %-14s %s\n' "${l%%:*}" "$kb"; fi
done
