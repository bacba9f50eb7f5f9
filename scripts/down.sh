#!/usr/bin/env bash
# make down: remove every stack this project started (the registry's too), and its network. Volumes
# (the registry's images among them) and secrets are kept unless VOLUMES=1. The swarm itself is left as it is.
# KEEP_REGISTRY=1 leaves the registry's stack, volume and secrets in place, so that the next make up
# pushes nothing already there: for test tiers that bring the system up and down many times.
set -Eeuo pipefail
[[ -n ${TRACE:-} ]] && set -x
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly VOLUMES=${VOLUMES:-0}
readonly DOWN_TIMEOUT=${DOWN_TIMEOUT:-90}
readonly KEEP_REGISTRY=${KEEP_REGISTRY:-0}

remove_stacks() {
  local stack
  remove_jobs
  # The registry last: it was deployed first (scripts/up.sh), and holds what the others run.
  local -a stacks=("$(color_stack blue)" "$(color_stack green)" "$INFRA_STACK")
  if [[ $KEEP_REGISTRY != 1 ]]; then
    stacks+=("$REGISTRY_STACK")
    docker service rm "${REGISTRY_STACK}_chown" >/dev/null 2>&1 || true
  fi
  for stack in "${stacks[@]}"; do
    if stack_exists "$stack"; then
      log "removing stack $stack"
      docker stack rm "$stack" >/dev/null
    fi
  done
  for stack in "${stacks[@]}"; do
    wait_for "$DOWN_TIMEOUT" "stack $stack to be gone" stack_gone "$stack"
  done
  if docker network inspect "$NETWORK" >/dev/null 2>&1; then
    wait_for 30 "network $NETWORK to be removed" docker network rm "$NETWORK"
  fi
  if [[ $VOLUMES == 1 ]]; then
    log "removing secrets"
    docker secret ls --format '{{.Name}}' --filter name=wsapp_ |
      { if [[ $KEEP_REGISTRY == 1 ]]; then grep -v '^wsapp_registry_' || true; else cat; fi; } |
      xargs -r docker secret rm >/dev/null
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
    # Only this node's: the registry's images are on its node (wsapp.registry=true).
    local stack stacks=("$INFRA_STACK")
    [[ $KEEP_REGISTRY == 1 ]] || stacks+=("$REGISTRY_STACK")
    for stack in "${stacks[@]}"; do
      docker volume ls -q --filter "label=com.docker.stack.namespace=$stack" | xargs -r docker volume rm >/dev/null
    done
  fi
  log "down"
}

main "$@"
