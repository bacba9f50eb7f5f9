"""Nginx on several edge nodes (issue 12): a switch reaches every Nginx from any manager, each one is
asked, a disagreeing Nginx is repaired, and an Nginx rescheduled to another node serves the active
color (the record is a label of the service, not a file on a node).

The lab (scripts/lab.sh) labels nodes 1 and 2 as edges; node 3 is a manager without Nginx."""

import urllib.request

import pytest

from tests.helpers import ROOT
from tests.lab.lab import EDGES

NOT_EDGE = 3  # a manager that runs no Nginx
# No release gate: on a busy machine Prometheus may not see every new replica within a short watch,
# and the gate is not what these tests are about (tests/e2e covers it).
FAST = {"DRAIN_SECONDS": "3", "WATCH_SECONDS": "0"}


def served_color(lab, node):
    """The color node N's public port serves (X-Served-Color of its Nginx), or None when closed."""
    try:
        with urllib.request.urlopen(lab.url(node) + "/version", timeout=3) as response:
            return response.headers["X-Served-Color"]
    except OSError:
        return None


def recorded(lab, node=NOT_EDGE):
    return lab.docker(node, "service", "inspect", "--format",
                      '{{index .Spec.Labels "com.wsapp.active-color"}}', "wsapp_nginx")


def other(color):
    return "green" if color == "blue" else "blue"


@pytest.fixture(scope="module")
def release_images(lab):
    """Two more tags of the running app image on every node: a release needs a new tag, and its
    version is the tag (promote.sh pushes the one it releases to the registry)."""
    tags = ["wsapp:lab-edges-1", "wsapp:lab-edges-2"]
    for node in range(1, lab.nodes + 1):
        for tag in tags:
            lab.next_image(node, tag)
    return iter(tags)


def promote(lab, node, image):
    return lab.run(node, ["./promote.sh", "--image", image], timeout=400, **FAST)


def test_no_node_sees_the_checkout(lab):
    """The lab's nodes share no files with this machine (docs/cluster.md): a bind mount of the
    checkout fails on every node, so the switch jobs and release tools the other tests run on them
    cannot lean on it."""
    image = lab.docker(1, "service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
                       "wsapp-registry_proxy")
    for node in range(1, lab.nodes + 1):
        bind = f"type=bind,source={ROOT}/scripts,target=/checkout"
        result = lab.run(node, ["docker", "run", "--rm", "--mount", bind, "--entrypoint", "true", image],
                         timeout=60, check=False)
        assert result.returncode != 0 and "bind source path does not exist" in result.stderr, (node, result)


def test_status_shows_every_edge_and_its_color(lab):
    active = recorded(lab)
    out = lab.run(NOT_EDGE, ["./promote.sh", "status"], timeout=120).stdout
    assert f"active color: {active}" in out
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("nginx on ")]
    assert len(lines) == len(EDGES), out
    for node in EDGES:
        assert any(line.startswith(f"nginx on {lab.node_name(node)} (") and line.endswith(f"): {active}")
                   for line in lines), out


def test_promote_from_a_manager_without_nginx_switches_every_edge(lab, release_images):
    before = recorded(lab)
    assert not lab.docker(NOT_EDGE, "ps", "-q", "--filter", "label=com.docker.swarm.service.name=wsapp_nginx")
    result = promote(lab, NOT_EDGE, next(release_images))
    after = other(before)
    assert recorded(lab) == after
    for node in EDGES:
        assert served_color(lab, node) == after, f"edge {node} does not serve {after}"
        assert f"{lab.node_name(node)} wsapp_nginx." in result.stderr, "no switch-color on an edge"
    assert f"ok: every Nginx of wsapp_nginx serves {after}" in result.stdout + result.stderr


def test_an_nginx_that_missed_a_switch_is_repaired_before_a_release(lab, release_images):
    active = recorded(lab)
    nginx = lab.docker(EDGES[0], "ps", "-q", "--filter", "label=com.docker.swarm.service.name=wsapp_nginx")
    lab.docker(EDGES[0], "exec", nginx, "switch-color", other(active))
    status = lab.run(NOT_EDGE, ["./promote.sh", "status"], timeout=120).stdout
    assert f"nginx on {lab.node_name(EDGES[0])} " in status and "DISAGREES" in status, status
    result = promote(lab, NOT_EDGE, next(release_images))
    assert (f"not every Nginx serves the recorded color {active}; switching every Nginx to {active}"
            in result.stderr)
    for node in EDGES:
        assert served_color(lab, node) == other(active)


def test_an_nginx_moved_to_another_node_serves_the_active_color(lab):
    active = recorded(lab)
    old, new = EDGES[1], NOT_EDGE
    try:
        lab.docker(1, "node", "update", "--label-rm", "wsapp.edge", lab.node_name(old))
        lab.docker(1, "node", "update", "--label-add", "wsapp.edge=true", lab.node_name(new))
        lab.wait(lambda: served_color(lab, new) is not None, 90, f"Nginx on node {new}")
        assert served_color(lab, new) == active
        lab.wait(lambda: served_color(lab, old) is None, 60, f"Nginx on node {old} to stop")
        # Its port answers before its healthcheck passes; Swarm's DNS (and so status) lists it after.
        lab.wait(lambda: lab.node_name(new) in lab.tasks("wsapp_nginx").values(), 60,
                 f"the Nginx task on node {new} to be healthy")
        out = lab.run(1, ["./promote.sh", "status"], timeout=120).stdout
        assert f"nginx on {lab.node_name(new)} " in out and "DISAGREES" not in out, out
    finally:
        lab.docker(1, "node", "update", "--label-rm", "wsapp.edge", lab.node_name(new), check=False)
        lab.docker(1, "node", "update", "--label-add", "wsapp.edge=true", lab.node_name(old), check=False)
    lab.wait(lambda: served_color(lab, old) == active, 90, f"Nginx back on node {old}")
