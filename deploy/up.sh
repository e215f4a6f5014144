#!/usr/bin/env bash
# Build the binary and the image, start the three-node cluster and wait until
# every node is healthy. Usage: deploy/up.sh [--no-build]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

UP_TIMEOUT=${UP_TIMEOUT:-120} # seconds from `up` to all nodes healthy

docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"
detect_compose || die "neither 'docker compose' nor 'docker-compose' is installed"

start=$(now_ms)
# Starting again on a running cluster is fine (compose leaves it as it is).
[ -n "$(cid node-1)" ] || check_ports_free
if [ "${1:-}" != --no-build ]; then
	build_image
fi
ensure_tls
built=$(now_ms)

log "starting $COMPOSE_PROJECT_NAME (${COMPOSE[*]})"
if [ "$COMPOSE_V2" = 1 ]; then
	# --wait returns once every container is healthy, and fails if one
	# exits or turns unhealthy (after the health check's 60 s start period).
	compose up -d --wait || { wait_healthy 1 "${NODES[@]}" || true; die "compose up --wait failed"; }
else
	compose up -d || die "docker-compose up failed" # v1 has no --wait: we wait below
fi
# Also the bound for v1, and a check for v2.
wait_healthy "$UP_TIMEOUT" "${NODES[@]}" || die "the cluster did not become healthy within ${UP_TIMEOUT}s"
healthy=$(now_ms)

log "healthy: build $(secs "$start" "$built")s, up to healthy $(secs "$built" "$healthy")s, total $(secs "$start" "$healthy")s"
h=$(host_addr)
cat <<MSG

ClusterKit is running (3 nodes).
  management APIs: $SCHEME://$h:${HTTP_PORTS[0]}  $SCHEME://$h:${HTTP_PORTS[1]}  $SCHEME://$h:${HTTP_PORTS[2]}
  KV APIs:         $SCHEME://$h:${KV_PORTS[0]}  $SCHEME://$h:${KV_PORTS[1]}  $SCHEME://$h:${KV_PORTS[2]}

  curl ${CURL_TLS[*]} -X POST $SCHEME://$h:${KV_PORTS[0]}/kv/set -H 'Content-Type: application/json' -d '{"key": "user:123", "value": "John Doe"}'
  curl ${CURL_TLS[*]} "$SCHEME://$h:${KV_PORTS[1]}/kv/get?key=user:123"
  curl ${CURL_TLS[*]} $SCHEME://$h:${HTTP_PORTS[0]}/cluster

Secrets (CLUSTER_KEY, ADMIN_TOKEN) are in ${CLUSTERKIT_SECRETS#"$REPO_DIR"/} (mode 0600).
Management changes (leave, tokens, keyring, KV auth) need the admin token:
  export CLUSTERKIT_TOKEN=\$(sed -n 's/^ADMIN_TOKEN=//p' ${CLUSTERKIT_SECRETS#"$REPO_DIR"/})
  curl ${CURL_TLS[*]} -H "Authorization: Bearer \$CLUSTERKIT_TOKEN" $SCHEME://$h:${HTTP_PORTS[0]}/tokens

Logs:  ${COMPOSE[*]} -p $COMPOSE_PROJECT_NAME -f deploy/docker-compose.yml logs -f node-1
Stop and delete the data: deploy/down.sh
MSG
