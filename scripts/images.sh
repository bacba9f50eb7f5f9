#!/usr/bin/env bash
# images.sh resolve|clean: the container images the stacks use. For each image: use it if it is
# present locally, else try a bounded `docker pull`, else build a local Debian-based stand-in
# (wsapp-local/*). Grafana has no stand-in: when it is unavailable, GRAFANA_REPLICAS=0. The edge
# exporter (a Python script, a Swarm config) runs on the Python base image unless
# EDGE_EXPORTER_IMAGE names another image with python3.
set -Eeuo pipefail
[[ -n ${TRACE:-} ]] && set -x
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly LOCAL_PREFIX=wsapp-local
readonly LOCAL_BASE=$LOCAL_PREFIX/debian-python:bookworm
readonly PYTHON_BASE_IMAGE=${PYTHON_BASE_IMAGE:-python:3.11-slim-bookworm}
readonly NGINX_IMAGE=${NGINX_IMAGE:-nginx:1.27}
readonly REDIS_IMAGE=${REDIS_IMAGE:-redis:7.2}
readonly PROMETHEUS_IMAGE=${PROMETHEUS_IMAGE:-prom/prometheus:v2.53.0}
readonly GRAFANA_IMAGE=${GRAFANA_IMAGE:-grafana/grafana:11.2.0}
readonly ALERTMANAGER_IMAGE=${ALERTMANAGER_IMAGE:-prom/alertmanager:v0.27.0}
readonly REDIS_EXPORTER_IMAGE=${REDIS_EXPORTER_IMAGE:-oliver006/redis_exporter:v1.45.0-alpine}
readonly POSTGRES_IMAGE=${POSTGRES_IMAGE:-postgres:15-bookworm}
readonly POSTGRES_EXPORTER_IMAGE=${POSTGRES_EXPORTER_IMAGE:-prometheuscommunity/postgres-exporter:v0.15.0}
readonly REGISTRY_IMAGE=${REGISTRY_IMAGE:-registry:2}
readonly EDGE_EXPORTER_IMAGE=${EDGE_EXPORTER_IMAGE:-}
readonly PULL_TIMEOUT=${PULL_TIMEOUT:-20}
readonly LOCAL_IMAGES=${LOCAL_IMAGES:-0}

usage() {
  cat <<USAGE
Usage: scripts/images.sh COMMAND

Commands:
  resolve   Make every image available; print 'export NAME=value' lines (sourceable) on
            stdout, logs on stderr. e.g. scripts/images.sh resolve >.images.env && . ./.images.env
  clean     Remove the locally built $LOCAL_PREFIX/* images.
  help      Show this help.

Settings (environment):
  PYTHON_BASE_IMAGE=$PYTHON_BASE_IMAGE
  NGINX_IMAGE=$NGINX_IMAGE
  REDIS_IMAGE=$REDIS_IMAGE
  PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE
  GRAFANA_IMAGE=$GRAFANA_IMAGE
  ALERTMANAGER_IMAGE=$ALERTMANAGER_IMAGE
  REDIS_EXPORTER_IMAGE=$REDIS_EXPORTER_IMAGE
  POSTGRES_IMAGE=$POSTGRES_IMAGE
  POSTGRES_EXPORTER_IMAGE=$POSTGRES_EXPORTER_IMAGE
  REGISTRY_IMAGE=$REGISTRY_IMAGE    the image registry (stack/registry.yml), when REGISTRY is empty
  EDGE_EXPORTER_IMAGE=$EDGE_EXPORTER_IMAGE      an image with python3 for the edge exporter; empty: the Python base image
  PULL_TIMEOUT=$PULL_TIMEOUT       seconds per docker pull
  LOCAL_IMAGES=$LOCAL_IMAGES        1: never pull; use local images or build stand-ins
USAGE
}

# available IMAGE: the image is present locally or could be pulled.
available() {
  local image=$1
  if image_exists "$image"; then
    log "$image: present locally"
    return 0
  fi
  if [[ $LOCAL_IMAGES == 1 ]]; then
    log "$image: not present, LOCAL_IMAGES=1 so not pulling"
    return 1
  fi
  log "$image: pulling (timeout ${PULL_TIMEOUT}s)"
  if timeout "$PULL_TIMEOUT" docker pull --quiet "$image" >&2; then
    return 0
  fi
  log "$image: pull failed"
  return 1
}

build_base() {
  if image_exists "$LOCAL_BASE"; then
    log "$LOCAL_BASE: present (cached)"
    return 0
  fi
  log "$LOCAL_BASE: building with debootstrap"
  "$ROOT_DIR/docker/base/build.sh" "$LOCAL_BASE"
}

# build_local NAME: build wsapp-local/NAME:bookworm from docker/NAME unless present and built from
# the same files (a label records their hash, so a changed Dockerfile or entrypoint rebuilds the
# stand-in). The Dockerfile first, then the other files by name: a directory that holds only a
# Dockerfile keeps the hash of that file alone.
build_local() {
  local name=$1
  local image=$LOCAL_PREFIX/$name:bookworm
  local hash
  hash=$(find "$ROOT_DIR/docker/$name" -maxdepth 1 -type f ! -name Dockerfile -print0 | sort -z |
    xargs -0 cat "$ROOT_DIR/docker/$name/Dockerfile" | sha256sum | cut -c1-16) || return
  if image_exists "$image" && [[ $(docker image inspect --format \
    '{{index .Config.Labels "com.wsapp.dockerfile"}}' "$image") == "$hash" ]]; then
    log "$image: present (cached)"
    return 0
  fi
  build_base || return
  log "$image: building from docker/$name"
  docker build --build-arg "BASE_IMAGE=$LOCAL_BASE" --label "com.wsapp.dockerfile=$hash" \
    -t "$image" "$ROOT_DIR/docker/$name" >&2
}

# resolve_one NAME IMAGE: print the image to use for NAME (python, or a directory of docker/:
# nginx, redis, prometheus, alertmanager, redis-exporter, postgres, postgres-exporter, registry).
# It runs in a command substitution, where set -e does not apply: failures return explicitly.
resolve_one() {
  local name=$1 image=$2
  if available "$image"; then
    echo "$image"
  elif [[ $name == python ]]; then
    build_base || return
    log "$image: using stand-in $LOCAL_BASE"
    echo "$LOCAL_BASE"
  else
    build_local "$name" || return
    log "$image: using stand-in $LOCAL_PREFIX/$name:bookworm"
    echo "$LOCAL_PREFIX/$name:bookworm"
  fi
}

resolve() {
  local python nginx redis prometheus alertmanager redis_exporter postgres postgres_exporter registry edge_exporter
  local replicas
  python=$(resolve_one python "$PYTHON_BASE_IMAGE")
  nginx=$(resolve_one nginx "$NGINX_IMAGE")
  redis=$(resolve_one redis "$REDIS_IMAGE")
  prometheus=$(resolve_one prometheus "$PROMETHEUS_IMAGE")
  alertmanager=$(resolve_one alertmanager "$ALERTMANAGER_IMAGE")
  redis_exporter=$(resolve_one redis-exporter "$REDIS_EXPORTER_IMAGE")
  postgres=$(resolve_one postgres "$POSTGRES_IMAGE")
  postgres_exporter=$(resolve_one postgres-exporter "$POSTGRES_EXPORTER_IMAGE")
  registry=$(resolve_one registry "$REGISTRY_IMAGE")
  if [[ -n $EDGE_EXPORTER_IMAGE ]]; then
    edge_exporter=$(resolve_one python "$EDGE_EXPORTER_IMAGE")
  else
    edge_exporter=$python
  fi
  if available "$GRAFANA_IMAGE"; then
    replicas=${GRAFANA_REPLICAS:-1}
  else
    replicas=0
    log "NOTE: $GRAFANA_IMAGE is unavailable and has no local stand-in;" \
      "GRAFANA_REPLICAS=0, Grafana will not run."
  fi
  printf 'export %s=%q\n' \
    PYTHON_BASE_IMAGE "$python" \
    NGINX_IMAGE "$nginx" \
    REDIS_IMAGE "$redis" \
    PROMETHEUS_IMAGE "$prometheus" \
    ALERTMANAGER_IMAGE "$alertmanager" \
    REDIS_EXPORTER_IMAGE "$redis_exporter" \
    POSTGRES_IMAGE "$postgres" \
    POSTGRES_EXPORTER_IMAGE "$postgres_exporter" \
    GRAFANA_IMAGE "$GRAFANA_IMAGE" \
    REGISTRY_IMAGE "$registry" \
    EDGE_EXPORTER_IMAGE "$edge_exporter" \
    GRAFANA_REPLICAS "$replicas"
  log "images resolved"
}

clean() {
  local -a images
  mapfile -t images < <(docker images --format '{{.Repository}}:{{.Tag}}' "$LOCAL_PREFIX/*" |
    grep -v ':<none>$' | sort -r)
  if ((${#images[@]} == 0)); then
    log "no $LOCAL_PREFIX/* images"
    return 0
  fi
  log "removing ${images[*]}"
  docker image rm "${images[@]}" >&2
}

main() {
  case ${1:-} in
    resolve) resolve ;;
    clean) clean ;;
    help | -h | --help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
