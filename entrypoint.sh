#!/usr/bin/env bash
# Container entrypoint (also runs on a host with requirements.txt installed): configure from
# the environment, wait for Redis with a time limit, then exec Uvicorn as PID 1's replacement.
# Settings are validated once, in Python (service/config/settings.py): `rooms.ctl server-args`
# fails naming a bad variable, or prints the Uvicorn options that come from settings.
set -Eeuo pipefail
[[ -n ${TRACE:-} ]] && set -x

readonly HOST=${HOST:-0.0.0.0}
readonly REDIS_URL=${REDIS_URL:-}
readonly REDIS_SENTINELS=${REDIS_SENTINELS:-}
readonly PYTHON=${PYTHON:-python3}
readonly RELOAD=${RELOAD:-}
# Uvicorn logs three INFO lines per WebSocket; at warning, handshakes are about 7% cheaper.
readonly UVICORN_LOG_LEVEL=${UVICORN_LOG_LEVEL:-warning}
# Uvicorn's sans-I/O WebSocket protocol with flow control, keepalive and shared fan-out frames.
readonly UVICORN_WS=${UVICORN_WS:-wsserver.protocol:WebSocketProtocol}
# Off: compressing small JSON frames per connection costs CPU on every fan-out and ~40 KiB a socket.
readonly WS_PER_MESSAGE_DEFLATE=${WS_PER_MESSAGE_DEFLATE:-false}
export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-/tmp/wsapp-metrics}
export DJANGO_SETTINGS_MODULE=${DJANGO_SETTINGS_MODULE:-config.settings}

die() { echo "entrypoint: $*" >&2; exit 64; }
log() { echo "==> $(date -u +%H:%M:%S) $*" >&2; }

main() {
  cd "$(dirname "$(readlink -f "$0")")/service"
  # A command given to the container (e.g. `python -m rooms.ctl drain blue`) runs instead.
  if (($#)); then
    exec "$@"
  fi
  # Every WebSocket and pooled Redis connection is a descriptor: use all the hard limit allows
  # (the settings check that MAX_CONNECTIONS and the pools fit under it).
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  # Fail now, with the setting's name, rather than in every worker.
  local server_args
  server_args=$("$PYTHON" -m rooms.ctl server-args) || die "configuration error (see above)"
  local -a settings_args
  mapfile -t settings_args <<<"$server_args"

  # prometheus_client multiprocess mode: a fresh directory per start.
  rm -rf "$PROMETHEUS_MULTIPROC_DIR"
  mkdir -p "$PROMETHEUS_MULTIPROC_DIR"

  if [[ -n $REDIS_URL || -n $REDIS_SENTINELS ]]; then
    "$PYTHON" -m rooms.ctl wait-redis || die "Redis did not answer (see above)"
  fi

  local -a args=(config.asgi:application --host "$HOST" "${settings_args[@]}"
    --loop uvloop --http httptools --ws "$UVICORN_WS"
    --ws-per-message-deflate "$WS_PER_MESSAGE_DEFLATE"
    --proxy-headers
    --no-access-log --log-level "$UVICORN_LOG_LEVEL" --lifespan on)
  if [[ -n $RELOAD ]]; then
    args+=(--reload)  # one process: Uvicorn ignores --workers when reloading
  fi
  log "starting uvicorn: color=${COLOR:-dev} ${settings_args[*]}"
  exec "$PYTHON" -m uvicorn "${args[@]}"
}

main "$@"
