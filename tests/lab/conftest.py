"""Lab tier: the whole system on a multi-node swarm on this machine (scripts/lab.sh), brought up once
for the tier and removed afterwards. Needs root, Docker, iproute2 and util-linux; missing ones fail
the tier (CI installs them), they never skip it."""

import os
import subprocess

import pytest

from tests.helpers import require_command
from tests.lab.lab import Lab


@pytest.fixture(scope="session")
def lab():
    for name in ("docker", "ip", "nsenter", "unshare", "iptables", "nft", "make"):
        require_command(name, "the lab tier builds a multi-node swarm (scripts/lab.sh)")
    if os.geteuid() != 0:
        pytest.fail("the lab tier makes namespaces and engines: run it as root (CI does)", pytrace=False)
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        pytest.fail("no Docker engine answers on this host: start dockerd (bash .ci/run does)", pytrace=False)
    lab = Lab()
    if os.environ.get("LAB_REUSE") == "1":  # development: a lab already up, left as it is
        yield lab
        return
    lab.script("down", check=False)
    try:
        up = lab.script("up", timeout=1200)
        # The runbook's steps with their times (docs/cluster.md, "The runbook on the lab"), on request.
        if os.environ.get("LAB_UP_LOG"):
            with open(os.environ["LAB_UP_LOG"], "w") as log:
                log.write(up.stderr)
    except BaseException:  # a lab that came up halfway is removed too, not left running
        lab.script("down", check=False)
        raise
    yield lab
    lab.script("down", check=False)


@pytest.fixture(autouse=True)
def settled_lab(lab):
    """Every lab test starts on a whole lab (Lab.settle): the tests share one lab, and a fault one of
    them left healing must not be taken for the next one's failure."""
    waited = lab.settle()
    if waited > 5:
        print(f"the lab took {waited:.0f}s to be whole again")
