"""The image registry on a multi-node swarm (docs/operations.md, "The image registry"): node 1 pushes
what it has, every other node pulls it from the registry through its own 127.0.0.1:5000, by digest,
so every node runs the same bytes (with the login the manager's client hands over, --with-registry-auth);
a promotion from another manager logs in and pushes there too; and a container on a node, on any
network, cannot list, pull or push (docs/security.md, "The registry")."""

import ipaddress
import json
import subprocess
import urllib.error
import urllib.request

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.timeout(1200)]

REGISTRY = "127.0.0.1:5000"
SPEC_IMAGE = "{{.Spec.TaskTemplate.ContainerSpec.Image}}"


def active_app(lab, edge=1):
    return f"wsapp-{lab.version(edge)['color']}_app"


def images_on_nodes(lab, service):
    """{node: (reference, image id)} of the service's running containers, asked of each node's engine."""
    found = {}
    for node in range(1, lab.nodes + 1):
        label = f"label=com.docker.swarm.service.name={service}"
        containers = lab.docker(node, "ps", "-q", "--filter", label)
        for container in containers.split():
            reference = lab.docker(node, "inspect", "--format", "{{.Config.Image}}", container)
            image_id = lab.docker(node, "inspect", "--format", "{{.Image}}", container)
            found[node] = (reference, image_id)
    return found


# Run in a container on a node: for each base URL, list, pull (a manifest of the running app) and start a
# push; print {url: [statuses]}, 0 where the connection is refused or times out.
PROBE = """
import json, sys, urllib.error, urllib.request
def status(method, url):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0
digest = sys.argv[1]
print(json.dumps({base: [status("GET", base + "/v2/_catalog"),
                         status("GET", base + "/v2/wsapp/manifests/" + digest),
                         status("POST", base + "/v2/wsapp-attack/blobs/uploads/")] for base in sys.argv[2:]}))
"""


def gateway(lab, node, network):
    """The network's gateway on node N: the node's own address on it (the default bridge names only its
    subnet: the gateway is the subnet's first address)."""
    config = json.loads(lab.docker(node, "network", "inspect", network))[0]["IPAM"]["Config"][0]
    return config.get("Gateway") or str(ipaddress.ip_network(config["Subnet"])[1])


def test_a_container_on_a_node_can_neither_list_nor_pull_nor_push(lab):
    """Issue 17: the proxies add no password, so a container that reaches its node's port 5000 (through
    the node's address or its bridges' gateways, where the engine's own connections come from) gets 401;
    before, it got 200 and the password. Other hosts get 403 (the proxy's allow list)."""
    service = active_app(lab)
    image = lab.docker(1, "service", "inspect", "--format", SPEC_IMAGE, service)
    digest = image.split("@", 1)[1]
    for node in (1, lab.nodes):  # the registry's node, and a worker
        # The app's overlay (with its leg on docker_gwbridge), and the default bridge.
        for network in ("wsapp", "bridge"):
            urls = [f"http://{address}:5000" for address in
                    (lab.addr(node), gateway(lab, node, "docker_gwbridge"), gateway(lab, node, "bridge"))]
            out = lab.docker(node, "run", "--rm", "--network", network, "--read-only", "--cap-drop", "ALL",
                             "--entrypoint", "python", image, "-c", PROBE, digest, *urls, timeout=120)
            statuses = json.loads(out.splitlines()[-1])
            print(f"node {node}, network {network}: {statuses}")
            for url, answers in statuses.items():
                assert set(answers) <= {401, 403, 0}, (node, network, url, answers)
                assert 401 in answers or set(answers) != {0}, (node, network, url, answers)
    # From outside the cluster (this host, on the lab's bridge): the allow list answers first.
    request = urllib.request.Request(f"http://{lab.addr(lab.nodes)}:5000/v2/_catalog")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()
    assert refused.value.code == 403


def test_every_node_runs_the_same_app_image_by_digest(lab):
    service = active_app(lab)
    reference = lab.docker(1, "service", "inspect", "--format", SPEC_IMAGE, service)
    assert reference.startswith(f"{REGISTRY}/wsapp@sha256:"), reference
    lab.wait(lambda: len(images_on_nodes(lab, service)) == lab.nodes, 120, "a replica on every node")
    found = images_on_nodes(lab, service)
    assert {ref for ref, _ in found.values()} == {reference}, found
    assert len({image_id for _, image_id in found.values()}) == 1, found


def test_the_infra_images_come_from_the_registry_by_digest(lab):
    for service in ("wsapp_nginx", "wsapp_redis", "wsapp_prometheus"):
        reference = lab.docker(1, "service", "inspect", "--format", SPEC_IMAGE, service)
        assert reference.startswith(f"{REGISTRY}/") and "@sha256:" in reference, (service, reference)
    # Only the registry's own two images were seeded on node 4; Redis and Prometheus were not.
    assert lab.docker(4, "image", "inspect", "wsapp-local/redis:bookworm", check=False) in ("", "[]")


def test_a_promotion_from_another_manager_pushes_its_image_and_deploys_it_by_digest(lab):
    before = active_app(lab, 2)
    old = lab.docker(1, "service", "inspect", "--format", SPEC_IMAGE, before)
    # A new image made on node 2 alone (from the one it pulled): only the registry can carry it.
    dockerfile = f"FROM {old}\nLABEL com.wsapp.test=lab-registry\n"
    build = subprocess.run(["docker", "build", "-q", "-t", "wsapp:lab-registry", "-"], input=dockerfile,
                           env=lab.env(2), capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    new_id = build.stdout.strip()
    result = lab.run(2, ["./promote.sh", "--image", "wsapp:lab-registry"], timeout=900, check=False,
                     DRAIN_SECONDS="3", WATCH_SECONDS="0")
    assert result.returncode == 0, result.stderr[-4000:]
    after = active_app(lab, 2)
    assert after != before
    reference = lab.docker(2, "service", "inspect", "--format", SPEC_IMAGE, after)
    assert reference.startswith(f"{REGISTRY}/wsapp@sha256:") and reference != old, reference
    assert lab.version(2)["version"] == "lab-registry"
    lab.wait(lambda: len(images_on_nodes(lab, after)) == lab.nodes, 120, "a new replica on every node")
    assert {image_id for _, image_id in images_on_nodes(lab, after).values()} == {new_id}
    assert reference in lab.run(2, ["./promote.sh", "status"]).stdout
