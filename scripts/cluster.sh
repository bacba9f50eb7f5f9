#!/usr/bin/env bash
# cluster.sh: the steps of docs/cluster.md that are more than one command, run from the operator's
# machine against the swarm's engines (DOCKER_HOST=ssh://root@MANAGER, or on a manager itself).
#   scripts/cluster.sh init ADDR                 a swarm advertising ADDR (never a loopback address)
#   scripts/cluster.sh join ENGINE ADDR ROLE     the node whose engine is ENGINE joins as ROLE
#   scripts/cluster.sh labels                    every node's roles; fails naming what is missing
#   scripts/cluster.sh registry-images ENGINE    the own registry's two images, to a node without Docker Hub
#   scripts/cluster.sh firewall PEERS            an nftables ruleset for swarm's ports (pipe to nft -f -)
set -Eeuo pipefail
[[ -n ${TRACE:-} ]] && set -x
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly SWARM_PORT=2377
# The node labels the stacks place services by (stack/infra.yml, stack/registry.yml).
readonly REDIS_PRIMARY_LABEL=wsapp.redis-primary
readonly REDIS_REPLICA_LABEL=wsapp.redis-replica
readonly REGISTRY_LABEL=wsapp.registry
readonly SENTINEL_LABEL=wsapp.sentinel
readonly POSTGRES_LABEL=wsapp.postgres

usage() {
  cat <<USAGE
Usage: scripts/cluster.sh init ADDR | join ENGINE ADDR manager|worker | labels | firewall PEERS |
       registry-images ENGINE
(make cluster-init ADVERTISE_ADDR=..., make cluster-join ..., make labels, make registry-images ...;
docs/cluster.md)

  init ADDR      docker swarm init --advertise-addr ADDR on DOCKER_HOST's engine (the first manager).
                 ADDR is an address every other node reaches; a loopback address is refused. Nothing
                 is done when that engine already leads a swarm advertising ADDR.
  join ENGINE ADDR ROLE
                 the engine ENGINE (ssh://root@HOST, or unix:///...) joins DOCKER_HOST's swarm as
                 ROLE, advertising ADDR, with the token asked of DOCKER_HOST's manager.
  labels         every node with its state and roles; exits 1 naming each missing or doubled role:
                 $EDGE_LABEL=true on one node or more, $REDIS_PRIMARY_LABEL=true and
                 $REDIS_REPLICA_LABEL=true on one node each, not the same one (their volumes are on
                 that node), $POSTGRES_LABEL=true on one node (its volume is there),
                 $SENTINEL_LABEL=true on three nodes (one Sentinel each; on fewer nodes, on all of
                 them), and $REGISTRY_LABEL=true on one node unless REGISTRY is set.
  registry-images ENGINE
                 copy the images of the project's own registry stack (NGINX_IMAGE, REGISTRY_IMAGE
                 from .images.env, resolved against DOCKER_HOST) from DOCKER_HOST's engine to ENGINE
                 (docker save | docker load), where it lacks them: they cannot come from the registry
                 they start. Needed only where nodes cannot pull them from Docker Hub.
  firewall PEERS an nftables table that lets only PEERS (the nodes' network, e.g. 10.0.0.0/24)
                 reach swarm's ports: 2377/tcp, 7946/tcp+udp, 4789/udp and ESP (encrypted overlay).
                 Printed, to pipe to each node: scripts/cluster.sh firewall 10.0.0.0/24 | ssh NODE nft -f -
USAGE
}

swarm_state() { docker info --format '{{.Swarm.LocalNodeState}}'; }

init() {
  local addr=${1:-} current
  [[ -n $addr ]] || die "init needs the address other nodes reach this one at: make cluster-init ADVERTISE_ADDR=..."
  is_loopback "$addr" && die "ADVERTISE_ADDR=$addr is a loopback address: no other host could join. Give" \
    "this node's address on the network the nodes share"
  docker info >/dev/null 2>&1 || die "no Docker engine answers at ${DOCKER_HOST:-the local socket}"
  if [[ $(swarm_state) == active ]]; then
    current=$(docker info --format '{{.Swarm.NodeAddr}}')
    [[ $current == "$addr" ]] ||
      die "this engine is already in a swarm, advertising $current: 'docker swarm leave --force' first" \
        "if that swarm should go (it takes its stacks, secrets and volumes' placement with it)"
    log "already a swarm advertising $addr"
    return 0
  fi
  docker swarm init --advertise-addr "$addr" >/dev/null
  log "swarm initialised on $addr; next: make cluster-join for each other node (docs/cluster.md)"
}

join() {
  local engine=${1:-} addr=${2:-} role=${3:-} manager token
  [[ -n $engine && -n $addr && $role =~ ^(manager|worker)$ ]] ||
    die "join needs ENGINE ADDR manager|worker, e.g. join ssh://root@10.0.0.12 10.0.0.12 manager"
  is_loopback "$addr" && die "$addr is a loopback address: the other nodes could not reach this one"
  [[ $(docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null) == true ]] ||
    die "DOCKER_HOST (${DOCKER_HOST:-the local socket}) is not a manager of a swarm: make cluster-init first"
  manager=$(docker info --format '{{.Swarm.NodeAddr}}')
  if [[ $(docker -H "$engine" info --format '{{.Swarm.LocalNodeState}}') == active ]]; then
    log "$engine is in a swarm already"
    return 0
  fi
  token=$(docker swarm join-token -q "$role")
  docker -H "$engine" swarm join --advertise-addr "$addr" --token "$token" "$manager:$SWARM_PORT" >/dev/null
  log "$engine ($addr) joined as $role"
}

# nodes_with LABEL: the host names of the nodes labelled LABEL=true.
nodes_with() {
  docker node ls -q --filter "node.label=$1=true" | xargs -r docker node inspect --format '{{.Description.Hostname}}'
}

# labels: the nodes and their roles, then each problem; fails when there is one.
labels() {
  local -a problems=() primary replica registry edges postgres sentinels
  local nodes
  nodes=$(docker node ls -q | wc -l)
  # shellcheck disable=SC2016  # a Go template
  docker node ls -q | xargs -r docker node inspect --format \
    '{{.Description.Hostname}} {{.Spec.Role}} {{.Status.State}} {{.Status.Addr}} {{range $k, $v := .Spec.Labels}}{{$k}}={{$v}} {{end}}'
  mapfile -t edges < <(nodes_with "$EDGE_LABEL")
  mapfile -t primary < <(nodes_with "$REDIS_PRIMARY_LABEL")
  mapfile -t replica < <(nodes_with "$REDIS_REPLICA_LABEL")
  mapfile -t postgres < <(nodes_with "$POSTGRES_LABEL")
  mapfile -t sentinels < <(nodes_with "$SENTINEL_LABEL")
  ((${#edges[@]} >= 1)) || problems+=("no node is labelled $EDGE_LABEL=true (Nginx runs there)")
  ((${#primary[@]} == 1)) ||
    problems+=("${#primary[@]} nodes are labelled $REDIS_PRIMARY_LABEL=true (${primary[*]}); exactly one must be")
  ((${#replica[@]} == 1)) ||
    problems+=("${#replica[@]} nodes are labelled $REDIS_REPLICA_LABEL=true (${replica[*]}); exactly one must be")
  ((${#postgres[@]} == 1)) ||
    problems+=("${#postgres[@]} nodes are labelled $POSTGRES_LABEL=true (${postgres[*]}); exactly one must be")
  # One Sentinel per labelled node (stack/infra.yml): three, so that one node lost leaves a majority.
  local want_sentinels=$((nodes < 3 ? nodes : 3))
  ((${#sentinels[@]} == want_sentinels)) ||
    problems+=("${#sentinels[@]} nodes are labelled $SENTINEL_LABEL=true (${sentinels[*]}); $want_sentinels must be")
  if ((${#primary[@]} == 1 && ${#replica[@]} == 1)) && [[ ${primary[0]} == "${replica[0]}" ]] && ((nodes > 1)); then
    problems+=("the Redis primary and replica are both on ${primary[0]}: label the replica's on another node")
  fi
  if [[ $OWN_REGISTRY == 1 ]]; then
    mapfile -t registry < <(nodes_with "$REGISTRY_LABEL")
    ((${#registry[@]} == 1)) ||
      problems+=("${#registry[@]} nodes are labelled $REGISTRY_LABEL=true (${registry[*]}); exactly one must be (or set REGISTRY)")
  fi
  ((${#problems[@]} == 0)) && { log "labels: ok"; return 0; }
  local problem
  for problem in "${problems[@]}"; do error "$problem"; done
  error "label nodes with: docker node update --label-add LABEL=true NODE (docs/cluster.md, step 5)"
  return 1
}

registry_images() {
  local engine=${1:-} image
  local -a missing=()
  [[ -n $engine ]] || die "registry-images needs the node's engine, e.g. ssh://root@10.0.0.12"
  load_images
  for image in "$NGINX_IMAGE" "$REGISTRY_IMAGE"; do
    docker -H "$engine" image inspect "$image" >/dev/null 2>&1 || missing+=("$image")
  done
  ((${#missing[@]} > 0)) || { log "$engine has $NGINX_IMAGE and $REGISTRY_IMAGE"; return 0; }
  log "copying ${missing[*]} to $engine"
  docker save "${missing[@]}" | docker -H "$engine" load -q >/dev/null
}

firewall() {
  local peers=${1:-}
  [[ $peers =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}(/[0-9]{1,2})?$ ]] ||
    die "firewall needs the nodes' IPv4 network, e.g. 10.0.0.0/24, got '$peers'"
  cat <<NFT
# Swarm's ports from the swarm's nodes ($peers) only (docs/cluster.md, docs/security.md).
# Replaces an earlier copy of this table; leaves every other table (Docker's) alone.
table inet wsapp_cluster
delete table inet wsapp_cluster
table inet wsapp_cluster {
  chain input {
    type filter hook input priority 0; policy accept;
    iifname "lo" accept
    ip saddr $peers tcp dport { $SWARM_PORT, 7946 } accept
    ip saddr $peers udp dport { 7946, 4789 } accept
    ip saddr $peers meta l4proto esp accept
    tcp dport { $SWARM_PORT, 7946 } drop
    udp dport { 7946, 4789 } drop
    meta l4proto esp drop
  }
}
NFT
}

main() {
  local command=${1:-}
  shift || true
  case $command in
    init) init "$@" ;;
    join) join "$@" ;;
    labels) labels ;;
    registry-images) registry_images "$@" ;;
    firewall) firewall "$@" ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
