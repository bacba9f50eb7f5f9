"""The release gate's readiness check (scripts/release_tools.py watch) against a test double of
Prometheus's query API (the unit tier runs no Prometheus; the e2e tier runs the gate against a real
one). Replicas the gate cannot see yet, because Prometheus is still discovering them, must not fail
a release; a replica that stops being ready once seen must."""

import datetime
import importlib.util
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers import ROOT

spec = importlib.util.spec_from_file_location("release_tools", f"{ROOT}/scripts/release_tools.py")
release_tools = importlib.util.module_from_spec(spec)
spec.loader.exec_module(release_tools)


@pytest.fixture
def prometheus():
    """A query API whose ready-replica count follows `ready(seconds since start)` and whose process
    started `restarted(seconds since start)` seconds ago (None: an hour ago); no traffic."""
    started = time.monotonic()
    state = {"ready": lambda elapsed: 2, "restarted": lambda elapsed: None}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            elapsed = time.monotonic() - started
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/api/v1/status/runtimeinfo":
                age = state["restarted"](elapsed)
                start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(
                    seconds=3600 if age is None else age)
                data = {"startTime": start.isoformat().replace("+00:00", "Z")}
            else:
                query = urllib.parse.parse_qs(url.query)["query"][0]
                value = None
                if query.startswith(("color:ws_ready_replicas:sum", "color:ws_targets_up:sum")):
                    value = state["ready"](elapsed)
                result = [] if value is None else [{"metric": {}, "value": [0, str(value)]}]
                data = {"resultType": "vector", "result": result}
            body = json.dumps({"status": "success", "data": data})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_port}"
    yield state
    server.shutdown()
    server.server_close()


def watch(prometheus, **options):
    args = ["watch", "--prometheus", prometheus["url"], "--color", "green", "--seconds", "2.5",
            "--max-error-ratio", "0.05", "--replicas", "2", "--interval", "0.1", "--grace", "0.5"]
    for name, value in options.items():
        args += [f"--{name}", str(value)]
    return release_tools.main(args)


def test_replicas_prometheus_discovers_late_pass_the_gate(prometheus):
    prometheus["ready"] = lambda elapsed: 0 if elapsed < 1.2 else 2
    assert watch(prometheus, discovery=1.5) == 0


def test_a_replica_that_stops_being_ready_fails_the_gate_after_the_grace(prometheus, capsys):
    prometheus["ready"] = lambda elapsed: 2 if elapsed < 0.5 else 1
    assert watch(prometheus, discovery=10) == 1
    assert "only 1 of 2 replicas ready" in capsys.readouterr().err


def test_replicas_never_seen_ready_fail_the_gate(prometheus, capsys):
    prometheus["ready"] = lambda elapsed: 0
    assert watch(prometheus, discovery=0.5) == 1
    assert "only 0 of 2 replicas ready" in capsys.readouterr().err


def test_a_prometheus_restart_during_the_watch_does_not_fail_the_gate(prometheus):
    """Restarted at 0.6 s, Prometheus has no fresh sample for 1 s (longer than the grace): not
    judged while it is younger than --discovery."""
    prometheus["ready"] = lambda elapsed: None if 0.6 <= elapsed < 1.6 else 2
    prometheus["restarted"] = lambda elapsed: elapsed - 0.6 if elapsed >= 0.6 else None
    assert watch(prometheus, discovery=1.5) == 0


def test_readiness_lost_after_a_prometheus_restart_fails_the_gate(prometheus, capsys):
    prometheus["ready"] = lambda elapsed: 2 if elapsed < 0.5 else 1
    prometheus["restarted"] = lambda elapsed: elapsed - 0.5 if elapsed >= 0.5 else None
    assert watch(prometheus, discovery=0.5) == 1
    assert "only 1 of 2 replicas ready" in capsys.readouterr().err
