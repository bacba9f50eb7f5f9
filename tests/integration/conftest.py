"""Integration tier: a real redis-server, a real PostgreSQL and the app started through entrypoint.sh
(testkit)."""

import pytest

from testkit.redisfaults import Sentinels
from tests.helpers import (
    ACCOUNTS_SETUP,
    AppServer,
    PostgresServer,
    RedisServer,
    require_command,
    require_postgres,
)


@pytest.fixture
def redis_server():
    require_command("redis-server", "the integration tier runs a real Redis")
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_server():
    """A throwaway PostgreSQL cluster (testkit.PostgresServer) with statements logged, so a test can
    count the queries the app makes."""
    require_postgres()
    server = PostgresServer(log_statement="all", log_connections="on")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def app_server(redis_server, tmp_path):
    server = AppServer(redis_server.url, tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_server(redis_server, tmp_path):
    """Start app servers with extra settings, make(workers=1, **env); all are stopped afterwards."""
    servers = []

    def make(workers=1, **env):
        server = AppServer(redis_server.url, tmp_path, workers=workers, **env)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def sentinels(tmp_path):
    """A primary, its replica and three Sentinels, started by redis/start.sh (testkit.redisfaults)."""
    require_command("redis-server", "the integration tier runs a real Redis, a replica and Sentinels")
    require_command("redis-cli", "redis/start.sh asks the Sentinels with redis-cli")
    require_command("getent", "redis/start.sh resolves the Sentinels' names")
    topology = Sentinels(tmp_path)
    topology.start()  # stops what it started if it fails
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture
def accounts_server(redis_server, postgres_server, tmp_path):
    """Make an app server with the database, migrated and with alice (member of the private room
    `board`), bob (not a member) and an admin; make(workers=2, **env)."""
    keys = tmp_path / "ticket.keys"
    keys.write_text("first-key-" + "x" * 40 + "\nsecond-key-" + "y" * 40 + "\n")
    servers = []

    def make(workers=2, **env):
        server = AppServer(redis_server.url, tmp_path, workers=workers, DATABASE_URL=postgres_server.url,
                           TICKET_KEYS_FILE=str(keys), **env)
        servers.append(server)
        if len(servers) == 1:
            server.manage("migrate", "--no-input")
            server.manage("shell", "-c", ACCOUNTS_SETUP)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()
