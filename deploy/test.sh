#!/usr/bin/env bash
# Container fault test for the Docker deployment: builds the image, starts
# the three-node cluster with deploy/up.sh and then
#
#   1. smoke: set through one node, get through the others, delete,
#      /cluster shows 3 active nodes;
#   2. kill: `docker kill` a node (the Raft leader by default), check that
#      writes to every partition and reads continue through the other two,
#      then `docker start` it with a NEW IP address (a placeholder container
#      takes its old one) and check that it rejoins under its NODE_ID and
#      catches up (in sync for every partition, stale reads of everything
#      written while it was down, same /kv/list total);
#   3. disconnect: `docker network disconnect` a node (the Raft leader by
#      default), keep writing through the majority, reconnect it (with its
#      own IP, or a new one with DISCONNECT_NEW_IP=1), and check that it
#      converges the same way;
#
# and tears everything down (containers, network, volumes, and the image if
# this run built it), also on failure or Ctrl-C. Every wait has a bound and
# says what it waited for when it fails. It prints how long the cluster took
# to become healthy and how long writes were interrupted by each fault.
#
# Without a Docker engine it prints SKIP and exits 0.
#
# Usage: deploy/test.sh [--no-build]      (--no-build: use the existing image)
# Settings (environment):
#   KILL_NODE, DISCONNECT_NODE  node-1..node-3, or "leader" (default) for
#                               the Raft leader at that moment
#   DISCONNECT_NEW_IP           1: the node comes back on the network with a
#                               new IP (default 0: with its own, as Docker
#                               gives it when the address is still free)
#   STABLE_SECS                 how long a converged node must stay in sync (10)
#   DISCONNECT_SECS             how long the node stays cut off at least
#                               (default 15; the writes and reads checked
#                               meanwhile may make it longer)
#   TEST_TIMEOUT                overall bound in seconds (default 480)
#   TEST_LOG_DIR                if set, full node logs are saved there
#   CLUSTERKIT_TLS=1            TLS on the client ports (see lib.sh); the
#                               smoke phase then also checks plain HTTP and
#                               certificate-less clients are refused, and
#                               runs the load tool over TLS
#   PHASES=smoke                stop after the smoke and trust checks
#   CLUSTERKIT_HTTP_PORT_1..3, CLUSTERKIT_KV_PORT_1..3   host ports (see lib.sh)
# Needs: docker, docker compose or docker-compose, go, curl, python3.
set -Eeuo pipefail
# A separate compose project, so the test never touches the volumes of a
# cluster started with up.sh. (Its published ports are the same, though:
# stop that cluster first, or set the port variables.)
export COMPOSE_PROJECT_NAME=${TEST_PROJECT:-clusterkit-test}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KILL_NODE=${KILL_NODE:-leader}
DISCONNECT_NODE=${DISCONNECT_NODE:-leader}
DISCONNECT_SECS=${DISCONNECT_SECS:-15}
TEST_TIMEOUT=${TEST_TIMEOUT:-480}
RESUME_TIMEOUT=60  # fault -> every partition writable again
REJOIN_TIMEOUT=120 # restart/reconnect -> in sync again
PLACEHOLDER=$COMPOSE_PROJECT_NAME-ip-placeholder
DISCONNECT_NEW_IP=${DISCONNECT_NEW_IP:-0}
STABLE_SECS=${STABLE_SECS:-10} # a converged node must stay in sync this long

if ! out=$(docker info 2>&1 >/dev/null); then
	echo "SKIP: deploy/test.sh: no Docker engine answers (docker info: ${out:0:200}); the container fault test did not run"
	exit 0
fi
if ! detect_compose; then
	echo "SKIP: deploy/test.sh: a Docker engine answers but neither 'docker compose' nor 'docker-compose' is installed; the container fault test did not run"
	exit 0
fi
for tool in curl python3 go; do
	[ "$tool" = go ] && [ "${1:-}" = --no-build ] && continue
	command -v "$tool" >/dev/null 2>&1 || die "deploy/test.sh needs $tool"
done

# ---------------------------------------------------------------- cleanup

image_existed=0
docker image inspect "$CLUSTERKIT_IMAGE" >/dev/null 2>&1 && image_existed=1
WORK=$(mktemp -d)
watchdog=""

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	[ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null
	# Background writers of this script, if a phase failed mid-way.
	local j
	for j in $(jobs -p); do kill "$j" 2>/dev/null; done
	if [ "$rc" != 0 ]; then
		log "FAILED (exit $rc); state of the cluster before teardown:"
		compose ps >&2
		for n in "${NODES[@]}"; do
			log "--- last log lines of $n"
			compose logs --no-color --tail=300 "$n" 2>&1 |
				grep -v -E 'partition assignment changed|failed to heartbeat|failed to appendEntries|requestVote|Election timeout|candidate state|network is unreachable' |
				tail -n 30 >&2
		done
	fi
	if [ -n "${TEST_LOG_DIR:-}" ]; then
		mkdir -p "$TEST_LOG_DIR"
		for n in "${NODES[@]}"; do compose logs --no-color --timestamps "$n" >"$TEST_LOG_DIR/$n.log" 2>&1; done
		cp -r "$WORK"/. "$TEST_LOG_DIR/" 2>/dev/null
		log "full node logs and per-partition write times saved in $TEST_LOG_DIR"
	fi
	log "teardown: containers, network, volumes"
	docker rm -f "$PLACEHOLDER" "$PLACEHOLDER-2" >/dev/null 2>&1
	compose down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 ||
		log "WARNING: compose down failed; check docker ps -a / docker volume ls"
	if [ "$image_existed" = 0 ]; then
		docker rmi "$CLUSTERKIT_IMAGE" >/dev/null 2>&1
	fi
	# The test cluster's data is gone, so are its secrets.
	rm -rf "$CLUSTERKIT_SECRETS" "$CLUSTERKIT_TLS_DIR" "$CLUSTERKIT_TLS_DIR.ca-key.pem"
	rm -rf "$WORK"
	if [ "$rc" = 0 ]; then log "PASS"; else log "FAIL"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated (overall bound TEST_TIMEOUT=${TEST_TIMEOUT}s?)"; exit 124' TERM

(
	sleep "$TEST_TIMEOUT"
	log "ERROR: the test did not finish within TEST_TIMEOUT=${TEST_TIMEOUT}s"
	kill -TERM $$
	# The script's own children (a running curl or loop), so that the trap
	# runs at once; this watchdog is one of them.
	pkill -TERM -P $$
) &
watchdog=$!

# ---------------------------------------------------------------- helpers

idx() { echo $((${1#node-} - 1)); }
mport() { echo "${HTTP_PORTS[$(idx "$1")]}"; }
kport() { echo "${KV_PORTS[$(idx "$1")]}"; }
mgmt() { curl "${CURL_TLS[@]}" -sf --max-time 3 "$SCHEME://127.0.0.1:$(mport "$1")$2"; }

# py EXPR: evaluate a Python expression over the JSON document on stdin (d).
# Only for the few structured queries; the hot paths parse with bash. Prefer
# the system python3: a pyenv shim adds most of a second to every call.
PYTHON=python3
[ -x /usr/bin/python3 ] && PYTHON=/usr/bin/python3
py() { "$PYTHON" -c 'import json,sys
d=json.load(sys.stdin)
r=eval(sys.argv[1])
print(r if not isinstance(r,(list,dict)) else json.dumps(r))' "$1"; }

# kv_set PORT KEY VALUE [MAXTIME]: 0 if the write was acknowledged (200).
kv_set() {
	local code
	code=$(curl "${CURL_TLS[@]}" -s -o /dev/null -w '%{http_code}' --max-time "${4:-8}" -X POST "$SCHEME://127.0.0.1:$1/kv/set" \
		-H 'Content-Type: application/json' -d "{\"key\":\"$2\",\"value\":\"$3\"}") || true
	[ "$code" = 200 ]
}

# kv_get PORT KEY [stale]: prints the value; fails unless 200.
kv_get() {
	local q="key=$2" body
	[ "${3:-}" = stale ] && q="$q&consistency=stale"
	body=$(curl "${CURL_TLS[@]}" -s --max-time 8 -w ' HTTP_%{http_code}' "$SCHEME://127.0.0.1:$1/kv/get?$q") || { echo "no answer"; return 1; }
	[[ $body == *' HTTP_200' ]] || { echo "${body##* HTTP_}: ${body% HTTP_*}"; return 1; }
	# Our values are plain [a-z0-9:-]: no JSON escapes to undo.
	[[ $body =~ \"value\":\"([^\"]*)\" ]] || return 1
	echo "${BASH_REMATCH[1]}"
}

# wait_for TIMEOUT_S WHAT CMD...: retry CMD every 0.5 s until it succeeds;
# fail naming WHAT and CMD's last output.
wait_for() {
	local timeout=$1 what=$2; shift 2
	local deadline=$(($(date +%s) + timeout)) out
	while :; do
		if out=$("$@" 2>&1); then return 0; fi
		if [ "$(date +%s)" -ge "$deadline" ]; then
			die "timed out after ${timeout}s waiting for: $what (last: ${out:-no output})"
		fi
		sleep 0.5
	done
}

# active_nodes VIA: the number of nodes /cluster on VIA shows as active.
active_nodes() { mgmt "$1" /cluster | py 'sum(1 for n in d["cluster"]["nodes"] if n["status"]=="active")'; }

# cluster_has_active VIA N: /cluster on VIA shows exactly N active nodes.
cluster_has_active() {
	local got
	got=$(active_nodes "$1") || { echo "no /cluster answer from $1"; return 1; }
	[ "$got" = "$2" ] || { echo "$1 shows $got active nodes, want $2"; return 1; }
}

# in_sync VIA NODE: /cluster on VIA shows NODE active, and primary or in-sync
# replica of every partition (3 nodes, replication factor 3: each node holds
# every partition).
in_sync() {
	local body
	body=$(mgmt "$1" /cluster) || { echo "no /cluster answer from $1"; return 1; }
	"$PYTHON" -c '
import json,sys
d=json.load(sys.stdin)["cluster"]; n=sys.argv[1]
st={m["id"]:m["status"] for m in d["nodes"]}
ps=d["partition_map"]["partitions"].values()
have=sum(1 for p in ps if p["primary_node"]==n or n in p["in_sync_replicas"])
print(f"{n} is {st.get(n)}, primary or in sync for {have}/{len(ps)} partitions")
sys.exit(0 if st.get(n)=="active" and have==len(ps) else 1)' "$2" <<<"$body"
}

is_healthy() {
	local st
	st=$(health "$1")
	[ "$st" = healthy ] || { echo "$1 is $st"; return 1; }
}

leader_of() { mgmt "$1" /consensus/leader | py 'd["leader_id"]'; }

# pick SPEC: resolve "leader" to the current Raft leader.
pick() {
	if [ "$1" = leader ]; then
		local n l
		for n in "${NODES[@]}"; do
			if l=$(leader_of "$n") && [ -n "$l" ]; then echo "$l"; return; fi
		done
		die "no node knows the Raft leader"
	fi
	case $1 in node-1 | node-2 | node-3) echo "$1" ;; *) die "unknown node $1 (want node-1..3 or leader)" ;; esac
}

# placeholder NAME: an idle container on the cluster network that takes the
# lowest free IP (Docker's IPAM hands out the lowest free address): the same
# image, a single node that listens on loopback only and joins nobody.
placeholder() {
	docker run -d --name "$1" --network "$(net_of)" --no-healthcheck --entrypoint /clusterkit \
		-e NODE_ID=placeholder -e CLUSTER_NAME=placeholder -e HTTP_ADDR=127.0.0.1:8080 -e RAFT_ADDR=127.0.0.1:9001 \
		-e BOOTSTRAP=false -e STATUS_INTERVAL=0 -e LOG_LEVEL=error "$CLUSTERKIT_IMAGE" >/dev/null
	ip_of_container "$1"
}
ip_of_container() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }

ip_of() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(cid "$1")"; }
net_of() { docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$(cid node-1)"; }

# Acknowledged writes: key -> value. Everything here must be readable at the end.
declare -A ACKED=()

# PROBE[p]: a key of partition p, so that a fault phase can write to every
# partition.
declare -a PROBE=()
find_probe_keys() {
	local total i k p body found=0
	total=$(mgmt node-1 /cluster | py 'd["cluster"]["config"]["partition_count"]')
	for ((i = 0; found < total; i++)); do
		[ "$i" -lt 5000 ] || die "found keys for only $found of $total partitions"
		k="probe-$i"
		body=$(mgmt node-1 "/partitions/key?key=$k") || die "GET /partitions/key?key=$k failed"
		[[ $body =~ \"id\":\"partition-([0-9]+)\" ]] || die "unexpected /partitions/key answer: $body"
		p=${BASH_REMATCH[1]}
		if [ -z "${PROBE[$p]:-}" ]; then PROBE[$p]=$k; found=$((found + 1)); fi
	done
	log "one key for each of the $total partitions found (${PROBE[*]:0:4} ...)"
}

# write_every_partition PHASE T0 PORTS...: for each partition, retry a write
# (round robin over PORTS) until it is acknowledged; records when each
# partition first accepted a write, measured from T0 (ms). Sets FIRST_OK and
# ALL_OK (seconds after T0). A request waits up to REQUEST_TIMEOUT (5 s)
# inside the cluster, so a partition's time is when its write was
# acknowledged, not when it was sent.
write_every_partition() {
	local phase=$1 t0=$2; shift 2
	local ports=("$@") p dir=$WORK/$phase
	mkdir -p "$dir"
	local deadline=$(($(now_ms) + RESUME_TIMEOUT * 1000)) pids=()
	for p in "${!PROBE[@]}"; do
		(
			local try=0 key="${PROBE[$p]}" val="$phase-$p"
			while [ "$(now_ms)" -lt "$deadline" ]; do
				if kv_set "${ports[$((try % ${#ports[@]}))]}" "$key" "$val" 8; then
					echo "$(now_ms) $try" >"$dir/$p"
					exit 0
				fi
				try=$((try + 1))
				sleep 0.2
			done
		) &
		pids+=($!)
	done
	wait "${pids[@]}" || true
	local missing=() first="" last="" t tries
	for p in "${!PROBE[@]}"; do
		if [ ! -s "$dir/$p" ]; then missing+=("partition-$p"); continue; fi
		read -r t tries <"$dir/$p"
		ACKED[${PROBE[$p]}]="$phase-$p"
		[ -z "$first" ] || [ "$t" -lt "$first" ] && first=$t
		[ -z "$last" ] || [ "$t" -gt "$last" ] && last=$t
	done
	[ ${#missing[@]} = 0 ] || die "$phase: writes to ${missing[*]} not acknowledged within ${RESUME_TIMEOUT}s of the fault"
	FIRST_OK=$(secs "$t0" "$first") ALL_OK=$(secs "$t0" "$last")
	# Per partition: seconds from the fault to its first acknowledged write.
	PER_PARTITION=""
	for p in "${!PROBE[@]}"; do
		read -r t tries <"$dir/$p"
		PER_PARTITION+=" p$p=$(secs "$t0" "$t")"
	done
	log "$phase: first acknowledged write per partition (s):$PER_PARTITION"
}

# write_batch PREFIX COUNT PORTS...: COUNT more writes through PORTS; each
# must be acknowledged within a few retries.
write_batch() {
	local prefix=$1 count=$2; shift 2
	local ports=("$@") i k
	for ((i = 0; i < count; i++)); do
		k="$prefix-$i"
		wait_for 20 "write $k through port ${ports[$((i % ${#ports[@]}))]}" kv_set "${ports[$((i % ${#ports[@]}))]}" "$k" "v-$k" 8
		ACKED[$k]="v-$k"
	done
}

# read_all PORT [stale]: every acknowledged key reads back with its value.
read_all() {
	local k got bad=0
	for k in "${!ACKED[@]}"; do
		if ! got=$(kv_get "$1" "$k" "${2:-}") || [ "$got" != "${ACKED[$k]}" ]; then
			echo "port $1${2:+ ($2)}: $k = '${got:-<no answer>}', want '${ACKED[$k]}'"
			bad=$((bad + 1))
			[ "$bad" -ge 5 ] && break
		fi
	done
	[ "$bad" = 0 ]
}

list_total() { curl "${CURL_TLS[@]}" -sf --max-time 5 "$SCHEME://127.0.0.1:$1/kv/list?limit=1" | py 'd["total"]'; }
same_list_total() {
	local a b
	a=$(list_total "$1") && b=$(list_total "$2") || { echo "no /kv/list answer"; return 1; }
	[ "$a" = "$b" ] || { echo "/kv/list total: port $1 has $a keys, port $2 has $b"; return 1; }
	echo "$a"
}

# wait_converged NODE VIA SINCE_MS: NODE healthy, in sync everywhere (seen
# from VIA and from itself), serves stale reads of every acknowledged key,
# same key count as VIA. Sets IN_SYNC_AFTER.
wait_converged() {
	local n=$1 via=$2 since=$3
	wait_for "$REJOIN_TIMEOUT" "$n healthy (docker health check)" is_healthy "$n"
	if ! (wait_for "$REJOIN_TIMEOUT" "$n in sync for every partition, seen from $via" in_sync "$via" "$n"); then
		local why
		why=$(in_sync "$via" "$n" || true)
		if [[ $why == "$n is dead"* ]] && is_healthy "$n" >/dev/null; then
			log "hint: $n runs and follows the Raft leader, but gossip still has it dead: it never" \
				"re-joined its peers, or it advertises a gossip address they cannot reach"
		fi
		exit 1
	fi
	IN_SYNC_AFTER=$(secs "$since")
	wait_for 30 "/cluster on $n showing 3 active nodes" cluster_has_active "$n" 3
	wait_for 30 "stale reads from $n's KV port returning every acknowledged key" read_all "$(kport "$n")" stale
	wait_for 30 "/kv/list on $n with as many keys as on $via" same_list_total "$(kport "$n")" "$(kport "$via")"
	# Gossip must keep it alive: a node that advertises an address peers
	# cannot reach is marked suspect and dead again within seconds.
	local end=$(($(date +%s) + STABLE_SECS)) why
	while [ "$(date +%s)" -lt "$end" ]; do
		why=$(in_sync "$via" "$n") || die "$n converged but did not stay in sync for ${STABLE_SECS}s: $why"
		sleep 1
	done
	log "$n converged: ${#ACKED[@]} acknowledged keys read back (stale) from its KV port, $(list_total "$(kport "$n")") keys in its /kv/list"
}

others() { local n; for n in "${NODES[@]}"; do [ "$n" = "$1" ] || echo "$n"; done; }

# ---------------------------------------------------------------- up

T_START=$(now_ms)
log "== up: deploy/up.sh (project $COMPOSE_PROJECT_NAME, ${COMPOSE[*]})"
"$DEPLOY_DIR/up.sh" "$@" >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "deploy/up.sh failed"; }
T_HEALTHY=$(now_ms)
grep -E '\] (healthy|build|starting)' "$WORK/up.log" >&2 || true
UP_LINE=$(grep -o 'healthy: build.*' "$WORK/up.log" || true)
log "up.sh start -> all 3 healthy: $(secs "$T_START" "$T_HEALTHY")s (${UP_LINE#healthy: })"

# ---------------------------------------------------------------- smoke

log "== smoke: set via node-1, get via node-2 and node-3, delete, /cluster"
wait_for 30 "/cluster on node-1 showing 3 active nodes" cluster_has_active node-1 3
kv_set "$(kport node-1)" smoke:1 hello || die "set smoke:1 through node-1 failed"
for n in node-2 node-3; do
	got=$(kv_get "$(kport "$n")" smoke:1) || die "get smoke:1 through $n failed"
	[ "$got" = hello ] || die "get smoke:1 through $n returned '$got', want 'hello'"
done
code=$(curl "${CURL_TLS[@]}" -s -o /dev/null -w '%{http_code}' --max-time 8 -X POST "$SCHEME://127.0.0.1:$(kport node-3)/kv/delete?key=smoke:1")
[ "$code" = 200 ] || die "delete smoke:1 through node-3: HTTP $code"
code=$(curl "${CURL_TLS[@]}" -s -o /dev/null -w '%{http_code}' --max-time 8 "$SCHEME://127.0.0.1:$(kport node-1)/kv/get?key=smoke:1")
[ "$code" = 404 ] || die "get smoke:1 through node-1 after delete: HTTP $code, want 404"
for n in "${NODES[@]}"; do cluster_has_active "$n" 3 >/dev/null || die "$(cluster_has_active "$n" 3)"; done
log "smoke OK: set/get/delete across nodes; /cluster shows 3 active nodes on every node"

log "== trust: no node-to-node route on the client ports; management changes need the admin token"
for path in /internal/v1/replicate /internal/v1/digest /internal/v1/rpc; do
	code=$(curl "${CURL_TLS[@]}" -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST "$SCHEME://127.0.0.1:$(kport node-2)$path" -d '{}')
	[ "$code" = 404 ] || die "POST $path on node-2's KV port: HTTP $code, want 404"
done
code=$(curl "${CURL_TLS[@]}" -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST "$SCHEME://127.0.0.1:$(mport node-2)/cluster/leave")
[ "$code" = 401 ] || die "POST /cluster/leave without a token: HTTP $code, want 401"
code=$(curl "${CURL_TLS[@]}" -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $(secret ADMIN_TOKEN)" "$SCHEME://127.0.0.1:$(mport node-3)/tokens")
[ "$code" = 200 ] || die "GET /tokens with the ADMIN_TOKEN of the secrets file: HTTP $code, want 200"
sleep 1
for n in "${NODES[@]}"; do cluster_has_active "$n" 3 >/dev/null || die "after the refused leave: $(cluster_has_active "$n" 3)"; done
log "trust OK: internal paths 404, leave without a token 401, the admin token works"

if [ "$CLUSTERKIT_TLS" = 1 ]; then
	log "== tls: the client ports speak only TLS with client certificates; the load tool works over TLS"
	code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$(kport node-1)/kv/get?key=smoke:1") || true
	[ "$code" != 200 ] && [ "$code" != 404 ] || die "plain HTTP to a TLS port answered $code"
	code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$CLUSTERKIT_TLS_DIR/ca.pem" "https://127.0.0.1:$(kport node-1)/kv/get?key=smoke:1") || true
	[ "$code" != 200 ] && [ "$code" != 404 ] || die "TLS without a client certificate answered $code"
	bench=$("$BUILD_DIR/clusterkit" bench -json -quiet -d 2s -c 4 -keys 100 \
		-addrs "127.0.0.1:$(kport node-1),127.0.0.1:$(kport node-2),127.0.0.1:$(kport node-3)" \
		-tls-ca "$CLUSTERKIT_TLS_DIR/ca.pem" -tls-cert "$CLUSTERKIT_TLS_DIR/client.pem" -tls-key "$CLUSTERKIT_TLS_DIR/client-key.pem") ||
		die "the load tool over TLS failed: $bench"
	errors=$(py 'd["errors"]' <<<"$bench")
	ops=$(py 'd["ops"]' <<<"$bench")
	[ "$errors" = 0 ] && [ "$ops" -gt 0 ] || die "the load tool over TLS: $ops ops, $errors errors"
	log "tls OK: plain HTTP and certificate-less TLS refused; $ops operations over TLS, 0 errors"
fi

if [ "${PHASES:-all}" = smoke ]; then
	log "PHASES=smoke: the fault phases are skipped"
	exit 0
fi

find_probe_keys
write_batch base 30 "${KV_PORTS[@]}"
for n in "${NODES[@]}"; do wait_for 60 "$n in sync before the faults" in_sync node-1 "$n"; done

# ---------------------------------------------------------------- kill

VICTIM=$(pick "$KILL_NODE")
mapfile -t SURV < <(others "$VICTIM")
SURV_PORTS=("$(kport "${SURV[0]}")" "$(kport "${SURV[1]}")")
OLD_IP=$(ip_of "$VICTIM")
log "== kill: docker kill $VICTIM (Raft leader: $(leader_of "${SURV[0]}"), IP $OLD_IP); writing through ${SURV[*]}"
T_KILL=$(now_ms)
docker kill "$(cid "$VICTIM")" >/dev/null
write_every_partition kill "$T_KILL" "${SURV_PORTS[@]}"
KILL_FIRST=$FIRST_OK KILL_ALL=$ALL_OK
log "writes after kill: first acknowledged after ${KILL_FIRST}s, all ${#PROBE[@]} partitions writable after ${KILL_ALL}s"
write_batch kill 20 "${SURV_PORTS[@]}"
wait_for 30 "linearizable reads of every acknowledged key through ${SURV[0]}" read_all "${SURV_PORTS[0]}"
wait_for 30 "linearizable reads of every acknowledged key through ${SURV[1]}" read_all "${SURV_PORTS[1]}"
log "reads and writes continue through ${SURV[*]} (${#ACKED[@]} keys)"

# Make the restarted container come back with a new IP, as it may in
# production: a placeholder takes the old one (and keeps it until the end,
# so that the disconnect phase below gets its node's own IP back).
placeholder "$PLACEHOLDER" >/dev/null
T_START_VICTIM=$(now_ms)
docker start "$(cid "$VICTIM")" >/dev/null
NEW_IP=$(ip_of "$VICTIM")
log "docker start $VICTIM: IP $OLD_IP -> $NEW_IP"
[ "$NEW_IP" != "$OLD_IP" ] || log "WARNING: $VICTIM got its old IP back; the new-IP path was not exercised"
wait_converged "$VICTIM" "${SURV[0]}" "$T_START_VICTIM"
KILL_REJOIN=$IN_SYNC_AFTER
log "$VICTIM rejoined under its NODE_ID with a new IP and was in sync ${KILL_REJOIN}s after docker start"

# ---------------------------------------------------------------- disconnect

for n in "${NODES[@]}"; do wait_for 60 "$n in sync before the disconnect" in_sync "${SURV[0]}" "$n"; done
CUT=$(pick "$DISCONNECT_NODE")
mapfile -t MAJ < <(others "$CUT")
MAJ_PORTS=("$(kport "${MAJ[0]}")" "$(kport "${MAJ[1]}")")
NET=$(net_of)
CUT_IP=$(ip_of "$CUT")
log "== disconnect: docker network disconnect $NET $CUT (Raft leader: $(leader_of "${MAJ[0]}"), IP $CUT_IP); writing through ${MAJ[*]}"
T_CUT=$(now_ms)
docker network disconnect "$NET" "$(cid "$CUT")"
write_every_partition disconnect "$T_CUT" "${MAJ_PORTS[@]}"
CUT_FIRST=$FIRST_OK CUT_ALL=$ALL_OK
log "writes after disconnect: first acknowledged after ${CUT_FIRST}s, all ${#PROBE[@]} partitions writable after ${CUT_ALL}s"
write_batch disconnect 20 "${MAJ_PORTS[@]}"
wait_for 30 "linearizable reads of every acknowledged key through ${MAJ[0]}" read_all "${MAJ_PORTS[0]}"
# Keep it cut off for DISCONNECT_SECS in all, writing all the while.
i=0
while [ $(($(now_ms) - T_CUT)) -lt $((DISCONNECT_SECS * 1000)) ]; do
	write_batch "disconnect-late-$i" 1 "${MAJ_PORTS[$((i % 2))]}"
	i=$((i + 1))
	sleep 0.5
done
if [ "$DISCONNECT_NEW_IP" = 1 ]; then
	log "DISCONNECT_NEW_IP=1: a second placeholder takes $CUT's IP ($(placeholder "$PLACEHOLDER-2"))"
fi
# The service name is an alias of the compose network; connect again with it
# so that peers can resolve it.
T_RECONNECT=$(now_ms)
docker network connect --alias "$CUT" "$NET" "$(cid "$CUT")"
CUT_IP2=$(ip_of "$CUT")
log "reconnected $CUT after $(secs "$T_CUT" "$T_RECONNECT")s cut off (IP $CUT_IP -> $CUT_IP2)"
if [ "$DISCONNECT_NEW_IP" != 1 ] && [ "$CUT_IP2" != "$CUT_IP" ]; then
	log "WARNING: $CUT came back with a new IP although DISCONNECT_NEW_IP=0 (this engine's IPAM does not hand out the lowest free address)"
fi
wait_converged "$CUT" "${MAJ[0]}" "$T_RECONNECT"
CUT_REJOIN=$IN_SYNC_AFTER
log "$CUT converged ${CUT_REJOIN}s after reconnecting"

# ---------------------------------------------------------------- report

cat >&2 <<REPORT

===== deploy/test.sh results ($(secs "$T_START")s in all) =====
up.sh start -> 3 nodes healthy:        $(secs "$T_START" "$T_HEALTHY")s  (${UP_LINE#healthy: })
kill $VICTIM ($KILL_NODE):
  first write acknowledged after:        ${KILL_FIRST}s
  writes resumed (every partition):      ${KILL_ALL}s
  docker start -> in sync (new IP $OLD_IP -> $NEW_IP): ${KILL_REJOIN}s
disconnect $CUT ($DISCONNECT_NODE), $(secs "$T_CUT" "$T_RECONNECT")s cut off:
  first write acknowledged after:        ${CUT_FIRST}s
  writes resumed (every partition):      ${CUT_ALL}s
  reconnect -> in sync (IP $CUT_IP -> $CUT_IP2): ${CUT_REJOIN}s
acknowledged keys, all read back from every restarted node: ${#ACKED[@]}
REPORT
