"""Helpers of the end-to-end tier: the addresses the system answers on, and commands against the swarm."""

import json
import os
import re
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.helpers import ROOT

HTTP_PORT = int(os.environ.get("E2E_HTTP_PORT", "18080"))


# promote.sh's release reports, kept with the tier's other artifacts.
REPORTS = Path(ROOT, "tests", "e2e", "artifacts", "releases")


# Login POSTs per minute per address (NGINX_LOGIN_RATE, 10 in the release file): the tier logs in from
# one address more often than a person would (test_postgres.py's recovery polls login every second);
# the burst (NGINX_LOGIN_BURST, 5) is the release file's.
LOGIN_RATE = 120
# Alertmanager's receiver: test_alerts.py's sink, a container on the overlay network. Every make up of
# the tier sends alerts there, with the groups' waits at 1 s, so that test_alerts.py can take the
# system the test before it left; until the sink runs, Alertmanager's notifications fail and are
# retried (its log says so), as they would with a receiver down.
ALERT_SINK = "wsapp-e2e-alert-sink"
ALERT_SINK_URL = f"http://{ALERT_SINK}:9099/alerts"


def release_env():
    """stack/release.env, but accepting WebSockets from the page as a browser opens it here: its Origin
    has the port (http://localhost:HTTP_PORT), and PUBLIC_ORIGINS compares ports; the release reports go
    to REPORTS; NGINX_LOGIN_RATE is LOGIN_RATE; alerts go to ALERT_SINK_URL. Written at import."""
    path = Path(tempfile.mkdtemp(prefix="wsapp-e2e-")) / "release.env"
    lines = Path(ROOT, "stack", "release.env").read_text().splitlines()
    origin = f"http://localhost:{HTTP_PORT}"
    lines = [f"{line},{origin}" if line.startswith("PUBLIC_ORIGINS=") else
             f"REPORT_DIR={REPORTS}" if line.startswith("REPORT_DIR=") else
             f"NGINX_LOGIN_RATE={LOGIN_RATE}" if line.startswith("NGINX_LOGIN_RATE=") else
             f"ALERT_WEBHOOK_URL={ALERT_SINK_URL}" if line.startswith("ALERT_WEBHOOK_URL=") else line
             for line in lines]
    path.write_text("\n".join(lines) + "\n")
    return path


ENV = dict(
    os.environ,
    RELEASE_ENV=str(release_env()),
    HTTP_PORT=str(HTTP_PORT),
    PROMETHEUS_PORT=os.environ.get("E2E_PROMETHEUS_PORT", "19090"),
    GRAFANA_PORT=os.environ.get("E2E_GRAFANA_PORT", "13000"),
    VOLUMES="1",
    # Each test's make down keeps the registry with the images it holds (the session's last removes
    # it): a make up then pushes only what is new, not every image again.
    KEEP_REGISTRY="1",
    ALERT_GROUP_WAIT="1s",
    ALERT_GROUP_INTERVAL="1s",
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


def active_service():
    return f"wsapp-{version()['color']}_app"


def service_image(service):
    """The reference the service runs: REGISTRY/NAME@sha256:... (scripts/lib.sh, deploy_ref)."""
    return docker("service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}", service)


def stacks():
    return set(docker("stack", "ls", "--format", "{{.Name}}").split())


def standing():
    """Whether the system stands as make up leaves it: one color's stack, every service's tasks all
    running (a finished job is not counted) and none of its containers starting or unhealthy, and the
    site answering through Nginx."""
    colors = {"wsapp-blue", "wsapp-green"} & stacks()
    if any(docker("ps", "-q", "--filter", f"health={health}") for health in ("starting", "unhealthy")):
        return False
    lines = docker("service", "ls", "--format", "{{.Replicas}}").splitlines()  # a job: "0/1 (1/1 completed)"
    running = all(count[1] == count[2] for count in map(re.compile(r"(\d+)/(\d+)").fullmatch, lines) if count)
    try:
        return len(colors) == 1 and running and version()["color"] in ("blue", "green")
    except OSError:
        return False


def running_container(service):
    """The id of the service's running container, or "" while there is none."""
    container = docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}").split()
    return container[0] if container else ""


def service_container(service):
    container = running_container(service)
    assert container, f"no running container of {service}"
    return container


def redis_cli(*args, user="admin", service="wsapp_redis"):
    """redis-cli in a container of `service`, as `user` (the password from its secret), or without
    logging in (user None)."""
    container = service_container(service)
    secret = "redis_password" if user == "wsapp" else f"redis_{user}_password"
    auth = f'REDISCLI_AUTH="$(cat /run/secrets/{secret})" redis-cli --user {user} ' if user else "redis-cli "
    return docker("exec", container, "sh", "-c", auth + " ".join(args))


def replica_metrics(service, *names):
    """{sample: value} of the metrics `names` (with their labels, as exposed: 'name{label="v"}'),
    summed over the running containers of `service`, each read on its own port 8000 (/metrics is
    not behind Nginx)."""
    fetch = ("import urllib.request; "
             "print(urllib.request.urlopen('http://127.0.0.1:8000/metrics', timeout=5).read().decode())")
    containers = docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}").split()
    assert containers, f"no running container of {service}"
    totals = {}
    for container in containers:
        for line in docker("exec", container, "python", "-c", fetch).splitlines():
            sample, _, value = line.rpartition(" ")
            if sample.split("{")[0] in names:
                totals[sample] = totals.get(sample, 0.0) + float(value)
    return totals


def handshakes_and_queries(service):
    """(WebSocket handshakes, {origin: database statements}) of `service`'s running replicas since
    they started (ws_connections_opened_total, ws_db_queries_total)."""
    counts = replica_metrics(service, "ws_db_queries_total", "ws_connections_opened_total")
    queries = {sample.split('"')[1]: int(value) for sample, value in counts.items()
               if sample.startswith("ws_db_queries_total")}
    return int(counts["ws_connections_opened_total"]), queries


# The edge exporter's counters (stack/infra.yml, edge-exporter), read in its container.
EDGE_COUNTERS = """
import urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9118/metrics", timeout=5).read().decode()
print(" ".join(line for line in text.splitlines() if line.startswith("nginx_responses")))
"""
EDGE_COUNT_SECONDS = 10  # Nginx flushes its count files every second; Prometheus is not involved


def edge_counts():
    """The edge exporter's counters now: {"nginx_responses_total": n, ...}."""
    out = docker("exec", service_container("wsapp_edge-exporter"), "python3", "-c", EDGE_COUNTERS)
    words = out.split()
    return {name: int(value) for name, value in zip(words[::2], words[1::2], strict=True)}


def counted_exactly(counter, before, sent):
    """Wait until the edge exporter's `counter` grew by `sent` since `before` (Nginx flushes within a
    second), then check that it stays there: the number counted."""
    def counted():
        return edge_counts()[counter] - before[counter]
    deadline = time.monotonic() + EDGE_COUNT_SECONDS
    while counted() < sent and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # two more flushes: nothing late may add to it
    return counted()
