#!/usr/bin/env bash
# Container entrypoint (also runs on a host with requirements.txt installed): configure from
# the environment, wait for Redis with a time limit, then exec Uvicorn as PID 1's replacement.
set -Eeuo pipefail
[[ -n ${TRACE:-} ]] && set -x

readonly PORT=${PORT:-8000}
readonly HOST=${HOST:-0.0.0.0}
readonly WEB_CONCURRENCY=${WEB_CONCURRENCY:-1}
readonly REDIS_URL=${REDIS_URL:-}
readonly REDIS_WAIT_SECONDS=${REDIS_WAIT_SECONDS:-30}
readonly GRACEFUL_TIMEOUT=${GRACEFUL_TIMEOUT:-8}
readonly WS_MAX_MESSAGE_BYTES=${WS_MAX_MESSAGE_BYTES:-65536}
readonly PYTHON=${PYTHON:-python3}
readonly RELOAD=${RELOAD:-}
# Uvicorn logs three INFO lines per WebSocket; at warning, handshakes are about 7% cheaper.
readonly UVICORN_LOG_LEVEL=${UVICORN_LOG_LEVEL:-warning}
# Uvicorn's sans-I/O WebSocket protocol with flow control, keepalive and shared fan-out frames.
readonly UVICORN_WS=${UVICORN_WS:-config.wsprotocol:WebSocketProtocol}
readonly WS_PING_INTERVAL=${WS_PING_INTERVAL:-20}
readonly WS_PING_TIMEOUT=${WS_PING_TIMEOUT:-20}
# Off: compressing small JSON frames per connection costs CPU on every fan-out and ~40 KiB a socket.
readonly WS_PER_MESSAGE_DEFLATE=${WS_PER_MESSAGE_DEFLATE:-false}
# Peers whose X-Forwarded-For/-Proto Uvicorn believes: the proxy only (the stack sets the overlay
# network's subnet). Any other peer's headers are ignored, so a client cannot choose its address.
readonly FORWARDED_ALLOW_IPS=${FORWARDED_ALLOW_IPS:-127.0.0.1}
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
  [[ $WEB_CONCURRENCY =~ ^[1-9][0-9]*$ ]] || die "WEB_CONCURRENCY must be a positive integer, got '$WEB_CONCURRENCY'"
  [[ $PORT =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$PORT'"
  [[ $GRACEFUL_TIMEOUT =~ ^[0-9]+$ ]] || die "GRACEFUL_TIMEOUT must be whole seconds, got '$GRACEFUL_TIMEOUT'"
  [[ $FORWARDED_ALLOW_IPS != *"*"* ]] ||
    die "FORWARDED_ALLOW_IPS must list the proxy's addresses or networks, not '*' (any client could forge its address)"
  if [[ -z $REDIS_URL && $WEB_CONCURRENCY -gt 1 ]]; then
    die "WEB_CONCURRENCY=$WEB_CONCURRENCY needs REDIS_URL: without Redis, rooms exist only inside one process"
  fi
  # Fail now, with the setting's name, rather than in every worker.
  "$PYTHON" -c 'import django; django.setup()' || die "configuration error (see above)"

  # prometheus_client multiprocess mode: a fresh directory per start.
  rm -rf "$PROMETHEUS_MULTIPROC_DIR"
  mkdir -p "$PROMETHEUS_MULTIPROC_DIR"

  if [[ -n $REDIS_URL ]]; then
    log "waiting up to ${REDIS_WAIT_SECONDS}s for Redis"
    "$PYTHON" -m rooms.ctl wait-redis --timeout "$REDIS_WAIT_SECONDS" || die "Redis did not answer within ${REDIS_WAIT_SECONDS}s"
  fi

  local -a args=(config.asgi:application --host "$HOST" --port "$PORT"
    --loop uvloop --http httptools --ws "$UVICORN_WS" --ws-max-size "$WS_MAX_MESSAGE_BYTES"
    --ws-ping-interval "$WS_PING_INTERVAL" --ws-ping-timeout "$WS_PING_TIMEOUT"
    --ws-per-message-deflate "$WS_PER_MESSAGE_DEFLATE"
    --timeout-graceful-shutdown "$GRACEFUL_TIMEOUT" --proxy-headers --forwarded-allow-ips "$FORWARDED_ALLOW_IPS"
    --no-access-log --log-level "$UVICORN_LOG_LEVEL" --lifespan on)
  if [[ -n $RELOAD ]]; then
    args+=(--reload)
  else
    args+=(--workers "$WEB_CONCURRENCY")
  fi
  log "starting uvicorn: port=$PORT workers=$WEB_CONCURRENCY color=${COLOR:-dev}"
  exec "$PYTHON" -m uvicorn "${args[@]}"
}

main "$@"
