"""End-to-end tier: a real single-node swarm, brought up by scripts/up.sh and removed afterwards."""

import json
import os
import subprocess
import urllib.request

import pytest

from tests.helpers import ROOT, require_command

HTTP_PORT = int(os.environ.get("E2E_HTTP_PORT", "18080"))
ENV = dict(
    os.environ,
    HTTP_PORT=str(HTTP_PORT),
    PROMETHEUS_PORT=os.environ.get("E2E_PROMETHEUS_PORT", "19090"),
    GRAFANA_PORT=os.environ.get("E2E_GRAFANA_PORT", "13000"),
    VOLUMES="1",
)
BASE_URL = f"http://localhost:{HTTP_PORT}"
WS_URL = f"ws://localhost:{HTTP_PORT}"


def run(args, timeout, check=True, **env):
    result = subprocess.run(args, cwd=ROOT, env=dict(ENV, **env), capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def docker(*args, timeout=60):
    return run(["docker", *args], timeout).stdout.strip()


def version():
    with urllib.request.urlopen(BASE_URL + "/version", timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture(scope="session")
def swarm():
    """A Docker engine with swarm mode; a swarm this session initialised is left again at the end."""
    require_command("docker", "the e2e tier deploys to a real swarm")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        pytest.fail("no Docker engine answers: start dockerd (bash .ci/run does)", pytrace=False)
    was_active = docker("info", "--format", "{{.Swarm.LocalNodeState}}") == "active"
    yield
    run(["scripts/down.sh"], 300, check=False)
    if not was_active:
        docker("swarm", "leave", "--force")


@pytest.fixture
def system(swarm):
    """The whole system from a clean state (make down, make up); removed again afterwards."""
    run(["scripts/down.sh"], 300)
    run(["scripts/up.sh"], 600)
    yield
    run(["scripts/down.sh"], 300)


def active_service():
    return f"wsapp-{version()['color']}_app"


def service_image(service):
    return docker("service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
                  service).split("@")[0]


def stacks():
    return set(docker("stack", "ls", "--format", "{{.Name}}").split())


@pytest.fixture
def derived_image():
    """Build an image FROM the running one with extra Dockerfile lines; removed afterwards."""
    built = []

    def build(tag, *lines):
        base = service_image(active_service())
        dockerfile = "\n".join([f"FROM {base}", *lines]) + "\n"
        result = subprocess.run(["docker", "build", "-q", "-t", tag, "-"], input=dockerfile, text=True,
                                capture_output=True, timeout=120)
        assert result.returncode == 0, result.stderr
        built.append(tag)
        return tag

    yield build
    for tag in built:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=60)
