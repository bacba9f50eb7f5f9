"""End-to-end tier: a real single-node swarm, brought up by scripts/up.sh and removed afterwards.

Fixtures only; the helpers they use, and tests use, are in tests/e2e/helpers.py.
"""

import subprocess

import pytest

from tests.e2e.helpers import active_service, docker, run, service_image
from tests.helpers import require_command


@pytest.fixture(scope="session")
def swarm():
    """A Docker engine with swarm mode; a swarm this session initialised is left again at the end."""
    require_command("docker", "the e2e tier deploys to a real swarm")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        pytest.fail("no Docker engine answers: start dockerd (bash .ci/run does)", pytrace=False)
    was_active = docker("info", "--format", "{{.Swarm.LocalNodeState}}") == "active"
    yield
    run(["scripts/down.sh"], 300, check=False, KEEP_REGISTRY="0")
    if not was_active:
        docker("swarm", "leave", "--force")


@pytest.fixture
def system(swarm):
    """The whole system from a clean state (make down, make up); removed again afterwards."""
    run(["scripts/down.sh"], 300)
    run(["scripts/up.sh"], 600)
    yield
    run(["scripts/down.sh"], 300)


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
