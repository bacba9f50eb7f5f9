"""Alerts end to end: each fault, caused for real on the running system, fires its alert in Prometheus,
and Alertmanager delivers it to the release file's ALERT_WEBHOOK_URL.

The receiver is a test sink: a tiny HTTP server in a container on the overlay network that prints
every POST body (Alertmanager's webhook JSON) as one line; the test reads its log. To keep the test
short, Prometheus runs rules.yml with every `for:` set to 0s (the thresholds stay, except RSS and open
files, which no quick real fault reaches: those two are lowered, and fire on a healthy replica), and
Alertmanager waits 1 s before a group's first notification. Not caused here, because one node has
one edge: edges that disagree on the color. The lab tier causes that one for real, on the lab's two
edges, and repairs it (tests/lab/test_observability.py); promtool's unit tests cover its rule too.
The edges' 429 and 5xx shares are caused by bursts: parallel GETs over NGINX_HTTP_RATE from one
address, and GETs of the preview route of the color that is not deployed (502); the edge exporter's
counters must have grown by exactly the 429s and the 502s the clients got.
Prints, per alert, the fault and the seconds until the sink had it, and counted vs sent per burst.
"""

import contextlib
import http.client
import json
import re
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.helpers import (
    ALERT_SINK,
    HTTP_PORT,
    active_service,
    counted_exactly,
    docker,
    edge_counts,
    redis_cli,
    run,
    service_container,
    version,
)
from tests.helpers import ALERT_SINK_PROGRAM, ROOT, alert_notifications

# Last in the tier's order (conftest.py): it takes the system the test before it left.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900), pytest.mark.takes_standing_system]

SINK = ALERT_SINK
# rules.yml for the test: no waiting, and thresholds a healthy replica is over for the two alerts no
# quick fault reaches.
OVERRIDES = {
    "ws_process_resident_memory_bytes > 400 * 1024 * 1024": "ws_process_resident_memory_bytes > 1024 * 1024",
    "ws_process_open_fds / ws_process_max_fds > 0.8": "ws_process_open_fds / ws_process_max_fds > 0.0001",
}
# The longest a fault may take to reach the sink: Prometheus sends a firing alert again after 1 minute
# (--rules.alert.resend-delay) if the first send found no Alertmanager.
ALERT_SECONDS = 90
# The 429 burst: CLIENTS kept-alive connections from one address, BURST GETs each, as fast as Nginx
# answers. Over the release file's NGINX_HTTP_RATE (50/s, burst 100), most are answered 429; the
# 429s must exceed the alert's minimum rate (1/s over 5 minutes: 300).
CLIENTS, BURST = 4, 1000
# Python on the overlay network (in the sink's container): GETs of the preview route of a color that
# is not deployed, which Nginx answers 502. Prints the statuses.
PREVIEW_BURST = """
import collections, sys, urllib.error, urllib.request
statuses = collections.Counter()
for _ in range(int(sys.argv[2])):
    try:
        statuses[urllib.request.urlopen(sys.argv[1], timeout=5).status] += 1
    except urllib.error.HTTPError as error:
        statuses[error.code] += 1
print(dict(statuses))
"""


def rules_for_the_test(tmp_path):
    text = Path(ROOT, "observability/prometheus/rules.yml").read_text()
    for old, new in OVERRIDES.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "rules.yml"
    path.write_text(re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", text))
    return path


@pytest.fixture
def alerting(system, tmp_path):
    """The system (every make up of the tier sends alerts to the sink: helpers.ALERT_SINK_URL) with
    Prometheus on the test rules and the sink running; all removed afterwards, the system too (it runs
    the test rules). Gives the time the test rules were put in place: the lowered thresholds' fault."""
    rules = f"wsapp_prometheus_rules_e2e_{int(time.time())}"
    try:
        # On the app's image, which has Python.
        image = docker("service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
                       active_service())
        docker("run", "-d", "--name", SINK, "--network", "wsapp", "--read-only", "--cap-drop", "ALL",
               "--user", "65534", "--entrypoint", "python3", image, "-u", "-c", ALERT_SINK_PROGRAM)
        swapped = time.time()
        use_test_rules(tmp_path, rules)
        yield swapped
    finally:
        docker("rm", "-f", SINK, timeout=60)
        run(["scripts/down.sh"], 300)
        run(["docker", "config", "rm", rules], 60, check=False)


def use_test_rules(tmp_path, name):
    """Swap Prometheus' rules config for the test rules (config `name`; a restarted task) and wait until
    it loaded them."""
    docker("config", "create", name, str(rules_for_the_test(tmp_path)))
    old = docker("service", "inspect", "--format",
                 "{{range .Spec.TaskTemplate.ContainerSpec.Configs}}"
                 '{{if eq .File.Name "/etc/prometheus/rules.yml"}}{{.ConfigName}}{{end}}{{end}}',
                 "wsapp_prometheus")
    docker("service", "update", "--detach", "--config-rm", old, "--config-add",
           f"source={name},target=/etc/prometheus/rules.yml,mode=0444", "wsapp_prometheus", timeout=120)
    try:
        wait_for(runs_test_rules, 120, "Prometheus to load the test rules")
    except AssertionError as error:
        tasks = docker("service", "ps", "--no-trunc", "wsapp_prometheus")
        logs = run(["docker", "service", "logs", "--tail", "20", "wsapp_prometheus"], 30, check=False)
        raise AssertionError(f"{error}\n{tasks}\n{logs.stdout}{logs.stderr}") from None


def runs_test_rules():
    """Whether Prometheus evaluates the test rules: every alert without `for` (rules.yml has some with).
    Read from the parsed answer: the API's JSON escapes `>` as \\u003e, so the raw text never contains
    an expression with `>`."""
    alerts = alert_rules()
    return bool(alerts) and all(rule["duration"] == 0 for rule in alerts.values())


def alert_rules():
    """The alerting rules Prometheus evaluates, by name ({} while it does not answer)."""
    answer = prometheus_api("rules?type=alert")
    if not answer:
        return {}
    return {rule["name"]: rule for group in json.loads(answer)["data"]["groups"] for rule in group["rules"]}


def prometheus_api(path):
    """A GET of Prometheus' API from inside its container ("" while it does not answer)."""
    container = running_prometheus()
    if not container:
        return ""
    url = f"http://127.0.0.1:9090/api/v1/{path}"
    result = run(["docker", "exec", container, "sh", "-c",
                  f"curl -fsS '{url}' 2>/dev/null || wget -q -O - '{url}'"], 30, check=False)
    return result.stdout


def has_history(expr):
    answer = prometheus_api("query?query=" + urllib.parse.quote(expr))
    return bool(answer) and bool(json.loads(answer)["data"]["result"])


@contextlib.contextmanager
def frozen(container):
    """The container paused (`docker pause`) for the block, which gets the time it was paused;
    unpaused afterwards, unless Swarm replaced it meanwhile (its healthcheck failed)."""
    paused = time.time()
    docker("pause", container)
    try:
        yield paused
    finally:
        run(["docker", "unpause", container], 60, check=False)


def running_prometheus():
    ids = docker("ps", "-q", "--filter", "label=com.docker.swarm.service.name=wsapp_prometheus").split()
    return ids[0] if ids else ""


def wait_for(check, seconds, what):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out after {seconds}s waiting for {what}"
        time.sleep(1)


def received():
    """Every (time, alertname, status, labels) the sink got."""
    return alert_notifications(docker("logs", SINK, timeout=30))


def arrival(alertname, since, **labels):
    """Seconds from `since` (epoch) until the sink had `alertname` firing (with `labels`)."""
    def got():
        return [t for t, name, status, have in received()
                if name == alertname and status == "firing" and t >= since
                and all(have.get(k) == v for k, v in labels.items())]
    try:
        wait_for(got, ALERT_SECONDS, f"{alertname} to reach the sink")
    except AssertionError as error:
        firing = prometheus_api("alerts")
        manager = run(["docker", "service", "logs", "--tail", "30", "wsapp_alertmanager"], 30, check=False)
        sink = [(stamp, name, status) for stamp, name, status, _ in received()]
        raise AssertionError(f"{error} (since {since:.1f})\nPrometheus' alerts: {firing[:3000]}\n"
                             f"Alertmanager's log:\n{manager.stdout[-4000:]}{manager.stderr[-4000:]}\n"
                             f"the sink got: {sink}") from None
    return round(min(got()) - since, 1)


def public_burst(count):
    """`count` GETs of /version on one kept-alive connection to the published port, as fast as Nginx
    answers; the statuses counted."""
    statuses = {}
    connection = http.client.HTTPConnection("localhost", HTTP_PORT, timeout=10)
    try:
        for _ in range(count):
            connection.request("GET", "/version")
            response = connection.getresponse()
            response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if response.will_close:
                connection.close()
    finally:
        connection.close()
    return statuses


def test_each_fault_fires_its_alert_and_it_reaches_the_receiver(alerting):
    results = []
    start = time.monotonic()

    def record(alertname, fault, since, **labels):
        seconds = arrival(alertname, since, **labels)
        results.append((alertname, fault, seconds))
        print(f"{alertname}: at the sink {seconds}s after: {fault}", flush=True)

    # The edges' share of 429s and of 5xx, each counted exactly by the edge exporter beside Nginx.
    color = version()["color"]
    before = edge_counts()
    t0 = time.time()
    with ThreadPoolExecutor(CLIENTS) as pool:
        bursts = list(pool.map(public_burst, [BURST] * CLIENTS))
    statuses = dict(sum((Counter(burst) for burst in bursts), Counter()))
    sent = sum(statuses.values())
    rate_limited = counted_exactly("nginx_responses_rate_limited_total", before, statuses.get(429, 0))
    counts = edge_counts()
    print(f"429 burst: {CLIENTS}x{BURST} GETs in {time.time() - t0:.1f}s, answered {statuses}; "
          f"the exporter counted {rate_limited} 429s of {statuses.get(429, 0)} sent, "
          f"{counts['nginx_responses_total'] - before['nginx_responses_total']} responses of {sent} sent")
    assert statuses.get(429, 0) > 300, statuses
    assert rate_limited == statuses[429], (rate_limited, statuses)
    assert counts["nginx_responses_total"] - before["nginx_responses_total"] >= sent
    assert counts["nginx_responses_server_error_total"] == before["nginx_responses_server_error_total"]
    record("WsappEdgeRateLimiting", f"{CLIENTS}x{BURST} GETs at once from one address: {statuses}", t0)

    idle = "green" if color == "blue" else "blue"
    before = edge_counts()
    t0 = time.time()
    answer = docker("exec", SINK, "python3", "-c", PREVIEW_BURST, f"http://wsapp_nginx:8081/{idle}/version",
                    "400", timeout=120)
    assert "502: 400" in answer, answer
    server_errors = counted_exactly("nginx_responses_server_error_total", before, 400)
    print(f"5xx burst: 400 GETs of the preview route of {idle}, answered {answer.strip()}; "
          f"the exporter counted {server_errors} 5xx of 400 sent")
    assert server_errors == 400
    record("WsappEdgeServerErrors", f"400 GETs of the preview route of {idle}, not deployed (502)", t0)

    app = service_container(active_service())
    with frozen(app) as t0:
        time.sleep(3)
    record("WsappEventLoopLagHigh", "an app replica frozen 3 s (docker pause)", t0)

    t0 = time.time()
    docker("exec", app, "python", "-m", "rooms.ctl", "drain", color, "--seconds", "1", timeout=60)
    try:
        record("WsappActiveColorDraining", f"rooms.ctl drain {color} (the active color)", t0, color=color)
    finally:
        docker("exec", app, "python", "-m", "rooms.ctl", "undrain", color, timeout=60)

    t0 = time.time()
    redis_cli("SETRANGE", "wsapp-e2e-fill", str(230 * 1024 * 1024), "x")
    try:
        record("WsappRedisMemoryHigh", "a 230 MB key in Redis (maxmemory 256 MB)", t0)
    finally:
        redis_cli("DEL", "wsapp-e2e-fill")

    with frozen(service_container("wsapp_redis-replica")) as t0:
        fault = "the Redis replica frozen (docker pause)"
        record("WsappRedisDown", fault, t0, instance="wsapp_redis-replica")
        record("WsappRedisReplicationBroken", fault, t0)
    with frozen(service_container("wsapp_edge-exporter")) as t0:
        record("WsappEdgeExporterDown", "the edge exporter frozen (docker pause)", t0)
    with frozen(service_container("wsapp_nginx")) as t0:
        record("WsappEdgeDown", "the edge's Nginx frozen (docker pause)", t0)

    node = docker("info", "--format", "{{.Swarm.NodeID}}")
    t0 = time.time()
    docker("node", "update", "--label-rm", "wsapp.edge", node)
    try:
        record("WsappEdgeMissing", "the edge label removed from the node (its Nginx stops)", t0)
    finally:
        docker("node", "update", "--label-add", "wsapp.edge=true", node)

    # These two fire as soon as Prometheus runs the test rules, timed from the swap (the fixture's); a
    # new Prometheus may send them first before it found Alertmanager, and again a minute later
    # (--rules.alert.resend-delay): looked for after the faults above, which take that long anyway.
    record("WsappReplicaMemoryHigh", "threshold lowered to 1 MiB (test rules; from the swap)", alerting)
    record("WsappOpenFilesNearLimit", "threshold lowered to 0.01% (test rules; from the swap)", alerting)

    # The alert compares with 2 minutes ago: the replica must have been scraped as a replica then.
    replica_then = 'redis_instance_info{instance="wsapp_redis-replica",role="slave"} offset 2m'
    wait_for(lambda: has_history(replica_then), 150, "2 minutes of the replica's history")
    in_sync = "max(redis_connected_slave_lag_seconds) < 2"
    wait_for(lambda: has_history(in_sync), 60, "the replica in sync again")
    t0 = time.time()
    redis_cli("-p", "26379", "SENTINEL", "FAILOVER", "wsapp", service="wsapp_sentinel")
    record("WsappRedisFailover", "SENTINEL FAILOVER wsapp", t0, instance="wsapp_redis-replica")

    print(f"\nalerts: {len(results)} in {time.monotonic() - start:.0f}s")
    print("| Alert | Fault | Seconds until the receiver got it |\n|---|---|---|")
    for alertname, fault, seconds in results:
        print(f"| {alertname} | {fault} | {seconds} |")
