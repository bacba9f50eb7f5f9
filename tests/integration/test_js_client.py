"""The browser client (service/rooms/static/wsapp.js) in Node's own test runner, against real servers.

Two app servers, blue and green, share one real redis-server, as the two colors of a release do.
The Node tests (tests/js/*.test.mjs) connect through Node's built-in WebSocket
(`--experimental-websocket`, Node >= 20.10: no npm package to install) and steer the servers
through a small HTTP control endpoint served here: drain a color with `rooms.ctl`, restart it,
kill it, stop or continue it. The tests pick which color they connect to, as Nginx does.
JS_TEST_NAME_PATTERN=<regular expression> runs only the Node tests whose names match.
"""

import json
import os
import re
import signal
import subprocess
import threading
from glob import glob
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers import ROOT, AppServer, require_command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

NODE_MINIMUM = (20, 10)  # the first Node 20 with a built-in WebSocket (behind a flag)
NODE_SECONDS = 420
HISTORY_MAX = 30  # small, so that a test can outrun it and see a resync
PRESENCE = {"PRESENCE_GRACE_SECONDS": "2", "PRESENCE_TTL_SECONDS": "3"}  # short, so a test sees past them


def node_binary():
    node = require_command("node", "the browser client's tests run in Node's test runner")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    major, minor = (int(part) for part in re.match(r"v(\d+)\.(\d+)", version).groups())
    if (major, minor) < NODE_MINIMUM:
        pytest.fail(f"node {version.strip()} is too old: the client tests need Node >= 20.10 for its "
                    "WebSocket (install Node 20, see .ci/run)", pytrace=False)
    return node


class Control:
    """What the Node tests may do to the servers: POST /<action>/<color>."""

    def __init__(self, servers):
        self.servers = servers
        self.lock = threading.Lock()

    def ctl(self, *args):
        server = self.servers["blue"]
        env = {key: value for key, value in server.env.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
        subprocess.run([server.env["PYTHON"], "-m", "rooms.ctl", *args], cwd=os.path.join(ROOT, "service"),
                       env=env, check=True, timeout=30, capture_output=True)

    def act(self, action, color, query):
        server = self.servers[color]
        if action == "drain":
            self.ctl("drain", color, "--seconds", query.get("seconds", "1"))
        elif action == "undrain":
            self.ctl("undrain", color)
            server.wait_ready()
        elif action == "restart":  # SIGTERM: Uvicorn closes every WebSocket with 1012, no notice
            server.stop()
            server.start()
        elif action == "kill":  # gone without a close frame: clients see 1006
            server.process.proc.kill()
            server.process.proc.wait(10)
        elif action == "start":
            server.start()
        elif action == "pause":
            os.kill(server.process.pid, signal.SIGSTOP)
        elif action == "resume":
            os.kill(server.process.pid, signal.SIGCONT)
        else:
            raise ValueError(f"unknown action {action!r}")

    def handler(self):
        control = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                path, _, query = self.path.partition("?")
                _, action, color = path.split("/")
                params = dict(part.split("=", 1) for part in query.split("&") if part)
                try:
                    with control.lock:
                        control.act(action, color, params)
                    status, body = 200, {"ok": True}
                except Exception as exc:  # reported to the Node test, which fails with it
                    status, body = 500, {"error": repr(exc)}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture
def colors(redis_server, tmp_path):
    servers = {}
    try:
        for color in ("blue", "green"):
            server = servers[color] = AppServer(redis_server.url, tmp_path, workers=1, COLOR=color,
                                                ROOM_HISTORY_MAX=str(HISTORY_MAX), GRACEFUL_TIMEOUT="1",
                                                **PRESENCE)
            server.start()
        yield servers
    finally:
        for server in servers.values():
            if server.process is not None and server.process.running():
                os.kill(server.process.pid, signal.SIGCONT)
            server.stop()


def test_js_client_against_real_servers(colors):
    node = node_binary()
    control = Control(colors)
    http = ThreadingHTTPServer(("127.0.0.1", 0), control.handler())
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    env = dict(
        os.environ,
        WSAPP_BLUE=colors["blue"].ws_url,
        WSAPP_GREEN=colors["green"].ws_url,
        WSAPP_ORIGIN="http://127.0.0.1",
        WSAPP_CONTROL=f"http://127.0.0.1:{http.server_address[1]}",
        WSAPP_HISTORY_MAX=str(HISTORY_MAX),
        # Past a closed connection's grace and the sweep after it: a leave would have come by then.
        WSAPP_PRESENCE_SETTLE_MS=str(int((float(PRESENCE["PRESENCE_GRACE_SECONDS"])
                                          + float(PRESENCE["PRESENCE_TTL_SECONDS"]) / 3 + 1) * 1000)),
    )
    files = sorted(glob(os.path.join(ROOT, "tests", "js", "*.test.mjs")))
    assert files, "no tests in tests/js"
    pattern = os.environ.get("JS_TEST_NAME_PATTERN")  # run some of them: a regular expression
    if pattern:
        files = ["--test-name-pattern", pattern, *files]
    try:
        result = subprocess.run([node, "--experimental-websocket", "--no-warnings", "--test",
                                 "--test-concurrency=1", "--test-reporter=spec", *files],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=NODE_SECONDS)
    finally:
        http.shutdown()
        http.server_close()
    print(result.stdout[-20000:])
    print(result.stderr[-5000:])
    assert result.returncode == 0, "node --test failed (output above)"
    assert re.search(r"^ℹ fail 0$", result.stdout, re.M)
