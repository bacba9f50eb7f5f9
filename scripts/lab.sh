#!/usr/bin/env bash
# lab.sh: a multi-node swarm on this one machine, for tests and trials (a test lab: real clusters
# use real hosts, with the same stack files and scripts). Each node is its own Docker engine in
# its own network, mount and UTS namespace, on a bridge of this machine; the host's own engine is
# not part of it (it only hands images over). Run as root.
#   scripts/lab.sh up        nodes, swarm, labels, images, then the whole system (scripts/up.sh)
#   scripts/lab.sh nodes     nodes, swarm and labels only
#   scripts/lab.sh down      remove everything the lab made
#   scripts/lab.sh env N     print `export DOCKER_HOST=...` for node N (eval it to talk to that node)
#   scripts/lab.sh kill-node N    the machine dies: its link goes silent, then every process of it is killed
#   scripts/lab.sh revive-node N  ...and comes back: link up, engine started on its old state
#   scripts/lab.sh restart-engine N   `systemctl restart docker` on node N: a clean stop, then a start
#   scripts/lab.sh status    nodes and their state
set -Eeuo pipefail
[[ -n ${TRACE:-} ]] && set -x
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly LAB_ID=${LAB_ID:-0}
readonly LAB_NODES=${LAB_NODES:-4}
readonly LAB_MANAGERS=${LAB_MANAGERS:-3}
readonly LAB_TIMEOUT=${LAB_TIMEOUT:-90}
readonly NAME=wsapp-lab$LAB_ID
readonly PREFIX=10.99.$LAB_ID
readonly BRIDGE=$NAME
readonly RUN_DIR=/run/$NAME
readonly DATA_DIR=/var/lib/$NAME
# cgroup v1 (this machine) or v2: every process of a node lives under one cgroup, so a node can be
# killed whole (its engine, containerd, shims and containers).
readonly CGROUP_ROOT=/sys/fs/cgroup

usage() {
  cat <<USAGE
Usage: scripts/lab.sh up|nodes|down|status|env N|kill-node N|revive-node N|restart-engine N   (as root)

A test lab: LAB_NODES Docker engines (node 1..N, each in its own namespaces on bridge $BRIDGE,
addresses $PREFIX.11, .12, ...) forming one swarm. Nodes 1..LAB_MANAGERS are managers.
Labels: nodes 1 and 2 are edges (Nginx), node 1 runs the registry, the Redis primary and
Postgres, node 2 the Redis replica, nodes 1-3 a Sentinel each. 'up' follows docs/cluster.md's runbook (firewall, make cluster-init, make
cluster-join, labels, make registry-images): node 1 gets the images built on this machine (as a
build there would), the others only the registry's two from node 1 (the rest they pull from the
lab's registry, which node 1 pushes to); then CLUSTER=1 make up against node 1 with the lab's
release file ($RUN_DIR/release.env: stack/release.env with
the lab's host names and one replica per node); the site answers on every edge, http://$PREFIX.11/
and http://$PREFIX.12/. To run promote.sh (or docker) on node N: eval "\$(scripts/lab.sh env N)".

Settings (environment):
  LAB_ID=$LAB_ID            0-9: several labs can run side by side
  LAB_NODES=$LAB_NODES         nodes (at least 3)
  LAB_MANAGERS=$LAB_MANAGERS      managers among them (odd)
  APP_IMAGE               the app image to run (default: build the working tree on this host)
USAGE
}

require_root() { ((EUID == 0)) || die "lab.sh makes namespaces, links and engines: run it as root"; }

node_ns() { echo "$NAME-n$1"; }
node_addr() { echo "$PREFIX.$((10 + $1))"; }
node_sock() { echo "unix://$RUN_DIR/n$1/docker.sock"; }
node_cgroup() { echo "$NAME-n$1"; }
nd() {
  local node=$1
  shift
  docker -H "$(node_sock "$node")" "$@"
}

# The cgroups of this machine that a node's processes join (v1: one per controller; v2: one).
cgroup_dirs() {
  local node=$1
  if [[ -f $CGROUP_ROOT/cgroup.controllers ]]; then
    echo "$CGROUP_ROOT/$(node_cgroup "$node")"
  else
    local controller
    for controller in pids memory cpu freezer; do
      [[ -d $CGROUP_ROOT/$controller ]] && echo "$CGROUP_ROOT/$controller/$(node_cgroup "$node")"
    done
  fi
  return 0
}

# Forwarding between the nodes and out of the lab (DNS fails fast, pip reaches PyPI in builds).
# The host's engine sets FORWARD's policy to DROP; DOCKER-USER is the chain it leaves to us.
firewall() {
  local action=$1 chain=FORWARD
  iptables -n -L DOCKER-USER >/dev/null 2>&1 && chain=DOCKER-USER
  iptables "$action" "$chain" -s "$PREFIX.0/24" -j ACCEPT 2>/dev/null || true
  iptables "$action" "$chain" -d "$PREFIX.0/24" -j ACCEPT 2>/dev/null || true
  if [[ $action == -I ]]; then
    iptables -t nat -A POSTROUTING -s "$PREFIX.0/24" ! -o "$BRIDGE" -j MASQUERADE
  else
    iptables -t nat -D POSTROUTING -s "$PREFIX.0/24" ! -o "$BRIDGE" -j MASQUERADE 2>/dev/null || true
  fi
}

make_bridge() {
  ip link add "$BRIDGE" type bridge
  ip addr add "$PREFIX.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  sysctl -qw net.ipv4.ip_forward=1
  firewall -I
}

# start_node N: a network namespace on the bridge, then dockerd in new mount and UTS namespaces,
# where /run is the node's own directory (its socket, pid file and containerd) and the host name
# is the node's name. Containers go under the node's cgroup.
start_node() {
  local node=$1 ns host_end
  ns=$(node_ns "$node")
  host_end=wl${LAB_ID}n$node
  ip netns add "$ns"
  ip link add "$host_end" type veth peer name eth0 netns "$ns"
  ip link set "$host_end" master "$BRIDGE" up
  ip -n "$ns" addr add "$(node_addr "$node")/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  ip -n "$ns" route add default via "$PREFIX.1"
  start_engine "$node"
}

# What a node must not see of this machine: the checkout and the usual homes of files. Each node
# has its own empty tmpfs over each (runc writes small files to /tmp), so a bind mount of the
# operator's files fails there, as on a real host (docs/cluster.md: nothing on a node depends on
# the checkout).
hidden_dirs() {
  local dir
  for dir in "$ROOT_DIR" /root /tmp /work /home; do
    [[ -d $dir ]] && echo "$dir"
  done
  return 0
}

# start_engine N: dockerd of node N, in the node's network namespace (see start_node).
start_engine() {
  local node=$1 ns dir
  ns=$(node_ns "$node")
  mkdir -p "$RUN_DIR/n$node" "$DATA_DIR/n$node"
  while read -r dir; do mkdir -p "$dir"; done < <(cgroup_dirs "$node")
  # The launcher joins the node's cgroups before it becomes dockerd, so all of the node is there.
  # shellcheck disable=SC2016  # expanded by the inner shell
  CGROUPS="$(cgroup_dirs "$node" | tr '\n' ' ')" HOSTNAME_="$NAME-n$node" NODE_RUN="$RUN_DIR/n$node" \
    NODE_DATA="$DATA_DIR/n$node" CGROUP_NAME="$(node_cgroup "$node")" HIDDEN="$(hidden_dirs | tr '\n' ' ')" \
    nsenter --net="/var/run/netns/$ns" unshare --mount --uts --propagation private sh -c '
      for dir in $CGROUPS; do echo $$ > "$dir/cgroup.procs"; done
      for dir in $HIDDEN; do mount -t tmpfs -o size=64m,mode=0755 "node-private" "$dir" || exit 1; done
      hostname "$HOSTNAME_" && mount --bind "$NODE_RUN" /run &&
      exec dockerd --data-root "$NODE_DATA" -H unix:///run/docker.sock --pidfile /run/docker.pid \
        --cgroup-parent "/$CGROUP_NAME"' \
    >>"$RUN_DIR/n$node.log" 2>&1 </dev/null &
}

# The runbook's steps (docs/cluster.md), word for word, from this machine as the operator's: what
# the runbook sends to a node over ssh goes into its namespaces here, and DOCKER_HOST is node 1's
# socket where the runbook has ssh://root@NODE1. Steps 1 (packages) and 9-10 (DNS, TLS) are not
# repeated: the nodes run this machine's binaries, and tests reach the edges directly.
# runbook_make TARGET VAR=VALUE...: a make target of the runbook, against node 1.
runbook_make() {
  env "DOCKER_HOST=$(node_sock 1)" make --no-print-directory -s -C "$ROOT_DIR" "$@"
}

# Step 2: the firewall of every node lets only the nodes reach swarm's ports.
firewall_nodes() {
  local node rules
  rules=$("$ROOT_DIR/scripts/cluster.sh" firewall "$PREFIX.0/24")
  for ((node = 1; node <= LAB_NODES; node++)); do
    nsenter --net="/var/run/netns/$(node_ns "$node")" nft -f - <<<"$rules"
  done
}

form_swarm() {
  local node role
  step "runbook step 2: firewall on every node"
  firewall_nodes
  step "runbook step 3: make cluster-init on node 1"
  runbook_make cluster-init "ADVERTISE_ADDR=$(node_addr 1)"
  step "runbook step 4: make cluster-join, nodes 2-$LAB_NODES"
  for ((node = 2; node <= LAB_NODES; node++)); do
    role=worker
    ((node <= LAB_MANAGERS)) && role=manager
    runbook_make cluster-join "NODE_ENGINE=$(node_sock "$node")" "NODE_ADDR=$(node_addr "$node")" "ROLE=$role"
  done
  wait_for "$LAB_TIMEOUT" "every node to be Ready" nodes_ready
  step "runbook step 5: labels"
  nd 1 node update --label-add wsapp.edge=true --label-add wsapp.registry=true \
    --label-add wsapp.redis-primary=true --label-add wsapp.sentinel=true --label-add wsapp.postgres=true \
    "$NAME-n1" >/dev/null
  nd 1 node update --label-add wsapp.edge=true --label-add wsapp.redis-replica=true \
    --label-add wsapp.sentinel=true "$NAME-n2" >/dev/null
  nd 1 node update --label-add wsapp.sentinel=true "$NAME-n3" >/dev/null
  runbook_make labels >&2
}

nodes_ready() {
  [[ $(nd 1 node ls --format '{{.Status}}' | grep -c '^Ready$') == "$LAB_NODES" ]]
}

# The lab's release file: stack/release.env with the edges' names, one replica per node, and the
# release reports in the lab's own directory (gone with the lab).
write_release_env() {
  sed -e "s|^ALLOWED_HOSTS=.*|ALLOWED_HOSTS=$(node_addr 1),$(node_addr 2),localhost|" \
    -e "s|^PUBLIC_ORIGINS=.*|PUBLIC_ORIGINS=http://$(node_addr 1),http://$(node_addr 2),http://localhost|" \
    -e "s|^PUBLIC_ORIGIN=.*|PUBLIC_ORIGIN=http://$(node_addr 1)|" -e "s|^REPLICAS=.*|REPLICAS=$LAB_NODES|" \
    -e "s|^REPORT_DIR=.*|REPORT_DIR=$RUN_DIR/reports|" \
    "$ROOT_DIR/stack/release.env" >"$RUN_DIR/release.env"
}

# seed NODE IMAGE...: copy images from this host's engine, as a build on that node would leave them.
seed() {
  local node=$1
  shift
  docker save "$@" | nd "$node" load -q >/dev/null
}

nodes() {
  require_root
  require_int LAB_NODES 3
  require_int LAB_MANAGERS 1
  ((LAB_MANAGERS <= LAB_NODES && LAB_MANAGERS % 2 == 1)) || die "LAB_MANAGERS must be odd and at most LAB_NODES"
  [[ $LAB_ID =~ ^[0-9]$ ]] || die "LAB_ID must be a digit, got '$LAB_ID'"
  ! ip link show "$BRIDGE" >/dev/null 2>&1 || die "lab $LAB_ID exists; run scripts/lab.sh down first"
  command -v nsenter unshare iptables nft make >/dev/null ||
    die "lab.sh needs nsenter, unshare (util-linux), iptables, nft (nftables) and make"
  step "lab $LAB_ID: bridge $BRIDGE ($PREFIX.0/24) and $LAB_NODES engines"
  make_bridge
  local node
  for ((node = 1; node <= LAB_NODES; node++)); do
    start_node "$node"
  done
  for ((node = 1; node <= LAB_NODES; node++)); do
    wait_for "$LAB_TIMEOUT" "the engine of node $node (see $RUN_DIR/n$node.log)" nd "$node" info
  done
  form_swarm
  write_release_env
}

up() {
  nodes
  step "images, built on this machine (the operator's)"
  load_images
  local image=${APP_IMAGE:-}
  if [[ -z $image ]]; then
    image=$(working_tree_tag)
    build_app_image "$image"
  fi
  # Node 1 gets what `make up` against it would build there (the app, the Debian stand-ins): the
  # only images handed to a node from this machine. Then the runbook's step 6, the registry's
  # bootstrap: its two images from node 1 to every other node (each would pull them from Docker
  # Hub). Every other image reaches the other nodes through the registry: node 1 pushes, they pull.
  local node
  step "node 1: the images make up would build there"
  seed 1 "$image" "$NGINX_IMAGE" "$REGISTRY_IMAGE" "$REDIS_IMAGE" "$PROMETHEUS_IMAGE" \
    "$ALERTMANAGER_IMAGE" "$REDIS_EXPORTER_IMAGE" "$POSTGRES_IMAGE" "$POSTGRES_EXPORTER_IMAGE" \
    "$EDGE_EXPORTER_IMAGE"
  step "runbook step 6: make registry-images, nodes 2-$LAB_NODES"
  for ((node = 2; node <= LAB_NODES; node++)); do
    runbook_make registry-images "NODE_ENGINE=$(node_sock "$node")"
  done
  step "runbook step 7: CLUSTER=1 make up, against node 1"
  local -a vars
  mapfile -t vars < <(node_env 1)
  env "${vars[@]}" CLUSTER=1 APP_IMAGE="$image" HTTP_PORT=80 SITE_URL="http://$(node_addr 1)" \
    make --no-print-directory -s -C "$ROOT_DIR" up
  step "lab $LAB_ID up: http://$(node_addr 1)/ and http://$(node_addr 2)/"
}

# env_of N: the environment that makes docker, promote.sh and make talk to node N of this lab.
# Each node's client has its own configuration (DOCKER_CONFIG), as each machine would: its login to
# the lab's registry is its own, not this host's nor another lab's (all are 127.0.0.1:5000).
node_env() {
  printf '%s\n' "DOCKER_HOST=$(node_sock "$1")" "RELEASE_ENV=$RUN_DIR/release.env" "LOCK_FILE=$RUN_DIR/wsapp.lock" \
    "DOCKER_CONFIG=$RUN_DIR/client-n$1"
}

env_of() {
  local line
  while read -r line; do printf 'export %q\n' "$line"; done < <(node_env "$1")
}

# kill_processes DIR: SIGKILL every process of a cgroup and its children, until none is left.
kill_processes() {
  local dir=$1 pid
  [[ -d $dir ]] || return 0
  for _ in {1..50}; do
    mapfile -t pids < <(find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null)
    ((${#pids[@]} == 0)) && return 0
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    sleep 0.1
  done
  warn "processes left in $dir"
}

# kill-node N: the machine dies. Its link goes down first, so peers see silence, not resets.
kill_node() {
  local node=$1 dir
  require_root
  ip link set "wl${LAB_ID}n$node" down
  while read -r dir; do kill_processes "$dir"; done < <(cgroup_dirs "$node")
  log "node $node ($NAME-n$node, $(node_addr "$node")) is dead"
}

revive_node() {
  local node=$1
  require_root
  ip link set "wl${LAB_ID}n$node" up
  start_engine "$node"
  wait_for "$LAB_TIMEOUT" "the engine of node $node" nd "$node" info
  log "node $node is back"
}

# restart-engine N: stop the engine as its service manager would (SIGTERM, then wait), start it again.
restart_engine() {
  local node=$1 pid
  require_root
  pid=$(cat "$RUN_DIR/n$node/docker.pid")
  kill "$pid"
  wait_for 60 "the engine of node $node to stop" bash -c "! kill -0 $pid"
  start_engine "$node"
  wait_for "$LAB_TIMEOUT" "the engine of node $node" nd "$node" info
  log "engine of node $node restarted"
}

remove_cgroup() {
  local dir=$1
  [[ -d $dir ]] || return 0
  find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
}

lab_nodes() {
  local node
  for ((node = 1; node <= 9; node++)); do
    [[ -e /var/run/netns/$(node_ns "$node") ]] && echo "$node"
  done
  return 0
}

down() {
  require_root
  local node dir mounts
  local -a nodes
  mapfile -t nodes < <(lab_nodes)
  # Containers first (their mounts and shims), then every engine at once, then whatever is left.
  for node in "${nodes[@]}"; do
    if nd "$node" info >/dev/null 2>&1; then
      nd "$node" ps -aq | xargs -r timeout 60 docker -H "$(node_sock "$node")" rm -f >/dev/null 2>&1 || true
    fi
  done
  for node in "${nodes[@]}"; do
    if [[ -s $RUN_DIR/n$node/docker.pid ]]; then
      kill "$(cat "$RUN_DIR/n$node/docker.pid")" 2>/dev/null || true
    fi
  done
  for node in "${nodes[@]}"; do
    while read -r dir; do
      wait_for 20 "node $node to stop" test -z "$(find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null)" ||
        kill_processes "$dir"
      remove_cgroup "$dir"
    done < <(cgroup_dirs "$node")
    # The node's cgroups in the other hierarchies (blkio, devices, cpuset, systemd, unified: its
    # engine made them for its containers), empty now that its processes are gone.
    while read -r dir; do
      remove_cgroup "$dir"
    done < <(find "$CGROUP_ROOT" -mindepth 1 -maxdepth 2 -type d -name "$(node_cgroup "$node")" 2>/dev/null)
    ip netns del "$(node_ns "$node")" 2>/dev/null || true
    ip link del "wl${LAB_ID}n$node" 2>/dev/null || true
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link del "$BRIDGE"
  fi
  firewall -D
  # Mounts a killed engine left in the host's view (none with private propagation, but be sure).
  mounts=$(awk -v d="$DATA_DIR" '$2 ~ "^"d {print $2}' /proc/mounts | sort -r)
  [[ -z $mounts ]] || xargs -r umount -l <<<"$mounts"
  rm -rf "$RUN_DIR" "$DATA_DIR"
  log "lab $LAB_ID removed"
}

status() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    echo "lab $LAB_ID: not running"
    return 0
  fi
  local node
  for node in $(lab_nodes); do
    if nd "$node" info >/dev/null 2>&1; then
      echo "node $node $(node_addr "$node"): engine up, $(nd "$node" info --format '{{.Swarm.LocalNodeState}}')"
    else
      echo "node $node $(node_addr "$node"): engine down"
    fi
  done
  nd 1 node ls 2>/dev/null || true
}

main() {
  case ${1:-} in
    up) up ;;
    nodes) nodes ;;
    down) down ;;
    status) status ;;
    env)
      [[ ${2:-} =~ ^[1-9]$ ]] || die "env needs a node number"
      env_of "$2"
      ;;
    kill-node | revive-node | restart-engine)
      [[ ${2:-} =~ ^[1-9]$ ]] || die "$1 needs a node number"
      "${1//-/_}" "$2"
      ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
