"""A Redis failover, then a restart of every Redis part at once, loses no acknowledged write (issue 19).

Under chatting clients the primary stops answering (its container frozen: a hung machine) and stays
down; the Sentinels promote the replica, and clients go on writing to it. Then every Redis part stops
at once (the frozen primary, the promoted one and the three Sentinels, as a power cut or a
`docker stack rm` would) and starts again, the stale old primary among them. Before, no Sentinel
remembered the failover, the old primary started as primary and its new replica resynced from it:
every write since the failover was gone. Now each Sentinel starts from the state it kept on its node,
and a Redis starts as what a majority of them name (docs/operations.md, "Who starts as what").

Acknowledged is what the project calls it (docs/protocol.md): the sender saw its message come back
with its `epoch` and `seq`, which the publish script gave it on the primary. Every write acknowledged
after the promotion must be in its room's history on the primary after the restart, under the same
`seq` and epoch, and the rooms' counters go on from there (no `seq` named twice)."""

import asyncio
import json
import time

import pytest

from rooms.names import EPOCH_PREFIX, HISTORY_PREFIX, SEQ_PREFIX
from tests.e2e.load import Traffic
from tests.lab.test_failover import SERVICE_NODE, freeze_until_promoted, primary, primary_container

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

ROOMS = 3
REDIS_PARTS = {"wsapp_redis": 1, "wsapp_redis-replica": 1, "wsapp_sentinel": 3}


def redis_cli(lab, service, *command):
    """redis-cli as admin in the running container of `service` (a Redis), on the node it is pinned to."""
    node = SERVICE_NODE[service]
    container = lab.docker(node, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}")
    assert container, f"{service} does not run on node {node}"
    script = 'REDISCLI_AUTH="$(cat /run/secrets/redis_admin_password)" redis-cli --user admin --raw "$@"'
    return lab.docker(node, "exec", container, "sh", "-c", script, "sh", *command)


def kept(lab, service, room):
    """{seq: frame} of the room's history on `service`'s Redis."""
    lines = redis_cli(lab, service, "XRANGE", HISTORY_PREFIX + room, "-", "+").splitlines()
    frames = [json.loads(line) for line in lines if line.startswith("{")]
    return {frame["seq"]: frame for frame in frames}


def containers(lab, service):
    """The running containers of `service` on every node (a task's desired state changes at once, its
    container stops later)."""
    return [c for node in range(1, lab.nodes + 1) for c in lab.docker(
        node, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}").split()]


def scale(lab, parts):
    lab.docker(lab.manager(), "service", "scale", "--detach", *(f"{name}={n}" for name, n in parts.items()))


async def chat(lab, node, seconds, **extra):
    """Chatting clients through the edge on `node` for about `seconds`; the Traffic they made."""
    traffic = Traffic(lab.url(node), lab.ws_url(node), clients=12, rooms=ROOMS, message_interval=0.2,
                      keepalive=5.0, redis_failover=True)
    runner = asyncio.create_task(traffic.run())
    try:
        await asyncio.wait_for(traffic.connected.wait(), 60)
        await asyncio.sleep(seconds)
    finally:
        traffic.stop.set()
        await runner
    return traffic


async def test_a_failover_then_a_restart_of_every_redis_part_keeps_every_acknowledged_write(lab):
    started = time.monotonic()
    old, new, node, container = primary_container(lab)
    edge = SERVICE_NODE[new]  # both Redis nodes are edges: talk through the one that stays up

    traffic = Traffic(lab.url(edge), lab.ws_url(edge), clients=12, rooms=ROOMS, message_interval=0.2,
                      keepalive=5.0, redis_failover=True)
    runner = asyncio.create_task(traffic.run())
    try:
        await asyncio.wait_for(traffic.connected.wait(), 60)
        await asyncio.sleep(2)
        promoted = await freeze_until_promoted(lab, node, container, new)
        failover_at = time.monotonic()
        acked = len(traffic.acknowledged)
        await asyncio.to_thread(lab.wait, lambda: len(traffic.acknowledged) > acked + 100, 60,
                                "writes to be acknowledged again", 0.2)
        await asyncio.sleep(5)
    finally:
        traffic.stop.set()
        await runner
    traffic.assert_every_message_reached_every_client_once_in_order()
    since = [ack for ack in traffic.acknowledged if ack[0] > failover_at]
    assert since, "no write was acknowledged after the promotion"

    # Every Redis part stops at once, the stale primary still frozen (killed, so it writes nothing
    # more; scaled to 0 first so that Swarm does not restart it in between), then all start at once.
    down_at = time.monotonic()
    scale(lab, {old: 0})
    lab.docker(node, "kill", container)
    scale(lab, {name: 0 for name in REDIS_PARTS})
    lab.wait(lambda: not any(containers(lab, name) for name in REDIS_PARTS), 90, "every Redis part to stop")
    scale(lab, REDIS_PARTS)
    lab.wait(lambda: all(len(lab.tasks(name)) == n for name, n in REDIS_PARTS.items()), 120,
             "every Redis part to run again", 1)
    lab.wait(lambda: "role:master" in redis_cli(lab, new, "INFO", "replication"), 60, f"{new} to serve", 1)
    back = time.monotonic() - down_at
    assert primary(lab) == new, "the Sentinels name the stale Redis after the restart"
    lab.wait(lambda: f"master_host:{new}" in redis_cli(lab, old, "INFO", "replication"), 60,
             f"{old} to come back as {new}'s replica", 1)

    # Every write acknowledged since the failover, in its room's history under its seq and epoch.
    found, counters = 0, {}
    for room in {ack[1] for ack in since}:
        history = kept(lab, new, room)
        counters[room] = int(redis_cli(lab, new, "GET", SEQ_PREFIX + room))
        epoch = redis_cli(lab, new, "GET", EPOCH_PREFIX + room)
        for _, ack_room, ack_epoch, seq, body in since:
            if ack_room == room:
                frame = history.get(seq)
                assert frame is not None and frame["body"] == body and frame["epoch"] == ack_epoch, (
                    f"{room} seq {seq} ({body}, acknowledged in {ack_epoch}): kept {frame}; epoch {epoch}")
                found += 1
                assert counters[room] >= seq

    # The rooms go on from their counters: a new write never takes an acknowledged write's seq.
    after = await chat(lab, edge, 3)
    assert after.acknowledged, f"no write acknowledged after the restart: {after.summary()}"
    newest = {room: max(ack[3] for ack in since if ack[1] == room) for room in counters}
    reused = [ack for ack in after.acknowledged if ack[1] in newest and ack[3] <= newest[ack[1]]]
    assert reused == []
    print(f"{old} frozen: {new} promoted after {promoted:.1f}s; {len(since)} writes acknowledged after the "
          f"promotion, {found} found after every Redis part restarted ({back:.0f}s down and back); "
          f"before: {traffic.summary()}; after: {after.summary()}; "
          f"test took {time.monotonic() - started:.0f}s")
