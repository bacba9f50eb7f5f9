"""wsserver.protocol: the shared fan-out frame, keepalive and shutdown."""

import asyncio
import logging

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader
from websockets.uri import parse_uri

from tests.echo_app import app as echo
from wsserver import write_limits
from wsserver.protocol import WebSocketProtocol, text_frame


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536])
def test_text_frame_is_what_websockets_would_send(length):
    text = "é" * (length // 2) + "x" * (length % 2)
    frame = text_frame(text)
    assert frame == Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
    reader = StreamReader()
    reader.feed_data(frame)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as done:
        next(parser)
    assert done.value.value.data.decode() == text


def test_text_frame_is_encoded_once_per_str_object():
    text = "".join(["hello ", "room"])
    assert text_frame(text) is text_frame(text)
    assert text_frame("".join(["hello ", "room"])) == text_frame(text)


class UndrainedTransport(asyncio.Transport):
    """Test double for a socket whose peer reads nothing: close() never completes, writes pile up.

    The real case needs a client that fills kernel buffers first (see tests/integration); here the
    timing of pings and shutdown is what is tested, so a transport that records is enough.
    """

    def __init__(self):
        super().__init__()
        self.frames, self.closing, self.aborted = [], False, False

    def write(self, data):
        self.frames.append(bytes(data))

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    def abort(self):
        self.closing = self.aborted = True

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    reading = True

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def set_write_buffer_limits(self, high=None, low=None):
        self.limits = (high, low)

    def get_write_buffer_size(self):
        return sum(map(len, self.frames))


def opened(app, interval=None, deflate=False, stall=None):
    """A protocol on an UndrainedTransport that has received a client's handshake request."""
    config = Config(
        app=app,
        ws_ping_interval=interval,
        ws_ping_timeout=interval,
        ws_per_message_deflate=deflate,
        log_level="warning",
    )
    config.load()
    protocol = WebSocketProtocol(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    if stall is not None:
        protocol.write_stall_seconds = stall
    transport = UndrainedTransport()
    protocol.connection_made(transport)
    extensions = [ClientPerMessageDeflateFactory()] if deflate else None
    client = ClientProtocol(parse_uri("ws://localhost/ws/rooms/a/"), extensions=extensions)
    client.send_request(client.connect())
    protocol.data_received(b"".join(client.data_to_send()))
    return protocol, transport, client


def pings(transport):
    return sum(frame[:1] == b"\x89" for frame in transport.frames)


async def accept_then_wait(scope, receive, send, delay=0.0):
    await receive()
    await asyncio.sleep(delay)
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def test_keepalive_starts_even_when_the_app_accepts_after_the_first_interval():
    async def slow_app(scope, receive, send):
        await accept_then_wait(scope, receive, send, delay=0.15)

    protocol, transport, _ = opened(slow_app, interval=0.05)
    await asyncio.sleep(0.25)
    assert pings(transport) >= 1
    protocol.connection_lost(None)


async def test_a_silent_client_is_closed_with_1011_and_shutdown_then_still_works():
    protocol, transport, _ = opened(accept_then_wait, interval=0.05)
    await asyncio.sleep(0.3)
    assert transport.closing and protocol.close_sent
    close = transport.frames[-1]
    assert close[0] == 0x88 and close[2:4] == (1011).to_bytes(2, "big")
    protocol.shutdown()  # SIGTERM while that close is still unflushed must not raise
    assert protocol.abort_timer is not None
    protocol.connection_lost(None)


async def answer(protocol, transport, client, *frames):
    """Send `frames` from the client (after the handshake), then the events the client received."""
    for _ in range(100):  # the echo application runs as a task: let it accept
        if protocol.handshake_complete:
            break
        await asyncio.sleep(0.001)
    for opcode, data, fin in frames:
        client.send_frame(Frame(opcode, data, fin))
    protocol.data_received(b"".join(client.data_to_send()))
    await asyncio.sleep(0.01)
    client.receive_data(b"".join(transport.frames))
    return [event for event in client.events_received() if isinstance(event, Frame)]


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY], ids=["text", "binary"])
async def test_an_empty_message_is_echoed(opcode, deflate):
    """Autobahn 1.1.1 and 1.2.1: Uvicorn's send drops an empty message (`if text_data:`)."""
    protocol, transport, client = opened(echo, deflate=deflate)
    frames = await answer(protocol, transport, client, (opcode, b"", True))
    assert [(frame.opcode, frame.data) for frame in frames] == [(opcode, b"")]
    protocol.connection_lost(None)


@pytest.mark.parametrize(
    "payload, code, reason",
    [(Close(1000, "").serialize(), 1000, ""), (Close(4000, "bye").serialize(), 4000, "bye"), (b"", 1005, "")],
    ids=["normal", "with-reason", "empty"],
)
async def test_a_close_inside_a_fragmented_message_is_answered_with_its_own_code(payload, code, reason):
    """Autobahn 7.1.5: websockets fails the connection with 1002; RFC 6455 lets a control frame come
    between fragments, and a close is answered by a close with its code (an empty one by an empty one)."""
    received = []

    async def recording_echo(scope, receive, send):
        async def recorded():
            received.append(await receive())
            return received[-1]

        await echo(scope, recorded, send)

    protocol, transport, client = opened(recording_echo)
    frames = await answer(
        protocol,
        transport,
        client,
        (Opcode.TEXT, b"fragment1", False),
        (Opcode.CLOSE, payload, True),
        (Opcode.CONT, b"fragment2", True),
    )
    assert [(frame.opcode, frame.data) for frame in frames] == [(Opcode.CLOSE, payload)]
    assert transport.closing
    assert received[-1] == {"type": "websocket.disconnect", "code": code, "reason": reason}
    protocol.connection_lost(None)


async def test_invalid_utf8_is_closed_with_1007_without_logging_an_error(caplog, monkeypatch):
    """Bad input from a client is not a server fault: Uvicorn logs it with a traceback at ERROR."""
    protocol, transport, client = opened(echo)
    monkeypatch.setattr(logging.getLogger("uvicorn"), "propagate", True)  # to caplog, on the root
    frames = await answer(protocol, transport, client, (Opcode.TEXT, b"\xed\xa0\x80", True))
    assert [(frame.opcode, Close.parse(frame.data).code) for frame in frames] == [(Opcode.CLOSE, 1007)]
    assert transport.closing
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []
    protocol.connection_lost(None)


def recorder():
    """An application that accepts, then records every event it receives until the disconnect."""
    received = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        while not received or received[-1]["type"] != "websocket.disconnect":
            received.append(await receive())

    return app, received


async def test_messages_in_the_same_read_as_the_clients_close_reach_the_app_before_the_disconnect():
    """Uvicorn's test_server_can_read_messages_in_buffer_after_close: websockets parses the whole read
    before its events are handled, so the messages were handled with the state already CLOSING."""
    app, received = recorder()
    protocol, transport, client = opened(app)
    close = Close(1000, "").serialize()
    frames = await answer(
        protocol,
        transport,
        client,
        (Opcode.TEXT, b"one", True),
        (Opcode.BINARY, b"two", True),
        (Opcode.CLOSE, close, True),
    )
    assert received == [
        {"type": "websocket.receive", "text": "one"},
        {"type": "websocket.receive", "bytes": b"two"},
        {"type": "websocket.disconnect", "code": 1000, "reason": ""},
    ]
    assert [(frame.opcode, frame.data) for frame in frames] == [(Opcode.CLOSE, close)]
    protocol.connection_lost(None)


async def test_invalid_utf8_in_the_same_read_as_the_clients_close_gets_the_clients_close_echoed():
    """The close is answered already when the message is handled: no second close (InvalidState)."""
    app, received = recorder()
    protocol, transport, client = opened(app)
    close = Close(4000, "bye").serialize()
    frames = await answer(
        protocol, transport, client, (Opcode.TEXT, b"\xed\xa0\x80", True), (Opcode.CLOSE, close, True)
    )
    assert received == [{"type": "websocket.disconnect", "code": 4000, "reason": "bye"}]
    assert [(frame.opcode, frame.data) for frame in frames] == [(Opcode.CLOSE, close)]
    protocol.connection_lost(None)


async def test_a_message_after_the_servers_close_in_the_same_read_is_dropped():
    """The application has its disconnect (1007) already; nothing may follow it."""
    app, received = recorder()
    protocol, transport, client = opened(app)
    frames = await answer(
        protocol, transport, client, (Opcode.TEXT, b"\xed\xa0\x80", True), (Opcode.TEXT, b"after", True)
    )
    assert received == [{"type": "websocket.disconnect", "code": 1007, "reason": "invalid UTF-8"}]
    assert protocol.queue.empty()
    assert [(frame.opcode, Close.parse(frame.data).code) for frame in frames] == [(Opcode.CLOSE, 1007)]
    protocol.connection_lost(None)


async def handshake(protocol):
    for _ in range(100):  # the application runs as a task: let it accept
        if protocol.handshake_complete:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the application did not accept")


async def test_the_write_buffer_limits_are_set_on_the_transport():
    protocol, transport, _ = opened(accept_then_wait)
    assert transport.limits == (protocol.write_high, protocol.write_low) == (65536, 16384)
    protocol.connection_lost(None)


async def test_a_full_write_buffer_stops_reading_until_it_drains():
    """Every ping is owed a pong: reading on while the client reads nothing grows the buffer without end."""
    protocol, transport, _ = opened(accept_then_wait)
    await handshake(protocol)
    protocol.pause_writing()
    assert not transport.reading and not protocol.writable.is_set()
    protocol.resume_writing()
    assert transport.reading and protocol.writable.is_set() and protocol.stall_timer is None
    protocol.connection_lost(None)


async def test_the_applications_receive_does_not_resume_reading_while_the_buffer_is_full():
    app, received = recorder()
    protocol, transport, client = opened(app)
    await handshake(protocol)
    client.send_frame(Frame(Opcode.TEXT, b"one"))
    protocol.data_received(b"".join(client.data_to_send()))
    assert protocol.read_paused and not transport.reading  # until the application takes it
    protocol.pause_writing()
    await asyncio.sleep(0.01)
    assert received == [{"type": "websocket.receive", "text": "one"}]
    assert not protocol.read_paused and not transport.reading
    protocol.resume_writing()
    assert transport.reading
    protocol.connection_lost(None)


async def test_a_message_waiting_for_the_application_keeps_reading_paused_when_the_buffer_drains():
    protocol, transport, client = opened(recorder()[0])
    await handshake(protocol)
    protocol.pause_writing()
    protocol.read_paused = True  # a message queued, not yet received
    protocol.resume_writing()
    assert not transport.reading
    protocol.connection_lost(None)


async def test_a_buffer_over_the_mark_for_the_stall_time_is_closed_with_1013_then_aborted(monkeypatch):
    monkeypatch.setattr("wsserver.protocol.CLOSE_TIMEOUT", 0.05)
    app, received = recorder()
    protocol, transport, _ = opened(app, stall=0.05)
    await handshake(protocol)
    protocol.pause_writing()
    await asyncio.sleep(0.08)
    close = transport.frames[-1]
    assert close[0] == 0x88 and Close.parse(close[2:]) == Close(1013, "not reading")
    assert received[-1] == {"type": "websocket.disconnect", "code": 1013}
    assert transport.closing and not transport.aborted
    await asyncio.sleep(0.08)
    assert transport.aborted  # the client read nothing, not even the close
    protocol.connection_lost(None)


async def test_a_buffer_that_drains_in_time_is_not_closed():
    protocol, transport, _ = opened(accept_then_wait, stall=0.05)
    await handshake(protocol)
    protocol.pause_writing()
    await asyncio.sleep(0.02)
    protocol.resume_writing()
    await asyncio.sleep(0.06)
    assert not transport.closing
    protocol.connection_lost(None)


def test_the_write_limits_come_from_the_environment_as_the_settings_validate_them():
    assert write_limits({}) == (65536, 16384, 20.0)
    assert write_limits({"WS_WRITE_BUFFER_HIGH": "8192", "WS_WRITE_BUFFER_LOW": " 1024 ",
                         "WS_WRITE_STALL_SECONDS": "2.5"}) == (8192, 1024, 2.5)
