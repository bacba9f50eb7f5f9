#!/usr/bin/env bash
# The shell library every script sources (scripts/*.sh, promote.sh, .ci/run, docker/base/build.sh):
# logging (UTC), bounded waits, names, replica and task counts, deploying a color, building the
# working tree. nginx/switch-color.sh is the exception: it runs inside the Nginx container.
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
error() { echo "ERROR: $*" >&2; }
die() { error "$@"; exit 1; }

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

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
      error "timed out after ${timeout}s waiting for $what"
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

# service_replicas SERVICE: the number of replicas the service's spec asks for.
service_replicas() {
  docker service inspect --format '{{.Spec.Mode.Replicated.Replicas}}' "$1"
}

# running_tasks SERVICE: how many of its tasks are Running, which for a service with a
# healthcheck means healthy.
running_tasks() {
  local count
  count=$(docker service ps "$1" --filter desired-state=running --format '{{.CurrentState}}' |
    grep -c '^Running') || true
  echo "${count:-0}"
}

# service_running SERVICE [WANT]: at least WANT (default: the spec's replicas) tasks are Running.
service_running() {
  local service=$1 want=${2:-} running
  if [[ -z $want ]]; then
    want=$(service_replicas "$service") || return 1
  fi
  running=$(running_tasks "$service")
  ((running >= want))
}

# deploy_color COLOR IMAGE [REPLICAS]: deploy (or update) COLOR's stack with IMAGE; without
# REPLICAS, stack/app.yml's default (or $REPLICAS from the environment) applies.
deploy_color() {
  local color=$1 image=$2 replicas=${3:-}
  local -a vars=("APP_IMAGE=$image" "APP_VERSION=${image##*:}")
  [[ -n $replicas ]] && vars+=("REPLICAS=$replicas")
  env "${vars[@]}" docker stack deploy --detach=true --resolve-image never \
    -c "$ROOT_DIR/stack/app.yml" -c "$ROOT_DIR/stack/$color.yml" "$(color_stack "$color")" >/dev/null
}

# working_tree_tag: a new tag for an image of the working tree, wsapp:<UTC time>-<commit>.
working_tree_tag() {
  echo "wsapp:$(date -u +%Y%m%d%H%M%S)-$(git -C "$ROOT_DIR" rev-parse --short HEAD 2>/dev/null || echo dev)"
}

# Resolve images once (official where they can be pulled, Debian-built stand-ins otherwise).
load_images() {
  if [[ ! -s $IMAGES_ENV ]]; then
    "$ROOT_DIR/scripts/images.sh" resolve >"$IMAGES_ENV.tmp" || return
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

# build_app_image TAG: build the working tree as TAG on the best base image available. The
# image's version (APP_VERSION) is TAG's part after the colon.
build_app_image() {
  local tag=$1
  load_images || return
  log "building $tag (base $PYTHON_BASE_IMAGE)"
  docker build -q --build-arg "BASE_IMAGE=$PYTHON_BASE_IMAGE" --build-arg "APP_VERSION=${tag##*:}" \
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
