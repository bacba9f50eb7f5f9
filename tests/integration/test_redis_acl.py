"""Redis ACL users (issue 17, "Least privilege in the cluster"): the app's user runs only what the
service needs, replication and the Sentinels have their own users, and the app's password is rotated
on the primary, the replica and every Sentinel while clients chat. Redis and the Sentinels are real
processes started through redis/start.sh (testkit.redisfaults.Sentinels)."""

import asyncio
import uuid

import pytest
import redis
from loadtest.delivery import new_totals

from testkit.processes import redis_command
from testkit.redisfaults import MASTER
from tests.helpers import AppServer
from tests.integration.test_sentinel import Chatter

pytestmark = pytest.mark.integration

# What a compromised replica would run to hurt everyone else, with the app's password.
ON_REDIS = [
    ("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "SET", "maxmemory", "1"), ("CONFIG", "GET", "requirepass"),
    ("REPLICAOF", "127.0.0.1", "1"), ("SLAVEOF", "NO", "ONE"), ("SHUTDOWN", "NOSAVE"), ("ACL", "LIST"),
    ("ACL", "SETUSER", "wsapp", "+@all"), ("KEYS", "*"), ("MONITOR",),
    ("CLIENT", "KILL", "TYPE", "normal"), ("SCRIPT", "FLUSH"), ("FAILOVER",), ("SET", "other:key", "1"),
    ("GET", "other:key"), ("PUBLISH", "__sentinel__:hello", "x"),
]
ON_SENTINEL = [
    ("SENTINEL", "FAILOVER", MASTER), ("SENTINEL", "SET", MASTER, "quorum", "1"),
    ("SENTINEL", "REMOVE", MASTER),
    ("SENTINEL", "RESET", "*"), ("SENTINEL", "CONFIG", "SET", "resolve-hostnames", "no"), ("SHUTDOWN",),
    ("ACL", "LIST"),
]


@pytest.fixture
def topology(sentinels):
    return sentinels


def client(node, user, password):
    return redis.Redis(port=node.port, username=user, password=password, socket_timeout=3)


def refused(node, user, password, *command):
    """Whether `command` on `node` as `user` is refused for want of permission."""
    with client(node, user, password) as connection:
        try:
            connection.execute_command(*command)
        except redis.exceptions.NoPermissionError:
            return True
        return False


def test_the_app_user_cannot_administer_redis_or_the_sentinels(topology):
    app = topology.password_file.read_text().strip()
    for node in (topology.primary, topology.replica):
        allowed = [command for command in ON_REDIS if not refused(node, "wsapp", app, *command)]
        assert allowed == [], f"the app user may run {allowed} on the {node.role}"
        with client(node, "wsapp", app) as connection:
            assert connection.ping()
    for sentinel in topology.sentinels:
        allowed = [command for command in ON_SENTINEL if not refused(sentinel, "wsapp", app, *command)]
        assert allowed == [], f"the app user may run {allowed} on a Sentinel"
        with client(sentinel, "wsapp", app) as connection:
            assert connection.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
    # Everything above was refused: nothing changed.
    assert topology.primary_port() == topology.primary.port
    assert topology.primary.command("ROLE").startswith("master")


def test_no_password_no_rights_and_each_other_user_keeps_to_its_job(topology):
    for node in topology.nodes:
        with redis.Redis(port=node.port, socket_timeout=3) as anonymous:
            with pytest.raises(redis.exceptions.AuthenticationError):
                anonymous.ping()
    replication = topology.credentials["replication"].read_text().strip()
    sentinel = topology.credentials["sentinel"].read_text().strip()
    for command in [("GET", "wsapp:seq:x"),
                    ("FLUSHALL",), ("CONFIG", "GET", "*"), ("PUBLISH", "wsapp:room:x", "1")]:
        assert refused(topology.primary, "replication", replication, *command), command
    for command in [("GET", "wsapp:seq:x"), ("FLUSHALL",), ("CONFIG", "SET", "maxmemory", "1"),
                    ("ACL", "LIST")]:
        assert refused(topology.primary, "sentinel", sentinel, *command), command
    assert refused(topology.sentinels[0], "sentinel", sentinel, "SENTINEL", "REMOVE", MASTER)
    # The Redis exporter's user: INFO (what it scrapes), no key, no channel, nothing administrative.
    metrics = topology.credentials["metrics"].read_text().strip()
    for node in (topology.primary, topology.replica):
        with client(node, "metrics", metrics) as connection:
            assert "redis_version" in connection.info()
        for command in [("GET", "wsapp:seq:x"), ("SET", "wsapp:x", "1"), ("KEYS", "*"), ("SCAN", "0"),
                        ("FLUSHALL",), ("CONFIG", "SET", "maxmemory", "1"), ("PUBLISH", "wsapp:room:x", "1"),
                        ("ACL", "LIST"), ("CLIENT", "KILL", "TYPE", "normal"), ("REPLICAOF", "NO", "ONE")]:
            assert refused(node, "metrics", metrics, *command), (node.role, command)


def logs_in(node, user, password):
    return redis_command(node.port, "PING", password=(user, password)) == "PONG\n"


async def test_rotating_the_app_password_on_every_node_while_clients_chat(topology, tmp_path):
    """docs/operations.md, "Rotating the app's Redis password": add the new password to the app user on
    every Redis and Sentinel, move the app to it (a rolling update: a new replica with the new
    secret, then the old one stops), remove the old password everywhere. Clients chat throughout."""
    old = topology.password_file.read_text().strip()
    new = f"rotated-{uuid.uuid4().hex}"
    new_file = tmp_path / "redis_password.2"
    new_file.write_text(new + "\n")
    options = dict(workers=1, RATE_LIMIT_PER_SECOND="1000", RATE_LIMIT_BURST="1000")
    before = AppServer("", tmp_path, **{**topology.app_env, **options})
    before.start()
    after = None
    totals = new_totals()
    chatters = [Chatter(before, "rotation", totals) for _ in range(3)]
    tasks = [asyncio.create_task(chatter.run()) for chatter in chatters]
    try:
        await asyncio.sleep(2)
        assert all(chatter.acked for chatter in chatters), "no traffic before the rotation"

        for node in topology.nodes:  # 1. both passwords
            assert node.command("ACL", "SETUSER", "wsapp", f">{new}") == "OK\n"
        moved = {**topology.app_env, **options, "REDIS_PASSWORD_FILE": str(new_file)}
        after = AppServer("", tmp_path, **moved)
        await asyncio.to_thread(after.start)  # 2. the app moves to the new secret
        for chatter in chatters:
            chatter.server = after
        await asyncio.to_thread(before.stop)
        acked_switched = sum(len(chatter.acked) for chatter in chatters)
        for node in topology.nodes:  # 3. the old password goes
            assert node.command("ACL", "SETUSER", "wsapp", f"<{old}") == "OK\n"
        # Connections made with the old password stay logged in: drop the app's, so that all of
        # them log in again with the new one.
        for node in (topology.primary, topology.replica):
            node.command("CLIENT", "KILL", "USER", "wsapp")
        await asyncio.sleep(3)
        acked_after = sum(len(chatter.acked) for chatter in chatters) - acked_switched
        for node in topology.nodes:
            assert not logs_in(node, "wsapp", old), f"the old password still works on {node.role} {node.port}"
            assert logs_in(node, "wsapp", new), f"the new password does not work on {node.role} {node.port}"
    finally:
        for chatter in chatters:
            chatter.stopping = True
        await asyncio.wait(tasks, timeout=10)
        for task in tasks:
            task.cancel()
        before.stop()
        if after is not None:
            after.stop()
    print(f"\nrotation: {acked_switched} acknowledged before the old password went, {acked_after} after; "
          f"delivery {dict(totals)}; reconnects {sum(chatter.reconnects for chatter in chatters)}")
    assert acked_after > 20, "the app stopped publishing once the old password was removed"
    assert totals["lost"] == 0 and totals["duplicated"] == 0 and totals["out_of_order"] == 0, dict(totals)
    assert topology.acl_denials() == []
