#!/usr/bin/env bash
# make down: remove every stack this project started, and its network. Volumes and secrets are
# kept unless VOLUMES=1. The swarm itself is left as it is.
set -Eeuo pipefail
[[ -n ${TRACE:-} ]] && set -x
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly VOLUMES=${VOLUMES:-0}
readonly DOWN_TIMEOUT=${DOWN_TIMEOUT:-90}

remove_stacks() {
  local stack
  remove_jobs
  for stack in "$(color_stack blue)" "$(color_stack green)" "$INFRA_STACK"; do
    if stack_exists "$stack"; then
      log "removing stack $stack"
      docker stack rm "$stack" >/dev/null
    fi
  done
  for stack in "$(color_stack blue)" "$(color_stack green)" "$INFRA_STACK"; do
    wait_for "$DOWN_TIMEOUT" "stack $stack to be gone" stack_gone "$stack"
  done
  if docker network inspect "$NETWORK" >/dev/null 2>&1; then
    wait_for 30 "network $NETWORK to be removed" docker network rm "$NETWORK"
  fi
  if [[ $VOLUMES == 1 ]]; then
    log "removing secrets"
    docker secret ls -q --filter name=wsapp_ | xargs -r docker secret rm >/dev/null
  fi
}

main() {
  docker info >/dev/null 2>&1 || die "no Docker engine answers"
  take_lock
  # The loopback proxy to Prometheus and Grafana (scripts/up.sh): a plain container on the network.
  docker rm -f wsapp-ops-proxy >/dev/null 2>&1 || true
  if [[ $(docker info --format '{{.Swarm.LocalNodeState}}') == active ]]; then
    remove_stacks
  else
    log "no swarm: no stack to remove"
  fi
  # Volumes belong to the engine, not the swarm: they outlive `docker swarm leave`.
  if [[ $VOLUMES == 1 ]]; then
    log "removing volumes"
    docker volume ls -q --filter "label=com.docker.stack.namespace=$INFRA_STACK" | xargs -r docker volume rm >/dev/null
  fi
  log "down"
}

main "$@"
