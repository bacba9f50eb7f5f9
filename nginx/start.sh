#!/bin/sh
# shellcheck disable=SC2016  # printf formats write nginx variables literally
# Nginx container command. Runs as the image's non-root nginx user on a read-only root
# filesystem: writes the settings that come from the environment, the active color among them,
# to /tmp/nginx (a tmpfs), then runs nginx in the foreground.
#   ACTIVE_COLOR          blue or green: the service's label com.wsapp.active-color (Swarm template)
#   DEFAULT_COLOR         the color when ACTIVE_COLOR is empty (default blue)
#   NGINX_WORKERS         worker processes; match the service's CPU limit (default 1)
#   NGINX_NOFILE          worker_rlimit_nofile, at most the container's hard limit (default 20000)
#   NGINX_WORKER_CONNECTIONS  per worker, client and upstream sockets both count (default 19000)
#   NGINX_WS_PER_ADDRESS  concurrent WebSockets per client address, 0 = no limit (default 256)
#   NGINX_HTTP_RATE       other requests per second per client address, 0 = no limit (default 50)
#   NGINX_HTTP_BURST      requests above the rate served at once before 429 (default 100)
#   NGINX_WS_RATE         WebSocket handshakes, and any other request under /ws/, per second per
#                         client address, 0 = no limit (default 20)
#   NGINX_WS_BURST        handshakes above the rate served at once before 429 (default 256)
#   NGINX_LOGIN_RATE      POSTs to the login page and under /admin/ per minute per client address,
#                         on top of NGINX_HTTP_RATE, 0 = no limit (default 10)
#   NGINX_LOGIN_BURST     such POSTs above the rate served at once before 429 (default 5)
set -eu

die() { echo "nginx start: $*" >&2; exit 64; }

number() {  # number NAME VALUE: a non-negative integer, or stop with the setting's name
  case "$2" in
    "" | *[!0-9]*) die "$1 must be a whole number, got '$2'" ;;
  esac
}

workers=${NGINX_WORKERS:-1}
nofile=${NGINX_NOFILE:-20000}
connections=${NGINX_WORKER_CONNECTIONS:-19000}
ws_per_address=${NGINX_WS_PER_ADDRESS:-256}
http_rate=${NGINX_HTTP_RATE:-50}
http_burst=${NGINX_HTTP_BURST:-100}
ws_rate=${NGINX_WS_RATE:-20}
ws_burst=${NGINX_WS_BURST:-256}
login_rate=${NGINX_LOGIN_RATE:-10}
login_burst=${NGINX_LOGIN_BURST:-5}
number NGINX_WORKERS "$workers"
number NGINX_NOFILE "$nofile"
number NGINX_WORKER_CONNECTIONS "$connections"
number NGINX_WS_PER_ADDRESS "$ws_per_address"
number NGINX_HTTP_RATE "$http_rate"
number NGINX_HTTP_BURST "$http_burst"
number NGINX_WS_RATE "$ws_rate"
number NGINX_WS_BURST "$ws_burst"
number NGINX_LOGIN_RATE "$login_rate"
number NGINX_LOGIN_BURST "$login_burst"
[ "$workers" -ge 1 ] || die "NGINX_WORKERS must be at least 1"
# shellcheck disable=SC3045  # dash (Debian, the official image) and busybox sh have -H
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] || [ "$nofile" -le "$hard" ] ||
  die "NGINX_NOFILE=$nofile is above this container's hard limit of $hard open files"
# A worker also needs descriptors for its listeners, logs and the resolver.
[ "$connections" -le $((nofile - 100)) ] ||
  die "NGINX_WORKER_CONNECTIONS=$connections must stay 100 below NGINX_NOFILE=$nofile"

conf=${NGINX_RUNTIME_DIR:-/tmp/nginx}  # overridable for tests/unit/test_switch_color.py
mkdir -p "$conf"
printf 'worker_processes %s;\nworker_rlimit_nofile %s;\n' "$workers" "$nofile" >"$conf/main.conf"
printf 'worker_connections %s;\n' "$connections" >"$conf/events.conf"
: >"$conf/ws-limits.conf"
: >"$conf/http-limits.conf"
: >"$conf/login-limits.conf"
: >"$conf/zones.conf"
if [ "$ws_per_address" -gt 0 ]; then
  printf 'limit_conn ws_per_address %s;\n' "$ws_per_address" >"$conf/ws-limits.conf"
fi
if [ "$http_rate" -gt 0 ]; then
  printf 'limit_req_zone $binary_remote_addr zone=http_per_address:10m rate=%sr/s;\n' "$http_rate" >"$conf/zones.conf"
  printf 'limit_req zone=http_per_address burst=%s nodelay;\n' "$http_burst" >"$conf/http-limits.conf"
fi
if [ "$ws_rate" -gt 0 ]; then
  printf 'limit_req_zone $binary_remote_addr zone=ws_handshakes_per_address:10m rate=%sr/s;\n' "$ws_rate" >>"$conf/zones.conf"
  printf 'limit_req zone=ws_handshakes_per_address burst=%s nodelay;\n' "$ws_burst" >>"$conf/ws-limits.conf"
fi
# Password guessing: its own zone, keyed by $login_post_address (nginx.conf), which is empty, and so
# not counted, for anything but a POST: reading the login page or the admin stays under the HTTP rate.
if [ "$login_rate" -gt 0 ]; then
  printf 'limit_req_zone $login_post_address zone=login_posts_per_address:10m rate=%sr/m;\n' "$login_rate" >>"$conf/zones.conf"
  printf 'limit_req zone=login_posts_per_address burst=%s nodelay;\n' "$login_burst" >"$conf/login-limits.conf"
fi

# The active color: the Nginx service's label com.wsapp.active-color, which Swarm puts in
# ACTIVE_COLOR when it creates this task (stack/infra.yml). A task started after a switch (a
# restart, another node) so serves the switched-to color; DEFAULT_COLOR only if the label is unset.
color=${ACTIVE_COLOR:-${DEFAULT_COLOR:-blue}}
case "$color" in
  blue|green) ;;
  *) die "ACTIVE_COLOR must be blue or green, got '$color' (the label com.wsapp.active-color)" ;;
esac
mkdir -p "$conf/active"
printf 'map "" $active_color { default "%s"; }\n' "$color" >"$conf/active/color.conf"
exec nginx -g 'daemon off;'
