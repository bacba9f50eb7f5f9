"""Prometheus on several nodes: every replica of the active color, on every node, is a target that
is up, and the recorded totals count each replica once."""

import json
import urllib.parse

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]


def query(lab, expr):
    """A PromQL query, from a throwaway container on the overlay network of node 1 (Prometheus
    publishes no port)."""
    nginx = lab.docker(1, "service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
                       "wsapp_nginx")
    url = "http://wsapp_prometheus:9090/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    out = lab.docker(1, "run", "--rm", "--network", "wsapp", "--entrypoint", "curl", nginx, "-fsS", url)
    return json.loads(out)["data"]["result"]


def test_every_replica_on_every_node_is_scraped(lab):
    color = lab.version(1)["color"]
    tasks = lab.tasks(f"wsapp-{color}_app")
    nodes = set(tasks.values())
    # Spread over the nodes (Swarm does not move replicas back onto a node that returned after a
    # node-loss test, so not necessarily all of them).
    assert len(nodes) >= 3, f"replicas are not spread over the nodes: {tasks}"

    def counted():
        try:
            up = query(lab, f'up{{job="app", color="{color}"}} == 1')
            ready = query(lab, f'color:ws_ready_replicas:sum{{color="{color}"}}')
        except AssertionError:  # Prometheus may be moving (if it ran on the node the last test killed)
            return False
        return len(up) == len(tasks) and [float(sample["value"][1]) for sample in ready] == [len(tasks)]
    # Within two minutes (a replica or Prometheus rescheduled by the node-loss test may still be
    # starting), and never counted twice.
    lab.wait(counted, 120, f"{len(tasks)} targets of {color} up and counted once", 2)
    print(f"{len(tasks)} replicas of {color} on {len(nodes)} nodes, each scraped and counted once")
