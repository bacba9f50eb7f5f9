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
# The record of the active color: a label on the Nginx service, kept in the managers' Raft store.
readonly COLOR_LABEL=com.wsapp.active-color
# Set (to the color switched from) while a switch to the recorded color is not confirmed yet: the
# record names a color that has not passed the release gate. promote.sh removes it once it has.
readonly SWITCH_FROM_LABEL=com.wsapp.switch-from
# Nodes with this label run Nginx (stack/infra.yml, global service) and publish the public port.
readonly EDGE_LABEL=wsapp.edge
readonly COLORS=(blue green)
readonly IMAGES_ENV="$ROOT_DIR/.images.env"
# Where images travel (docs/operations.md, "The image registry"): REGISTRY when the operator names
# one (and is logged in to it), else the project's own (stack/registry.yml), which every node
# reaches on its own loopback, 127.0.0.1:REGISTRY_PORT.
readonly REGISTRY_STACK=wsapp-registry
readonly REGISTRY_PORT=${REGISTRY_PORT:-5000}
if [[ -n ${REGISTRY:-} ]]; then OWN_REGISTRY=0; else OWN_REGISTRY=1; fi
readonly OWN_REGISTRY
REGISTRY=${REGISTRY:-127.0.0.1:$REGISTRY_PORT}
readonly REGISTRY=${REGISTRY%/}
readonly PUSH_TIMEOUT=${PUSH_TIMEOUT:-300}
readonly REGISTRY_WAIT=${REGISTRY_WAIT:-60}
# One lock for every command that changes the system: up, down, promote and rollback. Its directory
# is one only its owner can write (root: /run/wsapp; anyone else: $XDG_RUNTIME_DIR/wsapp), made mode
# 0700 by take_lock: in /tmp any local user could take the lock first, or plant a symlink there.
if ((EUID == 0)); then
  readonly LOCK_DIR=${LOCK_DIR:-/run/wsapp}
else
  readonly LOCK_DIR=${LOCK_DIR:-${XDG_RUNTIME_DIR:+$XDG_RUNTIME_DIR/wsapp}}
fi
readonly LOCK_FILE=${LOCK_FILE:-${LOCK_DIR:+$LOCK_DIR/wsapp.lock}}

STEP_STARTED=$SECONDS
# Every step so far, "EPOCH NAME" per line (promote.sh's release report shows them).
STEP_LOG=""

log() { echo "==> $(date -u +%H:%M:%S) $*" >&2; }
warn() { echo "WARNING: $*" >&2; }
error() { echo "ERROR: $*" >&2; }
die() { error "$@"; exit 1; }

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# step NAME: log the start of a step and the duration of the previous one; STEP_LOG records it.
step() {
  local now
  log "$* (previous step took $((SECONDS - STEP_STARTED))s)"
  STEP_STARTED=$SECONDS
  printf -v now '%(%s)T' -1
  STEP_LOG+="$now $*"$'\n'
}

# is_loopback ADDR: no other host can reach this machine at ADDR (a swarm advertising it cannot be
# joined: scripts/up.sh with CLUSTER=1, scripts/cluster.sh).
is_loopback() { [[ $1 == 127.* || $1 == ::1 || $1 == localhost ]]; }

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

# Not grep -q: it stops at the first match, and under pipefail the list's writer, cut off by
# SIGPIPE, would fail the pipeline.
stack_exists() {
  docker stack ls --format '{{.Name}}' | grep -x "$1" >/dev/null
}

# stack_gone STACK: no service and no container of the stack is left.
stack_gone() {
  [[ -z $(docker service ls -q --filter "label=com.docker.stack.namespace=$1") ]] &&
    [[ -z $(docker ps -aq --filter "label=com.docker.stack.namespace=$1") ]]
}

# service_replicas SERVICE: the number of replicas the service's spec asks for; for a global
# service (Nginx), the number of tasks Swarm wants running (one per eligible node).
service_replicas() {
  local replicas
  replicas=$(docker service inspect --format '{{if .Spec.Mode.Global}}global{{else}}{{.Spec.Mode.Replicated.Replicas}}{{end}}' "$1") ||
    return 1
  if [[ $replicas == global ]]; then
    docker service ps -q --filter desired-state=running "$1" | wc -l
  else
    echo "$replicas"
  fi
}

# running_tasks SERVICE: how many of its tasks are Running, which for a service with a
# healthcheck means healthy.
running_tasks() {
  local count
  count=$(docker service ps "$1" --filter desired-state=running --format '{{.CurrentState}}' |
    grep -c '^Running') || true
  echo "${count:-0}"
}

# service_running SERVICE [WANT]: at least WANT (default: the spec's replicas, and at least one: a
# global service has no task for a moment after its deploy) tasks are Running.
service_running() {
  local service=$1 want=${2:-} running
  if [[ -z $want ]]; then
    want=$(service_replicas "$service") || return 1
    ((want > 0)) || return 1
  fi
  running=$(running_tasks "$service")
  ((running >= want))
}

# deploy_color COLOR IMAGE VERSION [REPLICAS]: deploy (or update) COLOR's stack with IMAGE (a
# reference from deploy_ref) as APP_VERSION=VERSION; without REPLICAS, stack/app.yml's default (or
# $REPLICAS from the environment) applies.
deploy_color() {
  local color=$1 image=$2 version=$3 replicas=${4:-}
  local -a vars=("APP_IMAGE=$image" "APP_VERSION=$version")
  [[ -n $replicas ]] && vars+=("REPLICAS=$replicas")
  env "${vars[@]}" docker stack deploy --detach=true --resolve-image never --with-registry-auth \
    -c "$ROOT_DIR/stack/app.yml" -c "$ROOT_DIR/stack/$color.yml" "$(color_stack "$color")" >/dev/null
}

# working_tree_tag: a new tag for an image of the working tree, wsapp:<UTC time>-<commit>.
working_tree_tag() {
  echo "wsapp:$(date -u +%Y%m%d%H%M%S)-$(git -C "$ROOT_DIR" rev-parse --short HEAD 2>/dev/null || echo dev)"
}

# image_version IMAGE: the version an image is released as: its tag (wsapp:20260101-abc1234 ->
# 20260101-abc1234), or for a reference by digest alone, the digest's first 12 digits.
image_version() {
  local image=$1 name=${1%@*}
  if [[ ${name##*/} == *:* ]]; then
    echo "${name##*:}"
  elif [[ $image == *@sha256:* ]]; then
    echo "sha256-$(cut -c1-12 <<<"${image##*@sha256:}")"
  else
    echo latest
  fi
}

# registry_tag IMAGE: IMAGE's name in REGISTRY, same path and tag; a registry host in the name is
# dropped (wsapp:1 -> REGISTRY/wsapp:1, other.example/team/x:2 -> REGISTRY/team/x:2). A name
# already in REGISTRY is itself.
registry_tag() {
  local image=$1 name tag=latest
  [[ $image == "$REGISTRY"/* ]] && { echo "$image"; return 0; }
  name=$image
  if [[ ${name##*/} == *:* ]]; then
    tag=${name##*:}
    name=${name%:*}
  fi
  [[ $name == */* && ${name%%/*} =~ [.:]|^localhost$ ]] && name=${name#*/}
  echo "$REGISTRY/$name:$tag"
}

# pick_digest REPO|- DIGEST...: the first of an image's RepoDigests (NAME@sha256:...) in REPO, or
# with -, the first from anywhere but REGISTRY (where an official image was pulled from).
pick_digest() {
  local repo=$1 digest
  shift
  for digest in "$@"; do
    if [[ $repo == - ]]; then
      [[ $digest == "$REGISTRY"/* ]] || { echo "$digest"; return 0; }
    elif [[ ${digest%@*} == "$repo" ]]; then
      echo "$digest"
      return 0
    fi
  done
  return 0
}

# registry_probe: what this node's engine answers, with this client's login, for a name nobody
# pushed. A live registry refuses it ("manifest unknown"), or, to a client without the password,
# answers "unauthorized" / "no basic auth credentials"; a proxy whose registry is away answers
# 502, an address nothing listens on refuses the connection.
registry_probe() {
  timeout --kill-after=5 20 docker pull -q "$REGISTRY/wsapp-probe:none" 2>&1
}

# registry_answers: the registry itself answers this node's engine (with or without a login).
registry_answers() {
  local out
  out=$(registry_probe) && return 0
  [[ $out =~ (not\ found|manifest\ unknown|denied|unauthorized|no\ basic\ auth) ]]
}

# registry_logged_in: the registry answers, and this client's login is good for it.
registry_logged_in() {
  local out
  out=$(registry_probe) && return 0
  [[ $out =~ (not\ found|manifest\ unknown) ]]
}

# registry_login: this machine's Docker client logged in to the project's own registry (user
# wsapp), as to any private registry (docs/security.md, "The registry"). Every push needs it, and
# every deploy sends it to the nodes (--with-registry-auth): the proxies add no password. When the
# client's login is missing or stale (another manager, a registry made anew), the password is read
# from its Swarm secret: a short-lived task with the secret on the node this client talks to, whose
# file `docker exec` streams straight into `docker login` (no file on either machine, no log; a bind
# mount would need a directory on that node, which is not this machine where DOCKER_HOST points
# elsewhere). Nothing to do for an operator's own REGISTRY (docker login).
registry_login() {
  [[ $OWN_REGISTRY == 1 ]] || return 0
  if ! wait_for "$REGISTRY_WAIT" "the registry $REGISTRY to answer this node" registry_answers; then
    error "no registry answers at $REGISTRY: is it up (docker service ps ${REGISTRY_STACK}_registry;" \
      "its node must be up)?"
    return 1
  fi
  registry_logged_in && return 0
  log "logging this client in to $REGISTRY (password from the secret wsapp_registry_password)"
  local image node name status=0
  image=$(docker service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "${REGISTRY_STACK}_proxy") &&
    node=$(docker info --format '{{.Swarm.NodeID}}') || return 1
  name=wsapp-registry-login-$(date -u +%H%M%S)-$RANDOM
  # The proxy's image: every node has it (they cannot pull it from the registry). It sleeps at most
  # a minute, and is removed as soon as the password was read.
  docker service create --quiet --detach --no-resolve-image --name "$name" --label com.wsapp.job=registry-login \
    --container-label com.wsapp.job=registry-login --restart-condition none --constraint "node.id==$node" \
    --user 0 --read-only --cap-drop ALL \
    --secret "source=wsapp_registry_password,target=registry_password,uid=0,gid=0,mode=0400" \
    --entrypoint sleep "$image" 60 >/dev/null || status=$?
  if ((status == 0)) && wait_for 60 "the registry login task to run on this node" login_task_running "$name"; then
    docker exec "$(login_task "$name")" cat /run/secrets/registry_password |
      docker login --username wsapp --password-stdin "$REGISTRY" >/dev/null 2>&1 || status=$?
  else
    status=1
  fi
  docker service rm "$name" >/dev/null 2>&1 || true
  docker ps -aq --filter "label=com.docker.swarm.service.name=$name" | xargs -r docker rm -f >/dev/null 2>&1 || true
  ((status == 0)) && registry_logged_in && return 0
  error "could not log in to $REGISTRY with the password of the secret wsapp_registry_password" \
    "(docker login -u wsapp $REGISTRY by hand tells why)"
  return 1
}

# login_task NAME: the running container of service NAME on this node; login_task_running: there is one.
login_task() { docker ps -q --filter "label=com.docker.swarm.service.name=$1" --filter status=running | head -n 1; }
login_task_running() { [[ -n $(login_task "$1") ]]; }

# push_image NAME: push to the registry, bounded. First wait (REGISTRY_WAIT) until the registry
# answers: one that was just deployed may not yet, and the engine retries a push to one that is
# away for minutes.
push_image() {
  local image=$1 attempt
  if [[ $OWN_REGISTRY == 1 ]]; then
    registry_login || return 1
  elif ! wait_for "$REGISTRY_WAIT" "the registry $REGISTRY to answer this node" registry_answers; then
    error "no registry answers at $REGISTRY: is it up (docker service ps ${REGISTRY_STACK}_registry;" \
      "its node must be up) or, for your own REGISTRY, reachable from this node?"
    return 1
  fi
  for attempt in 1 2; do
    timeout --kill-after=10 "$PUSH_TIMEOUT" docker push -q "$image" >/dev/null && return 0
    warn "push of $image failed (attempt $attempt of 2)"
    sleep 3
  done
  error "could not push $image to $REGISTRY (for your own REGISTRY: are you logged in, docker login?)"
  return 1
}

# deploy_ref IMAGE: the reference every node pulls IMAGE by, pinned to its digest, so every node
# runs the same bytes (docs/operations.md, "The image registry"):
#  - a reference by digest, or a name in REGISTRY not present here: as it is (the nodes pull it);
#  - an image pulled from elsewhere (an official image): NAME@sha256:... from its RepoDigests;
#  - an image built here (stand-ins, the app): tagged REGISTRY/NAME:TAG, pushed, and deployed as
#    REGISTRY/NAME@sha256:... from the push;
#  - a name not present here: REGISTRY/NAME:TAG if another node pushed it.
deploy_ref() {
  local image=$1 target digest
  local -a digests
  if [[ $image == *@sha256:* ]]; then
    echo "$image"
    return 0
  fi
  if ! image_exists "$image"; then
    [[ $image == "$REGISTRY"/* ]] && { echo "$image"; return 0; }
    # Built and pushed on another node (make up there): take it back from the registry.
    target=$(registry_tag "$image")
    if ! timeout --kill-after=10 "$PUSH_TIMEOUT" docker pull -q "$target" >/dev/null 2>&1; then
      error "image $image is not present on this node, nor in the registry as $target"
      return 1
    fi
    image=$target
  fi
  read -ra digests <<<"$(docker image inspect --format '{{join .RepoDigests " "}}' "$image")"
  digest=$(pick_digest - "${digests[@]}")
  if [[ -n $digest ]]; then
    echo "$digest"
    return 0
  fi
  target=$(registry_tag "$image")
  log "pushing $image as $target"
  if [[ $target != "$image" ]]; then
    docker tag "$image" "$target" || return
  fi
  push_image "$target" || return
  read -ra digests <<<"$(docker image inspect --format '{{join .RepoDigests " "}}' "$target")"
  digest=$(pick_digest "${target%:*}" "${digests[@]}")
  [[ -n $digest ]] || { error "$target was pushed but has no digest of ${target%:*}"; return 1; }
  echo "$digest"
}

# Resolve images once (official where they can be pulled, Debian-built stand-ins otherwise).
load_images() {
  # A file written before the registry or the exporters existed lacks them: resolve again.
  if [[ ! -s $IMAGES_ENV ]] || ! grep -q '^export REGISTRY_IMAGE=' "$IMAGES_ENV" ||
    ! grep -q '^export REDIS_EXPORTER_IMAGE=' "$IMAGES_ENV" ||
    ! grep -q '^export POSTGRES_EXPORTER_IMAGE=' "$IMAGES_ENV" ||
    ! grep -q '^export EDGE_EXPORTER_IMAGE=' "$IMAGES_ENV"; then
    "$ROOT_DIR/scripts/images.sh" resolve >"$IMAGES_ENV.tmp" || return
    mv "$IMAGES_ENV.tmp" "$IMAGES_ENV"
  fi
  # shellcheck source=/dev/null
  . "$IMAGES_ENV"
}

# A hash of the configuration files: Swarm configs are immutable, so a change gets a new name.
config_version() {
  cat "$ROOT_DIR"/nginx/* "$ROOT_DIR"/redis/* "$ROOT_DIR"/observability/prometheus/* "$ROOT_DIR"/observability/alertmanager/* \
    "$ROOT_DIR"/observability/edge-exporter/* \
    "$ROOT_DIR"/observability/grafana/provisioning/*/* "$ROOT_DIR"/observability/grafana/dashboards/* |
    sha256sum | cut -c1-12
}

# active_color: the recorded active color, the Nginx service's label (readable on any manager).
active_color() {
  local color
  color=$(docker service inspect --format "{{index .Spec.Labels \"$COLOR_LABEL\"}}" "$NGINX_SERVICE") || return 1
  [[ $color == blue || $color == green ]] || { error "$NGINX_SERVICE has no $COLOR_LABEL label (got '$color')"; return 1; }
  echo "$color"
}

# switch_from: the color a switch to the recorded color started from while that switch is not
# confirmed (empty when none is pending).
switch_from() {
  docker service inspect --format "{{index .Spec.Labels \"$SWITCH_FROM_LABEL\"}}" "$NGINX_SERVICE"
}

# down_edges: the IDs of edge nodes that are not up (Status not Ready, or Availability pause or
# drain). A switch skips them: no job task can run there; an Nginx that starts there later starts
# with the recorded color (nginx/start.sh).
down_edges() {
  local id state
  docker node ls -q --filter "node.label=$EDGE_LABEL=true" | while read -r id; do
    state=$(docker node inspect --format '{{.Status.State}} {{.Spec.Availability}}' "$id") || continue
    [[ $state == "ready active" ]] || echo "$id"
  done
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

# run_on_network SECONDS DOCKER_RUN_ARGS...: a throwaway container on the overlay network, stopped
# after SECONDS at most (docker run passes the signal on to the container). It has no Redis
# password: commands that need Redis run as a Swarm job (ctl_job).
run_on_network() {
  local seconds=$1
  shift
  timeout --kill-after=10 "$seconds" docker run --rm --network "$NETWORK" --read-only --cap-drop ALL \
    --security-opt no-new-privileges "$@"
}

# ipsec_probe: whether this kernel can run Docker's encrypted overlay, which has libnetwork program
# IPsec ESP transport-mode states with AES-GCM (rfc4106(gcm(aes))) through xfrm. Tries to add one
# in a throwaway network namespace; prints the kernel's refusal and fails when it cannot.
ipsec_probe() {
  local ns=wsapp-ipsec-probe-$$ key answer status=0
  key=0x$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
  ip netns add "$ns" 2>/dev/null || { echo "cannot create a network namespace to try (ip netns add)"; return 1; }
  answer=$(ip -n "$ns" xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x100 mode transport \
    aead 'rfc4106(gcm(aes))' "$key" 128 2>&1) || status=$?
  ip netns del "$ns" 2>/dev/null || true
  ((status == 0)) || { echo "ip xfrm state add ... proto esp ... aead 'rfc4106(gcm(aes))': ${answer:-refused}"; return 1; }
}

# swarm_job SECONDS KIND WHAT CREATE_ARGS...: a one-off Swarm job, `docker service create
# CREATE_ARGS` (which give its mode, image and command), waited for until every task of it has
# ended. Prints its output, removes it, and fails (naming WHAT) unless every task completed within
# SECONDS.
swarm_job() {
  local seconds=$1 kind=$2 what=$3
  shift 3
  local name states="" deadline=$((SECONDS + seconds))
  name=wsapp-$kind-$(date -u +%H%M%S)-$RANDOM
  docker service create --quiet --detach --no-resolve-image --with-registry-auth --name "$name" --label "com.wsapp.job=$kind" \
    --container-label "com.wsapp.job=$kind" --restart-condition none "$@" >/dev/null || return 1
  local ended=0
  while ((SECONDS < deadline)); do
    states=$(docker service ps "$name" --format '{{.CurrentState}}' 2>/dev/null) || true
    [[ -n $states ]] && ! grep -qvE '^(Complete|Failed|Rejected|Shutdown|Orphaned)' <<<"$states" && { ended=1; break; }
    sleep 0.5
  done
  # Bounded: `docker service logs` is known to hang now and then (docker/cli#4678, moby#33183), and
  # it runs in the restoration too.
  timeout --kill-after=2 10 docker service logs --raw "$name" 2>&1 ||
    echo "WARNING: the output of $what could not be read (within 10 s)" >&2
  docker service rm "$name" >/dev/null 2>&1 || true
  # A finished job's container outlives its service: remove it where it ran on this node (an edge
  # job's containers on other nodes are removed by the next edge job there, release_tools.py).
  docker ps -aq --filter "label=com.docker.swarm.service.name=$name" | xargs -r docker rm -f >/dev/null 2>&1 || true
  if ((!ended)); then
    echo "ERROR: $what did not finish within ${seconds}s (stopped): $(tr '\n' ',' <<<"${states:-not started}" | sed 's/,$//')" >&2
    return 1
  fi
  if grep -qv '^Complete' <<<"$states"; then
    echo "ERROR: $what ended: $(tr '\n' ',' <<<"${states:-not started}" | sed 's/,$//')" >&2
    return 1
  fi
}

# ctl_job SECONDS IMAGE ARGS...: `python -m rooms.ctl ARGS` from IMAGE as a one-off Swarm job on the
# overlay network with the Redis password (a plain `docker run` cannot mount a Swarm secret).
# Prints its output; fails when the command fails or does not finish within SECONDS.
ctl_job() {
  local seconds=$1 image=$2
  shift 2
  swarm_job "$seconds" ctl "rooms.ctl $*" --mode replicated-job --network "$NETWORK" --read-only \
    --cap-drop ALL --secret "source=$REDIS_PASSWORD_SECRET,target=redis_password" \
    --env REDIS_SENTINELS=wsapp_sentinel:26379 --env REDIS_SENTINEL_MASTER=wsapp \
    --env REDIS_USERNAME=wsapp --env REDIS_PASSWORD_FILE=/run/secrets/redis_password \
    "$image" python -m rooms.ctl "$@"
}

# The database of a release (DATABASE_URL in the release file; stack/infra.yml's postgres service):
# the secrets the app and the database jobs mount (stack/app.yml); scripts/up.sh creates them.
readonly POSTGRES_PASSWORD_SECRET=wsapp_postgres_password
readonly TICKET_KEYS_SECRET=wsapp_ticket_keys
readonly DJANGO_SECRET_KEY_SECRET=wsapp_django_secret_key
readonly MIGRATE_TIMEOUT=${MIGRATE_TIMEOUT:-300}
# Seconds a migration waits for a table's lock. Its ACCESS EXCLUSIVE request queued behind a long
# transaction would block every later query of the serving color on that table while it waits: it
# gives up instead, and the release fails with the old color serving (run it again later).
readonly MIGRATE_LOCK_TIMEOUT=${MIGRATE_LOCK_TIMEOUT:-5}

# manage_job SECONDS KIND IMAGE ARGS...: `python manage.py ARGS` from IMAGE (through its entrypoint,
# which runs a given command in service/) as a one-off Swarm job on the overlay network, with the
# settings the app has for the database (DATABASE_URL from the release file, the password and the
# ticket keys as secrets: a plain `docker run` cannot mount a Swarm secret), and the app's metrics
# directory on the job's tmpfs /tmp (importing the app's code creates its metrics; the entrypoint makes
# PROMETHEUS_MULTIPROC_DIR for the server only). Prints its output; fails
# when the command fails or does not finish within SECONDS (then the job is removed, which stops it;
# Postgres rolls the interrupted migration's transaction back).
# Its statements may run as long as the job (the app's 5 s would abort a migration of a big table),
# and no longer: a job stopped at its bound leaves no statement running on in Postgres, holding its
# locks while the serving color waits behind them (Postgres does not notice a client gone mid-statement).
manage_job() {
  local seconds=$1 kind=$2 image=$3
  shift 3
  swarm_job "$seconds" "$kind" "manage.py $*" --mode replicated-job --network "$NETWORK" --read-only \
    --cap-drop ALL --mount type=tmpfs,destination=/tmp --env PROMETHEUS_MULTIPROC_DIR=/tmp \
    --secret "source=$POSTGRES_PASSWORD_SECRET,target=postgres_password" \
    --secret "source=$TICKET_KEYS_SECRET,target=ticket_keys" \
    --secret "source=$DJANGO_SECRET_KEY_SECRET,target=django_secret_key" \
    --env "DATABASE_URL=$DATABASE_URL" --env DATABASE_PASSWORD_FILE=/run/secrets/postgres_password \
    --env TICKET_KEYS_FILE=/run/secrets/ticket_keys --env DJANGO_SECRET_KEY_FILE=/run/secrets/django_secret_key \
    --env "DATABASE_STATEMENT_TIMEOUT=$seconds" --env "DATABASE_LOCK_TIMEOUT=$MIGRATE_LOCK_TIMEOUT" \
    --env "ALLOWED_HOSTS=$ALLOWED_HOSTS" --env "PUBLIC_ORIGINS=$PUBLIC_ORIGINS" --env "LOG_LEVEL=$LOG_LEVEL" \
    "$image" python manage.py "$@"
}

# lint_migrations_job IMAGE: `manage.py checkmigrations --unapplied-migrations` (members): refuses
# the migrations of IMAGE the database lacks (this release's) when one would break the color still
# running (django-migration-linter), or is a contract step shipped with its expand (docs/operations.md,
# "Migrations: expand, then contract"). It needs the database: the linter reads which migrations
# are applied, and sqlmigrate renders them for it. The linter never changes the database.
lint_migrations_job() {
  [[ -n ${DATABASE_URL:-} ]] || { log "DATABASE_URL is empty: no database, no migrations to check"; return 0; }
  manage_job "$MIGRATE_TIMEOUT" lintmigrations "$1" checkmigrations --unapplied-migrations
}

# migrate_job IMAGE: `manage.py migrate` with IMAGE's migrations, before a color of IMAGE starts
# (promote.sh, after lint_migrations_job; scripts/up.sh, before the first color). With DATABASE_URL
# empty there is no database: it does nothing.
migrate_job() {
  [[ -n ${DATABASE_URL:-} ]] || { log "DATABASE_URL is empty: no database, no migration"; return 0; }
  manage_job "$MIGRATE_TIMEOUT" migrate "$1" migrate --noinput
}

# tools_config: the Swarm config holding scripts/release_tools.py, named by its content (configs are
# immutable), created when missing. Prints its name.
tools_config() {
  local name
  name=wsapp_release_tools_$(sha256sum "$ROOT_DIR/scripts/release_tools.py" | cut -c1-12)
  docker config inspect "$name" >/dev/null 2>&1 ||
    docker config create --label "com.docker.stack.namespace=$INFRA_STACK" "$name" \
      "$ROOT_DIR/scripts/release_tools.py" >/dev/null || return 1
  echo "$name"
}

# edge_job SECONDS IMAGE ARGS...: `release_tools.py ARGS` once on every edge node, at the same time
# (a global job), with that node's Docker socket: it reaches the node's own Nginx containers, on
# any node, from any manager. IMAGE is an app image (it has Python); root inside, to use the socket.
# Edge nodes that are down (down_edges) are left out: a task there would never run.
edge_job() {
  local seconds=$1 image=$2 config id
  local -a skip=()
  shift 2
  config=$(tools_config) || return 1
  for id in $(down_edges); do skip+=(--constraint "node.id!=$id"); done
  swarm_job "$seconds" edge "release_tools.py $*" --mode global-job \
    --constraint "node.labels.$EDGE_LABEL==true" "${skip[@]}" --user 0 --read-only --cap-drop ALL \
    --mount type=bind,source=/var/run/docker.sock,target=/var/run/docker.sock \
    --config "source=$config,target=/release_tools.py,mode=0444" \
    --entrypoint python "$image" /release_tools.py "$@"
}

# Remove jobs an interrupted command left behind, and their containers on this node.
remove_jobs() {
  docker service ls -q --filter label=com.wsapp.job | xargs -r docker service rm >/dev/null 2>&1 || true
  docker ps -aq --filter label=com.wsapp.job | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker ps -aq --filter name=wsapp-ctl- | xargs -r docker rm -f >/dev/null 2>&1 || true
}

# The swarm-wide lock: a Swarm config, created atomically in the managers' Raft store, so that
# commands on two managers cannot change the system at once either. A lock older than
# LOCK_STALE_SECONDS was left by a command that was killed outright: it is taken over, with a warning.
readonly SWARM_LOCK=wsapp-lock
readonly LOCK_STALE_SECONDS=${LOCK_STALE_SECONDS:-1800}
# The ID of the lock config this command created (empty: it holds none).
SWARM_LOCK_HELD=""

# take_lock: hold LOCK_FILE (this machine) and the swarm-wide lock until this script exits; a
# second command that changes the system stops at once instead of racing this one. The lock is
# released by release_lock, from the EXIT trap (a script with its own EXIT trap calls it there).
take_lock() {
  [[ -n $LOCK_FILE ]] ||
    die "no place for the lock file: set XDG_RUNTIME_DIR (a login session has it) or LOCK_FILE," \
      "in a directory only you can write"
  if [[ $LOCK_FILE == "$LOCK_DIR/wsapp.lock" ]]; then
    private_dir "$LOCK_DIR"
  fi
  exec 9>"$LOCK_FILE"
  flock -n 9 || die "another up, down, promote or rollback holds $LOCK_FILE; wait for it to finish"
  trap release_lock EXIT
  [[ $(docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null) == true ]] || return 0
  local holder stale id since
  holder="${0##*/} pid $$ on $(hostname) via ${DOCKER_HOST:-the local engine}"
  if ! create_swarm_lock "$holder"; then
    stale=$(docker config inspect --format '{{.ID}} {{index .Spec.Labels "com.wsapp.lock.since"}}' "$SWARM_LOCK" 2>/dev/null) || true
    read -r id since <<<"$stale"
    if [[ $since =~ ^[0-9]+$ ]] && (($(date +%s) - since > LOCK_STALE_SECONDS)); then
      warn "taking over the swarm lock left $(($(date +%s) - since))s ago by $(swarm_lock_holder)"
      # By ID: if another command took the stale lock over meanwhile, its lock (a new ID) stays
      # and the create below fails, instead of both holding the lock.
      docker config rm "$id" >/dev/null 2>&1 || true
      create_swarm_lock "$holder" || die "could not take the swarm lock: $(swarm_lock_holder) holds it"
    else
      die "another command holds the swarm lock: $(swarm_lock_holder). If none runs (it was killed)," \
        "remove it: ./promote.sh unlock"
    fi
  fi
}

# private_dir DIR: DIR exists, is this user's, and no one else can write in it (made mode 0700 if missing).
private_dir() {
  local dir=$1 mode
  [[ -e $dir ]] || mkdir -m 0700 "$dir" 2>/dev/null || [[ -d $dir ]] || die "could not create $dir for the lock file"
  mode=$(stat -c %a "$dir")
  if [[ -L $dir || ! -d $dir || ! -O $dir ]] || ((8#$mode & 8#022)); then
    die "$dir (for the lock file) must be a directory of yours that only you can write, not" \
      "$(stat -c '%F of %U, mode %a' "$dir"): remove it, or set LOCK_DIR or LOCK_FILE"
  fi
}

# create_swarm_lock HOLDER: create the lock; SWARM_LOCK_HELD is its ID (release_lock removes that
# config only, never a lock another command took over).
create_swarm_lock() {
  local id
  id=$(printf '%s\n' "$1" | docker config create --label "com.wsapp.lock.since=$(date +%s)" \
    --label "com.wsapp.lock.holder=$1" "$SWARM_LOCK" - 2>/dev/null) && [[ -n $id ]] || return 1
  SWARM_LOCK_HELD=$id
}

swarm_lock_holder() {
  docker config inspect --format '{{index .Spec.Labels "com.wsapp.lock.holder"}}' "$SWARM_LOCK" 2>/dev/null ||
    echo "(gone meanwhile)"
}

# release_lock: give the swarm-wide lock back (the file lock ends with the process). Never fails.
# By ID: a command that ran past LOCK_STALE_SECONDS must not remove the lock of the one that took
# it over.
release_lock() {
  [[ -n $SWARM_LOCK_HELD ]] || return 0
  docker config rm "$SWARM_LOCK_HELD" >/dev/null 2>&1 ||
    warn "could not remove the swarm lock $SWARM_LOCK (ID $SWARM_LOCK_HELD): if the engine was away, ./promote.sh unlock;" \
      "if it was taken over as stale, it is the other command's now"
  SWARM_LOCK_HELD=""
}

# require_int NAME MIN: the variable NAME holds a whole number of at least MIN.
require_int() {
  local name=$1 min=$2 value=${!1-}
  [[ $value =~ ^[0-9]+$ ]] || die "$name must be a whole number, got '$value'"
  ((10#$value >= min)) || die "$name must be at least $min, got $value"
}

# require_decimal NAME: the variable NAME holds a non-negative decimal number.
require_decimal() {
  local name=$1 value=${!1-}
  [[ $value =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "$name must be a non-negative number, got '$value'"
}

# The release file (stack/release.env, or RELEASE_ENV): the only source of a release's settings.
readonly RELEASE_KEYS=(ALLOWED_HOSTS PUBLIC_ORIGINS PUBLIC_ORIGIN REPLICAS WEB_CONCURRENCY MAX_CONNECTIONS LOG_LEVEL
  NETWORK_SUBNET NGINX_CPUS NGINX_WORKER_CONNECTIONS NGINX_WS_PER_ADDRESS NGINX_WS_RATE NGINX_WS_BURST
  NGINX_HTTP_RATE NGINX_HTTP_BURST NGINX_LOGIN_RATE NGINX_LOGIN_BURST REDIS_PASSWORD_SECRET ROOM_CREATIONS_PER_ADDRESS ALERT_WEBHOOK_URL REPORT_DIR
  DATABASE_URL)

# load_release_env: read NAME=value lines (no shell evaluation), refuse unknown or missing names
# and bad values, and export them, over whatever the shell had.
load_release_env() {
  local file=${RELEASE_ENV:-$ROOT_DIR/stack/release.env} line key value number=0
  local -A seen=()
  [[ -r $file ]] || die "release file $file cannot be read (RELEASE_ENV)"
  while IFS= read -r line || [[ -n $line ]]; do
    number=$((number + 1))
    [[ $line =~ ^[[:space:]]*(#.*)?$ ]] && continue
    [[ $line =~ ^([A-Z_][A-Z0-9_]*)=([^[:space:]]*)$ ]] || die "$file:$number: expected NAME=value, got '$line'"
    key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
    [[ " ${RELEASE_KEYS[*]} " == *" $key "* ]] || die "$file:$number: unknown setting $key"
    [[ -z ${seen[$key]:-} ]] || die "$file:$number: $key is set twice"
    if [[ -n ${!key+set} && ${!key} != "$value" ]]; then
      warn "$key=${!key} in the environment is ignored: the release file says $key=$value"
    fi
    seen[$key]=1
    export "$key=$value"
  done <"$file"
  for key in "${RELEASE_KEYS[@]}"; do
    [[ -n ${seen[$key]:-} ]] || die "$file does not set $key"
  done
  for key in REPLICAS WEB_CONCURRENCY MAX_CONNECTIONS NGINX_CPUS NGINX_WORKER_CONNECTIONS; do
    require_int "$key" 1
  done
  for key in NGINX_WS_PER_ADDRESS NGINX_WS_RATE NGINX_WS_BURST NGINX_HTTP_RATE NGINX_HTTP_BURST NGINX_LOGIN_RATE \
    NGINX_LOGIN_BURST ROOM_CREATIONS_PER_ADDRESS; do
    require_int "$key" 0
  done
  ((NGINX_WORKER_CONNECTIONS <= 19900)) ||
    die "NGINX_WORKER_CONNECTIONS=$NGINX_WORKER_CONNECTIONS does not fit the open-file limit of 20000"
  [[ $ALLOWED_HOSTS =~ ^[^,]+(,[^,]+)*$ ]] || die "ALLOWED_HOSTS must be a comma-separated list, got '$ALLOWED_HOSTS'"
  [[ $PUBLIC_ORIGIN =~ ^https?://[^/,]+$ ]] || die "PUBLIC_ORIGIN must be scheme://host[:port], got '$PUBLIC_ORIGIN'"
  [[ $PUBLIC_ORIGINS =~ ^https?://[^/,]+(,https?://[^/,]+)*$ ]] ||
    die "PUBLIC_ORIGINS must be comma-separated scheme://host[:port], got '$PUBLIC_ORIGINS'"
  [[ ,$PUBLIC_ORIGINS, == *",$PUBLIC_ORIGIN,"* ]] ||
    die "PUBLIC_ORIGIN=$PUBLIC_ORIGIN is not one of PUBLIC_ORIGINS=$PUBLIC_ORIGINS: the replicas would refuse it"
  [[ $NETWORK_SUBNET =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$ ]] ||
    die "NETWORK_SUBNET must be an IPv4 network such as 10.231.0.0/24, got '$NETWORK_SUBNET'"
  [[ $LOG_LEVEL =~ ^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$ ]] || die "LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL"
  [[ -z $REPORT_DIR || $REPORT_DIR =~ ^[A-Za-z0-9_./-]+$ ]] ||
    die "REPORT_DIR must be a directory (letters, digits and _ . / -) or empty, got '$REPORT_DIR'"
  [[ $REDIS_PASSWORD_SECRET =~ ^wsapp_redis_password[A-Za-z0-9_.-]*$ ]] ||
    die "REDIS_PASSWORD_SECRET must be a Swarm secret named wsapp_redis_password..., got '$REDIS_PASSWORD_SECRET'"
  # No password in it: the password is the secret wsapp_postgres_password (DATABASE_PASSWORD_FILE).
  [[ -z $DATABASE_URL || $DATABASE_URL =~ ^postgres(ql)?://[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+(:[0-9]+)?/[A-Za-z0-9_.-]+(\?[A-Za-z0-9_=\&.-]*)?$ ]] ||
    die "DATABASE_URL must be postgres://user@host[:port]/database without a password (or empty), got '$DATABASE_URL'"
  [[ -z $ALERT_WEBHOOK_URL || $ALERT_WEBHOOK_URL =~ ^https?://[^\'\"]+$ ]] ||
    die "ALERT_WEBHOOK_URL must be an http:// or https:// URL (or empty), got '$ALERT_WEBHOOK_URL'"
}

# report_dir: where promote.sh writes its release reports: REPORT_DIR, relative to the repository
# unless absolute; empty when REPORT_DIR is empty (no reports).
report_dir() {
  [[ -n ${REPORT_DIR:-} ]] || return 0
  if [[ $REPORT_DIR == /* ]]; then echo "$REPORT_DIR"; else echo "$ROOT_DIR/$REPORT_DIR"; fi
}

# Run the release tool (scripts/release_tools.py) with the runtime of IMAGE (which has Python and
# websockets). The script travels on the container's standard input, not as a bind mount: the
# engine may be on another machine, which has no checkout (docs/cluster.md). Every check inside is
# bounded; the timeout is a backstop.
release_tool() {
  local image=$1
  shift
  run_on_network "${RELEASE_TOOL_TIMEOUT:-900}" -i --entrypoint python "$image" - "$@" \
    <"$ROOT_DIR/scripts/release_tools.py"
}
