"""Room history and resume (?since=) with a real Redis and the app under Uvicorn (2 workers)."""

import asyncio
import json
import os
import random
import subprocess
import time

import pytest
import redis
import websockets

pytestmark = pytest.mark.integration

ORIGIN = "http://localhost"
FAST = {"RATE_LIMIT_PER_SECOND": "100000", "RATE_LIMIT_BURST": "100000", "ROOM_MESSAGES_PER_SECOND": "0"}



@pytest.fixture
def store(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
async def connect():
    """Open a client and read its welcome; every client opened is closed after the test."""
    opened = []

    async def open_one(server, room, query="", welcome=True):
        url = f"{server.ws_url}/ws/rooms/{room}/{query}"
        ws = await websockets.connect(url, origin=ORIGIN, open_timeout=5, close_timeout=2)
        opened.append(ws)
        if welcome:
            ws.welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        return ws

    yield open_one
    await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)


async def recv(ws, count=1):
    return [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(count)]


async def say(ws, *bodies):
    """Send and wait for each message to come back, so it is published before going on."""
    for body in bodies:
        await ws.send(json.dumps({"type": "message", "body": body}))
        while (await recv(ws))[0].get("body") != body:
            pass


async def test_resume_replays_the_messages_sent_while_away(connect, make_server):
    server = make_server(workers=2)
    alice = await connect(server, "gap")
    bob = await connect(server, "gap")
    await say(alice, "1")
    assert (await recv(bob))[0]["seq"] == 1
    await bob.close()
    await say(alice, "2", "3", "4")
    bob = await connect(server, "gap", "?since=1")
    assert bob.welcome["seq"] == 4 and bob.welcome["version"] == "it"
    assert [(f["seq"], f["body"]) for f in await recv(bob, 3)] == [(2, "2"), (3, "3"), (4, "4")]
    await say(alice, "5")
    assert (await recv(bob))[0]["seq"] == 5


async def test_the_seam_has_no_duplicate_and_no_gap_under_concurrent_senders(connect, make_server, store):
    """A client that keeps dropping and resuming while four others send gets every message once, in order."""
    server = make_server(workers=2, **FAST)
    senders = [await connect(server, "seam") for _ in range(4)]
    observer = await connect(server, "seam")
    stop = asyncio.Event()

    async def send_until_stopped(ws):
        while not stop.is_set():
            await ws.send(json.dumps({"type": "message", "body": "x"}))
            await asyncio.sleep(random.uniform(0.005, 0.015))

    async def drain_frames(ws):
        async for _ in ws:
            pass

    readers = [asyncio.create_task(drain_frames(ws)) for ws in senders + [observer]]
    sending = [asyncio.create_task(send_until_stopped(ws)) for ws in senders]
    seen, resumes, replayed = [], 0, 0
    ws = await connect(server, "seam")
    last = ws.welcome["seq"]
    first = last + 1
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        for _ in range(random.randint(0, 30)):
            frame = (await recv(ws))[0]
            assert frame["type"] == "message", frame
            seen.append(frame["seq"])
            last = frame["seq"]
        await ws.close()
        ws = await connect(server, "seam", f"?since={last}")
        resumes += 1
        replayed += ws.welcome["seq"] - last
    stop.set()
    await asyncio.gather(*sending)
    final = int(store.get("wsapp:seq:seam"))
    while last < final:
        frame = (await recv(ws))[0]
        assert frame["type"] == "message", frame
        seen.append(frame["seq"])
        last = frame["seq"]
    print(f"{len(seen)} messages over {resumes} resumes, {replayed} of them replayed")
    assert resumes > 20 and replayed > 0
    assert seen == list(range(first, final + 1))
    for reader in readers:
        reader.cancel()


async def test_history_keeps_room_history_max_messages_and_resyncs_older(connect, make_server, store):
    server = make_server(workers=2, ROOM_HISTORY_MAX="5")
    alice = await connect(server, "bounded")
    await say(alice, *"0123456789")
    assert store.xlen("wsapp:history:bounded") == 5
    bob = await connect(server, "bounded", "?since=2")
    resync, *replayed = await recv(bob, 6)
    assert resync == {"type": "resync", "room": "bounded", "since": 2, "epoch": alice.welcome["epoch"],
                      "from": 6, "seq": 10, "reason": "too_old"}
    assert [f["seq"] for f in replayed] == [6, 7, 8, 9, 10]
    bob5 = await connect(server, "bounded", "?since=5")
    assert [f["seq"] for f in await recv(bob5, 5)] == [6, 7, 8, 9, 10], "since = oldest - 1 is not too old"


async def test_a_lost_counter_gives_resync_ahead_and_the_history_starts_over(connect, make_server, store):
    server = make_server(workers=2)
    alice = await connect(server, "reset")
    await say(alice, "1", "2", "3")
    store.delete("wsapp:seq:reset")  # Redis lost the counter but not the history
    bob = await connect(server, "reset", "?since=3")
    resync = (await recv(bob))[0]
    assert (resync["reason"], resync["from"], resync["seq"]) == ("ahead", 1, 0)
    await say(bob, "new")
    notice = (await recv(alice))[0]  # she was sent 1 to 3: 1 again would look like a duplicate
    assert (notice["type"], notice["reason"], notice["seq"]) == ("reconnect", "resume", 3)
    carol = await connect(server, "reset", "?since=0")
    assert [(f["seq"], f["body"]) for f in await recv(carol)] == [(1, "new")]


async def test_room_keys_expire_once_the_room_is_idle(connect, make_server, store):
    server = make_server(workers=2, ROOM_HISTORY_SECONDS="2")
    alice = await connect(server, "idle")
    await say(alice, "1", "2")
    for key in ("wsapp:seq:idle", "wsapp:history:idle", "wsapp:epoch:idle"):
        assert 0 < store.pttl(key) <= 3000  # the seq key by 1 s more than the others (rooms.scripts)
    for key in ("wsapp:sent:idle", "wsapp:sentt:idle"):
        assert 0 < store.pttl(key) <= 600_000  # ROOM_IDS_SECONDS, whatever the history keeps
    await alice.close()
    deadline = time.monotonic() + 6
    while store.exists("wsapp:seq:idle", "wsapp:history:idle"):
        assert time.monotonic() < deadline, "the keys of an idle room outlived ROOM_HISTORY_SECONDS"
        await asyncio.sleep(0.1)
    bob = await connect(server, "idle")
    assert bob.welcome["seq"] == 0


async def test_a_quiet_room_with_members_keeps_its_seq_but_not_its_old_history(connect, make_server, store):
    server = make_server(workers=2, ROOM_HISTORY_SECONDS="1")
    alice = await connect(server, "quiet")
    await say(alice, "1", "2", "3")
    await asyncio.sleep(2.5)
    assert store.exists("wsapp:seq:quiet") and not store.exists("wsapp:history:quiet")
    bob = await connect(server, "quiet", "?since=1")
    resync = (await recv(bob))[0]
    assert (resync["reason"], resync["from"], resync["seq"]) == ("too_old", 4, 3)
    await say(alice, "4")
    assert (await recv(bob))[0]["seq"] == 4, "the counter went on, it did not restart"


async def test_messages_older_than_the_window_are_trimmed_from_a_busy_room(connect, make_server, store):
    server = make_server(workers=2, ROOM_HISTORY_SECONDS="2")
    alice = await connect(server, "aging")
    await say(alice, "1")
    await asyncio.sleep(1.2)
    await say(alice, "2")
    await asyncio.sleep(1.2)
    await say(alice, "3")
    assert [entry[0] for entry in store.xrange("wsapp:history:aging")] == [b"2-0", b"3-0"]
    bob = await connect(server, "aging", "?since=0")
    resync, *replayed = await recv(bob, 3)
    assert (resync["reason"], resync["from"]) == ("too_old", 2) and [f["seq"] for f in replayed] == [2, 3]


@pytest.mark.parametrize("query", ["?since=x", "?since=1&since=2", "?since=1234567890123456789"])
async def test_malformed_since_gets_invalid_since_and_1008(connect, make_server, query):
    server = make_server(workers=2)
    ws = await connect(server, "bad", query, welcome=False)
    frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert (frame["type"], frame["error"]) == ("error", "invalid_since")
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd.code == 1008
    assert "Traceback" not in server.log()


async def test_the_drain_notice_tells_each_client_its_last_seq(connect, make_server):
    server = make_server(workers=2)
    alice = await connect(server, "notice")
    await say(alice, "1", "2")
    bob = await connect(server, "notice-quiet")
    env = {k: v for k, v in server.env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    subprocess.run([env["PYTHON"], "-m", "rooms.ctl", "drain", "blue", "--seconds", "1"],
                   cwd=os.path.join(os.path.dirname(__file__), "..", "..", "service"), env=env, check=True,
                   timeout=30)
    for ws, seq in ((alice, 2), (bob, 0)):
        notice = (await recv(ws))[0]
        assert notice == {"type": "reconnect", "reason": "release", "color": "blue",
                          "epoch": ws.welcome["epoch"], "seq": seq, "retry_ms": 250}
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 1012


LARGEST = "\U0001F600" * 4096  # MAX_BODY_CHARS of escaped emoji: a 49 KB frame, the largest there is


async def test_flooded_rooms_keep_room_history_bytes_and_redis_keeps_accepting_writes(connect, make_server,
                                                                                       store):
    """Ten rooms flooded with the largest frames: without the byte bound their 300 frames (15 MB) would
    fill this Redis' 8 MB and every write (publishes, drain control) would fail with OOM."""
    store.config_set("maxmemory", "8mb")
    store.config_set("maxmemory-policy", "noeviction")
    server = make_server(**FAST)  # the default ROOM_HISTORY_BYTES, 256 KiB
    rooms = [f"flood{n}" for n in range(10)]
    senders = [await connect(server, room) for room in rooms]
    await asyncio.gather(*(say(ws, *([LARGEST] * 30)) for ws in senders))
    for room in rooms:
        frames = [fields[b"f"] for _, fields in store.xrange(f"wsapp:history:{room}")]
        assert len(frames) == 5 and sum(map(len, frames)) <= 262144
        assert store.memory_usage(f"wsapp:history:{room}", samples=0) < 1.2 * 262144  # 289,864 here
    await say(senders[0], "still writable")
    late = await connect(server, "flood0", "?since=20")
    resync = (await recv(late))[0]
    assert (resync["reason"], resync["from"], resync["seq"]) == ("too_old", 26, 31)  # 5 large, 1 small
    assert [f["seq"] for f in await recv(late, 6)] == [26, 27, 28, 29, 30, 31]


async def test_a_resent_message_id_is_published_once_across_workers_and_after_trimming(connect, make_server,
                                                                                       store):
    """The resend race: a message sent just before a 1012 lands after the client's new connection
    read the history; the client sends it again with the same id and sender, and it is not published
    twice, even once its first copy left the history. ROOM_IDS_MAX bounds the ids a room keeps."""
    server = make_server(ROOM_HISTORY_MAX="3", ROOM_IDS_MAX="4", **FAST)
    query = "?sender=alice-sender-token-1"
    alice = await connect(server, "ids", query)
    await alice.send(json.dumps({"type": "message", "body": "hi", "id": "m-1"}))
    echo = (await recv(alice))[0]
    assert (echo["seq"], echo["id"]) == (1, "m-1")
    duplicate = {"type": "duplicate", "id": "m-1", "epoch": echo["epoch"], "seq": 1}
    again = [await connect(server, "ids", query) for _ in range(4)]  # two workers: some on the other one
    for ws in again:
        await ws.send(json.dumps({"type": "message", "body": "hi", "id": "m-1"}))
        assert (await recv(ws))[0] == duplicate
    assert store.xlen("wsapp:history:ids") == 1
    await say(alice, "2", "3", "4")  # m-1's message is trimmed from the history; its id stays
    assert store.hget("wsapp:sent:ids", "alice-sender-token-1:m-1") == f"{echo['epoch']} 1".encode()
    assert 0 < store.pttl("wsapp:sent:ids") <= 600_000
    assert [f["seq"] for f in await recv(again[0], 3)] == [2, 3, 4]
    await again[0].send(json.dumps({"type": "message", "body": "hi", "id": "m-1"}))
    assert (await recv(again[0]))[0] == duplicate
    await say(alice, "5", "6", "7", "8")  # 8 ids in all (server-made for these): the oldest 4 go
    assert store.hlen("wsapp:sent:ids") == store.zcard("wsapp:sentt:ids") == 4
    assert [f["seq"] for f in await recv(again[0], 4)] == [5, 6, 7, 8]
    await again[0].send(json.dumps({"type": "message", "body": "hi", "id": "m-1"}))
    assert (await recv(again[0]))[0]["seq"] == 9
