"""up.sh and scripts/cluster.sh on a cluster (docs/cluster.md): no swarm that other hosts cannot join
when CLUSTER=1, and missing node labels reported, never set, on a swarm of several nodes.

The unit tier has no Docker engine: `docker` here is a small shell script that plays a swarm's
answers from files (its nodes, their labels, the address it advertises) and logs every call. The
lab tier runs the same scripts on a real multi-node swarm (scripts/lab.sh follows the runbook)."""

import os
import subprocess

import pytest

from tests.helpers import ROOT

FAKE_DOCKER = r"""#!/usr/bin/env bash
# Test double of the docker CLI: $state/swarm (inactive|active), $state/addr (advertised), $state/nodes
# (one node id per line, the id is its host name), $state/label-KEY (the ids labelled KEY=true).
state=$(dirname "$0")
echo "$*" >>"$state/calls"
case "$1 ${2:-}" in
  "info ") ;;
  "info --format")
    case $3 in
      *LocalNodeState*) cat "$state/swarm" ;;
      *ControlAvailable*) [[ $(cat "$state/swarm") == active ]] && echo true || echo false ;;
      *NodeAddr*) cat "$state/addr" ;;
      *NodeID*) head -1 "$state/nodes" ;;
    esac ;;
  "swarm init") echo active >"$state/swarm" ;;
  "config create") echo lock-id ;;
  "config rm") ;;
  "node ls")
    if [[ $* =~ node\.label=([a-z.-]+)=true ]]; then cat "$state/label-${BASH_REMATCH[1]}" 2>/dev/null
    else cat "$state/nodes"; fi
    true ;;
  "node inspect")
    format=$4
    shift 4
    for id in "$@"; do
      if [[ $format == *Role* ]]; then echo "$id manager ready 10.0.0.1"; else echo "$id"; fi
    done ;;
  "node update") ;;
  *) echo "fake docker: unexpected: $*" >&2; exit 2 ;;
esac
"""


@pytest.fixture
def swarm(tmp_path):
    """The docker double on PATH; returns (state directory, environment). No swarm yet."""
    docker = tmp_path / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    (tmp_path / "swarm").write_text("inactive\n")
    (tmp_path / "addr").write_text("\n")
    (tmp_path / "nodes").write_text("node-1\n")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "LOCK_FILE": str(tmp_path / "lock")}
    for name in ("CLUSTER", "SWARM_ADVERTISE_ADDR", "REGISTRY", "DOCKER_HOST"):
        env.pop(name, None)
    return tmp_path, env


def run(args, env, **extra):
    return subprocess.run(args, env={**env, **extra}, capture_output=True, text=True, timeout=30)


def calls(state):
    path = state / "calls"
    return path.read_text() if path.exists() else ""


def cluster_of(state, labels):
    """An active swarm of node-1..node-3 advertising 10.0.0.1, with {label: [node, ...]}."""
    (state / "swarm").write_text("active\n")
    (state / "addr").write_text("10.0.0.1\n")
    (state / "nodes").write_text("node-1\nnode-2\nnode-3\n")
    for key, nodes in labels.items():
        (state / f"label-{key}").write_text("".join(f"{node}\n" for node in nodes))


def test_up_with_cluster_refuses_to_initialise_a_swarm_on_loopback(swarm):
    state, env = swarm
    result = run([f"{ROOT}/scripts/up.sh"], env, CLUSTER="1")
    assert result.returncode == 1
    assert "cannot be joined by other hosts" in result.stderr and "make cluster-init" in result.stderr
    assert "swarm init" not in calls(state)


def test_up_with_cluster_initialises_on_the_address_it_is_given(swarm):
    state, env = swarm
    result = run([f"{ROOT}/scripts/up.sh"], env, CLUSTER="1", SWARM_ADVERTISE_ADDR="10.0.0.1")
    assert "swarm init --advertise-addr 10.0.0.1" in calls(state)
    # It goes on to the labels of that one node, and stops there: none is labelled, none is set.
    assert result.returncode == 1 and "no node is labelled wsapp.edge=true" in result.stderr
    assert "node update" not in calls(state)


def test_up_with_cluster_refuses_a_swarm_that_advertises_loopback(swarm):
    state, env = swarm
    (state / "swarm").write_text("active\n")
    (state / "addr").write_text("127.0.0.1\n")
    result = run([f"{ROOT}/scripts/up.sh"], env, CLUSTER="1")
    assert result.returncode == 1
    assert "this swarm advertises 127.0.0.1, which no other host can join" in result.stderr


def test_up_on_several_nodes_reports_missing_labels_and_sets_none(swarm):
    state, env = swarm
    cluster_of(state, {"wsapp.edge": ["node-1"], "wsapp.redis-primary": ["node-1", "node-2"]})
    result = run([f"{ROOT}/scripts/up.sh"], env)
    assert result.returncode == 1
    doubled = "2 nodes are labelled wsapp.redis-primary=true (node-1 node-2); exactly one must be"
    assert doubled in result.stderr
    assert "0 nodes are labelled wsapp.redis-replica=true" in result.stderr
    assert "0 nodes are labelled wsapp.registry=true" in result.stderr
    assert "0 nodes are labelled wsapp.postgres=true" in result.stderr
    assert "0 nodes are labelled wsapp.sentinel=true (); 3 must be" in result.stderr
    assert "no node was labelled and nothing was deployed" in result.stderr
    assert "node update" not in calls(state) and "stack deploy" not in calls(state)


def test_labels_refuses_both_redis_on_one_node_and_passes_a_complete_set(swarm):
    state, env = swarm
    cluster_of(state, {"wsapp.edge": ["node-1", "node-2"], "wsapp.registry": ["node-1"],
                       "wsapp.redis-primary": ["node-2"], "wsapp.redis-replica": ["node-2"],
                       "wsapp.postgres": ["node-1"], "wsapp.sentinel": ["node-1", "node-2", "node-3"]})
    result = run([f"{ROOT}/scripts/cluster.sh", "labels"], env)
    assert result.returncode == 1
    assert "the Redis primary and replica are both on node-2" in result.stderr
    (state / "label-wsapp.redis-replica").write_text("node-3\n")
    result = run([f"{ROOT}/scripts/cluster.sh", "labels"], env)
    assert result.returncode == 0, result.stderr
    assert "labels: ok" in result.stderr and "node-3 manager ready" in result.stdout


def test_labels_needs_no_registry_label_with_a_registry_of_ones_own(swarm):
    state, env = swarm
    cluster_of(state, {"wsapp.edge": ["node-1"], "wsapp.redis-primary": ["node-1"],
                       "wsapp.redis-replica": ["node-2"], "wsapp.postgres": ["node-3"],
                       "wsapp.sentinel": ["node-1", "node-2", "node-3"]})
    assert run([f"{ROOT}/scripts/cluster.sh", "labels"], env).returncode == 1
    own = run([f"{ROOT}/scripts/cluster.sh", "labels"], env, REGISTRY="registry.example/team")
    assert own.returncode == 0, own.stderr


@pytest.mark.parametrize("addr", ["127.0.0.1", "127.0.1.1", "localhost", ""])
def test_cluster_init_refuses_an_address_no_other_host_reaches(swarm, addr):
    state, env = swarm
    result = run([f"{ROOT}/scripts/cluster.sh", "init", addr], env)
    assert result.returncode == 1
    assert "swarm init" not in calls(state)


def test_cluster_init_initialises_once(swarm):
    state, env = swarm
    assert run([f"{ROOT}/scripts/cluster.sh", "init", "10.0.0.1"], env).returncode == 0
    (state / "addr").write_text("10.0.0.1\n")
    again = run([f"{ROOT}/scripts/cluster.sh", "init", "10.0.0.1"], env)
    assert again.returncode == 0 and "already a swarm advertising 10.0.0.1" in again.stderr
    assert calls(state).count("swarm init") == 1
    other = run([f"{ROOT}/scripts/cluster.sh", "init", "10.0.0.9"], env)
    assert other.returncode == 1 and "already in a swarm, advertising 10.0.0.1" in other.stderr


def test_the_firewall_rules_name_every_swarm_port_and_refuse_a_bad_network(swarm):
    _, env = swarm
    rules = run([f"{ROOT}/scripts/cluster.sh", "firewall", "10.0.0.0/24"], env)
    assert rules.returncode == 0
    for line in ("ip saddr 10.0.0.0/24 tcp dport { 2377, 7946 } accept",
                 "ip saddr 10.0.0.0/24 udp dport { 7946, 4789 } accept",
                 "ip saddr 10.0.0.0/24 meta l4proto esp accept", "udp dport { 7946, 4789 } drop"):
        assert line in rules.stdout
    assert run([f"{ROOT}/scripts/cluster.sh", "firewall", "10.0.0.0/24; flush ruleset"], env).returncode == 1


def test_labels_wants_one_sentinel_node_each_of_three(swarm):
    """Sentinels are pinned to their labelled nodes (stack/infra.yml): two labelled nodes of three put
    two Sentinels on one node, and losing it loses their majority."""
    state, env = swarm
    cluster_of(state, {"wsapp.edge": ["node-1"], "wsapp.redis-primary": ["node-1"],
                       "wsapp.redis-replica": ["node-2"], "wsapp.postgres": ["node-1"],
                       "wsapp.sentinel": ["node-1", "node-2"]})
    result = run([f"{ROOT}/scripts/cluster.sh", "labels"], env, REGISTRY="registry.example/team")
    assert result.returncode == 1
    assert "2 nodes are labelled wsapp.sentinel=true (node-1 node-2); 3 must be" in result.stderr
