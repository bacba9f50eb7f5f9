"""Integration tier: a real redis-server and the app started through entrypoint.sh (testkit)."""

import pytest

# Process is not used here: it stays importable from this file only for tests written before the
# helpers moved to testkit/ (branches in flight). Remove once none imports it.
from tests.helpers import AppServer, Process, RedisServer, require_command  # noqa: F401


@pytest.fixture
def redis_server():
    require_command("redis-server", "the integration tier runs a real Redis")
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def app_server(redis_server, tmp_path):
    server = AppServer(redis_server.url, tmp_path)
    server.start()
    yield server
    server.stop()
