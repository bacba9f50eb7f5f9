#!/bin/sh
# Redis and Sentinel container command (stack/infra.yml: services redis, redis-replica, sentinel).
# Reads the password from the Swarm secret, writes the effective configuration (the mounted base
# file plus what is below) to a private file on the tmpfs, and execs redis-server. The password
# never appears on a command line.
#
# REDIS_ROLE says what to start:
#   primary   (service redis)          a Redis that is the primary unless the Sentinels name another
#   replica   (service redis-replica)  a Redis that replicates the primary the Sentinels name, or
#                                      REDIS_PRIMARY when no Sentinel knows one
#   sentinel  (service sentinel)       a Sentinel that monitors the primary the other Sentinels
#                                      name, or REDIS_PRIMARY when none answers
# A Redis or Sentinel that restarts after a failover must not trust its configuration: the old
# primary would come back as a second primary, a fresh Sentinel would monitor a demoted node.
# So each one asks the Sentinels first. With SENTINELS empty, a lone primary starts as before.
#
# Settings (defaults are the stack's; tests/integration/test_sentinel.py runs this script against
# local processes with its own):
#   REDIS_PASSWORD_FILE   the password for Redis and the Sentinels   /run/secrets/redis_password
#   REDIS_BASE_CONF       the base configuration                     /usr/local/etc/redis/{redis,sentinel}.conf
#   REDIS_RUN_CONF        the effective configuration written here   /tmp/{redis,sentinel}.conf
#   REDIS_ANNOUNCE        this Redis' name as others reach it        (none; the stack sets the service name)
#   REDIS_PORT            this Redis' port                           6379
#   REDIS_PRIMARY         host:port of the first primary             wsapp_redis:6379
#   SENTINELS             Sentinels to ask, host:port, comma-separated (every address a name has)
#   SENTINEL_MASTER       the name Sentinels monitor it by           wsapp
#   SENTINEL_QUORUM, SENTINEL_DOWN_AFTER_MS, SENTINEL_FAILOVER_TIMEOUT_MS   2, 5000, 60000
#   SENTINEL_SLOT         a number unique to each Sentinel (the Swarm task slot): its fixed myid, so
#                         a Sentinel that restarts with a new address is not counted twice
set -eu
[ -n "${TRACE:-}" ] && set -x

role=${REDIS_ROLE:-primary}
secret=${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}
announce=${REDIS_ANNOUNCE:-}
port=${REDIS_PORT:-6379}
first_primary=${REDIS_PRIMARY:-wsapp_redis:6379}
sentinels=${SENTINELS:-}
master=${SENTINEL_MASTER:-wsapp}

die() { echo "redis start ($role): $*" >&2; exit 64; }
log() { echo "==> $(date -u +%H:%M:%S) redis start ($role): $*" >&2; }

case $role in
  primary | replica) base=${REDIS_BASE_CONF:-/usr/local/etc/redis/redis.conf}; conf=${REDIS_RUN_CONF:-/tmp/redis.conf} ;;
  sentinel) base=${REDIS_BASE_CONF:-/usr/local/etc/redis/sentinel.conf}; conf=${REDIS_RUN_CONF:-/tmp/sentinel.conf} ;;
  *) die "REDIS_ROLE must be primary, replica or sentinel, not '$role'" ;;
esac

[ -r "$secret" ] || die "$secret is not readable (Swarm secret wsapp_redis_password)"
password=$(cat "$secret")
case "$password" in
  "" | *[!A-Za-z0-9._~-]*) die "the password in $secret must be 16+ characters of [A-Za-z0-9._~-]" ;;
esac
[ "${#password}" -ge 16 ] || die "the password in $secret is shorter than 16 characters"
[ -r "$base" ] || die "$base is not readable"
export REDISCLI_AUTH="$password"

# The primary the Sentinels name, as "host port" (empty when none answers). Every address of
# every listed name is asked: one Sentinel down or not yet started must not hide the others.
ask_sentinels() {
  old_ifs=$IFS
  IFS=,
  for entry in $sentinels; do
    IFS=$old_ifs
    host=${entry%:*}
    sport=${entry##*:}
    [ "$sport" != "$entry" ] || sport=26379
    for address in $(getent ahostsv4 "$host" 2>/dev/null | awk '{print $1}' | sort -u); do
      # Two lines, host and port, or an empty answer when it monitors no such master.
      answer=$(timeout 3 redis-cli --no-auth-warning -h "$address" -p "$sport" --raw \
        SENTINEL get-master-addr-by-name "$master" 2>/dev/null | tr '\n' ' ') || continue
      phost=${answer%% *}
      pport=${answer#* }
      pport=${pport%% *}
      case $pport in
        "" | *[!0-9]*) ;;
        *) [ -z "$phost" ] || { echo "$phost $pport"; return 0; } ;;
      esac
    done
  done
  IFS=$old_ifs
  return 0
}

# Whether "host port" is this Redis: its announced name, or an address that name has.
is_self() {
  [ "$2" = "$port" ] || return 1
  [ -n "$announce" ] || return 1
  [ "$1" = "$announce" ] && return 0
  getent ahostsv4 "$announce" 2>/dev/null | awk '{print $1}' | grep -qxF "$1"
}

primary=""
if [ -n "$sentinels" ]; then
  # A Sentinel that just started may not know yet: ask a few times before deciding alone.
  tries=${SENTINEL_ASK_TRIES:-3}
  while [ "$tries" -gt 0 ]; do
    primary=$(ask_sentinels)
    [ -n "$primary" ] && break
    tries=$((tries - 1))
    [ "$tries" -gt 0 ] && sleep 1
  done
fi

umask 077
if [ "$role" = sentinel ]; then
  if [ -n "$primary" ]; then
    log "the Sentinels name $primary as primary"
  else
    primary="${first_primary%:*} ${first_primary##*:}"
    log "no Sentinel answered; monitoring $primary"
  fi
  slot=${SENTINEL_SLOT:-}
  {
    cat "$base"
    printf 'requirepass %s\n' "$password"
    printf 'sentinel sentinel-pass %s\n' "$password"
    # A fixed id per slot (40 hex digits): a restarted Sentinel replaces its old self in the
    # others' tables instead of adding a voter that never answers again.
    case $slot in
      "") ;;
      *[!0-9]* | ??????*) die "SENTINEL_SLOT must be a number below 100000, not '$slot'" ;;
      *) printf 'sentinel myid %s\n' "$(printf 'a5e2714e100000000000000000000000000%05d' "$slot")" ;;
    esac
    printf 'sentinel monitor %s %s %s\n' "$master" "$primary" "${SENTINEL_QUORUM:-2}"
    printf 'sentinel auth-pass %s %s\n' "$master" "$password"
    printf 'sentinel down-after-milliseconds %s %s\n' "$master" "${SENTINEL_DOWN_AFTER_MS:-5000}"
    printf 'sentinel failover-timeout %s %s\n' "$master" "${SENTINEL_FAILOVER_TIMEOUT_MS:-60000}"
    printf 'sentinel parallel-syncs %s 1\n' "$master"
  } >"$conf"
  exec redis-server "$conf" --sentinel
fi

{
  cat "$base"
  printf 'requirepass %s\n' "$password"
  # Any Redis may become a replica after a failover, and must then authenticate to the primary.
  printf 'masterauth %s\n' "$password"
  # Sentinels and clients reach it by its service name, which follows the task to a new address.
  [ -z "$announce" ] || printf 'replica-announce-ip %s\n' "$announce"
  if [ -n "$primary" ] && is_self "${primary% *}" "${primary#* }"; then
    log "the Sentinels name this Redis as primary"
  elif [ -n "$primary" ]; then
    log "the Sentinels name $primary as primary: starting as its replica"
    printf 'replicaof %s\n' "$primary"
  elif [ "$role" = replica ]; then
    log "no Sentinel knows a primary: starting as replica of $first_primary"
    printf 'replicaof %s %s\n' "${first_primary%:*}" "${first_primary##*:}"
  else
    log "no Sentinel knows a primary: starting as primary"
  fi
} >"$conf"
exec redis-server "$conf"
