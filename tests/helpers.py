"""Helpers shared by the test tiers. Those bench/ needs too (processes, Redis, ports, waits) live in
testkit/, which does not need pytest; they are re-exported here so tests import from one place."""

import itertools
import json
import signal
import subprocess
from pathlib import Path

import pytest

from testkit import (
    ROOT,
    AppServer,
    MissingCommand,
    PostgresServer,
    Process,
    RedisNode,
    RedisServer,
    free_port,
    wait_until,
)
from testkit.processes import command, postgres_bindir

__all__ = ["ACCOUNTS_PASSWORD", "ACCOUNTS_SETUP", "ALERT_SINK_PROGRAM", "DASHBOARDS",
           "ROOT", "AppServer", "Process", "RedisNode", "RedisServer", "alert_notifications",
           "dashboard_queries", "finish_all", "free_port", "PostgresServer", "publish_args",
           "reap", "require_command", "require_postgres", "start_interruptible", "wait_until"]

# Grafana dashboards: checked statically by the unit tier, every query evaluated by the e2e tier.
# The Origin header the unit tier's ASGI clients send (ALLOWED_HOSTS has localhost).
ORIGIN_HEADER = (b"origin", b"http://localhost")
DASHBOARDS = sorted(Path(ROOT, "observability", "grafana", "dashboards").glob("*.json"))


ACCOUNTS_PASSWORD = "a-long-test-password-1"
# Users and rooms of the integration tier's accounts_server: alice is a member of the private room
# `board`, bob is not.
ACCOUNTS_SETUP = f"""
from django.contrib.auth.models import User
from members.models import Room
alice = User.objects.create_user("alice", password="{ACCOUNTS_PASSWORD}", first_name="Alice", last_name="Doe")
bob = User.objects.create_user("bob", password="{ACCOUNTS_PASSWORD}")
User.objects.create_superuser("admin", password="{ACCOUNTS_PASSWORD}")
board = Room.objects.create(name="board", private=True, allow_anonymous=False)
board.members.add(alice)
Room.objects.create(name="news", allow_anonymous=False)
"""


_published = itertools.count(1)


def publish_args(room, body, history_seconds=600, session="other", history_max=1000, history_bytes=2**40):
    """redis-py eval() arguments that publish into a room as another replica would (rooms.scripts),
    with an id of their own and, by default, no byte bound on the history."""
    from rooms.frames import frame_parts
    from rooms.names import (
        CHANNEL_PREFIX,
        EPOCH_PREFIX,
        HISTORY_PREFIX,
        ROOM_RATE_PREFIX,
        ROOMS_INDEX,
        SENT_PREFIX,
        SENT_TIMES_PREFIX,
        SEQ_PREFIX,
    )
    from rooms.scripts import PUBLISH_SCRIPT

    msg_id = f"t{next(_published)}"
    prefixes = (SEQ_PREFIX, HISTORY_PREFIX, CHANNEL_PREFIX, EPOCH_PREFIX, SENT_PREFIX, SENT_TIMES_PREFIX,
                ROOM_RATE_PREFIX)
    keys = [*(prefix + room for prefix in prefixes), ROOMS_INDEX]
    head, tail = frame_parts(room, session, body, 0, msg_id)
    args = [head, tail, history_max, history_seconds, history_bytes, f"{session}:{msg_id}", "a", 600, 10000,
            0, room]  # no room rate limit
    return (PUBLISH_SCRIPT, len(keys), *keys, *args)


def require_command(name, why):
    """A missing prerequisite fails the test: CI must install it, never skip it quietly."""
    try:
        return command(name, why)
    except MissingCommand as exc:
        pytest.fail(str(exc), pytrace=False)


def require_postgres():
    """Debian's PostgreSQL binaries, or a failure naming how to install them."""
    try:
        return postgres_bindir()
    except MissingCommand as exc:
        pytest.fail(str(exc), pytrace=False)


def start_interruptible(args, **kwargs):
    """Start a script that the test will interrupt as Ctrl-C does, output collected.

    A process started in the background by a non-interactive shell (`cmd &`) ignores SIGINT (and
    under `nohup`, SIGHUP), its children inherit that, and bash cannot trap a signal that was ignored
    when it started. The child gets the default dispositions back, so the script's traps run as they
    do for a user at a terminal.
    """
    return subprocess.Popen(args, preexec_fn=default_signals, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def default_signals():
    for number in (signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)


def reap(process):
    """Kill a process that is still running and collect it, closing its pipe."""
    if process.poll() is None:
        process.kill()
    process.communicate()


def dashboard_queries(dashboard):
    """(where, expr) of every panel target and every annotation of a dashboard."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            yield f"annotation {annotation['name']!r}", annotation["expr"]


def finish_all(processes, timeout):
    """Wait for processes started with stdout=PIPE (text); [(exit code, output)]. Any still running
    at the end (a timeout, an exception) is killed, so none outlives the test."""
    try:
        return [(p.wait(timeout=timeout), p.stdout.read()) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()


# The test receiver of the alert tests (tests/e2e/test_alerts.py, tests/lab/test_observability.py):
# a tiny HTTP server, run with the app image's python3 in a container on the overlay network, that
# prints every POST body (Alertmanager's webhook JSON) as one line after the time it arrived.
ALERT_SINK_PROGRAM = """
import http.server, sys, time
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        print(f"{time.time():.3f} {body}", flush=True)
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("", 9099), Sink).serve_forever()
"""


def alert_notifications(log):
    """Every (time, alertname, status, labels) in the sink's log (its container's output)."""
    out = []
    for line in log.splitlines():
        stamp, _, body = line.partition(" ")
        try:
            payload = json.loads(body)
        except ValueError:
            continue
        for alert in payload["alerts"]:
            out.append((float(stamp), alert["labels"]["alertname"], alert["status"], alert["labels"]))
    return out
