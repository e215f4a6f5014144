# Shared by up.sh, down.sh and test.sh (sourced, not run).
#
# Settings (environment):
#   COMPOSE_PROJECT_NAME     compose project (default clusterkit; test.sh uses clusterkit-test)
#   CLUSTERKIT_IMAGE         image tag (default clusterkit:local)
#   CLUSTERKIT_PUBLISH_ADDR  host address the ports are published on (default 127.0.0.1)
#   CLUSTERKIT_HTTP_PORT_1..3, CLUSTERKIT_KV_PORT_1..3
#                            host ports (default 8080..8082 and 9080..9082)
#   CLUSTERKIT_SECRETS       the cluster's secrets file (default
#                            deploy/secrets/$COMPOSE_PROJECT_NAME.env): made
#                            on first use, mode 0600, reused afterwards
#   CLUSTERKIT_TLS=1         TLS on the client listeners, with certificates
#                            made on first use in CLUSTERKIT_TLS_DIR (default
#                            deploy/secrets/tls-$COMPOSE_PROJECT_NAME)

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$DEPLOY_DIR")
BUILD_DIR=$DEPLOY_DIR/build
COMPOSE_FILE=$DEPLOY_DIR/docker-compose.yml
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-clusterkit}
export CLUSTERKIT_IMAGE=${CLUSTERKIT_IMAGE:-clusterkit:local}
NODES=(node-1 node-2 node-3)
export CLUSTERKIT_SECRETS=${CLUSTERKIT_SECRETS:-$DEPLOY_DIR/secrets/$COMPOSE_PROJECT_NAME.env}
export CLUSTERKIT_TLS=${CLUSTERKIT_TLS:-0}
export CLUSTERKIT_TLS_DIR=${CLUSTERKIT_TLS_DIR:-$DEPLOY_DIR/secrets/tls-$COMPOSE_PROJECT_NAME}
COMPOSE_FILES=(-f "$COMPOSE_FILE")
[ "$CLUSTERKIT_TLS" = 1 ] && COMPOSE_FILES+=(-f "$DEPLOY_DIR/docker-compose.tls.yml")
# SCHEME and CURL_TLS are what a client on the host needs to reach the
# published ports.
SCHEME=http CURL_TLS=()
if [ "$CLUSTERKIT_TLS" = 1 ]; then
	SCHEME=https
	CURL_TLS=(--cacert "$CLUSTERKIT_TLS_DIR/ca.pem" --cert "$CLUSTERKIT_TLS_DIR/client.pem" --key "$CLUSTERKIT_TLS_DIR/client-key.pem")
fi
# Host ports published for each node (see docker-compose.yml).
HTTP_PORTS=("${CLUSTERKIT_HTTP_PORT_1:-8080}" "${CLUSTERKIT_HTTP_PORT_2:-8081}" "${CLUSTERKIT_HTTP_PORT_3:-8082}")
KV_PORTS=("${CLUSTERKIT_KV_PORT_1:-9080}" "${CLUSTERKIT_KV_PORT_2:-9081}" "${CLUSTERKIT_KV_PORT_3:-9082}")

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# now_ms: wall clock in milliseconds.
now_ms() { date +%s%3N; }
# secs START_MS [END_MS]: elapsed seconds with one decimal.
secs() { local end=${2:-$(now_ms)}; printf '%d.%d' $(((end - $1) / 1000)) $((((end - $1) % 1000) / 100)); }

# detect_compose sets COMPOSE to `docker compose` (v2 plugin) or
# `docker-compose` (v1), whichever is installed, and COMPOSE_V2=1/0.
detect_compose() {
	if docker compose version >/dev/null 2>&1; then
		COMPOSE=(docker compose) COMPOSE_V2=1
	elif command -v docker-compose >/dev/null 2>&1; then
		COMPOSE=(docker-compose) COMPOSE_V2=0
	else
		return 1
	fi
}

# ensure_secrets: the secrets file every node reads (env_file), made on
# first use with a new CLUSTER_KEY and ADMIN_TOKEN, and kept for the next
# runs: the nodes' volumes hold data only members with that key may reach,
# and the token is the cluster's first admin token.
ensure_secrets() {
	local dir
	dir=$(dirname "$CLUSTERKIT_SECRETS")
	mkdir -p "$dir"
	chmod 700 "$dir"
	(
		umask 077
		if [ ! -s "$CLUSTERKIT_SECRETS" ]; then
			printf '# Secrets of the %s cluster, made by deploy/lib.sh on %s. Keep them.\n' "$COMPOSE_PROJECT_NAME" "$(date -u +%FT%TZ)" >"$CLUSTERKIT_SECRETS"
		fi
		if ! grep -q '^CLUSTER_KEY=' "$CLUSTERKIT_SECRETS"; then
			printf '# CLUSTER_KEY: every node holds it; gossip and node-to-node traffic need it.\nCLUSTER_KEY=%s\n' \
				"$(head -c 32 /dev/urandom | base64)" >>"$CLUSTERKIT_SECRETS"
			log "made a CLUSTER_KEY in ${CLUSTERKIT_SECRETS#"$REPO_DIR"/} (mode 0600)"
		fi
		if ! grep -q '^ADMIN_TOKEN=' "$CLUSTERKIT_SECRETS"; then
			printf '# ADMIN_TOKEN: the first admin token (Authorization: Bearer ...), for leave, tokens, keyring, KV auth.\nADMIN_TOKEN=ck_%s\n' \
				"$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')" >>"$CLUSTERKIT_SECRETS"
			log "made an ADMIN_TOKEN in ${CLUSTERKIT_SECRETS#"$REPO_DIR"/} (mode 0600)"
		fi
	) || die "cannot write the secrets file $CLUSTERKIT_SECRETS"
	chmod 600 "$CLUSTERKIT_SECRETS"
}

# ensure_tls: with CLUSTERKIT_TLS=1, the CA, one certificate per node and a
# client certificate, made with the binary's `clusterkit tls` on first use.
# The directory sits inside deploy/secrets (0700), so other users of the
# host cannot reach it; inside it the files are readable, because the
# containers run as UID 65532 and read them through a bind mount.
ensure_tls() {
	[ "$CLUSTERKIT_TLS" = 1 ] || return 0
	[ -s "$CLUSTERKIT_TLS_DIR/client-key.pem" ] && return 0
	local bin=$BUILD_DIR/clusterkit n
	[ -x "$bin" ] || die "no $bin to make certificates with: run deploy/up.sh without --no-build"
	mkdir -p "$(dirname "$CLUSTERKIT_TLS_DIR")"
	chmod 700 "$(dirname "$CLUSTERKIT_TLS_DIR")"
	rm -rf "$CLUSTERKIT_TLS_DIR"
	"$bin" tls ca -dir "$CLUSTERKIT_TLS_DIR" >/dev/null || die "clusterkit tls ca failed"
	for n in "${NODES[@]}"; do
		"$bin" tls cert -dir "$CLUSTERKIT_TLS_DIR" -name "$n" >/dev/null || die "clusterkit tls cert $n failed"
	done
	"$bin" tls cert -dir "$CLUSTERKIT_TLS_DIR" -name client -client >/dev/null || die "clusterkit tls cert client failed"
	# The CA's key stays out of what the containers see.
	mv "$CLUSTERKIT_TLS_DIR/ca-key.pem" "$CLUSTERKIT_TLS_DIR.ca-key.pem"
	chmod 600 "$CLUSTERKIT_TLS_DIR.ca-key.pem"
	chmod 755 "$CLUSTERKIT_TLS_DIR"
	chmod 644 "$CLUSTERKIT_TLS_DIR"/*.pem
	log "made a CA and certificates in ${CLUSTERKIT_TLS_DIR#"$REPO_DIR"/}"
}

# secret NAME: a value from the secrets file.
secret() { sed -n "s/^$1=//p" "$CLUSTERKIT_SECRETS" | tail -n1; }

# compose ARGS...: run compose on our file and project.
compose() {
	ensure_secrets
	"${COMPOSE[@]}" "${COMPOSE_FILES[@]}" -p "$COMPOSE_PROJECT_NAME" "$@"
}

# cid NODE: the container ID of a service (empty if it has none). Found by
# compose's labels, which both compose versions set (and faster than
# `compose ps -q`).
cid() {
	docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
		--filter "label=com.docker.compose.service=$1" | head -n1
}

# health NODE: starting, healthy, unhealthy, or the container state if it
# has no health status (e.g. exited), or "missing".
health() {
	local id
	id=$(cid "$1")
	[ -n "$id" ] || { echo missing; return; }
	docker inspect -f '{{if .State.Health}}{{if .State.Running}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing
}

# wait_healthy TIMEOUT_S NODE...: wait until every node's container is
# healthy; fails naming the nodes that are not, with their last logs.
wait_healthy() {
	local timeout=$1; shift
	local deadline=$(($(date +%s) + timeout)) n st bad
	while :; do
		bad=""
		for n in "$@"; do
			st=$(health "$n")
			[ "$st" = healthy ] || bad="$bad $n($st)"
		done
		[ -z "$bad" ] && return 0
		if [ "$(date +%s)" -ge "$deadline" ]; then
			log "not healthy after ${timeout}s:$bad"
			for n in "$@"; do
				log "--- last log lines of $n"
				compose logs --no-color --tail=20 "$n" >&2 || true
			done
			return 1
		fi
		sleep 1
	done
}

# build_image: static binary with the local Go toolchain, then a scratch
# image around it (no base image, nothing pulled).
build_image() {
	command -v go >/dev/null 2>&1 || die "go not found: the image is built from a binary built with the local Go toolchain"
	mkdir -p "$BUILD_DIR/data"
	log "building the static binary -> ${BUILD_DIR#"$REPO_DIR"/}/clusterkit"
	(cd "$REPO_DIR" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$BUILD_DIR/clusterkit" .) ||
		die "go build failed"
	log "building image $CLUSTERKIT_IMAGE"
	local old new
	old=$(docker image inspect -f '{{.Id}}' "$CLUSTERKIT_IMAGE" 2>/dev/null || true)
	# The legacy builder needs no buildx and pulls nothing for FROM scratch;
	# BuildKit (when present) works as well.
	docker build -q -f "$DEPLOY_DIR/Dockerfile" -t "$CLUSTERKIT_IMAGE" "$BUILD_DIR" >/dev/null ||
		die "docker build failed"
	new=$(docker image inspect -f '{{.Id}}' "$CLUSTERKIT_IMAGE")
	# Drop the image this build replaced, unless a container still uses it.
	if [ -n "$old" ] && [ "$old" != "$new" ]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
}

# host_addr: the host name to curl the published ports on.
host_addr() {
	case ${CLUSTERKIT_PUBLISH_ADDR:-127.0.0.1} in
	127.0.0.1 | 0.0.0.0 | "") echo localhost ;;
	*) echo "$CLUSTERKIT_PUBLISH_ADDR" ;;
	esac
}

# check_ports_free: fail early, naming the port, if a published port is taken.
check_ports_free() {
	local p
	for p in "${HTTP_PORTS[@]}" "${KV_PORTS[@]}"; do
		if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			die "host port $p is already in use (another cluster running? try deploy/down.sh, or set CLUSTERKIT_HTTP_PORT_1..3 / CLUSTERKIT_KV_PORT_1..3)"
		fi
	done
}
