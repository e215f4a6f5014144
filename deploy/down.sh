#!/usr/bin/env bash
# Stop and remove the cluster's containers, network and volumes (the data).
# Usage: deploy/down.sh [--rmi]   (--rmi also removes the image)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"
detect_compose || die "neither 'docker compose' nor 'docker-compose' is installed"

# The data goes too, so there is nothing to hand over: no graceful drain.
args=(down --volumes --remove-orphans --timeout 10)
[ "${1:-}" = --rmi ] && args+=(--rmi all)
compose "${args[@]}"
log "removed $COMPOSE_PROJECT_NAME: containers, network and volumes${1:+ and image $CLUSTERKIT_IMAGE}"
