"""End-to-end tier: a real single-node swarm, brought up by scripts/up.sh and removed afterwards.

Fixtures only; the helpers they use, and tests use, are in tests/e2e/helpers.py.
"""

import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import active_service, docker, run, service_image, standing
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on its test item (item.rep_call): the system fixture asks if the test passed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


# The order the tier's modules run in. test_security.py brings up a system of its own (small limits);
# every other test is marked takes_standing_system, and they run as one chain on the system the one
# before left, so that a tier that passes brings the system up twice. test_alerts.py comes last: it
# swaps Prometheus' rules for its own and removes the system afterwards.
# test_observability.py reads raw sums that a replica killed while Prometheus was down (test_faults.py)
# would count for Prometheus' 5-minute lookback, so it comes before test_faults.py; test_attacks.py's
# 429s would keep WsappEdgeRateLimiting firing for 5 minutes, so it comes long before test_alerts.py.
ORDER = ["test_security", "test_attacks", "test_browser", "test_postgres", "test_presence",
         "test_observability", "test_release", "test_faults", "test_migrations", "test_alerts"]
HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    """Put the tier's tests in ORDER, in their own places among the items of other tiers; within a
    module, file order. A module not in ORDER is an error: where it runs decides what it starts on."""
    places = [index for index, item in enumerate(items) if item.path.parent == HERE]
    missing = {items[index].path.name for index in places} - {f"{name}.py" for name in ORDER}
    if missing:
        raise pytest.UsageError(f"tests/e2e/conftest.py: add {', '.join(sorted(missing))} to ORDER")
    ours = sorted((items[index] for index in places), key=lambda item: ORDER.index(item.path.stem))
    for index, item in zip(places, ours, strict=True):
        items[index] = item


# The test that passed and left its system standing for the next, if the next takes it.
STANDING = {"left_by": None}
# How long a test waits for the system its predecessor left to stand again (a task Swarm is replacing,
# a container still starting): less than make down and make up take.
STANDING_WAIT = 45


def wait_standing():
    deadline = time.monotonic() + STANDING_WAIT
    while not standing():
        if time.monotonic() > deadline:
            return False
        time.sleep(3)
    return True


@pytest.fixture
def system(swarm, request):
    """The whole system from a clean state (make down, make up); removed again afterwards.

    A test marked `takes_standing_system` gets instead the system the test just before it left, when
    that test was marked too and passed, and the system stands as make up leaves it (one color, every
    service at its count, the site answering) within STANDING_WAIT seconds. Such a test starts where
    its predecessor's release (or failed release) ended, so a leftover the predecessor missed fails
    there, and it saves a make down and make up (about a minute each). Anything else gets make down
    and make up."""
    items = request.session.items
    previous = items[items.index(request.node) - 1].nodeid if items.index(request.node) else None
    takes_standing = request.node.get_closest_marker("takes_standing_system") is not None
    if not (takes_standing and previous and STANDING["left_by"] == previous and wait_standing()):
        STANDING["left_by"] = None
        run(["scripts/down.sh"], 300)
        run(["scripts/up.sh"], 600)
    STANDING["left_by"] = None
    yield
    report = getattr(request.node, "rep_call", None)
    if takes_standing and report is not None and report.passed:
        STANDING["left_by"] = request.node.nodeid
        return
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
