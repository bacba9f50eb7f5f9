"""The WebSocket protocol the service runs (wsserver.protocol) against clients that misbehave.

Real sockets, a real server (entrypoint.sh, one worker) and Redis. The misbehaving clients speak
through websockets' sans-I/O ClientProtocol over a plain socket, so that they can do what a
library client never does: stop reading, or never answer a ping.
"""

import asyncio
import json
import socket
import time

import pytest
import websockets
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

pytestmark = pytest.mark.integration

ORIGIN = "http://localhost"
# A flood: the per-connection and per-room rates out of the way.
FLOOD = {"RATE_LIMIT_PER_SECOND": "100000", "RATE_LIMIT_BURST": "100000", "ROOM_MESSAGES_PER_SECOND": "0"}



class RawClient:
    """A WebSocket client that reads and answers only when told to."""

    def __init__(self, reader, writer, protocol):
        self.reader, self.writer, self.protocol = reader, writer, protocol

    @classmethod
    async def connect(cls, ws_url, rcvbuf=None):
        protocol = ClientProtocol(parse_uri(ws_url), origin=ORIGIN)
        host, port = ws_url.split("//")[1].split("/")[0].split(":")
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        client = cls(reader, writer, protocol)
        protocol.send_request(protocol.connect())
        client.flush()
        return client

    def flush(self):
        """Send what the protocol wants sent (handshake, pongs); a silent client never calls this."""
        self.writer.write(b"".join(self.protocol.data_to_send()))

    async def events(self, timeout, count=None):
        """Read until at least `count` events arrived, or else until the server closes the connection."""
        events = []
        async with asyncio.timeout(timeout):
            while count is None or len(events) < count:
                data = await self.reader.read(4096)
                if not data:
                    break
                self.protocol.receive_data(data)
                events.extend(self.protocol.events_received())
        return events

    def close(self):
        self.writer.close()


async def test_a_client_that_stops_reading_is_closed_with_1013_and_the_room_loses_nothing(make_server):
    server = make_server(OUTBOUND_QUEUE_MAX="20", **FLOOD)
    url = f"{server.ws_url}/ws/rooms/flow/"
    slow = await RawClient.connect(url, rcvbuf=4096)
    response, welcome = await slow.events(5, count=2)
    assert isinstance(response, Response) and response.status_code == 101
    assert json.loads(welcome.data)["type"] == "welcome"
    async with (
        websockets.connect(url, origin=ORIGIN) as sender,
        websockets.connect(url, origin=ORIGIN) as fast,
    ):
        await sender.recv(), await fast.recv()
        body = "x" * 4000
        sent, last = 0, {}
        # Kernel buffers take a few MB before the server's transport pauses: send until the bound trips.
        while server.metric('ws_errors_total{kind="slow_consumer"}') == 0:
            assert sent < 5000, "the slow client was never closed"
            for _ in range(100):
                await sender.send(json.dumps({"type": "message", "body": body}))
            sent += 100
            for ws in (sender, fast):  # both read everything: neither may become slow itself
                for _ in range(100):
                    seq = json.loads(await asyncio.wait_for(ws.recv(), 10))["seq"]
                    assert last.get(ws, seq - 1) == seq - 1, "a member that reads missed a message"
                    last[ws] = seq
        events = await slow.events(timeout=15)
    frames = [event for event in events if getattr(event, "opcode", None) is Opcode.TEXT]
    print(f"sent {sent}, the slow client got {len(frames)} before its close")
    assert 0 < len(frames) < sent, "the slow client should have received part of the room's messages"
    assert slow.protocol.close_rcvd is not None and slow.protocol.close_rcvd.code == 1013
    await server.until_metric("ws_active_connections", 0)
    slow.close()


async def test_a_client_that_never_answers_pings_is_closed_with_1011(make_server):
    server = make_server(WS_PING_INTERVAL="1", WS_PING_TIMEOUT="1")
    url = f"{server.ws_url}/ws/rooms/keepalive/"
    silent = await RawClient.connect(url)
    started = time.monotonic()
    async with websockets.connect(url, origin=ORIGIN) as alive:  # answers pings by itself
        await alive.recv()
        events = await silent.events(timeout=10)
        waited = time.monotonic() - started
        assert Opcode.PING in [getattr(event, "opcode", None) for event in events]
        assert silent.protocol.close_rcvd is not None and silent.protocol.close_rcvd.code == 1011
        assert 1.5 < waited < 4, f"closed after {waited:.1f}s; expected interval + timeout = 2 s"
        await server.until_metric('ws_connections_closed_total{code="1011"}', 1)
        await asyncio.sleep(1.5)
        await alive.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(alive.recv(), 5)) == {"type": "pong"}
    silent.close()
    await server.until_metric("ws_active_connections", 0)


async def test_an_oversized_frame_is_refused_with_1009(make_server):
    server = make_server(WS_MAX_MESSAGE_BYTES="1024")
    async with websockets.connect(f"{server.ws_url}/ws/rooms/big/", origin=ORIGIN, max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "message", "body": "x" * 2000}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd.code == 1009
    await server.until_metric('ws_connections_closed_total{code="1009"}', 1)
    await server.until_metric("ws_active_connections", 0)
