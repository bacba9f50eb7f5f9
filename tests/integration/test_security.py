"""What the service believes about its peers and its Redis: entrypoint.sh, real Uvicorn, real Redis.

- X-Forwarded-For is honoured only from FORWARDED_ALLOW_IPS (the proxy), never from any peer.
- A Redis that requires a password is reached with the one in REDIS_PASSWORD_FILE (a Swarm secret
  in the stack) by the service, the entrypoint's wait and `rooms.ctl`; without it, startup stops.
"""

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
import websockets

from tests.helpers import ROOT, AppServer, Process, free_port, require_command

pytestmark = pytest.mark.integration

ORIGIN = "http://localhost"
FORGED = "203.0.113.77"
PASSWORD = "integration-redis-password-0123"


async def connect_forging(server):
    """Open a WebSocket whose handshake claims, in X-Forwarded-For, to come from FORGED."""
    async with websockets.connect(f"{server.ws_url}/ws/rooms/xff/", origin=ORIGIN,
                                  additional_headers={"X-Forwarded-For": FORGED}) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"


def accepted_clients(server):
    """The client addresses Uvicorn logged for accepted WebSockets (UVICORN_LOG_LEVEL=info)."""
    lines = [line for line in server.log().splitlines() if '"WebSocket /ws/rooms/xff/" [accepted]' in line]
    assert lines, f"no accepted WebSocket in the log:\n{server.log()}"
    return lines


@pytest.mark.parametrize("trusted, believed", [
    ("10.231.0.0/24", False),  # the stack's setting: the overlay network, not this peer
    ("127.0.0.1", True),  # the same request from a trusted proxy: the header is used
])
async def test_x_forwarded_for_is_believed_only_from_the_proxy(redis_server, tmp_path, trusted, believed):
    server = AppServer(redis_server.url, tmp_path, workers=1, FORWARDED_ALLOW_IPS=trusted,
                       UVICORN_LOG_LEVEL="info")
    server.start()
    try:
        await connect_forging(server)
    finally:
        server.stop()
    lines = accepted_clients(server)
    assert any(FORGED in line for line in lines) == believed, lines
    if not believed:
        assert all("127.0.0.1" in line for line in lines), lines


def test_a_wildcard_forwarded_allow_ips_is_refused_at_startup(redis_server, tmp_path):
    server = AppServer(redis_server.url, tmp_path, workers=1, FORWARDED_ALLOW_IPS="*")
    result = subprocess.run([os.path.join(ROOT, "entrypoint.sh")], env=server.env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 64
    assert "FORWARDED_ALLOW_IPS" in result.stderr


class PasswordRedis:
    """redis-server that requires PASSWORD, always stopped."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        binary = require_command("redis-server", "the integration tier runs a real Redis")
        self.process = Process([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--requirepass", PASSWORD], log=subprocess.DEVNULL)
        ping = ["redis-cli", "-p", str(self.port), "--no-auth-warning", "-a", PASSWORD, "ping"]
        deadline = time.monotonic() + 10
        while subprocess.run(ping, capture_output=True).stdout != b"PONG\n":
            if time.monotonic() > deadline:
                self.process.stop()
                raise AssertionError("redis-server did not answer PING within 10 s")
            time.sleep(0.05)

    def command(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), "--no-auth-warning", "-a", PASSWORD, *args],
                              capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def password_redis():
    server = PasswordRedis()
    yield server
    server.process.stop()


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "redis_password"
    path.write_text(PASSWORD + "\n")  # a trailing newline, as `echo ... | docker secret create` leaves
    return path


async def test_the_service_authenticates_with_the_password_file(password_redis, password_file, tmp_path):
    server = AppServer(password_redis.url, tmp_path, REDIS_PASSWORD_FILE=str(password_file))
    server.start()
    try:
        async with websockets.connect(f"{server.ws_url}/ws/rooms/auth/", origin=ORIGIN) as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.send(json.dumps({"type": "message", "body": "through a password"}))
            frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (frame["type"], frame["body"]) == ("message", "through a password")
        # rooms.ctl reaches the same Redis the same way (drain/undrain travel through it).
        ctl = subprocess.run([sys.executable, "-m", "rooms.ctl", "undrain", "blue"],
                             cwd=os.path.join(ROOT, "service"), env=server.env, capture_output=True,
                             text=True, timeout=30)
        assert ctl.returncode == 0, ctl.stderr
    finally:
        server.stop()
    assert "NOAUTH" not in server.log() and "WRONGPASS" not in server.log()


def test_without_the_password_startup_stops_and_says_why(password_redis, tmp_path):
    server = AppServer(password_redis.url, tmp_path, REDIS_WAIT_SECONDS="5")
    result = subprocess.run([os.path.join(ROOT, "entrypoint.sh")], env=server.env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 64
    assert "refused the password" in result.stderr, result.stderr
    assert PASSWORD not in result.stderr


def test_an_unreadable_password_file_names_the_setting(password_redis, tmp_path):
    server = AppServer(password_redis.url, tmp_path, REDIS_PASSWORD_FILE=str(tmp_path / "missing"))
    result = subprocess.run([os.path.join(ROOT, "entrypoint.sh")], env=server.env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 64
    assert "REDIS_PASSWORD_FILE" in result.stderr
