#!/usr/bin/env bash
# make up: bring the whole system up on this machine's swarm. Safe to run again: what is
# already there is left as it is.
set -Eeuo pipefail
[[ -n ${TRACE:-} ]] && set -x
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly HTTP_PORT=${HTTP_PORT:-80}
readonly UP_TIMEOUT=${UP_TIMEOUT:-180}
readonly SWARM_ADVERTISE_ADDR=${SWARM_ADVERTISE_ADDR:-127.0.0.1}
export HTTP_PORT

usage() {
  cat <<USAGE
Usage: scripts/up.sh   (or: make up)
Initialises a single-node swarm if there is none, resolves images (official, or Debian-built
stand-ins where pulls fail), creates the network and secrets, deploys the infra stack and the
first color, and waits until http://localhost:\$HTTP_PORT/ answers.

Settings (environment):
  HTTP_PORT=$HTTP_PORT              public port of Nginx (host mode)
  PROMETHEUS_PORT=\${PROMETHEUS_PORT:-9090}, GRAFANA_PORT=\${GRAFANA_PORT:-3000}
  REPLICAS=\${REPLICAS:-2}           replicas of the first color
  UP_TIMEOUT=$UP_TIMEOUT            seconds to wait for each part to come up
  SWARM_ADVERTISE_ADDR=$SWARM_ADVERTISE_ADDR  used only when a swarm is initialised
  APP_IMAGE                       run this image instead of building the working tree
USAGE
}

ensure_swarm() {
  docker info >/dev/null 2>&1 || die "no Docker engine answers; start dockerd first"
  local state
  state=$(docker info --format '{{.Swarm.LocalNodeState}}')
  if [[ $state != active ]]; then
    log "initialising a single-node swarm (advertise $SWARM_ADVERTISE_ADDR)"
    docker swarm init --advertise-addr "$SWARM_ADVERTISE_ADDR" >/dev/null
  fi
  [[ $(docker info --format '{{.Swarm.ControlAvailable}}') == true ]] ||
    die "this node is not a swarm manager; run make up on a manager"
}

ensure_network() {
  docker network inspect "$NETWORK" >/dev/null 2>&1 ||
    docker network create --driver overlay --attachable "$NETWORK" >/dev/null
}

ensure_secret() {
  local name=$1
  if ! docker secret inspect "$name" >/dev/null 2>&1; then
    log "creating secret $name (random)"
    head -c 48 /dev/urandom | base64 | tr -d '\n/+=' | docker secret create "$name" - >/dev/null
  fi
}

deploy_infra() {
  CONFIG_VERSION=$(config_version)
  export CONFIG_VERSION
  docker stack deploy --detach=true --resolve-image never -c "$ROOT_DIR/stack/infra.yml" "$INFRA_STACK" >/dev/null
  local service
  for service in wsapp_redis "$NGINX_SERVICE"; do
    wait_for "$UP_TIMEOUT" "$service to run" service_running "$service"
  done
  [[ $GRAFANA_REPLICAS == 0 ]] &&
    warn "no Grafana image could be pulled and Debian has no package: Grafana runs with 0 replicas"
  return 0
}

deploy_first_color() {
  local color
  for color in "${COLORS[@]}"; do
    if stack_exists "$(color_stack "$color")"; then
      log "color $color already deployed; leaving it"
      return
    fi
  done
  color=$(active_color)
  local image=${APP_IMAGE:-}
  if [[ -z $image ]]; then
    image=$(working_tree_tag)
    build_app_image "$image"
  fi
  log "deploying $color with $image"
  deploy_color "$color" "$image"
  wait_for "$UP_TIMEOUT" "$color to be healthy" service_running "$(color_service "$color")"
}

site_answers() {
  curl -fsS -o /dev/null --max-time 3 "http://localhost:$HTTP_PORT/" &&
    curl -fsS --max-time 3 "http://localhost:$HTTP_PORT/readyz" >/dev/null
}

main() {
  [[ ${1:-} == -h || ${1:-} == --help ]] && { usage; exit 0; }
  step "swarm"
  ensure_swarm
  step "images"
  load_images
  export NGINX_IMAGE REDIS_IMAGE PROMETHEUS_IMAGE GRAFANA_IMAGE GRAFANA_REPLICAS
  step "network and secrets"
  ensure_network
  ensure_secret wsapp_django_secret_key
  ensure_secret wsapp_grafana_admin_password
  step "infra stack"
  deploy_infra
  step "first color"
  deploy_first_color
  step "site"
  wait_for "$UP_TIMEOUT" "http://localhost:$HTTP_PORT/ to answer" site_answers
  step "up: http://localhost:$HTTP_PORT/ serves $(active_color);" \
    "Prometheus http://localhost:${PROMETHEUS_PORT:-9090}/"
}

main "$@"
