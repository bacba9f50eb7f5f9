#!/bin/sh
# Redis and Sentinel container command (stack/infra.yml: services redis, redis-replica, sentinel).
# Reads the passwords from the Swarm secrets, writes the effective configuration (the mounted base
# file plus what is below: ACL users, replication and Sentinel credentials) to a private file on the
# tmpfs, and execs redis-server. No password appears on a command line; ACL users are written with
# the SHA-256 of their password (docs/security.md, "Redis users").
#
# REDIS_ROLE says what to start:
#   primary   (service redis)          a Redis that is the primary unless the Sentinels name another
#   replica   (service redis-replica)  a Redis that replicates the primary the Sentinels name, or
#                                      REDIS_PRIMARY when no Sentinel knows one
#   sentinel  (service sentinel)       a Sentinel that monitors the primary it knew when it stopped
#                                      (its state file on the node's volume), else the primary the
#                                      other Sentinels name, else REDIS_PRIMARY
# A Redis or Sentinel that restarts after a failover must not trust its static role: the old primary
# would come back as a second primary (and, after a full restart, as the primary its old replica
# resyncs from, dropping every write since the failover). So a Sentinel keeps what it learns on a
# volume, and a Redis starts as what a majority of the Sentinels name (docs/operations.md, "Who starts
# as what"). With SENTINELS empty, a lone primary starts as before.
#
# Users (Redis 7 ACL; the default user is off, so every connection says who it is):
#   wsapp        the app: only the commands the service runs, on keys and channels wsapp*
#   replication  a replica's link to its primary (masteruser): PSYNC, REPLCONF, PING
#   sentinel     the Sentinels, on Redis (monitoring, failover) and on each other
#   admin        operators: everything
#   metrics      the Redis exporter (redis_exporter): INFO and the few reads it scrapes, no keys
#
# Settings (defaults are the stack's; tests/integration/test_sentinel.py runs this script against
# local processes with its own):
#   REDIS_PASSWORD_FILE              the app user's password               /run/secrets/redis_password
#   REDIS_ADMIN_PASSWORD_FILE        the admin user's                      /run/secrets/redis_admin_password
#   REDIS_REPLICATION_PASSWORD_FILE  the replication user's (not Sentinels) /run/secrets/redis_replication_password
#   REDIS_SENTINEL_PASSWORD_FILE     the sentinel user's                   /run/secrets/redis_sentinel_password
#   REDIS_METRICS_PASSWORD_FILE      the metrics user's (not Sentinels)    /run/secrets/redis_metrics_password
#   REDIS_BASE_CONF       the base configuration                     /usr/local/etc/redis/{redis,sentinel}.conf
#   REDIS_RUN_CONF        the effective configuration written here   /tmp/redis.conf;
#                         a Sentinel's is its state, kept on its volume  /data/sentinel-$SENTINEL_SLOT.conf
#   REDIS_ANNOUNCE        this Redis' name as others reach it        (none; the stack sets the service name)
#   REDIS_PORT            this Redis' port                           6379
#   REDIS_PRIMARY         host:port of the first primary             wsapp_redis:6379
#   SENTINELS             Sentinels to ask, host:port, comma-separated (every address a name has)
#   SENTINEL_COUNT        how many Sentinels there are: a Redis follows an answer given by more
#                         than half of them                          3
#   SENTINEL_WAIT         seconds a Redis waits for that majority before deciding alone   30
#   SENTINEL_MASTER       the name Sentinels monitor it by           wsapp
#   SENTINEL_QUORUM, SENTINEL_DOWN_AFTER_MS, SENTINEL_FAILOVER_TIMEOUT_MS   2, 5000, 20000
#   SENTINEL_SLOT         a number unique to each Sentinel (the Swarm task slot): its fixed myid, so
#                         a Sentinel that restarts with a new address is not counted twice
set -eu
[ -n "${TRACE:-}" ] && set -x

role=${REDIS_ROLE:-primary}
app_secret=${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}
admin_secret=${REDIS_ADMIN_PASSWORD_FILE:-/run/secrets/redis_admin_password}
replication_secret=${REDIS_REPLICATION_PASSWORD_FILE:-/run/secrets/redis_replication_password}
sentinel_secret=${REDIS_SENTINEL_PASSWORD_FILE:-/run/secrets/redis_sentinel_password}
metrics_secret=${REDIS_METRICS_PASSWORD_FILE:-/run/secrets/redis_metrics_password}
announce=${REDIS_ANNOUNCE:-}
port=${REDIS_PORT:-6379}
first_primary=${REDIS_PRIMARY:-wsapp_redis:6379}
sentinels=${SENTINELS:-}
master=${SENTINEL_MASTER:-wsapp}

# What the app runs (service/rooms: redishub.py, scripts.py's Lua, ctl.py; channels_redis), and
# nothing else: no FLUSHALL, CONFIG, REPLICAOF, SHUTDOWN, ACL, DEBUG, KEYS or MONITOR.
# tests/unit/test_redis_acl.py checks every command the service names is in this list. Not CLIENT
# SETINFO: redis-py sends it on connecting and ignores the refusal, and Redis 7.0 (Debian 12) does not
# know it, so naming it here would stop the server.
readonly APP_COMMANDS="ping echo info time select client|setname client|getname client|id
  publish subscribe unsubscribe evalsha eval script|load script|exists multi exec discard
  get mget set getex incr del unlink exists expire pexpire ttl pttl hget hset hdel hgetall
  xadd xrange xrevrange xtrim xlen zadd zcard zcount zrange zrangebyscore zrem zremrangebyscore
  zpopmin bzpopmin"
# What a Sentinel runs on Redis (Redis' documentation, "Sentinel and ACL").
readonly SENTINEL_ON_REDIS="ping info role multi exec slaveof replicaof config|rewrite publish subscribe
  client|setname client|kill script|kill"
# What a Sentinel runs on another Sentinel, and what the app and redis/start.sh ask a Sentinel.
readonly SENTINEL_ON_SENTINEL="ping info role client|setname publish subscribe sentinel|is-master-down-by-addr
  sentinel|get-master-addr-by-name"
# What redis_exporter runs (tried against Debian's 1.45 with the ACL log watched): no key, no channel.
readonly METRICS_COMMANDS="ping info config|get client|setname client|list slowlog|get slowlog|len
  latency|latest latency|histogram select"
readonly ASK_SENTINEL="ping client|setname sentinel|get-master-addr-by-name sentinel|masters
  sentinel|master sentinel|sentinels sentinel|slaves sentinel|replicas"

die() { echo "redis start ($role): $*" >&2; exit 64; }
log() { echo "==> $(date -u +%H:%M:%S) redis start ($role): $*" >&2; }

case $role in
  primary | replica) base=${REDIS_BASE_CONF:-/usr/local/etc/redis/redis.conf}; conf=${REDIS_RUN_CONF:-/tmp/redis.conf} ;;
  sentinel) base=${REDIS_BASE_CONF:-/usr/local/etc/redis/sentinel.conf}; conf=${REDIS_RUN_CONF:-/data/sentinel-${SENTINEL_SLOT:-0}.conf} ;;
  *) die "REDIS_ROLE must be primary, replica or sentinel, not '$role'" ;;
esac

# The password in file $1 (the Swarm secret named $2), checked.
read_password() {
  [ -r "$1" ] || die "$1 is not readable (Swarm secret $2)"
  value=$(cat "$1")
  case "$value" in
    "" | *[!A-Za-z0-9._~-]*) die "the password in $1 must be 16+ characters of [A-Za-z0-9._~-]" ;;
  esac
  [ "${#value}" -ge 16 ] || die "the password in $1 is shorter than 16 characters"
  printf '%s' "$value"
}

# An ACL user line: name, password, then the rules. The password as its SHA-256 (#...).
acl_user() {
  name=$1 value=$2
  shift 2
  printf 'user %s reset on #%s %s\n' "$name" "$(printf '%s' "$value" | sha256sum | cut -c1-64)" "$*"
}

# "+a +b ..." from a list of commands.
allow() {
  for command in $1; do printf '+%s ' "$command"; done
}

app_password=$(read_password "$app_secret" wsapp_redis_password)
admin_password=$(read_password "$admin_secret" wsapp_redis_admin_password)
sentinel_password=$(read_password "$sentinel_secret" wsapp_redis_sentinel_password)
[ "$role" = sentinel ] || replication_password=$(read_password "$replication_secret" wsapp_redis_replication_password)
[ "$role" = sentinel ] || metrics_password=$(read_password "$metrics_secret" wsapp_redis_metrics_password)
[ -r "$base" ] || die "$base is not readable"
# redis-cli below asks the Sentinels as the sentinel user.
export REDISCLI_AUTH="$sentinel_password"

# What every Sentinel that answers names as primary, one "host port" line per Sentinel (none when
# none answers). Every address of every listed name is asked: one Sentinel down or not yet started
# must not hide the others.
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
      answer=$(timeout 3 redis-cli --no-auth-warning --user sentinel -h "$address" -p "$sport" --raw \
        SENTINEL get-master-addr-by-name "$master" 2>/dev/null | tr '\n' ' ') || continue
      phost=${answer%% *}
      pport=${answer#* }
      pport=${pport%% *}
      case $pport in
        "" | *[!0-9]*) ;;
        *) [ -z "$phost" ] || echo "$phost $pport" ;;
      esac
    done
  done
  IFS=$old_ifs
  return 0
}

# The answer most Sentinels gave, "count host port" (empty when none answered).
most_named() {
  sort | uniq -c | sort -rn | awk 'NR == 1 {print $1, $2, $3}'
}

# Whether "host port" is this Redis: its announced name, or an address that name has.
is_self() {
  [ "$2" = "$port" ] || return 1
  [ -n "$announce" ] || return 1
  [ "$1" = "$announce" ] && return 0
  getent ahostsv4 "$announce" 2>/dev/null | awk '{print $1}' | grep -qxF "$1"
}

# What this node's Sentinels knew when they stopped (the files Sentinel rewrites as it learns): the
# primary, and the epochs that let the Sentinels agree on the newest configuration among themselves.
# The file with the highest current-epoch, this slot's or another's: task slots move between nodes
# when the service is scaled or restarted, so this slot's file may be older than the last Sentinel
# that ran here (one file per slot only keeps Sentinels that share a node apart).
known="" epochs="" state=""
if [ "$role" = sentinel ]; then
  state=$(awk -v own="$conf" 'FNR == 1 {e[FILENAME] += 0} $1 == "sentinel" && $2 == "current-epoch" {
    e[FILENAME] = $3} END {for (f in e) print e[f], (f == own), f}' "$(dirname "$conf")"/sentinel-*.conf \
    2>/dev/null | sort -k1,1n -k2,2n | tail -n 1 | cut -d' ' -f3-)
fi
if [ -n "$state" ] && [ -s "$state" ]; then
  known=$(awk -v m="$master" '$1 == "sentinel" && $2 == "monitor" && $3 == m {print $4, $5}' "$state")
  epochs=$(awk -v m="$master" '$1 == "sentinel" && ($2 == "current-epoch" ||
    (($2 == "config-epoch" || $2 == "leader-epoch") && $3 == m))' "$state")
fi
# A Redis follows what more than half of the Sentinels name: after a full restart, a Sentinel that
# lost its state (a new node, an empty volume) may name REDIS_PRIMARY, which may be the stale one. It
# waits for that majority (the Sentinels keep their state on their volumes, and answer within
# seconds of starting) and decides alone only when none comes. A Sentinel takes the most-named answer.
primary=""
if [ -n "$sentinels" ] && [ -z "$known" ]; then
  count=${SENTINEL_COUNT:-3}
  wait_s=${SENTINEL_WAIT:-30}
  case "$count$wait_s" in *[!0-9]* | "") die "SENTINEL_COUNT and SENTINEL_WAIT must be numbers" ;; esac
  need=$((count / 2 + 1)) deadline=$wait_s
  # A Sentinel without state takes any answer, within 3 s.
  [ "$role" != sentinel ] || need=1 deadline=$((wait_s < 3 ? wait_s : 3))
  started=$(date +%s)
  while :; do
    best=$(ask_sentinels | most_named)
    if [ -n "$best" ] && [ "${best%% *}" -ge "$need" ]; then
      primary=${best#* }
      break
    fi
    [ $(($(date +%s) - started)) -lt "$deadline" ] || break
    sleep 1
  done
  [ -n "$primary" ] || [ -z "$best" ] || log "no primary named by $need of $count Sentinels (best: $best)"
fi

umask 077
if [ "$role" = sentinel ]; then
  if [ -n "$known" ]; then
    primary=$known
    log "monitoring $primary, the primary this node knew when it stopped ($state)"
  elif [ -n "$primary" ]; then
    log "the Sentinels name $primary as primary"
  else
    primary="${first_primary%:*} ${first_primary##*:}"
    log "no state and no Sentinel answered; monitoring $primary"
  fi
  slot=${SENTINEL_SLOT:-}
  {
    cat "$base"
    printf 'user default reset\n'
    acl_user admin "$admin_password" "~* &* +@all"
    acl_user sentinel "$sentinel_password" "resetchannels &__sentinel__:hello -@all $(allow "$SENTINEL_ON_SENTINEL")"
    acl_user wsapp "$app_password" "resetchannels -@all $(allow "$ASK_SENTINEL")"
    # How this Sentinel logs in to the other Sentinels, and to the Redis it monitors (below).
    printf 'sentinel sentinel-user sentinel\n'
    printf 'sentinel sentinel-pass %s\n' "$sentinel_password"
    # A fixed id per slot (40 hex digits): a restarted Sentinel replaces its old self in the
    # others' tables instead of adding a voter that never answers again.
    case $slot in
      "") ;;
      *[!0-9]* | ??????*) die "SENTINEL_SLOT must be a number below 100000, not '$slot'" ;;
      *) printf 'sentinel myid %s\n' "$(printf 'a5e2714e100000000000000000000000000%05d' "$slot")" ;;
    esac
    printf 'sentinel monitor %s %s %s\n' "$master" "$primary" "${SENTINEL_QUORUM:-2}"
    printf 'sentinel auth-user %s sentinel\n' "$master"
    printf 'sentinel auth-pass %s %s\n' "$master" "$sentinel_password"
    printf 'sentinel down-after-milliseconds %s %s\n' "$master" "${SENTINEL_DOWN_AFTER_MS:-5000}"
    printf 'sentinel failover-timeout %s %s\n' "$master" "${SENTINEL_FAILOVER_TIMEOUT_MS:-20000}"
    printf 'sentinel parallel-syncs %s 1\n' "$master"
    [ -z "$epochs" ] || printf '%s\n' "$epochs"
  } >"$conf.new"
  mv "$conf.new" "$conf"
  exec redis-server "$conf" --sentinel
fi

{
  cat "$base"
  # The default user: off and without a password, so no connection can be it or log in as it (one
  # that does not say who it is can do nothing). Its rights are all: Redis replays the append-only
  # file as the default user and checks them at every EXEC it replays (Redis 7.0), and every script's
  # writes are logged in MULTI/EXEC. Without them a restart dropped all of those writes (seq,
  # history, epochs; tests/lab/test_redis_restart.py found it).
  printf 'user default reset off ~* &* +@all\n'
  acl_user admin "$admin_password" "~* &* +@all"
  acl_user wsapp "$app_password" "resetkeys ~wsapp* resetchannels &wsapp:* -@all $(allow "$APP_COMMANDS")"
  acl_user replication "$replication_password" "-@all +psync +replconf +ping"
  acl_user sentinel "$sentinel_password" "resetchannels &__sentinel__:hello -@all $(allow "$SENTINEL_ON_REDIS")"
  acl_user metrics "$metrics_password" "resetkeys resetchannels -@all $(allow "$METRICS_COMMANDS")"
  # Any Redis may become a replica after a failover, and must then log in to the primary.
  printf 'masteruser replication\n'
  printf 'masterauth %s\n' "$replication_password"
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
