#!/bin/sh
# Redis container command: read the password from the Swarm secret, write the effective
# configuration (redis.conf plus requirepass) to a private file on the tmpfs, and exec
# redis-server. The password never appears on a command line.
set -eu
secret=${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}
conf=/tmp/redis.conf
[ -r "$secret" ] || { echo "redis start: $secret is not readable (Swarm secret wsapp_redis_password)" >&2; exit 64; }
password=$(cat "$secret")
case "$password" in
  "" | *[!A-Za-z0-9._~-]*)
    echo "redis start: the password in $secret must be 16+ characters of [A-Za-z0-9._~-]" >&2
    exit 64 ;;
esac
[ "${#password}" -ge 16 ] || { echo "redis start: the password in $secret is shorter than 16 characters" >&2; exit 64; }
umask 077
{ cat /usr/local/etc/redis/redis.conf; printf 'requirepass %s\n' "$password"; } >"$conf"
exec redis-server "$conf"
