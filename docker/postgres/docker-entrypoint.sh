#!/bin/sh
# The stand-in's entrypoint (docker/postgres/Dockerfile), the official image's contract in short: with
# `postgres` as the command and an empty PGDATA, create the cluster (superuser POSTGRES_USER with the
# password of POSTGRES_PASSWORD_FILE or POSTGRES_PASSWORD, scram-sha-256 over TCP, trust on the local
# socket inside the container), create POSTGRES_DB, then exec postgres listening on every address.
# Runs as the postgres user (uid 999); it never needs root.
set -eu

if [ "${1#-}" != "$1" ]; then
  set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
  exec "$@"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
user=${POSTGRES_USER:-postgres}
database=${POSTGRES_DB:-$user}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    password=$(cat "$POSTGRES_PASSWORD_FILE")
  else
    password=${POSTGRES_PASSWORD:-}
  fi
  if [ -z "$password" ]; then
    echo "docker-entrypoint: the database is not initialised and no password is given:" \
      "set POSTGRES_PASSWORD_FILE (or POSTGRES_PASSWORD)" >&2
    exit 1
  fi
  echo "docker-entrypoint: initialising $PGDATA (user $user, database $database)" >&2
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA"
  pwfile=$(mktemp)
  printf '%s\n' "$password" >"$pwfile"
  initdb -D "$PGDATA" --username="$user" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >&2
  rm -f "$pwfile"
  printf '%s\n' "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  printf '%s\n' "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  if [ "$database" != postgres ]; then
    # A server on the socket only while the database is created: nothing outside can connect yet.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w -t 60 start >&2
    psql -v ON_ERROR_STOP=1 --username "$user" --dbname postgres \
      -c "CREATE DATABASE \"$database\"" >&2
    pg_ctl -D "$PGDATA" -m fast -w -t 60 stop >&2
  fi
  echo "docker-entrypoint: initialised" >&2
fi

exec "$@"
