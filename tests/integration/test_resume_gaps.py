"""Adversarial checks of the resume seam with a real Redis and the app under Uvicorn (2 workers)."""

import asyncio
import json
import os
import signal
import subprocess
import time

import pytest
import redis.asyncio
import websockets

from rooms.names import CHANNEL_PREFIX, HISTORY_PREFIX, SEQ_PREFIX
from tests.helpers import ROOT, AppServer, publish_args
from tests.integration import test_history
from tests.integration.test_history import recv, say
from tests.integration.test_hostile import BIG_BODY, BIG_MESSAGES, SLOW_CLIENTS, WireClient, rss

# The fixtures of test_history, shared (make_server is in conftest.py).
connect, store = test_history.connect, test_history.store

pytestmark = pytest.mark.integration
# A flood: the per-connection and per-room rates out of the way.
FLOOD = {"RATE_LIMIT_PER_SECOND": "100000", "RATE_LIMIT_BURST": "100000", "ROOM_MESSAGES_PER_SECOND": "0"}


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
        pipe.eval(*publish_args("missed", body))

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
    server = make_server(**FLOOD,
                         ROOM_HISTORY_BYTES="4000000")  # room for all of the 2 MB, live ones too
    with store.pipeline(transaction=False) as pipe:
        for n in range(1000):
            pipe.eval(*publish_args("full", f"{n:04}" * 500))
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
    server = make_server(**FLOOD)
    clients = [await connect(server, "busy-drain") for _ in range(60)]
    stop = asyncio.Event()

    async def publish_fast():
        # Through Redis as another replica would, so the room goes on after this replica closes.
        client = redis.asyncio.Redis.from_url(server.env["REDIS_URL"])
        n = 0
        while not stop.is_set():
            n += 1
            await client.eval(*publish_args("busy-drain", str(n), session="x"))
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


async def test_slow_clients_replayed_a_big_history_do_not_grow_the_process(redis_server, tmp_path, store):
    """Five clients ask for a full history of 49 KB messages (?since=0) and stop reading. Live frames
    are bounded by OUTBOUND_QUEUE_BYTES (1 MiB); the replay is not: each connection holds every kept
    frame until its client reads them."""
    server = AppServer(redis_server.url, tmp_path, workers=1)
    server.start()
    slow = []
    try:
        with store.pipeline(transaction=False) as pipe:
            for _ in range(BIG_MESSAGES):
                pipe.eval(*publish_args("big-replay", BIG_BODY))
            pipe.execute()
        pid = server.process.pid
        before = rss(pid)
        slow = [WireClient(server.port, rcvbuf=4096, path="/ws/rooms/big-replay/?since=0")
                for _ in range(SLOW_CLIENTS)]
        for client in slow:
            assert json.loads(client.next_frame()[1])["type"] == "welcome"
        await asyncio.sleep(2)
        peak = rss(pid, "VmHWM")
        print(f"\nreplay of {BIG_MESSAGES} x 49 KB to {SLOW_CLIENTS} clients that stop reading: "
              f"RSS {before / 2**20:.1f} MiB before, peak {peak / 2**20:.1f}")
        assert peak - before < 16 * 2**20
    finally:
        for client in slow:
            client.close()
        server.stop()


async def test_a_connected_client_whose_rooms_keys_expired_resumes_instead_of_dropping_news(
        redis_server, tmp_path, store, connect):
    """keep_alive refreshes a room's seq key while it has members, but a process stalled longer
    than ROOM_HISTORY_SECONDS (here: stopped) lets it expire, and the counter starts again at 1.
    A connected client that had seq 3 would drop 1, 2, 3 as already seen: it must be told to resume."""
    server = AppServer(redis_server.url, tmp_path, workers=1, ROOM_HISTORY_SECONDS="1")
    server.start()
    try:
        alice = await connect(server, "expired")
        await say(alice, "1", "2", "3")
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 5
            while store.exists(SEQ_PREFIX + "expired"):
                assert time.monotonic() < deadline, "the seq key did not expire"
                await asyncio.sleep(0.1)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        store.eval(*publish_args("expired", "news", history_seconds=1))
        notice = (await recv(alice))[0]
        assert (notice["type"], notice["reason"], notice["seq"]) == ("reconnect", "resume", 3)
        alice = await connect(server, "expired", "?since=3")
        resync, news = await recv(alice, 2)
        assert (resync["reason"], resync["from"], news["seq"], news["body"]) == ("ahead", 1, 1, "news")
    finally:
        server.stop()


async def test_since_at_every_boundary_replays_exactly_what_follows_through_one_frame_pages(
        connect, make_server):
    """Kept: 4 to 8 of 8. Pages of one frame (the smallest OUTBOUND_QUEUE_BYTES), so every replay
    goes through the paged reads; then one live message, which must follow without gap or dup."""
    server = make_server(ROOM_HISTORY_MAX="5", OUTBOUND_QUEUE_BYTES="65536")
    alice = await connect(server, "bounds")
    await say(alice, *"12345678")
    expected = {  # since: (resync reason or None, seqs replayed)
        0: ("too_old", [4, 5, 6, 7, 8]), 2: ("too_old", [4, 5, 6, 7, 8]), 3: (None, [4, 5, 6, 7, 8]),
        4: (None, [5, 6, 7, 8]), 7: (None, [8]), 8: (None, []), 9: ("ahead", [4, 5, 6, 7, 8]),
        999999999999999999: ("ahead", [4, 5, 6, 7, 8]),
    }
    clients = {since: await connect(server, "bounds", f"?since={since}") for since in expected}
    await say(alice, "live")
    for since, (reason, seqs) in expected.items():
        frames = await recv(clients[since], len(seqs) + 1 + (reason is not None))
        if reason is not None:
            got = frames.pop(0)
            assert (got["type"], got["reason"], got["from"], got["seq"]) == ("resync", reason, 4, 8)
        assert [f["seq"] for f in frames] == seqs + [9], since


async def test_redis_lost_during_a_paged_replay_ends_it_with_a_resume_notice(redis_server, tmp_path, store):
    """Redis goes away while a slow client is being replayed a long history: the client gets what
    was read, then a resume notice with the last seq it was sent, then 1012; nothing out of order."""
    server = AppServer(redis_server.url, tmp_path, workers=1)
    server.start()
    client = None
    try:
        with store.pipeline(transaction=False) as pipe:
            for _ in range(200):
                pipe.eval(*publish_args("lost-redis", BIG_BODY, session="o"))
            pipe.execute()
        client = WireClient(server.port, rcvbuf=4096, path="/ws/rooms/lost-redis/?since=0")
        assert json.loads(client.next_frame()[1])["type"] == "welcome"
        redis_server.stop()  # the first page (21 frames) is on its way; the next cannot be read
        last, notice = 0, None
        while True:
            opcode, payload = client.next_frame()
            if opcode == 0x8:  # close
                assert int.from_bytes(payload[:2], "big") == 1012
                break
            frame = json.loads(payload)
            if frame["type"] == "reconnect":
                assert (frame["reason"], frame["seq"]) == ("resume", last)
                notice = frame
                continue
            assert frame["seq"] == last + 1
            last = frame["seq"]
        assert 0 < last < 200 and notice
        client.close()
        await server.until_metric("ws_active_connections", 0, timeout=15)
    finally:
        if client is not None:
            client.close()
        server.stop()
