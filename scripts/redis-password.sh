#!/usr/bin/env bash
# Add a password to the app's Redis user (wsapp), or remove one, on every Redis and Sentinel of the
# running stack, live: the steps of a password rotation that no restart does (docs/operations.md,
# "Rotating the app's Redis password"). Runs as a one-off Swarm job from the Redis service's image on
# the overlay network, logged in as the admin user; the password goes to redis-cli on its standard
# input, never on a command line or in a log. Usage:
#   scripts/redis-password.sh add SECRET      the password in Swarm secret SECRET is accepted too
#   scripts/redis-password.sh remove SECRET   it is accepted no more
# ACL changes live in memory: a Redis or Sentinel that restarts reads its users from its secrets
# again (redis/start.sh).
set -Eeuo pipefail
[[ -n ${TRACE:-} ]] && set -x

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly JOB_TIMEOUT=${JOB_TIMEOUT:-120}
readonly TARGETS="wsapp_redis:6379 wsapp_redis-replica:6379 wsapp_sentinel:26379"

# The job's script (sh, in the Redis image): every address of every target, each must answer OK.
# shellcheck disable=SC2016  # expanded by the job's shell
readonly JOB='set -eu
export REDISCLI_AUTH="$(cat /run/secrets/redis_admin_password)"
password=$(cat /run/secrets/password)
count=0
for target in $TARGETS; do
  host=${target%:*} port=${target##*:}
  for address in $(getent ahostsv4 "tasks.$host" | awk "{print \$1}" | sort -u); do
    answer=$(printf "ACL SETUSER wsapp %s%s\n" "$OP" "$password" |
      timeout 5 redis-cli --no-auth-warning --user admin -h "$address" -p "$port") || answer="no answer"
    [ "$answer" = OK ] || { echo "$host ($address): $answer" >&2; exit 1; }
    echo "$host ($address): OK"
    count=$((count + 1))
  done
done
echo "$count Redis and Sentinels changed"'

usage() {
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  echo "Settings: JOB_TIMEOUT (seconds, default 120)."
}

main() {
  local action=${1:-} secret=${2:-} op image
  case $action in
    add) op='>' ;;
    remove) op='<' ;;
    -h | --help) usage; return 0 ;;
    *) usage >&2; die "the first argument must be add or remove" ;;
  esac
  [[ -n $secret ]] || die "name the Swarm secret that holds the password (e.g. wsapp_redis_password_2)"
  docker secret inspect "$secret" >/dev/null 2>&1 || die "no Swarm secret $secret: create it first"
  image=$(docker service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "${INFRA_STACK}_redis") ||
    die "no service ${INFRA_STACK}_redis: is the stack up (make up)?"
  # The job's node may have to pull the image: the job gets this client's login (swarm_job).
  registry_login || die "cannot log in to the registry $REGISTRY; see above"
  log "$action the password of $secret for the Redis user wsapp on every Redis and Sentinel"
  swarm_job "$JOB_TIMEOUT" redis-password "ACL SETUSER wsapp" --mode replicated-job --network "$NETWORK" \
    --read-only --cap-drop ALL --user redis \
    --secret "source=wsapp_redis_admin_password,target=redis_admin_password" \
    --secret "source=$secret,target=password" --env "OP=$op" --env "TARGETS=$TARGETS" \
    "$image" sh -c "$JOB"
}

main "$@"
