"""Integration tier: a real redis-server and the app started through entrypoint.sh."""

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.helpers import ROOT, free_port, require_command

STARTUP_SECONDS = 30


class Process:
    """A child process that is always stopped, by its pid, when the test ends."""

    def __init__(self, args, env=None, log=None):
        self.log = log
        self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    @property
    def pid(self):
        return self.proc.pid

    def stop(self, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class RedisServer:
    def __init__(self, port):
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process = None

    def start(self):
        binary = require_command("redis-server", "the integration tier runs a real Redis")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = Process(args, log=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        ping = ["redis-cli", "-p", str(self.port), "ping"]
        while subprocess.run(ping, capture_output=True).stdout != b"PONG\n":
            assert time.monotonic() < deadline, "redis-server did not answer PING within 10 s"
            time.sleep(0.05)

    def stop(self):
        if self.process is not None:
            self.process.stop()
            self.process = None


class AppServer:
    def __init__(self, redis_url, tmp_path, workers=2, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.env = dict(
            os.environ,
            PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
            PYTHON=sys.executable,
            PORT=str(self.port),
            WEB_CONCURRENCY=str(workers),
            REDIS_URL=redis_url,
            COLOR="blue",
            APP_VERSION="it",
            DJANGO_SECRET_KEY="integration-tests",
            PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
            GRACEFUL_TIMEOUT="5",
            **env,
        )
        self.log_path = tmp_path / "app.log"
        self.process = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.process = Process([os.path.join(ROOT, "entrypoint.sh")], env=self.env, log=log)
        self.wait_ready()

    def wait_ready(self, timeout=STARTUP_SECONDS):
        deadline = time.monotonic() + timeout
        while self.get("/readyz")[0] != 200:
            if self.process.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"app not ready within {timeout}s; log:\n{self.log()}")
            time.sleep(0.1)

    def get(self, path):
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return None, ""

    def metric(self, name):
        _, text = self.get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def until_metric(self, name, value, timeout=5):
        """Wait for a metric (or one labelled series) to reach `value`: the server counts a close when
        its consumer handles the disconnect, just after the client has seen it."""
        deadline = time.monotonic() + timeout
        while self.metric(name) != value:
            assert time.monotonic() < deadline, f"{name} is {self.metric(name)}, expected {value}"
            await asyncio.sleep(0.05)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.process is not None:
            self.process.stop()


@pytest.fixture
def redis_server():
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def app_server(redis_server, tmp_path):
    server = AppServer(redis_server.url, tmp_path)
    server.start()
    yield server
    server.stop()
