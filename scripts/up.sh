#!/usr/bin/env bash
# make up: bring the whole system up on this machine's swarm. Safe to run again: what is
# already there is left as it is.
set -Eeuo pipefail
[[ -n ${TRACE:-} ]] && set -x
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly HTTP_PORT=${HTTP_PORT:-80}
# Where the site is checked from this machine (an edge's address when the swarm is elsewhere).
readonly SITE_URL=${SITE_URL:-http://localhost:$HTTP_PORT}
readonly UP_TIMEOUT=${UP_TIMEOUT:-180}
readonly SWARM_ADVERTISE_ADDR=${SWARM_ADVERTISE_ADDR:-127.0.0.1}
# 1: a swarm of several nodes (docs/cluster.md). No swarm is initialised on a loopback address and
# no node is labelled: missing labels are reported. A swarm of more than one node is one anyway.
readonly CLUSTER=${CLUSTER:-0}
readonly PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
readonly GRAFANA_PORT=${GRAFANA_PORT:-3000}
readonly OPS_PROXY=${OPS_PROXY:-1}
readonly OPS_PROXY_NAME=wsapp-ops-proxy
# 1: the overlay network encrypted (IPsec ESP between nodes); every node's kernel must support it.
readonly NETWORK_ENCRYPTED=${NETWORK_ENCRYPTED:-0}
# The nginx user of the official image and of the stand-in (docker/nginx).
readonly NGINX_UID=101
export HTTP_PORT

usage() {
  cat <<USAGE
Usage: scripts/up.sh   (or: make up)
Initialises a single-node swarm if there is none, resolves images (official, or Debian-built
stand-ins where pulls fail), creates the network and secrets, deploys the infra stack and the
first color, and waits until http://localhost:\$HTTP_PORT/ answers.

The release settings (allowed hosts, replicas, limits, the network's subnet) come from the
release file stack/release.env (RELEASE_ENV=path for another one), not from the environment.

Settings of this machine (environment):
  HTTP_PORT=$HTTP_PORT              public port of Nginx (host mode, every interface)
  SITE_URL=$SITE_URL  where up.sh checks that the site answers
  PROMETHEUS_PORT=$PROMETHEUS_PORT, GRAFANA_PORT=$GRAFANA_PORT
                                  Prometheus and Grafana through a proxy on 127.0.0.1 only
  OPS_PROXY=$OPS_PROXY                 0: no such proxy (reach them with an ssh tunnel and docker run)
  NETWORK_ENCRYPTED=$NETWORK_ENCRYPTED         1: the overlay network encrypted between nodes (IPsec;
                                  checked against this kernel first; docs/security.md)
  RELEASE_ENV=\${RELEASE_ENV:-stack/release.env}
  UP_TIMEOUT=$UP_TIMEOUT            seconds to wait for each part to come up
  SWARM_ADVERTISE_ADDR=$SWARM_ADVERTISE_ADDR  used only when a swarm is initialised
  CLUSTER=$CLUSTER                 1: several nodes (docs/cluster.md): refuse a swarm advertising a
                                  loopback address, and report missing node labels instead of
                                  labelling this node (so does any swarm of more than one node)
  APP_IMAGE                       run this image instead of building the working tree
  REGISTRY                        where images are pushed and every node pulls them from, e.g.
                                  registry.example.com/team (you are logged in); empty: run the
                                  project's own (stack/registry.yml) on the node labelled
                                  wsapp.registry=true (this one, if none is) at 127.0.0.1:REGISTRY_PORT
  REGISTRY_PORT=$REGISTRY_PORT            the own registry's port on every node (host mode)
  PUSH_TIMEOUT=$PUSH_TIMEOUT            seconds per docker push
  REGISTRY_WAIT=$REGISTRY_WAIT           seconds to wait for the registry to answer before a push
USAGE
}

ensure_swarm() {
  docker info >/dev/null 2>&1 || die "no Docker engine answers; start dockerd first"
  local state
  state=$(docker info --format '{{.Swarm.LocalNodeState}}')
  if [[ $state != active ]]; then
    [[ $CLUSTER == 1 ]] && is_loopback "$SWARM_ADVERTISE_ADDR" &&
      die "CLUSTER=1 and no swarm yet: a swarm advertising $SWARM_ADVERTISE_ADDR cannot be joined by" \
        "other hosts. Initialise it first: make cluster-init ADVERTISE_ADDR=<this node's address> (docs/cluster.md)"
    log "initialising a swarm (advertise $SWARM_ADVERTISE_ADDR)"
    docker swarm init --advertise-addr "$SWARM_ADVERTISE_ADDR" >/dev/null
  fi
  [[ $(docker info --format '{{.Swarm.ControlAvailable}}') == true ]] ||
    die "this node is not a swarm manager; run make up on a manager"
  local addr
  addr=$(docker info --format '{{.Swarm.NodeAddr}}')
  [[ $CLUSTER == 1 ]] && is_loopback "$addr" &&
    die "CLUSTER=1, but this swarm advertises $addr, which no other host can join: leave it" \
      "(docker swarm leave --force) and make cluster-init ADVERTISE_ADDR=... (docs/cluster.md)"
  return 0
}

# ensure_labels: on one node, label it with every role no node has (ensure_node_label); on a
# cluster, check the labels (scripts/cluster.sh labels) and stop, naming what is missing: placing
# Redis' volumes or the registry on whichever node make up runs on is a choice for the operator.
ensure_labels() {
  if [[ $CLUSTER == 1 ]] || (($(docker node ls -q | wc -l) > 1)); then
    "$ROOT_DIR/scripts/cluster.sh" labels >&2 ||
      die "the nodes' labels are incomplete (above); no node was labelled and nothing was deployed"
    return 0
  fi
  ensure_node_label "$EDGE_LABEL"
  ensure_node_label wsapp.redis-primary
  ensure_node_label wsapp.redis-replica
  ensure_node_label wsapp.sentinel
  ensure_node_label wsapp.postgres
  [[ $OWN_REGISTRY == 0 ]] || ensure_node_label wsapp.registry
}

# ensure_node_label KEY: label this node KEY=true unless some node has that label already. Nginx
# runs on the wsapp.edge nodes, each Redis on its own labelled node (stack/infra.yml): on one node
# every role lands here; on several, ensure_labels checks instead.
ensure_node_label() {
  local key=$1
  [[ -n $(docker node ls -q --filter "node.label=$key=true") ]] && return 0
  log "no node is labelled $key=true: labelling this one"
  docker node update --label-add "$key=true" "$(docker info --format '{{.Swarm.NodeID}}')" >/dev/null
}

# The overlay network, on NETWORK_SUBNET: replicas believe X-Forwarded-For only from it. With
# NETWORK_ENCRYPTED=1, encrypted between nodes, once this kernel is known to do it.
ensure_network() {
  local subnet encrypted problem
  local -a options=()
  if [[ $NETWORK_ENCRYPTED == 1 ]]; then
    problem=$(ipsec_probe) || die "NETWORK_ENCRYPTED=1, but this kernel cannot run Docker's encrypted overlay: $problem"
    options=(--opt encrypted)
  fi
  if subnet=$(docker network inspect --format '{{range .IPAM.Config}}{{.Subnet}}{{end}}' "$NETWORK" 2>/dev/null); then
    [[ $subnet == "$NETWORK_SUBNET" ]] ||
      die "network $NETWORK has subnet $subnet, the release file says $NETWORK_SUBNET; run make down first"
    encrypted=$(docker network inspect --format '{{if index .Options "encrypted"}}1{{else}}0{{end}}' "$NETWORK")
    [[ $encrypted == "$NETWORK_ENCRYPTED" ]] ||
      die "network $NETWORK has encryption $encrypted, NETWORK_ENCRYPTED is $NETWORK_ENCRYPTED; run make down first"
    return 0
  fi
  docker network create --driver overlay --attachable "${options[@]}" --subnet "$NETWORK_SUBNET" "$NETWORK" >/dev/null
}

ensure_secret() {
  local name=$1
  if ! docker secret inspect "$name" >/dev/null 2>&1; then
    log "creating secret $name (random)"
    head -c 48 /dev/urandom | base64 | tr -d '\n/+=' | docker secret create "$name" - >/dev/null
  fi
}

# The connection tickets' signing keys (docs/accounts.md): two random keys, one a line, the first
# signs and both verify, so one can be rotated without cutting anyone off.
ensure_ticket_keys() {
  docker secret inspect "$TICKET_KEYS_SECRET" >/dev/null 2>&1 && return 0
  log "creating secret $TICKET_KEYS_SECRET (two random keys)"
  local key1 key2
  key1=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')
  key2=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')
  printf '%s\n%s\n' "$key1" "$key2" | docker secret create "$TICKET_KEYS_SECRET" - >/dev/null
}

# The active color to deploy Nginx with: its service's label, so a redeploy never flips it. Before
# the label existed (Nginx with a volume), the one color deployed is the active one; else blue.
recorded_color() {
  local color
  local -a deployed=()
  if docker service inspect "$NGINX_SERVICE" >/dev/null 2>&1; then
    # A redeploy would keep a record no gate passed and drop the mark that says so.
    [[ -z $(switch_from 2>/dev/null) ]] || die "the switch to $(active_color) was never confirmed" \
      "($SWITCH_FROM_LABEL is set on $NGINX_SERVICE): run ./promote.sh repair first"
    color=$(active_color 2>/dev/null) && { echo "$color"; return 0; }
    for color in "${COLORS[@]}"; do
      stack_exists "$(color_stack "$color")" && deployed+=("$color")
    done
    ((${#deployed[@]} == 1)) && { echo "${deployed[0]}"; return 0; }
    die "cannot tell the active color: $NGINX_SERVICE has no $COLOR_LABEL label. Set it, e.g." \
      "docker service update --label-add $COLOR_LABEL=blue $NGINX_SERVICE, and run make up again"
  fi
  echo blue
}

# An Nginx service from before edges (one replica) cannot become global in place: remove it first.
# Its node's public port is gone until the new one runs (seconds).
replace_replicated_nginx() {
  [[ $(docker service inspect --format '{{if .Spec.Mode.Replicated}}replicated{{end}}' "$NGINX_SERVICE" 2>/dev/null) == replicated ]] ||
    return 0
  warn "$NGINX_SERVICE runs as one replica (before edges): replacing it with one Nginx per edge node"
  docker service rm "$NGINX_SERVICE" >/dev/null
  wait_for "$UP_TIMEOUT" "the old Nginx to stop" no_local_nginx
}

# Its port is free on this node (elsewhere, a new Nginx that finds it taken is retried by Swarm).
no_local_nginx() {
  [[ -z $(docker ps -aq --filter "label=com.docker.swarm.service.name=$NGINX_SERVICE") ]]
}

# The registry runs as nobody. The official image's /var/lib/registry is root's, and so would be a
# new volume mounted there: a one-off task on the registry's node gives the volume to nobody (the
# stand-in's is nobody's already). A replicated task (swarm_job without a job mode): removing the
# service removes its container on whichever node it ran, which a job's would outlive.
prepare_registry_volume() {
  swarm_job "$UP_TIMEOUT" chown "giving the registry's volume to its user" \
    --constraint node.labels.wsapp.registry==true --user 0 --read-only --cap-drop ALL --cap-add CHOWN \
    --mount "type=volume,source=${REGISTRY_STACK}_registry_data,target=/data,volume-label=com.docker.stack.namespace=$REGISTRY_STACK" \
    --entrypoint "chown 65534:65534 /data" "$REGISTRY_IMAGE" || die "could not give the registry's volume to its user"
}

# The registry's password (docs/security.md): random, as a Swarm secret for the managers' logins
# (registry_login in scripts/lib.sh), and its
# bcrypt hash as an htpasswd line (user wsapp) for the registry, which takes no other hash. Made
# together: a secret cannot be read back, so one without the other cannot be completed.
ensure_registry_secrets() {
  local has_password=0 has_htpasswd=0 password htpasswd
  docker secret inspect wsapp_registry_password >/dev/null 2>&1 && has_password=1
  docker secret inspect wsapp_registry_htpasswd >/dev/null 2>&1 && has_htpasswd=1
  ((has_password && has_htpasswd)) && return 0
  ((has_password || has_htpasswd)) &&
    die "only one of the secrets wsapp_registry_password and wsapp_registry_htpasswd exists: remove" \
      "the registry stack (docker stack rm $REGISTRY_STACK) and that secret, and run make up again"
  log "creating secrets wsapp_registry_password and wsapp_registry_htpasswd (random)"
  password=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')
  # Python's crypt (libxcrypt) makes bcrypt ($2b$), which the registry's htpasswd accepts.
  htpasswd=$(printf '%s' "$password" | python3 -W ignore -c \
    'import crypt, sys; print("wsapp:" + crypt.crypt(sys.stdin.read(), crypt.mksalt(crypt.METHOD_BLOWFISH)))') ||
    die "cannot make a bcrypt hash: python3 with its crypt module is needed"
  [[ $htpasswd == "wsapp:\$2"* ]] || die "python3's crypt made no bcrypt hash (libxcrypt without it?)"
  printf '%s' "$password" | docker secret create wsapp_registry_password - >/dev/null
  printf '%s\n' "$htpasswd" | docker secret create wsapp_registry_htpasswd - >/dev/null
}

# The project's own registry (stack/registry.yml), unless REGISTRY names another. Its images are
# the local names: they cannot come from the registry they start.
deploy_registry() {
  if [[ $OWN_REGISTRY == 0 ]]; then
    log "REGISTRY=$REGISTRY: using it, not running one"
    return 0
  fi
  ensure_registry_secrets
  prepare_registry_volume
  docker stack deploy --detach=true --resolve-image never \
    -c "$ROOT_DIR/stack/registry.yml" "$REGISTRY_STACK" >/dev/null
  wait_for "$UP_TIMEOUT" "${REGISTRY_STACK}_registry to run" service_running "${REGISTRY_STACK}_registry"
  wait_for "$UP_TIMEOUT" "${REGISTRY_STACK}_proxy to run" service_running "${REGISTRY_STACK}_proxy" 1
  # Its password, in this client's login: pushes need it, and every deploy below hands it to the
  # nodes (--with-registry-auth).
  registry_login || die "cannot log in to the registry $REGISTRY"
}

# Push the infra's images (those built here) and deploy every one by digest, so every node runs
# the same bytes. Grafana, where it could not be had, is not deployed at all.
push_infra_images() {
  NGINX_IMAGE=$(deploy_ref "$NGINX_IMAGE") || die "cannot push $NGINX_IMAGE"
  REDIS_IMAGE=$(deploy_ref "$REDIS_IMAGE") || die "cannot push $REDIS_IMAGE"
  PROMETHEUS_IMAGE=$(deploy_ref "$PROMETHEUS_IMAGE") || die "cannot push $PROMETHEUS_IMAGE"
  ALERTMANAGER_IMAGE=$(deploy_ref "$ALERTMANAGER_IMAGE") || die "cannot push $ALERTMANAGER_IMAGE"
  REDIS_EXPORTER_IMAGE=$(deploy_ref "$REDIS_EXPORTER_IMAGE") || die "cannot push $REDIS_EXPORTER_IMAGE"
  POSTGRES_IMAGE=$(deploy_ref "$POSTGRES_IMAGE") || die "cannot push $POSTGRES_IMAGE"
  POSTGRES_EXPORTER_IMAGE=$(deploy_ref "$POSTGRES_EXPORTER_IMAGE") || die "cannot push $POSTGRES_EXPORTER_IMAGE"
  EDGE_EXPORTER_IMAGE=$(deploy_ref "$EDGE_EXPORTER_IMAGE") || die "cannot push $EDGE_EXPORTER_IMAGE"
  if [[ $GRAFANA_REPLICAS != 0 ]]; then
    GRAFANA_IMAGE=$(deploy_ref "$GRAFANA_IMAGE") || die "cannot push $GRAFANA_IMAGE"
  fi
  log "infra images: $NGINX_IMAGE $REDIS_IMAGE $PROMETHEUS_IMAGE $ALERTMANAGER_IMAGE $REDIS_EXPORTER_IMAGE" \
    "$POSTGRES_IMAGE $POSTGRES_EXPORTER_IMAGE $EDGE_EXPORTER_IMAGE"
}

# Prometheus and Grafana publish no port. This proxy, a plain container on the overlay network,
# publishes them on the engine's machine's loopback only (docs/security.md). Its configuration
# travels in its environment, not as a bind mount: the engine may be on a machine without the
# checkout (DOCKER_HOST=ssh://..., docs/cluster.md).
start_ops_proxy() {
  docker rm -f "$OPS_PROXY_NAME" >/dev/null 2>&1 || true
  [[ $OPS_PROXY == 1 ]] || return 0
  # shellcheck disable=SC2016  # expanded by the container's shell
  docker run -d --name "$OPS_PROXY_NAME" --restart unless-stopped --network "$NETWORK" \
    -p "127.0.0.1:$PROMETHEUS_PORT:9090" -p "127.0.0.1:$GRAFANA_PORT:3000" \
    --user "$NGINX_UID:$NGINX_UID" --read-only --tmpfs /tmp \
    --cap-drop ALL --security-opt no-new-privileges --memory 64m --cpus 0.25 \
    --log-driver json-file --log-opt max-size=10m --log-opt max-file=3 \
    --env "OPS_PROXY_CONF=$(cat "$ROOT_DIR/nginx/ops-proxy.conf")" --entrypoint sh "$NGINX_IMAGE" \
    -c 'printf "%s\n" "$OPS_PROXY_CONF" >/tmp/nginx.conf && exec nginx -c /tmp/nginx.conf -g "daemon off;"' >/dev/null
}

deploy_infra() {
  CONFIG_VERSION=$(config_version)
  ACTIVE_COLOR=$(recorded_color)
  export CONFIG_VERSION ACTIVE_COLOR
  # One Sentinel per node labelled wsapp.sentinel (stack/infra.yml); fewer than three such nodes
  # must share them out.
  local nodes sentinel_nodes
  nodes=$(docker node ls -q | wc -l)
  sentinel_nodes=$(docker node ls -q --filter node.label=wsapp.sentinel=true | wc -l)
  SENTINELS_PER_NODE=$(((3 + sentinel_nodes - 1) / sentinel_nodes))
  export SENTINELS_PER_NODE
  if ((SENTINELS_PER_NODE > 1 && nodes >= 3)); then
    warn "only $sentinel_nodes node(s) labelled wsapp.sentinel=true: up to $SENTINELS_PER_NODE Sentinels" \
      "per node, and losing one node can take the Sentinels' majority. Label three nodes:" \
      "docker node update --label-add wsapp.sentinel=true NODE"
  elif ((SENTINELS_PER_NODE > 1)); then
    log "$nodes node(s): up to $SENTINELS_PER_NODE Sentinels per node (one per node needs three nodes)"
  fi
  replace_replicated_nginx
  docker stack deploy --detach=true --resolve-image never --with-registry-auth \
    -c "$ROOT_DIR/stack/infra.yml" "$INFRA_STACK" >/dev/null
  local service
  # Postgres is Running once its healthcheck (pg_isready over TCP) passes: after a first start's
  # initialisation, so the migration below finds it ready.
  for service in wsapp_redis wsapp_redis-replica wsapp_sentinel "$NGINX_SERVICE" wsapp_alertmanager \
    wsapp_redis-exporter wsapp_edge-exporter wsapp_postgres wsapp_postgres-exporter; do
    wait_for "$UP_TIMEOUT" "$service to run" service_running "$service"
  done
  [[ -n $ALERT_WEBHOOK_URL ]] ||
    warn "ALERT_WEBHOOK_URL is empty in the release file: alerts are kept in Alertmanager and reach nobody"
  [[ $GRAFANA_REPLICAS == 0 ]] &&
    warn "no Grafana image could be pulled and Debian has no package: Grafana runs with 0 replicas"
  return 0
}

deploy_first_color() {
  local color
  for color in "${COLORS[@]}"; do
    if stack_exists "$(color_stack "$color")"; then
      log "color $color already deployed; leaving it"
      return
    fi
  done
  color=$(active_color)
  local image=${APP_IMAGE:-}
  if [[ -z $image ]]; then
    image=$(working_tree_tag)
    build_app_image "$image"
  fi
  local ref
  ref=$(deploy_ref "$image") || die "cannot push $image"
  # The tables before the first replica starts (promote.sh migrates before each release).
  migrate_job "$ref" || die "the migration failed (see above): the app is not deployed"
  log "deploying $color with $ref"
  deploy_color "$color" "$ref" "$(image_version "$image")"
  wait_for "$UP_TIMEOUT" "$color to be healthy" service_running "$(color_service "$color")"
}

site_answers() {
  curl -fsS -o /dev/null --max-time 3 "$SITE_URL/" && curl -fsS --max-time 3 "$SITE_URL/readyz" >/dev/null
}

main() {
  [[ ${1:-} == -h || ${1:-} == --help ]] && { usage; exit 0; }
  require_int HTTP_PORT 1
  require_int PROMETHEUS_PORT 1
  require_int GRAFANA_PORT 1
  require_int UP_TIMEOUT 1
  require_int REGISTRY_PORT 1
  require_int PUSH_TIMEOUT 1
  require_int REGISTRY_WAIT 0
  [[ $OPS_PROXY == [01] ]] || die "OPS_PROXY must be 0 or 1, got '$OPS_PROXY'"
  load_release_env
  take_lock
  step "swarm"
  ensure_swarm
  ensure_labels
  step "images"
  load_images
  step "network and secrets"
  ensure_network
  ensure_secret wsapp_django_secret_key
  ensure_secret wsapp_grafana_admin_password
  # The app's Redis password (the release file names the secret: a rotation names a new one).
  ensure_secret "$REDIS_PASSWORD_SECRET"
  # Redis' other ACL users (redis/start.sh): operators, replication, the Sentinels.
  ensure_secret wsapp_redis_admin_password
  ensure_secret wsapp_redis_replication_password
  ensure_secret wsapp_redis_sentinel_password
  ensure_secret wsapp_redis_metrics_password
  # The database's (stack/infra.yml: the password of the user wsapp, set when Postgres first starts
  # on an empty volume) and the connection tickets' signing keys.
  ensure_secret "$POSTGRES_PASSWORD_SECRET"
  ensure_ticket_keys
  step "registry"
  CONFIG_VERSION=$(config_version)
  export CONFIG_VERSION NGINX_IMAGE REGISTRY_IMAGE REGISTRY_PORT
  deploy_registry
  step "push images to $REGISTRY"
  push_infra_images
  export NGINX_IMAGE REDIS_IMAGE PROMETHEUS_IMAGE ALERTMANAGER_IMAGE REDIS_EXPORTER_IMAGE EDGE_EXPORTER_IMAGE \
    GRAFANA_IMAGE GRAFANA_REPLICAS POSTGRES_IMAGE POSTGRES_EXPORTER_IMAGE
  step "infra stack"
  deploy_infra
  start_ops_proxy
  step "first color"
  deploy_first_color
  step "site"
  wait_for "$UP_TIMEOUT" "$SITE_URL/ to answer" site_answers
  if [[ $OPS_PROXY == 1 ]]; then
    step "up: $SITE_URL/ serves $(active_color);" \
      "Prometheus http://127.0.0.1:$PROMETHEUS_PORT/ and Grafana http://127.0.0.1:$GRAFANA_PORT/ (this machine only)"
  else
    step "up: $SITE_URL/ serves $(active_color)"
  fi
}

main "$@"
