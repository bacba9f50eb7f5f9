#!/usr/bin/env bash
# promote.sh: zero-downtime blue/green release on a Docker Swarm manager.
#   ./promote.sh                    build the working tree and release it
#   ./promote.sh --image NAME:TAG   release a given image
# Either is pushed to the registry (REGISTRY, or the project's own) and deployed by digest.
#   ./promote.sh status             active color, image, replicas and health of both colors, the
#                                   last release report, and the color each Nginx (one per edge
#                                   node) serves
#   ./promote.sh rollback           switch back to the previous color while it still runs
#   ./promote.sh repair             switch every Nginx to the last confirmed color (after a switch
#                                   that was cut short or failed half-way)
#   ./promote.sh unlock             remove the swarm-wide lock of a command that was killed outright
# Any failure or interrupt before the old color is removed leaves the old color serving.
# Runs on any manager: the active color is recorded in a label of the Nginx service, and a switch
# reaches the Nginx of every edge node through a Swarm job.
set -Eeuo pipefail
[[ -n ${TRACE:-} ]] && set -x
# shellcheck source=scripts/lib.sh
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/scripts/lib.sh"

readonly HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-120}
readonly DRAIN_SECONDS=${DRAIN_SECONDS:-30}
readonly REMOVE_TIMEOUT=${REMOVE_TIMEOUT:-60}
readonly KEEP_OLD=${KEEP_OLD:-0}
readonly WATCH_SECONDS=${WATCH_SECONDS:-30}
readonly WATCH_ERROR_RATIO=${WATCH_ERROR_RATIO:-0.05}
readonly WATCH_MIN_RATE=${WATCH_MIN_RATE:-0.5}
readonly WATCH_GRACE=${WATCH_GRACE:-10}
readonly PROMETHEUS_URL=${PROMETHEUS_URL:-http://wsapp_prometheus:9090}
readonly UNDRAIN_ATTEMPTS=3
readonly REPORT_TIMEOUT=${REPORT_TIMEOUT:-60}
readonly ENGINE_WAIT=${ENGINE_WAIT:-120}
# MIGRATE_TIMEOUT (scripts/lib.sh): seconds for the migration linter, then for the migrations;
# MIGRATE_LOCK_TIMEOUT: seconds either waits for a lock.
# Seconds for the switch job to run switch-color in the Nginx of every edge node.
readonly SWITCH_TIMEOUT=60
# Seconds for every Nginx to answer (through Swarm's DNS) and agree after a switch. restore() raises
# it: after an engine restart, this node's DNS names the other nodes' Nginx only once the overlay's
# gossip has caught up (tens of seconds on a busy lab), and a restore is no time to give up early.
EXPECT_TIMEOUT=15
# Nginx closes the old color's sockets that are still open this long after a switch's reload
# (worker_shutdown_timeout in nginx/nginx.conf, read from there), without a 1012: the watch and the
# drain, and the jobs that start them (SWITCH_MARGIN seconds), must end before.
readonly NGINX_CONF=${NGINX_CONF:-$ROOT_DIR/nginx/nginx.conf}
readonly SWITCH_MARGIN=10
# Nginx's public port inside the overlay network (published as HTTP_PORT) and its internal one.
readonly NGINX_PUBLIC=http://$NGINX_SERVICE:8080
readonly NGINX_INTERNAL=http://$NGINX_SERVICE:8081

IMAGE=""
# What the nodes run: IMAGE by digest (deploy_ref), and the version it is released as.
IMAGE_REF=""
VERSION=""
ACTIVE=""
IDLE=""
ACTIVE_IMAGE=""
# What the exit trap must undo: none -> deployed (idle stack exists) -> switched -> draining
# -> released. Before "released", a failure or interrupt restores the old color.
STATE=none

usage() {
  cat <<USAGE
Usage: ./promote.sh [--image NAME:TAG] | status | rollback | repair | unlock | --help

Releases a new version by blue/green promotion: with a database (DATABASE_URL), lints and applies
the new image's migrations (a Swarm job each) while the active color serves; deploys the idle color, waits until every
replica is healthy, smoke-tests it through Nginx's preview route, switches every Nginx (the
recorded color, then each edge's Nginx: checked, graceful reload; then each is asked), drains the old color (each client gets {"type":"reconnect"} and close 1012,
spread over the drain window) and removes it. Any failure or Ctrl-C before the old color is
removed puts everything back as it was and exits non-zero. Either way, it ends with a release
report: one HTML page in REPORT_DIR (the release file) with the steps and plots from Prometheus.
Edges on nodes that are down are skipped (their Nginx starts with the new color when they return;
status lists them). A switch that was cut short is repaired first: every Nginx goes back to the
last confirmed color, and the other color is drained before it is removed ('./promote.sh repair'
does only the first part).

The release's own settings (ALLOWED_HOSTS, PUBLIC_ORIGIN, REPLICAS, limits) come from the
release file stack/release.env (RELEASE_ENV=path for another one), never from the environment.

The image (built, or --image) is pushed to the registry and deployed by digest, so every node
runs the same bytes; an --image already in the registry or given by digest is deployed as it is.

Settings of the procedure (environment, with defaults):
  HEALTH_TIMEOUT=$HEALTH_TIMEOUT       seconds for every replica of the new color to be healthy
  DRAIN_SECONDS=$DRAIN_SECONDS         drain window of the old color (WATCH_SECONDS + DRAIN_SECONDS + $SWITCH_MARGIN
                              must stay below Nginx's worker_shutdown_timeout)
  REMOVE_TIMEOUT=$REMOVE_TIMEOUT       seconds for the old stack's containers to stop
  KEEP_OLD=$KEEP_OLD                 1: keep the drained old color running, so that
                              './promote.sh rollback' can switch back to it later
                              (the next promotion removes it)
  WATCH_SECONDS=$WATCH_SECONDS        release gate: after the switch, watch the new color this
                              long in Prometheus (0: off, e.g. where Prometheus does not run)
  WATCH_ERROR_RATIO=$WATCH_ERROR_RATIO  switch back if the new color's server-side error ratio
                              (server errors / messages received, 1 min rate) exceeds this
  WATCH_MIN_RATE=$WATCH_MIN_RATE       ...judged only while it receives at least this many messages/s
  WATCH_GRACE=$WATCH_GRACE          switch back if fewer than REPLICAS replicas are ready this long
  PROMETHEUS_URL=$PROMETHEUS_URL  queried by the watch and the release report (on the overlay network)
  MIGRATE_TIMEOUT=$MIGRATE_TIMEOUT        seconds for each of the two database jobs, with DATABASE_URL set in the
                              release file: the migration linter (refuses migrations that would
                              break the color still running), then manage.py migrate
  MIGRATE_LOCK_TIMEOUT=$MIGRATE_LOCK_TIMEOUT      seconds those jobs wait for a lock (Postgres' lock_timeout):
                              a migration queued behind a long transaction fails the release
                              instead of holding up the serving color's queries on its table
  REPORT_TIMEOUT=$REPORT_TIMEOUT          seconds for the release report (REPORT_DIR in the release file),
                              written at the end of every release that deployed; it never
                              changes the release's outcome
  RELEASE_ENV=\${RELEASE_ENV:-stack/release.env}  the release file
  LOCK_FILE=$LOCK_FILE  shared with make up and make down: one change at a time
                              on this machine, in LOCK_DIR=$LOCK_DIR (made mode 0700;
                              root: /run/wsapp, anyone else: \$XDG_RUNTIME_DIR/wsapp);
                              a Swarm config (wsapp-lock) does the same
                              across managers (./promote.sh unlock removes one left by a
                              killed command; one older than LOCK_STALE_SECONDS=$LOCK_STALE_SECONDS is taken over)
  ENGINE_WAIT=$ENGINE_WAIT          seconds a failed promotion waits for a restarting engine before
                              it restores the old color
  REGISTRY=$REGISTRY  where images go (empty: the project's own, at 127.0.0.1:REGISTRY_PORT)
  PUSH_TIMEOUT=$PUSH_TIMEOUT          seconds per docker push
  REGISTRY_WAIT=$REGISTRY_WAIT           seconds to wait for the registry to answer before a push
  TRACE=1                     trace every command
USAGE
}

# Every numeric setting is checked before anything changes.
validate_settings() {
  require_int HEALTH_TIMEOUT 1
  require_int DRAIN_SECONDS 0
  require_int REMOVE_TIMEOUT 1
  require_int WATCH_SECONDS 0
  require_int PUSH_TIMEOUT 1
  require_int REGISTRY_WAIT 0
  require_int REPORT_TIMEOUT 10
  require_int MIGRATE_TIMEOUT 1
  require_decimal MIGRATE_LOCK_TIMEOUT
  require_decimal WATCH_ERROR_RATIO
  require_decimal WATCH_MIN_RATE
  require_decimal WATCH_GRACE
  [[ $KEEP_OLD == [01] ]] || die "KEEP_OLD must be 0 or 1, got '$KEEP_OLD'"
  check_shutdown_timeout
  load_release_env
}

# After a switch, Nginx's old workers keep the old color's WebSockets until worker_shutdown_timeout,
# then close them without a 1012: the watch and the drain must end before.
check_shutdown_timeout() {
  local timeout
  timeout=$(sed -n 's/^[[:space:]]*worker_shutdown_timeout[[:space:]]\{1,\}\([0-9]\{1,\}\)s\{0,1\};.*/\1/p' \
    "$NGINX_CONF" 2>/dev/null | head -n 1)
  [[ -n $timeout ]] || die "no 'worker_shutdown_timeout <seconds>s;' in $NGINX_CONF"
  ((WATCH_SECONDS + DRAIN_SECONDS + SWITCH_MARGIN < timeout)) ||
    die "WATCH_SECONDS=$WATCH_SECONDS + DRAIN_SECONDS=$DRAIN_SECONDS (+ ${SWITCH_MARGIN}s for the jobs) reaches" \
      "Nginx's worker_shutdown_timeout of ${timeout}s ($NGINX_CONF): Nginx would cut the old color's" \
      "clients without a 1012 before the drain ends. Lower them to less than $((timeout - SWITCH_MARGIN))s together."
}

preflight() {
  docker info >/dev/null 2>&1 || die "no Docker engine answers"
  [[ $(docker info --format '{{.Swarm.ControlAvailable}}') == true ]] ||
    die "run promote.sh on a swarm manager"
  docker service inspect "$NGINX_SERVICE" >/dev/null 2>&1 || die "service $NGINX_SERVICE is missing; run make up"
  service_running "$NGINX_SERVICE" 1 ||
    die "no Nginx of $NGINX_SERVICE runs (is a node labelled $EDGE_LABEL=true?); run make up"
  docker network inspect "$NETWORK" >/dev/null 2>&1 || die "network $NETWORK is missing; run make up"
  # Deploys and jobs hand this client's login to the nodes (--with-registry-auth).
  registry_login || die "cannot log in to the registry $REGISTRY; see above"
}

# confirmed_color: ACTIVE becomes the last confirmed color: the record, unless a switch to it was
# never confirmed (SWITCH_FROM_LABEL: killed between the record and the gate, or a switch back that
# did not finish), then the color it came from, while that one still runs.
confirmed_color() {
  local from
  ACTIVE=$(active_color) || die "cannot read the active color (label $COLOR_LABEL of $NGINX_SERVICE)"
  from=$(switch_from) || die "cannot read the label $SWITCH_FROM_LABEL of $NGINX_SERVICE"
  if [[ -n $from && $from != "$ACTIVE" ]]; then
    if stack_exists "$(color_stack "$from")"; then
      warn "the switch from $from to $ACTIVE was never confirmed (cut short, or its gate failed and the" \
        "switch back did not finish): $from is the last confirmed color"
      ACTIVE=$from
    else
      warn "the switch from $from to $ACTIVE was never confirmed, but $from no longer runs: keeping $ACTIVE"
    fi
  fi
  IDLE=$(other_color "$ACTIVE")
  stack_exists "$(color_stack "$ACTIVE")" || die "the active color $ACTIVE is not deployed; run make up"
  ACTIVE_IMAGE=$(service_image "$ACTIVE")
}

find_colors() {
  confirmed_color
  log "active: $ACTIVE ($ACTIVE_IMAGE, $REPLICAS replicas); releasing to $IDLE"
}

# remove_leftover: an IDLE stack from an earlier run. After a switch that was cut short it may hold
# clients (through an Nginx that had switched, whose old workers keep their sockets): drain it first.
remove_leftover() {
  stack_exists "$(color_stack "$IDLE")" || return 0
  warn "a $IDLE stack is left over from an earlier run; Nginx no longer sends it clients: draining" \
    "the ones it still holds, then removing it"
  drain "$IDLE" || die "the drain of the left-over $IDLE failed; $ACTIVE serves. Retry, or: docker stack rm $(color_stack "$IDLE")"
  remove_color "$IDLE"
}

# service_image COLOR: the reference the color runs, by digest (REGISTRY/NAME@sha256:...).
service_image() {
  docker service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "$(color_service "$1")"
}

prepare_image() {
  if [[ -z $IMAGE ]]; then
    IMAGE=$(working_tree_tag)
    build_app_image "$IMAGE"
  elif [[ $IMAGE != *@sha256:* && $IMAGE != "$REGISTRY"/* ]] && ! image_exists "$IMAGE"; then
    docker pull "$IMAGE" >/dev/null || die "image $IMAGE is neither present nor pullable"
  fi
  VERSION=$(image_version "$IMAGE")
  IMAGE_REF=$(deploy_ref "$IMAGE") || die "cannot push $IMAGE to $REGISTRY"
  log "$IMAGE is $IMAGE_REF (version $VERSION)"
}

wait_healthy() {
  wait_for "$HEALTH_TIMEOUT" "all $REPLICAS replicas of $1 to be healthy" \
    service_running "$(color_service "$1")" "$REPLICAS" || {
    docker service ps --no-trunc --format '{{.Name}} {{.CurrentState}} {{.Error}}' "$(color_service "$1")" |
      head -n 6 >&2
    return 1
  }
}

# Each check inside is bounded (scripts/release_tools.py), so the whole smoke test is. It sends
# the production Origin and Host, so a release that would refuse real browsers fails here.
smoke() {
  release_tool "$ACTIVE_IMAGE" smoke --preview "$NGINX_INTERNAL/$IDLE" \
    --live "$NGINX_PUBLIC" --color "$IDLE" --version "$VERSION" --origin "$PUBLIC_ORIGIN"
}

# switch_to COLOR: make COLOR active everywhere. The record first (an Nginx that starts from now
# on, on any node, serves COLOR; the label restarts no task), then every running Nginx (a job on
# each edge node runs switch-color there), then every Nginx is asked, over the overlay network,
# which color it serves and what its public route answers.
# Chained with &&, not left to set -e: restore() runs this with set -e off (and inside `if !`),
# where a failed label update must not pass as a switch (Nginx that restart later would serve the
# color restore() then removes).
# switch_to COLOR [FROM]: with FROM, the switch is to a color not yet gated: the record also says
# where it came from (SWITCH_FROM_LABEL) until confirm_switch; without FROM it is to a confirmed color.
switch_to() {
  local -a label=(--label-rm "$SWITCH_FROM_LABEL")
  [[ -n ${2:-} ]] && label=(--label-add "$SWITCH_FROM_LABEL=$2")
  docker service update --detach --label-add "$COLOR_LABEL=$1" "${label[@]}" "$NGINX_SERVICE" >/dev/null &&
    log "recorded $1 as the active color; switching every edge" &&
    switch_edges "$1" &&
    expect_edges "$1"
}

# confirm_switch: the new color passed the gate; the record alone names the active color.
confirm_switch() {
  docker service update --detach --label-rm "$SWITCH_FROM_LABEL" "$NGINX_SERVICE" >/dev/null
}

switch_edges() {
  edge_job "$SWITCH_TIMEOUT" "$ACTIVE_IMAGE" switch-local --service "$NGINX_SERVICE" --color "$1" >&2
}

# edge_counts: the arguments that say how many Nginx must answer: --count, those Running on edges
# that are up; --down, how many edges are down (their Nginx may still be in Swarm's DNS, silent).
edge_counts() {
  local id down=0 silent=0 on_node
  for id in $(down_edges); do
    down=$((down + 1))
    on_node=$(docker service ps "$NGINX_SERVICE" --filter desired-state=running --filter "node=$id" \
      --format '{{.CurrentState}}' | grep -c '^Running') || true
    silent=$((silent + on_node))
  done
  echo "--count $(($(running_tasks "$NGINX_SERVICE") - silent)) --down $down"
}

expect_edges() {
  local -a counts
  read -ra counts <<<"$(edge_counts)"
  release_tool "$ACTIVE_IMAGE" expect-color --color "$1" --nginx-service "$NGINX_SERVICE" "${counts[@]}" \
    --timeout "$EXPECT_TIMEOUT"
}

# edges_report RECORD: one line per Nginx (its node, the color it serves); fails when one
# disagrees with RECORD or does not answer (on an edge that is up).
edges_report() {
  local -a counts
  read -ra counts <<<"$(edge_counts)"
  release_tool "$ACTIVE_IMAGE" edges --nginx-service "$NGINX_SERVICE" --record "$1" "${counts[@]}"
}

# skipped_edges: one line per edge node that is down (indented): a switch skips it.
skipped_edges() {
  local id
  for id in $(down_edges); do
    docker node inspect --format "  {{.Description.Hostname}} ({{.ID}}): {{.Status.State}}, {{.Spec.Availability}}" "$id"
  done
}

# repair_edges: before anything changes, every Nginx serves the last confirmed color (ACTIVE, from
# confirmed_color) and the record names it. One that does not (it missed a switch, or a switch was
# cut short) is switched to it, and checked. Skipped edges (down) are listed, not waited for.
repair_edges() {
  local report skipped
  skipped=$(skipped_edges)
  [[ -z $skipped ]] || warn "edges that are down are skipped; their Nginx starts with the recorded color" \
    "when they return:"$'\n'"$skipped"
  if [[ $(active_color) == "$ACTIVE" && -z $(switch_from) ]]; then
    report=$(edges_report "$ACTIVE" 2>&1) && return 0
    warn "not every Nginx serves the recorded color $ACTIVE; switching every Nginx to $ACTIVE:"
    echo "$report" >&2
  else
    warn "switching every Nginx back to $ACTIVE, the last confirmed color"
  fi
  switch_to "$ACTIVE" >&2 || die "could not switch every Nginx to $ACTIVE; nothing was removed." \
    "When every edge that is up answers: ./promote.sh repair"
}

# Migrations (docs/operations.md, "Migrations: expand, then contract"): with a database, the migrations
# of the new image that the database lacks are linted, then applied, while the active color serves and
# before the new one starts. Either failing ends the release at STATE=none: nothing is deployed and the
# active color serves on. Postgres rolls back the migration that failed (each runs in a transaction);
# the ones before it stay applied, which the active color survives because the linter let them through.
migrate() {
  if [[ -z $DATABASE_URL ]]; then
    log "no database (DATABASE_URL is empty in the release file): no migrations to run"
    return 0
  fi
  step "lint the migrations of $VERSION that the database lacks (at most ${MIGRATE_TIMEOUT}s)"
  lint_migrations_job "$IMAGE_REF" >&2 ||
    die "the migration linter refused $VERSION (above) or did not finish; nothing changed and $ACTIVE" \
      "serves. A migration that would break the running color is released as expand, then contract:" \
      "docs/operations.md, \"Migrations: expand, then contract\""
  step "migrate the database to $VERSION (at most ${MIGRATE_TIMEOUT}s)"
  migrate_job "$IMAGE_REF" >&2 ||
    die "manage.py migrate failed or did not finish (above); nothing was deployed and $ACTIVE serves." \
      "The failed migration was rolled back; fix it and release again"
}

# Post-switch watch: the release gate (docs/operations.md, "The release gate"). A failure
# leaves STATE=switched, so the exit trap switches back to the old color (not drained yet) and
# removes the new one. Off when WATCH_SECONDS=0.
watch_new_color() {
  ((WATCH_SECONDS > 0)) || return 0
  release_tool "$ACTIVE_IMAGE" watch --prometheus "$PROMETHEUS_URL" --color "$IDLE" \
    --seconds "$WATCH_SECONDS" --max-error-ratio "$WATCH_ERROR_RATIO" --replicas "$REPLICAS" \
    --min-rate "$WATCH_MIN_RATE" --grace "$WATCH_GRACE"
}

# A control message (rooms.ctl drain/undrain) to every process of a color, through Redis.
control() {
  ctl_job 60 "$ACTIVE_IMAGE" "$@" >&2
}

# undrain COLOR: cancel a drain, trying a few times (a drained color refuses every client).
undrain() {
  local attempt
  for ((attempt = 1; attempt <= UNDRAIN_ATTEMPTS; attempt++)); do
    control undrain "$1" && return 0
    echo "ERROR: undrain of $1 failed (attempt $attempt of $UNDRAIN_ATTEMPTS)" >&2
    sleep 1
  done
  return 1
}

drain() {
  local color=$1
  control drain "$color" --seconds "$DRAIN_SECONDS"
  release_tool "$ACTIVE_IMAGE" wait-drained --service "$(color_service "$color")" \
    --timeout "$((DRAIN_SECONDS + 5))"
}

remove_color() {
  local stack
  stack=$(color_stack "$1")
  docker stack rm "$stack" >/dev/null
  wait_for "$REMOVE_TIMEOUT" "stack $stack to be gone" stack_gone "$stack"
}

# report MESSAGE: to the script's stderr and to the system log, so that a promotion whose
# terminal was closed still tells what it did. Never fails: stderr may be a closed terminal.
report() {
  echo "$*" >&2 2>/dev/null || true
  logger -t wsapp-promote -- "$*" 2>/dev/null || true
}

# Signals that end a run: Ctrl-C, kill, and a closed terminal (SIGHUP). Each exits, so the EXIT trap
# runs the restoration.
trap_signals() {
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
}

# The restoration must run to its end: a second Ctrl-C, another kill or the terminal closing
# while it runs is ignored (so are writes to a closed terminal), and it is reported, not lost.
shield() {
  trap '' INT TERM HUP PIPE
  set +e
  # A signal's trap runs inside the command it interrupted, with that command's redirections
  # (wait_for sends its checks to /dev/null): report on the script's own stdout and stderr.
  exec 1>&7 2>&8
}

# The exit trap: restore the old color if the promotion did not finish, then give the lock back.
on_exit() {
  local status=$? code
  trap - EXIT
  shield
  remove_jobs
  restore "$status"
  code=$?
  release_lock
  write_report "$code"
  exit "$code"
}

# write_report STATUS: the release report, REPORT_DIR/release-<UTC time>-<color>.html
# (docs/operations.md, "The release report"): the steps and their timings, and plots from
# Prometheus across the release. Made by scripts/release_report.py, in a container on the overlay
# network (where Prometheus answers) from the active color's image, within REPORT_TIMEOUT. It
# never changes the release's outcome: a report that cannot be written is a warning.
write_report() {
  local status=$1 dir file end outcome
  local -a ok=()
  dir=$(report_dir)
  [[ -n $dir && -n $ACTIVE_IMAGE ]] || return 0
  printf -v end '%(%s)T' -1
  if ((status == 0)); then
    outcome="released: $IDLE serves $VERSION"
    ok=(--ok)
  else
    outcome="failed (exit $status) at state '$STATE'; the log says what was restored"
  fi
  file=$dir/release-$(date -u +%Y%m%dT%H%M%SZ)-$IDLE.html
  if mkdir -p "$dir" && run_on_network "$REPORT_TIMEOUT" -i --entrypoint python "$ACTIVE_IMAGE" - \
    --prometheus "$PROMETHEUS_URL" --title "Release of $VERSION to $IDLE (from $ACTIVE)" \
    --outcome "$outcome" "${ok[@]}" --steps "$STEP_LOG" --end "$end" --timeout "$((REPORT_TIMEOUT * 2 / 3))" \
    <"$ROOT_DIR/scripts/release_report.py" >"$file.tmp" && mv "$file.tmp" "$file"; then
    log "release report: $file"
  else
    rm -f "$file.tmp"
    warn "the release report could not be written to $dir (the release's outcome stands)"
  fi
  return 0
}

# restore STATUS: put the old color back as it was; returns the script's exit status.
restore() {
  local status=$1
  [[ $STATE == none || $STATE == released ]] && return "$status"
  status=$((status == 0 ? 1 : status))
  report "ERROR: promotion failed at state '$STATE'; restoring $ACTIVE"
  step "restore $ACTIVE"
  # The engine may be what failed (restarted under us): wait for it and for the swarm's managers to
  # answer through it (bounded), then restore.
  if ! docker node ls -q >/dev/null 2>&1; then
    report "the Docker engine or the swarm does not answer; waiting up to ${ENGINE_WAIT}s to restore $ACTIVE"
    wait_for "$ENGINE_WAIT" "the Docker engine and the swarm" docker node ls -q ||
      { report "ERROR: no engine; nothing restored. When it is back: ./promote.sh status"; return "$status"; }
  fi
  remove_jobs
  EXPECT_TIMEOUT=$ENGINE_WAIT
  if [[ $STATE == draining ]] && ! undrain "$ACTIVE"; then
    # The old color may be refusing clients: the new one (switched to, past the gate) keeps serving.
    report "ERROR: $ACTIVE could not be undrained; $IDLE keeps serving and $ACTIVE is left as it is." \
      "Check Redis, then run: ./promote.sh rollback (to $ACTIVE) or docker stack rm $(color_stack "$ACTIVE")"
    return "$status"
  fi
  if [[ $STATE == switched || $STATE == draining ]]; then
    if ! switch_to "$ACTIVE" >&2; then
      report "ERROR: switching Nginx back to $ACTIVE failed; $IDLE may still serve on some edges and is kept." \
        "When the edges answer, run: ./promote.sh repair (switches every Nginx to $ACTIVE; the next" \
        "promotion does it too, and drains $IDLE before removing it)"
      return "$status"
    fi
  fi
  if stack_exists "$(color_stack "$IDLE")"; then
    remove_color "$IDLE" || report "ERROR: could not remove $(color_stack "$IDLE"); remove it by hand"
  fi
  report "$ACTIVE serves, as before the promotion."
  return "$status"
}

promote() {
  validate_settings
  step "lock"
  take_lock
  step "preflight"
  preflight
  step "find the active color"
  find_colors
  step "every Nginx serves $ACTIVE"
  repair_edges
  remove_leftover
  step "image"
  prepare_image
  exec 7>&1 8>&2
  trap on_exit EXIT
  trap_signals
  migrate
  step "deploy $IDLE with $IMAGE ($REPLICAS replicas)"
  STATE=deployed
  deploy_color "$IDLE" "$IMAGE_REF" "$VERSION" "$REPLICAS"
  step "wait for every replica of $IDLE to be healthy (at most ${HEALTH_TIMEOUT}s)"
  wait_healthy "$IDLE"
  step "smoke tests through the preview route"
  smoke
  step "switch Nginx to $IDLE"
  STATE=switched
  switch_to "$IDLE" "$ACTIVE"
  step "watch $IDLE for ${WATCH_SECONDS}s"
  watch_new_color
  confirm_switch
  step "drain $ACTIVE over ${DRAIN_SECONDS}s"
  STATE=draining
  drain "$ACTIVE"
  STATE=released
  if [[ $KEEP_OLD == 1 ]]; then
    step "keep $ACTIVE (drained) for ./promote.sh rollback"
  else
    step "remove $ACTIVE"
    remove_color "$ACTIVE"
  fi
  step "released $IMAGE on $IDLE"
}

# The rollback's exit trap: nothing to undo (before the switch the current color serves, after it
# the previous one does), but say which color serves and what is left, whatever stopped it.
on_rollback_exit() {
  local status=$?
  trap - EXIT
  shield
  remove_jobs
  if [[ $STATE != released ]]; then
    status=$((status == 0 ? 1 : status))
    local serving
    serving=$(active_color 2>/dev/null) || serving="unknown (check with ./promote.sh status)"
    if [[ $STATE == none ]]; then
      report "ERROR: rollback stopped before the switch; $serving serves, as before."
    else
      report "ERROR: rollback stopped after the switch; $serving serves. $(color_stack "$ACTIVE") is left" \
        "running (the next promotion removes it, or: docker stack rm $(color_stack "$ACTIVE"))."
    fi
  fi
  release_lock
  exit "$status"
}

rollback() {
  validate_settings
  take_lock
  preflight
  local current previous
  current=$(active_color) || die "cannot read the active color (label $COLOR_LABEL of $NGINX_SERVICE)"
  previous=$(other_color "$current")
  stack_exists "$(color_stack "$previous")" ||
    die "the previous color $previous no longer runs; release the old image with --image instead"
  ACTIVE=$current
  ACTIVE_IMAGE=$(service_image "$current")
  # After a switch to $current that was never confirmed, the rollback's own switch is the repair.
  [[ -n $(switch_from) ]] || repair_edges
  REPLICAS=$(service_replicas "$(color_service "$previous")")
  exec 7>&1 8>&2
  trap on_rollback_exit EXIT
  trap_signals
  step "rollback: $current -> $previous"
  wait_healthy "$previous"
  undrain "$previous"
  STATE=switched
  switch_to "$previous"
  step "drain $current over ${DRAIN_SECONDS}s"
  drain "$current"
  step "remove $current"
  remove_color "$current"
  STATE=released
  step "rolled back to $previous"
}

# repair: every Nginx to the last confirmed color, the record naming it; nothing is removed.
repair() {
  validate_settings
  take_lock
  preflight
  confirmed_color
  repair_edges
  log "every Nginx on an edge that is up serves $ACTIVE"
}

# unlock: remove the swarm-wide lock a killed command left (it says who held it, and since when).
unlock() {
  local holder
  holder=$(swarm_lock_holder)
  docker config rm "$SWARM_LOCK" >/dev/null 2>&1 || die "no swarm lock to remove"
  log "removed the swarm lock held by $holder"
}

status() {
  local active color service from skipped
  active=$(active_color 2>/dev/null) || active=""
  echo "active color: ${active:-unknown (no service $NGINX_SERVICE with a $COLOR_LABEL label; run make up)}"
  for color in "${COLORS[@]}"; do
    service=$(color_service "$color")
    if ! docker service inspect "$service" >/dev/null 2>&1; then
      echo "$color: not deployed"
      continue
    fi
    echo "$color: image $(service_image "$color"), replicas $(service_replicas "$service")," \
      "healthy $(running_tasks "$service")"
  done
  last_report
  [[ -n $active ]] || return 0
  from=$(switch_from 2>/dev/null) || from=""
  [[ -z $from ]] || echo "switch from $from to $active not confirmed (cut short): the next promote.sh, or" \
    "./promote.sh repair, switches every Nginx back to $from"
  echo "edges (nodes labelled $EDGE_LABEL=true) and their Nginx:"
  docker service ps "$NGINX_SERVICE" --filter desired-state=running --format '{{.Node}}: {{.CurrentState}}' | sed 's/^/  /'
  skipped=$(skipped_edges 2>/dev/null) || skipped=""
  [[ -z $skipped ]] || {
    echo "edges that are down, skipped by switches (pending: their Nginx starts with the recorded color when they return):"
    echo "$skipped"
  }
  if ! stack_exists "$(color_stack "$active")"; then
    echo "  (the colors Nginx serve are asked with the active color's image; $active is not deployed)"
    return 0
  fi
  ACTIVE_IMAGE=$(service_image "$active")
  edges_report "$active" 2>&1 | sed 's/^/  /' || true
}

# last_report: the newest release report, if the release file asks for reports.
last_report() {
  local dir last
  dir=$( (load_release_env && report_dir) 2>/dev/null) || dir=""
  [[ -n $dir ]] || return 0
  last=""
  if [[ -d $dir ]]; then  # not there before the first report: find would fail, and pipefail end status
    last=$(find "$dir" -maxdepth 1 -name 'release-*.html' | sort | tail -n 1) || last=""
  fi
  echo "last release report: ${last:-none yet (in $dir)}"
}

main() {
  case ${1:-} in
    -h | --help | help) usage ;;
    status) status ;;
    rollback) rollback ;;
    repair) repair ;;
    unlock) unlock ;;
    --image)
      [[ -n ${2:-} ]] || die "--image needs NAME:TAG"
      IMAGE=$2
      promote
      ;;
    "") promote ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
}

main "$@"
