"""Prometheus on several nodes: every replica of the active color, on every node, is a target that
is up, and the recorded totals count each replica once. Edges that disagree on the color (a switch
that reached one edge and not the other) fire WsappEdgesDisagreeOnColor, which reaches the receiver,
and `promote.sh repair` resolves it."""

import json
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.helpers import ALERT_SINK_PROGRAM, ROOT, alert_notifications
from tests.lab.lab import EDGES
from tests.lab.test_edges import other, recorded

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

SINK = "wsapp-lab-alert-sink"


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


def app_image(lab, color):
    return lab.docker(1, "service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
                      f"wsapp-{color}_app")


def switch_one_edge(lab, node, color, image):
    """What the switch job does on each edge (scripts/lib.sh edge_job: release_tools.py switch-local,
    with the node's Docker socket, runs switch-color in the node's Nginx), on one edge only: as when
    a switch is cut off after it reached this edge and before the other). The script goes on the
    container's standard input: the node has no checkout (docs/cluster.md)."""
    return lab.docker(node, "run", "--rm", "-i", "--user", "0", "--read-only", "--cap-drop", "ALL",
                      "-v", "/var/run/docker.sock:/var/run/docker.sock", "--entrypoint", "python",
                      image, "-", "switch-local", "--service", "wsapp_nginx", "--color", color, timeout=180,
                      stdin=Path(ROOT, "scripts", "release_tools.py").read_text())


def edge_color(lab, node):
    """The color node N's Nginx routes public traffic to, as it says itself (`switch-color` with no
    argument): its public port cannot say so while that color runs no replica."""
    nginx = lab.docker(node, "ps", "-q", "--filter", "label=com.docker.swarm.service.name=wsapp_nginx")
    return lab.docker(node, "exec", nginx, "switch-color")


def sink_got(lab, alertname, status, since):
    """When (epoch) the sink first had `alertname` with `status` after `since`, or None."""
    times = [stamp for stamp, name, have, _ in alert_notifications(lab.docker(1, "logs", SINK, timeout=30))
             if name == alertname and have == status and stamp >= since]
    return min(times, default=None)


# 2-3 minutes; 900 s, as the other lab tests that run first, since the first bears the lab's bring-up
# (8.5 minutes measured while another lab ran on the same 2 cores).
@pytest.mark.timeout(900)
def test_edges_that_disagree_fire_the_alert_and_repair_resolves_it(lab):
    """The lab's Prometheus runs rules.yml as it is (`for: 1m`); Alertmanager, as the stack runs it,
    with ALERT_WEBHOOK_URL (the release file's variable, which the stack passes to its environment)
    set to the sink and a group wait and interval of 1 s, so that the resolution is sent at once
    (default 5 m)."""
    active = recorded(lab)
    idle = other(active)
    image = app_image(lab, active)
    manager = lab.manager()
    odd = EDGES[0]
    lab.docker(1, "rm", "-f", SINK, check=False)
    lab.docker(1, "run", "-d", "--name", SINK, "--network", "wsapp", "--read-only", "--cap-drop", "ALL",
               "--user", "65534", "--entrypoint", "python3", image, "-u", "-c", ALERT_SINK_PROGRAM,
               timeout=180)
    lab.docker(manager, "service", "update", "--env-add", f"ALERT_WEBHOOK_URL=http://{SINK}:9099/alerts",
               "--env-add", "ALERT_GROUP_WAIT=1s", "--env-add", "ALERT_GROUP_INTERVAL=1s",
               "wsapp_alertmanager", timeout=240)
    try:
        print(switch_one_edge(lab, odd, idle, image))
        disagreed = time.time()
        assert (edge_color(lab, odd), edge_color(lab, EDGES[1])) == (idle, active)

        lab.wait(lambda: sink_got(lab, "WsappEdgesDisagreeOnColor", "firing", disagreed), 180,
                 "WsappEdgesDisagreeOnColor at the sink", 2)
        fired = sink_got(lab, "WsappEdgesDisagreeOnColor", "firing", disagreed) - disagreed
        print(f"edge {lab.node_name(odd)} on {idle}, the other on {active}: "
              f"WsappEdgesDisagreeOnColor at the sink after {fired:.1f}s (for: 1m)")
        status = lab.run(manager, ["./promote.sh", "status"], timeout=120).stdout
        assert "DISAGREES" in status, status

        result = lab.run(manager, ["./promote.sh", "repair"], timeout=300)
        repaired = time.time()
        assert f"switching every Nginx to {active}" in result.stderr, result.stderr
        for node in EDGES:
            assert edge_color(lab, node) == active, f"edge {node} does not serve {active} after repair"
        lab.wait(lambda: sink_got(lab, "WsappEdgesDisagreeOnColor", "resolved", repaired), 120,
                 "WsappEdgesDisagreeOnColor resolved at the sink", 2)
        resolved = sink_got(lab, "WsappEdgesDisagreeOnColor", "resolved", repaired) - repaired
        print(f"promote.sh repair: every edge on {active}; resolved at the sink {resolved:.1f}s after it")
    finally:
        if edge_color(lab, odd) != active:  # the test failed before the repair: leave the lab as it was
            switch_one_edge(lab, odd, active, image)
        lab.docker(manager, "service", "rollback", "wsapp_alertmanager", timeout=240, check=False)
        lab.docker(1, "rm", "-f", SINK, check=False)
