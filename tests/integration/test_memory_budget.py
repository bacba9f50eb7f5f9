"""The Redis memory budget (docs/security.md, "Redis memory"), against a real Redis with a small
maxmemory and real Uvicorn processes: the room limits, history that yields under pressure, and the
control path (rooms.ctl drain, undrain) when Redis is full."""

import asyncio
import json
import os
import subprocess
import time

import pytest
import websockets

from testkit.processes import redis_command
from tests.helpers import ROOT

ORIGIN = {"Origin": "http://localhost"}
EMOJI_BODY = "\U0001f600" * 4096  # 49 KB once JSON-escaped: the largest frame a client can cause
MIB = 2**20


def ctl(server, *args):
    """rooms.ctl as an operator runs it; its output."""
    env = {key: value for key, value in server.env.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    result = subprocess.run([server.env["PYTHON"], "-m", "rooms.ctl", *args], env=env, timeout=30,
                            cwd=os.path.join(ROOT, "service"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def used_memory(redis_server):
    info = redis_command(redis_server.port, "INFO", "memory")
    return int(info.split("used_memory:")[1].split()[0])


def set_maxmemory(redis_server, size):
    assert redis_command(redis_server.port, "CONFIG", "SET", "maxmemory", size).strip() == "OK"


def fill_redis(redis_server, maxmemory):
    """Fill Redis with other keys up to a small maxmemory, until it refuses writes."""
    set_maxmemory(redis_server, maxmemory)
    fill = "for i = 1, 64 do redis.call('SET', 'filler:' .. ARGV[1] .. ':' .. i, string.rep('x', 4096)) end"
    for batch in range(1000):  # a script may go past maxmemory once started: small batches, until refused
        if "OOM" in (redis_command(redis_server.port, "EVAL", fill, 0, batch) or "OOM"):
            break
    set_maxmemory(redis_server, "3mb")  # well below what it holds: no write fits, whatever comes and goes
    assert "OOM" in redis_command(redis_server.port, "EVAL", "return redis.pcall('SET', 'x', 'y').err", 0)


async def connect(server, room, address=None, query=""):
    headers = dict(ORIGIN, **({"X-Forwarded-For": address} if address else {}))
    ws = await websockets.connect(f"{server.ws_url}/ws/rooms/{room}/{query}", additional_headers=headers,
                                  max_size=2**22, open_timeout=5)
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 5))


async def answer(ws, msg_id, timeout=10):
    """The frame that answers message msg_id: its echo, a duplicate or an error."""
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("id") == msg_id and frame["type"] in ("message", "duplicate", "error"):
                return frame


async def closing(ws, timeout=10):
    """The frames a connection gets until it is closed, and its close code."""
    frames = []
    try:
        async with asyncio.timeout(timeout):
            async for text in ws:
                frames.append(json.loads(text))
    except websockets.ConnectionClosed:
        pass
    return frames, ws.close_code


async def test_an_address_creates_at_most_its_rooms_per_window(make_server):
    server = make_server(ROOM_CREATIONS_PER_ADDRESS="3")
    for n in range(3):
        ws, welcome = await connect(server, f"mine-{n}", "192.0.2.1")
        assert welcome["type"] == "welcome"
        await ws.close()
    ws, refused = await connect(server, "mine-3", "192.0.2.1")
    assert refused["error"] == "room_limit"
    assert (await closing(ws))[1] == 1013
    ws, welcome = await connect(server, "mine-0", "192.0.2.1")  # an existing room: nothing created
    assert welcome["type"] == "welcome"
    await ws.close()
    ws, welcome = await connect(server, "mine-3", "192.0.2.2")  # another address
    assert welcome["type"] == "welcome"
    await ws.close()


async def test_a_room_takes_its_messages_per_second_and_refuses_the_rest_by_id(make_server):
    server = make_server(ROOM_MESSAGES_PER_SECOND="5")
    ws, _ = await connect(server, "busy")
    for n in range(8):
        await ws.send(json.dumps({"type": "message", "body": "x", "id": f"m{n}"}))
    answers = [await answer(ws, f"m{n}") for n in range(8)]
    kinds = [frame["type"] if frame["type"] != "error" else frame["error"] for frame in answers]
    assert kinds.count("message") >= 5 and set(kinds) <= {"message", "room_rate_limited"}, kinds
    refused = [frame["id"] for frame in answers if frame["type"] == "error"]
    assert refused, kinds
    await asyncio.sleep(1.1)
    for msg_id in refused:  # refused means not published: the resend publishes it, once
        await ws.send(json.dumps({"type": "message", "body": "x", "id": msg_id}))
        assert (await answer(ws, msg_id))["type"] == "message"
    await ws.close()


async def test_a_room_takes_its_members_per_process(make_server):
    server = make_server(ROOM_MAX_MEMBERS="2")
    members = [(await connect(server, "small"))[0] for _ in range(2)]
    ws, refused = await connect(server, "small")
    assert refused["error"] == "room_full"
    assert (await closing(ws))[1] == 1013
    for member in members:
        await member.close()


async def test_drain_and_undrain_work_when_redis_is_full(redis_server, make_server):
    """Redis at maxmemory refuses every write that needs memory, the channel layer's too; rooms.ctl's
    PUBLISH still reaches every process of the color."""
    server = make_server()
    member, _ = await connect(server, "full")
    fill_redis(redis_server, "4mb")
    print(f"Redis full: used_memory {used_memory(redis_server)} of {3 * MIB}")
    await member.send(json.dumps({"type": "message", "body": "x", "id": "m1"}))
    refused = await answer(member, "m1", timeout=5)  # at once: not published, certainly
    assert refused["type"] == "error" and refused["error"] == "unavailable", refused

    said = ctl(server, "drain", "blue", "--seconds", "1")
    print(said.strip())
    frames, code = await closing(member)
    assert code == 1012 and frames and frames[-1]["type"] == "reconnect", (code, frames)
    ready = json.loads(server.get("/readyz")[1])
    assert ready["draining"] is True

    said = ctl(server, "undrain", "blue")
    print(said.strip())
    deadline = time.monotonic() + 10
    while json.loads(server.get("/readyz")[1])["draining"]:
        assert time.monotonic() < deadline, "undrain did not arrive"
        await asyncio.sleep(0.1)
    ws, welcome = await connect(server, "full")
    assert welcome["type"] == "welcome"
    await ws.close()


async def attacker(server, name, address, until, counts):
    """One connection after another, each to a new room with 6 messages of 4,096 emoji."""
    n = 0
    while time.monotonic() < until:
        n += 1
        try:
            ws, first = await connect(server, f"atk-{name}-{n}", address)
        except (OSError, websockets.InvalidHandshake, TimeoutError):
            counts["handshake_failed"] += 1
            continue
        if first["type"] != "welcome":
            counts[first.get("error", first["type"])] += 1
            await closing(ws, 2)
            await asyncio.sleep(0.05)
            continue
        counts["rooms"] += 1
        try:
            for m in range(6):
                await ws.send(json.dumps({"type": "message", "body": EMOJI_BODY, "id": f"{n}-{m}"}))
            for m in range(6):
                frame = await answer(ws, f"{n}-{m}")
                counts["published" if frame["type"] == "message" else frame.get("error", "other")] += 1
        except (websockets.ConnectionClosed, TimeoutError):
            counts["closed"] += 1
        await ws.close()


async def bystander(server, until, seen):
    """A member of another room that publishes every 50 ms and counts its own messages back."""
    ws, _ = await connect(server, "bystander")
    n = 0
    while time.monotonic() < until:
        n += 1
        started = time.monotonic()
        await ws.send(json.dumps({"type": "message", "body": f"hello {n}", "id": f"b{n}"}))
        frame = await answer(ws, f"b{n}")
        seen["delivered" if frame["type"] == "message" else "refused"] += 1
        seen.setdefault("rtt", []).append(time.monotonic() - started)
        await asyncio.sleep(0.05)
    await ws.close()


async def watch_memory(redis_server, until, peak):
    while time.monotonic() < until:
        peak[0] = max(peak[0], used_memory(redis_server))
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("addresses", [1, 8])
async def test_a_room_creation_flood_stays_within_the_budget(redis_server, make_server, addresses):
    """Issue 17's attack: 8 connections, each opening a new room and sending 6 messages of 4,096
    emoji, from one address and from 8, against a 32 MiB maxmemory. The attacker is limited, Redis
    stays under maxmemory, another room goes on, and a drain of another color works meanwhile."""
    from collections import Counter

    maxmemory = 32 * MIB
    set_maxmemory(redis_server, maxmemory)
    blue = make_server(workers=2)
    green = make_server(COLOR="green")
    other, _ = await connect(green, "green-room")
    seconds = 12
    until = time.monotonic() + seconds
    counts, seen, peak = Counter(), Counter(), [0]
    tasks = [asyncio.create_task(attacker(blue, str(i), f"198.51.100.{i % addresses + 1}", until, counts))
             for i in range(8)]
    tasks += [asyncio.create_task(bystander(blue, until, seen)), asyncio.create_task(watch_memory(
        redis_server, until, peak))]
    await asyncio.sleep(seconds / 2)
    drained = ctl(green, "drain", "green", "--seconds", "1")
    frames, code = await closing(other)
    ctl(green, "undrain", "green")
    async with asyncio.timeout(seconds + 30):
        await asyncio.gather(*tasks)
    trimmed = blue.metric("ws_room_histories_trimmed_total")
    rtt = sorted(seen["rtt"])
    p99 = rtt[min(len(rtt) - 1, int(len(rtt) * 0.99))] * 1000
    print(f"{addresses} address(es), {seconds}s: Redis used_memory peak {peak[0] / MIB:.1f} MiB of "
          f"{maxmemory / MIB:.0f} MiB; rooms created {counts['rooms']}; refused: {counts['room_limit']} "
          f"room_limit, {counts['redis_full']} redis_full, {counts['room_rate_limited']} room_rate_limited; "
          f"published {counts['published']}; rooms trimmed {trimmed:.0f}; the other room's member: "
          f"{seen['delivered']} delivered, {seen['refused']} refused, round trip p99 {p99:.0f} ms; "
          f"drain of green: {drained.strip()}, its member closed {code}")
    assert peak[0] < maxmemory * 0.9
    assert counts["rooms"] <= 30 * addresses, counts
    assert counts["room_limit"] + counts["redis_full"] + trimmed > 0  # the limits or the trimmer acted
    if addresses == 1:
        assert counts["room_limit"] > 0
    assert seen["delivered"] > 20 and seen["refused"] == 0
    assert code == 1012 and frames and frames[-1]["type"] == "reconnect", (code, frames)


async def test_a_replica_started_while_redis_is_full_becomes_ready_and_obeys_drain(redis_server, make_server):
    """A release starts the new color whatever Redis holds: control messages reach it by pub/sub even
    when the channel layer cannot join its group."""
    fill_redis(redis_server, "4mb")
    server = make_server(COLOR="green")  # waits for /readyz 200
    said = ctl(server, "drain", "green", "--seconds", "1")
    assert "1 processes heard it" in said
    deadline = time.monotonic() + 10
    while not json.loads(server.get("/readyz")[1])["draining"]:
        assert time.monotonic() < deadline, "drain did not arrive"
        await asyncio.sleep(0.1)


def test_under_pressure_the_least_recent_rooms_lose_their_history_first_and_every_seq_stays(redis_server):
    import redis

    from rooms.names import HISTORY_PREFIX, ROOMS_INDEX, SENT_PREFIX, SENT_TIMES_PREFIX, SEQ_PREFIX
    from rooms.scripts import TRIM_SCRIPT
    from tests.helpers import publish_args

    store = redis.Redis(port=redis_server.port)
    set_maxmemory(redis_server, 8 * MIB)
    for n in range(20):  # room-0 published first: the least recent
        for _ in range(5):
            store.eval(*publish_args(f"room-{n}", EMOJI_BODY))
    before = used_memory(redis_server)
    assert before > 0.5 * 8 * MIB

    def trim(ids_seconds):
        args = [HISTORY_PREFIX, 0.5, 600, 4, SENT_PREFIX, SENT_TIMES_PREFIX, ids_seconds]
        return store.eval(TRIM_SCRIPT, 1, ROOMS_INDEX, *args)

    used, limit, trimmed = trim(60)
    print(f"used_memory {before} -> {used} of {limit}: {trimmed} rooms trimmed")
    assert used <= 0.5 * limit and 0 < trimmed < 20
    kept = [n for n in range(20) if store.exists(HISTORY_PREFIX + f"room-{n}")]
    assert kept == list(range(20 - len(kept), 20)), kept  # the most recent rooms keep theirs
    assert all(store.get(SEQ_PREFIX + f"room-{n}") == b"5" for n in range(20))
    assert store.hlen(SENT_PREFIX + "room-0") == 5  # younger than 60 s: a resend still publishes once
    set_maxmemory(redis_server, 1 * MIB)
    trim(0)
    assert store.hlen(SENT_PREFIX + "room-19") == 0 and store.get(SEQ_PREFIX + "room-19") == b"5"
