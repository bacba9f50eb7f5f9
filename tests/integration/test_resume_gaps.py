"""Adversarial checks of the resume seam with a real Redis and the app under Uvicorn (2 workers)."""

import asyncio
import json
import os
import subprocess
import time

import pytest
import redis.asyncio
import websockets

from rooms.hub import PUBLISH_SCRIPT, frame_parts
from rooms.names import CHANNEL_PREFIX, HISTORY_PREFIX, SEQ_PREFIX
from tests.helpers import ROOT
from tests.integration import test_history
from tests.integration.test_history import recv, say

# The fixtures of test_history, shared.
connect, make_server, store = test_history.connect, test_history.make_server, test_history.store

pytestmark = pytest.mark.integration


async def read_consecutive(ws, last, final):
    """Read message frames after `last` up to `final`; a frame out of sequence fails the test.

    Returns (last seq read, the reconnect notice or None); stops early at a close 1012."""
    notice = None
    while last < final:
        try:
            frame = (await recv(ws))[0]
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd.code == 1012, closed
            return last, notice
        if frame["type"] == "reconnect":
            notice = frame
            continue
        assert frame["type"] == "message", frame
        assert frame["seq"] == last + 1, f"a silent gap or reset: {last} then {frame['seq']}"
        last = frame["seq"]
    return last, notice


async def test_messages_the_subscriber_missed_make_members_resume_not_see_a_gap(connect, make_server, store):
    """Redis drops the process's pub/sub connection (CLIENT KILL, an output-buffer limit, a failover)
    while the room keeps publishing through the other connection: the messages published until the
    subscriber is back never reach the members live. They must be told to resume, not skip them."""
    server = make_server()
    alice = await connect(server, "missed")
    bob = await connect(server, "missed")
    await say(alice, "first")
    assert (await recv(bob))[0]["seq"] == 1
    # Messages of another replica, published as the hub does. The first ones in one transaction with
    # the kill, so that no subscriber is back before they are published.
    keys = [prefix + "missed" for prefix in (SEQ_PREFIX, HISTORY_PREFIX, CHANNEL_PREFIX)]
    subscribers = store.pubsub_numsub(keys[2])[0][1]

    def publish(pipe, body):
        pipe.eval(PUBLISH_SCRIPT, len(keys), *keys, *frame_parts("missed", "other", body, 0), 1000, 600)

    with store.pipeline(transaction=True) as pipe:
        pipe.client_kill_filter(_type="pubsub")
        for n in range(5):
            publish(pipe, f"lost {n}")
        pipe.execute()
    deadline = time.monotonic() + 5
    while store.pubsub_numsub(keys[2])[0][1] < subscribers:
        assert time.monotonic() < deadline, "the subscribers did not come back"
        await asyncio.sleep(0.05)
    for n in range(5):
        publish(store, f"live {n}")
    final = int(store.get("wsapp:seq:missed"))
    assert final == 11
    last, notice = await read_consecutive(bob, 1, final)
    assert last < final and notice is not None, "the loss went unnoticed"
    assert notice["seq"] == last
    bob = await connect(server, "missed", f"?since={last}")
    assert (await read_consecutive(bob, last, final))[0] == final


async def test_many_clients_resuming_a_full_history_at_once_are_not_closed_slow(connect, make_server, store):
    """A replay is sent before the outbox bounds apply: twenty clients asking at once for a full
    history (1000 messages, 2 MB each) while the room goes on get all of it, none closed 1013."""
    server = make_server(RATE_LIMIT_PER_SECOND="100000", RATE_LIMIT_BURST="100000")
    keys = [prefix + "full" for prefix in (SEQ_PREFIX, HISTORY_PREFIX, CHANNEL_PREFIX)]
    with store.pipeline(transaction=False) as pipe:
        for n in range(1000):
            frame = frame_parts("full", "other", f"{n:04}" * 500, 0)
            pipe.eval(PUBLISH_SCRIPT, len(keys), *keys, *frame, 1000, 600)
        pipe.execute()
    alice = await connect(server, "full")
    clients = [await connect(server, "full", "?since=0", welcome=False) for _ in range(20)]

    async def talk():
        for n in range(50):
            await alice.send(json.dumps({"type": "message", "body": f"live {n}"}))
            await asyncio.sleep(0.01)

    async def read_all(ws):
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "welcome"
        return (await read_consecutive(ws, 0, 1050))

    talking = asyncio.create_task(talk())
    results = await asyncio.gather(*(read_all(ws) for ws in clients))
    await talking
    assert results == [(1050, None)] * 20


async def test_the_drain_notice_seq_is_the_last_message_sent_before_it_in_a_busy_room(connect, make_server):
    """The notice's seq must be the last seq this connection was sent, even while the room keeps
    publishing as the replica drains: frames fanned out between the drain choosing a connection and
    the notice being queued come before the notice."""
    server = make_server(RATE_LIMIT_PER_SECOND="100000", RATE_LIMIT_BURST="100000")
    clients = [await connect(server, "busy-drain") for _ in range(60)]
    stop = asyncio.Event()

    async def publish_fast():
        # Through Redis as another replica would, so the room goes on after this replica closes.
        keys = [prefix + "busy-drain" for prefix in (SEQ_PREFIX, HISTORY_PREFIX, CHANNEL_PREFIX)]
        client = redis.asyncio.Redis.from_url(server.env["REDIS_URL"])
        n = 0
        while not stop.is_set():
            n += 1
            frame = frame_parts("busy-drain", "x", str(n), 0)
            await client.eval(PUBLISH_SCRIPT, len(keys), *keys, *frame, 1000, 600)
        await client.aclose()

    async def until_notice(ws):
        last = ws.welcome["seq"]
        while True:
            frame = (await recv(ws))[0]
            if frame["type"] == "reconnect":
                return last, frame["seq"]
            last = frame["seq"]

    publishing = asyncio.create_task(publish_fast())
    await asyncio.sleep(0.2)
    env = {k: v for k, v in server.env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    drain = [env["PYTHON"], "-m", "rooms.ctl", "drain", "blue", "--seconds", "1"]
    await asyncio.to_thread(subprocess.run, drain, cwd=os.path.join(ROOT, "service"), env=env, check=True,
                            timeout=30)
    results = await asyncio.gather(*(until_notice(ws) for ws in clients))
    stop.set()
    await publishing
    wrong = [(last, said) for last, said in results if last != said]
    assert not wrong, f"{len(wrong)} of 60 notices say another seq than the last sent: {wrong[:5]}"
