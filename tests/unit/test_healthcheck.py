"""The app's container healthcheck tells a hung replica from a slow one (docs/operations.md, "Healthy
means"). On a machine short of CPU every replica of the active color is slow at once; with a 3 s
timeout and 3 retries Swarm replaced them all while a release started the new color, which closed
every client and gave the release test 134 HTTP 502s. tests/e2e/test_faults.py starves a color for
real; this holds the numbers, in both places they are written."""

import re
from pathlib import Path

import yaml

from tests.helpers import ROOT

# A replica is replaced only after this long without an answer.
HUNG_SECONDS = 60
# A probe may take this long on a starved replica (the e2e test's 0.02 CPU: about 5 s).
SLOW_PROBE_SECONDS = 8


def seconds(text):
    match = re.fullmatch(r"(\d+)s", str(text))
    assert match, text
    return int(match.group(1))


def stack_healthcheck():
    check = yaml.safe_load(Path(ROOT, "stack", "app.yml").read_text())["services"]["app"]["healthcheck"]
    return {"command": check["test"][1:], "interval": seconds(check["interval"]),
            "timeout": seconds(check["timeout"]), "retries": int(check["retries"]),
            "start_period": seconds(check["start_period"])}


def dockerfile_healthcheck():
    text = Path(ROOT, "Dockerfile").read_text().replace("\\\n", " ")
    line = re.search(r"^HEALTHCHECK (.*)$", text, re.M).group(1)
    options = dict(re.findall(r"--([a-z-]+)=(\S+)", line))
    command = re.search(r"CMD (\[.*\])", line).group(1)
    return {"command": yaml.safe_load(command), "interval": seconds(options["interval"]),
            "timeout": seconds(options["timeout"]), "retries": int(options["retries"]),
            "start_period": seconds(options["start-period"])}


def test_the_image_and_the_stack_check_health_alike():
    assert dockerfile_healthcheck() == stack_healthcheck()


def test_a_slow_replica_is_not_replaced_and_a_hung_one_is():
    check = stack_healthcheck()
    command = check["command"]
    assert command[:4] == ["python", "-m", "rooms.ctl", "probe"], command
    # The probe's own wait for /readyz ends before Docker's timeout, so a slow answer is a failure
    # the probe reports, and there is time left for the interpreter to start.
    probe_timeout = float(command[command.index("--timeout") + 1]) if "--timeout" in command else 2.0
    assert SLOW_PROBE_SECONDS <= probe_timeout < check["timeout"], check
    # Failures in a row before Swarm replaces it: each a probe that ran out of time, then the interval.
    assert check["retries"] * (check["timeout"] + check["interval"]) >= HUNG_SECONDS, check
    assert check["retries"] * (check["timeout"] + check["interval"]) <= 2 * HUNG_SECONDS, check
    # A release waits for the first healthy answer: probes stay frequent.
    assert check["interval"] <= 3, check
