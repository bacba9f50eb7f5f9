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
    set_maxmemory(redis_server, "4mb")
    fill = "for i = 1, 64 do redis.call('SET', 'filler:' .. ARGV[1] .. ':' .. i, string.rep('x', 4096)) end"
    for batch in range(1000):  # a script may go past maxmemory once started: small batches, until refused
        if "OOM" in (redis_command(redis_server.port, "EVAL", fill, 0, batch) or "OOM"):
            break
    assert "OOM" in redis_command(redis_server.port, "EVAL", "return redis.pcall('SET', 'x', 'y').err", 0)
    print(f"Redis full: used_memory {used_memory(redis_server)} of {4 * MIB}")

    said = ctl(server, "drain", "blue", "--seconds", "1")
    print(said.strip())
    frames, code = await closing(member)
    assert code == 1012 and frames[-1]["type"] == "reconnect"
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
        await ws.send(json.dumps({"type": "message", "body": f"hello {n}", "id": f"b{n}"}))
        frame = await answer(ws, f"b{n}")
        seen["delivered" if frame["type"] == "message" else "refused"] += 1
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
    print(f"{addresses} address(es), {seconds}s: Redis used_memory peak {peak[0] / MIB:.1f} MiB of "
          f"{maxmemory / MIB:.0f} MiB; rooms created {counts['rooms']}; refused: {counts['room_limit']} "
          f"room_limit, {counts['redis_full']} redis_full, {counts['room_rate_limited']} room_rate_limited; "
          f"published {counts['published']}; histories trimmed {trimmed}; the other room's member: "
          f"{seen['delivered']} delivered, {seen['refused']} refused; drain of green: {drained.strip()}, "
          f"its member closed {code}")
    assert peak[0] < maxmemory * 0.9
    assert counts["rooms"] <= 30 * addresses
    assert counts["room_limit"] + counts["redis_full"] > 0
    assert seen["delivered"] > 50 and seen["refused"] == 0
    assert code == 1012 and frames[-1]["type"] == "reconnect"
