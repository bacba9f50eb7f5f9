"""What one WebSocket client can do to a replica: entrypoint.sh, one Uvicorn worker with the project's
protocol (wsserver.protocol) and a real Redis, on loopback.

- A client that pings as fast as it can and never reads is owed a pong per ping: the replica stops
  reading from it while its unsent bytes are over WS_WRITE_BUFFER_HIGH, then closes it.
- A client that reads, only slowly, is still closed by its outbox (1013, slow_consumer), as before.
"""

import asyncio
import json
import os
import signal
import subprocess
import time

import pytest
import websockets

from tests.helpers import ROOT, AppServer, free_port
from tests.hostile import PING, frame
from tests.integration.test_hostile import BIG_BODY, ORIGIN, WireClient, rss
from wsserver.protocol import CLOSE_TIMEOUT

pytestmark = pytest.mark.integration

STALL_SECONDS = 2.0
FLOOD_SECONDS = STALL_SECONDS + CLOSE_TIMEOUT + 8  # the flooder gives up by itself after this
RSS_GROWTH_LIMIT = 16 * 2**20  # without the bound: 30 MB a second, 330 MB in 10 s (docs/security.md)
CHAT_INTERVAL = 0.1


def flood(port):
    """Send 125-byte pings as fast as the socket takes them and read nothing. (bytes sent, seconds until
    the replica ended the connection, or None if it was still open after FLOOD_SECONDS)."""
    client = WireClient(port, path="/ws/rooms/flood/")
    client.sock.settimeout(0.5)
    burst = frame(PING, b"p" * 125) * 64
    started, sent = time.monotonic(), 0
    try:
        while time.monotonic() - started < FLOOD_SECONDS:
            try:
                sent += client.sock.send(burst)
            except TimeoutError:  # the replica stopped reading: the kernel buffers are full
                continue
            except OSError:  # reset: the replica aborted the connection
                return sent, time.monotonic() - started
    finally:
        client.close()
    return sent, None


async def chat(server, stop):
    """Two clients of another room: one sends every CHAT_INTERVAL until `stop`, the other receives.
    (messages sent, delivery delays in seconds)."""
    url = f"{server.ws_url}/ws/rooms/calm/"
    async with (websockets.connect(url, origin=ORIGIN) as sender,
                websockets.connect(url, origin=ORIGIN) as reader):
        for ws in (sender, reader):
            assert json.loads(await asyncio.wait_for(ws.recv(), 15))["type"] == "welcome"
        sent_at, delays = {}, []

        async def receive():
            async for text in reader:
                message = json.loads(text)
                if message["type"] == "message":
                    delays.append(time.monotonic() - sent_at[message["body"]])

        receiving = asyncio.create_task(receive())
        while not stop.is_set():
            body = f"m{len(sent_at)}"
            sent_at[body] = time.monotonic()
            await sender.send(json.dumps({"type": "message", "body": body}))
            await asyncio.sleep(CHAT_INTERVAL)
        deadline = time.monotonic() + 15
        while len(delays) < len(sent_at) and time.monotonic() < deadline and not receiving.done():
            await asyncio.sleep(0.05)
        receiving.cancel()
        return len(sent_at), delays


async def test_a_ping_flood_that_never_reads_is_closed_and_the_replica_does_not_grow(make_server):
    server = make_server(WS_WRITE_STALL_SECONDS=str(STALL_SECONDS))
    pid = server.process.pid
    before, peak = rss(pid), 0
    stop = asyncio.Event()
    chatting = asyncio.create_task(chat(server, stop))
    flooding = asyncio.create_task(asyncio.to_thread(flood, server.port))
    while not flooding.done():
        peak = max(peak, rss(pid))
        await asyncio.sleep(0.1)
    stop.set()
    (sent, ended), (chatted, delays) = flooding.result(), await chatting
    after = rss(pid)
    delays.sort()
    shown = "never" if ended is None else f"after {ended:.1f} s"
    print(f"\nping flood: {sent / 2**20:.1f} MiB of pings sent; "
          f"connection ended {shown} (WS_WRITE_STALL_SECONDS={STALL_SECONDS:g}); replica RSS "
          f"{before / 2**20:.1f} MiB before, peak {peak / 2**20:.1f}, after {after / 2**20:.1f}; other room: "
          f"{len(delays)}/{chatted} messages delivered, delay p99 "
          f"{delays[len(delays) * 99 // 100] * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms")
    assert ended is not None and ended < STALL_SECONDS + CLOSE_TIMEOUT + 3
    assert peak - before < RSS_GROWTH_LIMIT
    assert len(delays) == chatted > 0
    await server.until_metric('ws_connections_closed_total{code="1013"}', 1)
    assert server.metric('ws_errors_total{kind="slow_consumer"}') == 0  # the server closed it, not the app


async def test_a_slow_reader_is_still_closed_by_its_outbox(redis_server, tmp_path):
    """It reads, so its buffer keeps falling under the low-water mark and the stall close never comes;
    its outbox overflows (OUTBOUND_QUEUE_BYTES) and the application closes it with 1013."""
    env = {"RATE_LIMIT_PER_SECOND": "10000", "RATE_LIMIT_BURST": "10000", "ROOM_MESSAGES_PER_SECOND": "0"}
    server = AppServer(redis_server.url, tmp_path, workers=1, **env)
    server.start()
    slow = None
    try:
        slow = WireClient(server.port, rcvbuf=4096, path="/ws/rooms/big/")
        assert json.loads(slow.next_frame()[1])["type"] == "welcome"

        def read_slowly():  # 64 KiB every 50 ms: about 1.3 MB/s, under what the room sends
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                opcode, payload = slow.next_frame()
                if opcode == 0x8:
                    return int.from_bytes(payload[:2], "big"), payload[2:].decode()
                time.sleep(0.05 * len(payload) / 65536)
            raise AssertionError("the slow reader was not closed within 60 s")

        reading = asyncio.create_task(asyncio.to_thread(read_slowly))
        async with websockets.connect(f"{server.ws_url}/ws/rooms/big/", origin=ORIGIN, max_size=2**20) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 15))["type"] == "welcome"
            message = json.dumps({"type": "message", "body": BIG_BODY})

            async def receive_all():
                for _ in range(300):
                    assert json.loads(await ws.recv())["type"] == "message"

            receiving = asyncio.create_task(receive_all())
            for _ in range(300):
                await ws.send(message)
            await asyncio.wait_for(receiving, 60)
        code, reason = await asyncio.wait_for(reading, 70)
        print(f"\nslow reader closed with {code} {reason!r}")
        assert (code, reason) == (1013, "")  # the outbox's close; the stall's says "not reading"
        assert server.metric('ws_errors_total{kind="slow_consumer"}') == 1
    finally:
        if slow is not None:
            slow.close()
        server.stop()


async def test_a_body_with_a_lone_surrogate_is_refused_and_not_relayed(app_server):
    url = f"{app_server.ws_url}/ws/rooms/unicode/"
    async with (websockets.connect(url, origin=ORIGIN) as sender,
                websockets.connect(url, origin=ORIGIN) as other):
        for ws in (sender, other):
            assert json.loads(await asyncio.wait_for(ws.recv(), 15))["type"] == "welcome"
        await sender.send('{"type": "message", "body": "a\\ud800b", "id": "lone1"}')
        error = json.loads(await asyncio.wait_for(sender.recv(), 15))
        assert (error["type"], error["error"], error["id"]) == ("error", "invalid_body", "lone1")
        await sender.send('{"type": "message", "body": "\\ud83d\\ude00", "id": "pair1"}')
        relayed = await asyncio.wait_for(other.recv(), 15)  # the first frame the other member gets
        assert json.loads(relayed)["body"] == "\U0001F600"


@pytest.mark.parametrize(("origin", "accepted"), [
    ("https://chat.example:8443", True),
    ("http://chat.example:8443", False),  # another scheme
    ("https://chat.example", False),  # another port (443)
    ("https://other.example:8443", False),
])
async def test_the_origin_must_match_a_public_origin_in_scheme_host_and_port(make_server, origin, accepted):
    # chat.example is an allowed host: Channels' check, by host name only, took any scheme and port
    server = make_server(PUBLIC_ORIGINS="https://chat.example:8443", ALLOWED_HOSTS="chat.example,127.0.0.1")
    url = f"{server.ws_url}/ws/rooms/origin/"
    if accepted:
        async with websockets.connect(url, origin=origin) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 15))["type"] == "welcome"
    else:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url, origin=origin, open_timeout=15)
        assert refused.value.response.status_code == 403


def listening_addresses(port):
    """The local addresses of the IPv4 and IPv6 sockets listening on `port` (from /proc/net)."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # LISTEN
                    addresses.add(address)
    return addresses


async def test_make_dev_listens_on_loopback_only_and_takes_its_own_pages(tmp_path):
    """DEBUG and the development key on 0.0.0.0 served any machine that could reach this one."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("HOST", "PORT", "REDIS_URL")}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    with open(tmp_path / "dev.log", "wb") as log:
        dev = subprocess.Popen(["make", "-s", "dev", f"DEV_PORT={port}"], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not listening_addresses(port):
            assert dev.poll() is None and time.monotonic() < deadline, (tmp_path / "dev.log").read_text()
            await asyncio.sleep(0.2)
        assert listening_addresses(port) == {"0100007F"}, listening_addresses(port)  # 127.0.0.1 only
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/rooms/dev/",
                                      origin=f"http://localhost:{port}", open_timeout=30) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 15))["type"] == "welcome"
    finally:
        os.killpg(dev.pid, signal.SIGTERM)  # make, the reloader and its worker: the session this test started
        try:
            dev.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait(5)
