"""The fault tier (issue 16): clients that chat and resume (testkit.chatclient) through one or two app
servers (entrypoint.sh) on real Redis processes, one Redis fault applied mid-run, and one check of
the room guarantee (testkit.checker) over every client's log and the room's history afterwards.

Redis is given small timeouts (REDIS_SOCKET_TIMEOUT 6 s, its minimum; REDIS_CONNECT_TIMEOUT 1 s), so
that a fault longer than every timeout stays short. Against the server before issue 16 (28dc874),
four of these failed the checker: Redis frozen (a message answered `unavailable` was published when
Redis resumed), the failover behind and the expired keys (one seq for two messages), and the trimmed
history (a resend published twice). A test whose fault did not bite fails too.
"""

import asyncio
import json
import time

import pytest

from testkit import MissingCommand
from testkit.chatclient import ChatClient, run_clients
from testkit.checker import check
from testkit.redisfaults import (
    BlackHole,
    expire_room,
    failover,
    frozen,
    history,
    kill_pubsub,
    leftover_rules,
    replication_cut,
    require_iptables,
)
from tests.helpers import AppServer

pytestmark = pytest.mark.integration

ROOM = "faults"
FAST_REDIS = {"REDIS_SOCKET_TIMEOUT": "6", "REDIS_CONNECT_TIMEOUT": "1"}
SOCKET_TIMEOUT = 6.0


class GuaranteeViolated(AssertionError):
    """The checker found violations of the room guarantee."""


@pytest.fixture
def make_servers(tmp_path):
    """Start app servers on a Redis URL (or Sentinels): make(redis_url, count=2, **env)."""
    servers = []

    def make(redis_url, count=2, **env):
        for _ in range(count):
            server = AppServer(redis_url, tmp_path, workers=1, **FAST_REDIS, **env)
            servers.append(server)
            server.start()
        return servers[-count:]

    yield make
    for server in servers:
        server.stop()


async def chat(servers, fault, clients=4, seconds=6.0, rate=4.0):
    """Clients spread over the servers chat for `seconds` while `fault(clients)` runs, then settle and
    catch up; (clients, logs). Blocking fault steps go through asyncio.to_thread."""
    chatters = [ChatClient(servers[n % len(servers)].ws_url, ROOM, f"c{n}", rate=rate, seconds=seconds)
                for n in range(clients)]
    running = asyncio.create_task(run_clients(chatters))
    try:
        await fault(chatters)
        logs = await asyncio.wait_for(running, seconds + 60)
    finally:
        if not running.done():
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    return chatters, logs


def assert_guarantee(chatters, logs, frames, tmp_path, servers=()):
    """The checker's verdict, then that the run was a real one: traffic, and every client caught up."""
    path = tmp_path / "fault-logs.json"
    path.write_text(json.dumps({"logs": logs, "history": frames}, indent=1))
    summary = {chatter.name: chatter.summary() for chatter in chatters}
    print(f"\nclients: {summary}")
    violations = check(logs, {ROOM: frames})
    if violations:
        shown = "\n".join(violations[:12])
        raise GuaranteeViolated(f"{len(violations)} violations of the room guarantee (every log: {path}):\n"
                                f"{shown}\nclients: {summary}")
    assert all(chatter.caught_up for chatter in chatters), f"a client did not catch up: {summary}"
    assert all(chatter.acked for chatter in chatters), f"a client got nothing published: {summary}"
    assert not leftover_rules()


async def test_chatting_without_a_fault_keeps_the_guarantee(redis_server, make_servers, tmp_path):
    """The baseline: if this fails, the harness is wrong, not a fault's handling."""
    servers = make_servers(redis_server.url)

    async def no_fault(clients):
        pass

    chatters, logs = await chat(servers, no_fault, seconds=3.0)
    assert_guarantee(chatters, logs, history(redis_server.port, ROOM), tmp_path)
    assert sum(len(c.acked) for c in chatters) >= 40


async def test_killed_subscriber_connections(redis_server, make_servers, tmp_path):
    """Redis drops every pub/sub connection (CLIENT KILL TYPE pubsub, as for its output-buffer limit),
    twice, while one server is stalled for a second, so that it cannot resubscribe before the other
    server's clients publish more: its members must get those by a resume, not see a gap."""
    servers = make_servers(redis_server.url)

    async def kill_subscribers(clients):
        for _ in range(2):
            await asyncio.sleep(1.5)
            with frozen(servers[1].process.pid):  # one worker: the process is the server
                assert await asyncio.to_thread(kill_pubsub, redis_server.port) >= 2
                await asyncio.sleep(1.0)

    chatters, logs = await chat(servers, kill_subscribers)
    assert_guarantee(chatters, logs, history(redis_server.port, ROOM), tmp_path)
    assert any(chatter.summary().get("reconnect:resume") for chatter in chatters[1::2]), \
        "no member of the stalled server was told to resume: the fault did not bite"


async def test_redis_frozen_longer_than_every_timeout(redis_server, make_servers, tmp_path):
    """Redis stops (SIGSTOP) for longer than a publish's socket timeout and its one retry, then
    resumes: nothing refused may be published after all, nothing acknowledged lost."""
    servers = make_servers(redis_server.url)
    freeze = 2 * SOCKET_TIMEOUT + 1.5

    async def freeze_redis(clients):
        await asyncio.sleep(1.5)
        with frozen(redis_server.process.pid):
            await asyncio.sleep(freeze)

    chatters, logs = await chat(servers, freeze_redis, seconds=freeze + 3)
    assert_guarantee(chatters, logs, history(redis_server.port, ROOM), tmp_path)
    assert not any(chatter.summary().get("error:rate_limited") for chatter in chatters), \
        "frames sent at the allowed rate while the server waited on Redis were refused rate_limited"


async def test_failover_to_a_replica_that_fell_behind(sentinels, make_servers, tmp_path):
    """The replica's link to the primary is cut (iptables) while the room chats, then the primary
    dies and the Sentinels promote the replica, which lacks the last writes."""
    try:
        require_iptables()
    except MissingCommand as exc:
        pytest.fail(str(exc), pytrace=False)
    servers = make_servers("", **sentinels.app_env)

    async def lag_then_fail_over(clients):
        await asyncio.sleep(1.5)
        with replication_cut(sentinels.primary, sentinels.password):
            await asyncio.sleep(1.5)  # acknowledged writes the replica will never see
            await asyncio.to_thread(failover, sentinels)

    chatters, logs = await chat(servers, lag_then_fail_over, seconds=8.0)
    frames = history(sentinels.replica.port, ROOM, sentinels.password)
    assert_guarantee(chatters, logs, frames, tmp_path)


async def test_room_keys_expiring_while_a_client_is_away(redis_server, make_servers, tmp_path):
    """The room's keys go (as an expiry or an eviction would) while one client is away and the others
    chat on; the client comes back resuming from a seq of the old counter."""
    servers = make_servers(redis_server.url)

    async def expire_while_away(clients):
        await asyncio.sleep(1.5)
        await clients[-1].leave(3.0)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(expire_room, redis_server.port, ROOM)

    chatters, logs = await chat(servers, expire_while_away)
    assert_guarantee(chatters, logs, history(redis_server.port, ROOM), tmp_path)


async def test_history_trimmed_before_a_resend(redis_server, make_servers, tmp_path):
    """A client sends, leaves before reading the echo, and is away while the room publishes more than
    ROOM_HISTORY_MAX (5) messages: it resumes (too_old) and resends the message it had no answer for."""
    servers = make_servers(redis_server.url, ROOM_HISTORY_MAX="5")

    async def leave_after_a_send(clients):
        await asyncio.sleep(1.5)
        await clients[-1].leave(2.5, after_send=True, linger=0.3)  # the server reads it before the close

    chatters, logs = await chat(servers, leave_after_a_send)
    left_with = chatters[-1].left_with
    published = [e for c in chatters[:-1] for e in c.log
                 if e["event"] == "message" and e["frame"]["id"] == left_with]
    assert published, f"the message sent before leaving ({left_with}) was not published: no fault set up"
    assert_guarantee(chatters, logs, history(redis_server.port, ROOM), tmp_path)


async def test_a_resend_burst_after_a_long_disconnect(redis_server, make_servers, tmp_path):
    """A client's link dies under it: it goes on sending for a second without hearing anything (each
    message published, no echo read), drops, and stays away while composing at 10 a second. Back, it
    sends all that is pending at once (paced under the rate limit): each message exactly once."""
    servers = make_servers(redis_server.url)
    leaver = None

    async def long_disconnect(clients):
        nonlocal leaver
        leaver = clients[-1]
        leaver.rate = 10.0
        await asyncio.sleep(1.0)
        await leaver.leave(3.0, after_send=True, deaf=1.0)

    chatters, logs = await chat(servers, long_disconnect, seconds=6.0)
    assert_guarantee(chatters, logs, history(redis_server.port, ROOM), tmp_path)
    counts = leaver.summary()
    assert counts.get("resent", 0) >= 5 and counts.get("duplicate", 0) >= 1, f"no resend burst: {counts}"


async def test_a_redis_that_accepts_connections_and_never_answers(redis_server, make_servers, tmp_path):
    """One server's Redis turns into a black hole for longer than every timeout (connections are
    accepted, nothing sent gets an answer), then comes back; the other server's Redis stays fine."""
    hole = BlackHole(redis_server.port)
    try:
        servers = [*make_servers(hole.url, count=1), *make_servers(redis_server.url, count=1)]

        async def black_hole(clients):
            await asyncio.sleep(1.5)
            hole.swallow()
            await asyncio.sleep(2 * SOCKET_TIMEOUT + 1.5)
            hole.restore()

        chatters, logs = await chat(servers, black_hole, seconds=2 * SOCKET_TIMEOUT + 4.5)
    finally:
        hole.stop()
    assert_guarantee(chatters, logs, history(redis_server.port, ROOM), tmp_path)
    errors = [chatter.summary().get("error:unavailable", 0) + chatter.refusals for chatter in chatters[::2]]
    assert any(errors), "the black-holed server's clients never noticed: the fault did not bite"


async def test_closes_right_after_a_send(redis_server, make_servers, tmp_path):
    """Every client, now and then, closes right after a send (often in the same read as the message):
    each message is published once whether or not the server got it, and resent if it did not answer."""
    servers = make_servers(redis_server.url)

    async def close_after_sends(clients):
        started = time.monotonic()
        while time.monotonic() - started < 4.0:
            await asyncio.sleep(0.4)
            await asyncio.gather(*(client.leave(0.05, after_send=True) for client in clients[::2]))
            await asyncio.sleep(0.4)
            await asyncio.gather(*(client.leave(0.05, after_send=True) for client in clients[1::2]))

    chatters, logs = await chat(servers, close_after_sends)
    assert_guarantee(chatters, logs, history(redis_server.port, ROOM), tmp_path)
    assert sum(chatter.summary().get("resent", 0) for chatter in chatters), "nothing was resent"
