#!/usr/bin/env bash
# Shared by scripts/*.sh and promote.sh: logging, bounded waits, names and image resolution.
# shellcheck disable=SC2034  # the names below are used by the scripts that source this file

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT_DIR
readonly NETWORK=wsapp
readonly INFRA_STACK=wsapp
readonly NGINX_SERVICE=wsapp_nginx
readonly COLORS=(blue green)
readonly IMAGES_ENV="$ROOT_DIR/.images.env"

STEP_STARTED=$SECONDS

log() { echo "==> $(date -u +%H:%M:%S) $*" >&2; }
warn() { echo "WARNING: $*" >&2; }
die() { echo "ERROR: $*" >&2; exit 1; }

# step NAME: log the start of a step and the duration of the previous one.
step() {
  log "$* (previous step took $((SECONDS - STEP_STARTED))s)"
  STEP_STARTED=$SECONDS
}

# wait_for SECONDS DESCRIPTION COMMAND...: run COMMAND every second until it succeeds.
wait_for() {
  local timeout=$1 what=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "ERROR: timed out after ${timeout}s waiting for $what" >&2
      return 1
    fi
    sleep 1
  done
}

color_stack() { echo "wsapp-$1"; }
color_service() { echo "wsapp-$1_app"; }
other_color() { if [[ $1 == blue ]]; then echo green; else echo blue; fi; }

stack_exists() {
  docker stack ls --format '{{.Name}}' | grep -qx "$1"
}

# stack_gone STACK: no service and no container of the stack is left.
stack_gone() {
  [[ -z $(docker service ls -q --filter "label=com.docker.stack.namespace=$1") ]] &&
    [[ -z $(docker ps -aq --filter "label=com.docker.stack.namespace=$1") ]]
}

# service_running SERVICE [WANT]: at least WANT (default: the spec's replicas) tasks are Running,
# which for a service with a healthcheck means healthy.
service_running() {
  local service=$1 want=${2:-} running
  if [[ -z $want ]]; then
    want=$(docker service inspect --format '{{.Spec.Mode.Replicated.Replicas}}' "$service") || return 1
  fi
  running=$(docker service ps "$service" --filter desired-state=running --format '{{.CurrentState}}' |
    grep -c '^Running') || true
  [[ $running -ge $want ]]
}

# A version for an image built from the working tree: UTC time and commit.
new_version() {
  echo "$(date -u +%Y%m%d%H%M%S)-$(git -C "$ROOT_DIR" rev-parse --short HEAD 2>/dev/null || echo dev)"
}

# Resolve images once (official where they can be pulled, Debian-built stand-ins otherwise).
load_images() {
  if [[ ! -s $IMAGES_ENV ]]; then
    "$ROOT_DIR/scripts/images.sh" resolve >"$IMAGES_ENV.tmp"
    mv "$IMAGES_ENV.tmp" "$IMAGES_ENV"
  fi
  # shellcheck source=/dev/null
  . "$IMAGES_ENV"
}

# A hash of the configuration files: Swarm configs are immutable, so a change gets a new name.
config_version() {
  cat "$ROOT_DIR"/nginx/* "$ROOT_DIR"/observability/prometheus/* \
    "$ROOT_DIR"/observability/grafana/provisioning/*/* "$ROOT_DIR"/observability/grafana/dashboards/* |
    sha256sum | cut -c1-12
}

# The running nginx container on this node (promote.sh runs on the manager nginx is pinned to).
nginx_container() {
  docker ps -q --filter "label=com.docker.swarm.service.name=$NGINX_SERVICE" --filter status=running | head -n 1
}

active_color() {
  local container
  container=$(nginx_container)
  [[ -n $container ]] || return 1
  docker exec "$container" switch-color
}

# Build the app image from the working tree, on the best base image available.
build_app_image() {
  local tag=$1 version=$2
  load_images
  log "building $tag (base $PYTHON_BASE_IMAGE)"
  docker build -q --build-arg "BASE_IMAGE=$PYTHON_BASE_IMAGE" --build-arg "APP_VERSION=$version" \
    -t "$tag" "$ROOT_DIR" >/dev/null
}

# run_on_network SECONDS DOCKER_RUN_ARGS...: a throwaway container on the overlay network, with
# REDIS_URL set, stopped after SECONDS at most (docker run passes the signal on to the container).
run_on_network() {
  local seconds=$1
  shift
  timeout --kill-after=10 "$seconds" docker run --rm --network "$NETWORK" \
    -e REDIS_URL="redis://wsapp_redis:6379/0" "$@"
}

# Run the release tool (scripts/release_tools.py) with the runtime of IMAGE (which has Python and
# websockets). Every check inside is bounded; the timeout is a backstop.
release_tool() {
  local image=$1
  shift
  run_on_network "${RELEASE_TOOL_TIMEOUT:-900}" -v "$ROOT_DIR/scripts/release_tools.py:/release_tools.py:ro" \
    --entrypoint python "$image" /release_tools.py "$@"
}
