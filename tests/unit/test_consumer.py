"""The room consumer through Channels' WebsocketCommunicator on the real routed application."""

import asyncio
import json

import pytest
from channels.routing import URLRouter
from django.test import override_settings
from django.urls import re_path

from rooms import draining, metrics, routing
from rooms.consumers import RoomConsumer
from rooms.faults import FaultInjectingRoomConsumer
from rooms.sessions import SESSIONS

pytestmark = pytest.mark.asyncio


async def send(communicator, data):
    await communicator.send_to(text_data=json.dumps(data))


async def assert_usable(communicator):
    await send(communicator, {"type": "ping"})
    assert await communicator.receive_json_from() == {"type": "pong"}



async def test_welcome_names_room_session_color_and_replica(connect):
    connected, alice = await connect("/ws/rooms/lobby/")
    assert connected
    welcome = alice.welcome
    assert welcome["type"] == "welcome" and welcome["room"] == "lobby"
    assert set(welcome) == {"type", "room", "session", "color", "replica", "version", "epoch", "seq"}
    assert welcome["session"] in SESSIONS


async def test_broadcast_reaches_every_member_sender_included(connect):
    _, alice = await connect("/ws/rooms/bcast/")
    _, bob = await connect("/ws/rooms/bcast/")
    await send(alice, {"type": "message", "body": "hello"})
    for communicator in (alice, bob):
        frame = await communicator.receive_json_from()
        assert frame["type"] == "message" and frame["room"] == "bcast"
        assert frame["body"] == "hello" and frame["session"] == alice.welcome["session"]
        assert isinstance(frame["ts"], float) and isinstance(frame["seq"], int)


async def test_seq_increases_by_one_per_message_in_order(connect):
    _, alice = await connect("/ws/rooms/seq/")
    _, bob = await connect("/ws/rooms/seq/")
    for i in range(10):
        await send(alice if i % 2 else bob, {"type": "message", "body": str(i)})
    seqs = [(await bob.receive_json_from())["seq"] for _ in range(10)]
    assert seqs == list(range(seqs[0], seqs[0] + 10))


async def test_rooms_are_isolated(connect):
    _, alice = await connect("/ws/rooms/one/")
    _, bob = await connect("/ws/rooms/two/")
    await send(alice, {"type": "message", "body": "only one"})
    assert (await alice.receive_json_from())["body"] == "only one"
    assert await bob.receive_nothing(timeout=0.2)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"type": "shout"}', "unknown_type"),
        ('{"body": "no type"}', "unknown_type"),
        ('{"type": "message"}', "invalid_body"),
        ('{"type": "message", "body": 42}', "invalid_body"),
        (json.dumps({"type": "message", "body": "x" * 4097}), "body_too_long"),
    ],
)
async def test_bad_input_gets_an_error_and_the_connection_stays_usable(connect, frame, code):
    _, alice = await connect()
    await alice.send_to(text_data=frame)
    error = await alice.receive_json_from()
    assert error["type"] == "error" and error["error"] == code and error["detail"]
    await assert_usable(alice)


async def test_binary_frames_are_refused_with_an_error(connect):
    _, alice = await connect()
    await alice.send_to(bytes_data=b"\x00\x01")
    assert (await alice.receive_json_from())["error"] == "unsupported_frame"
    await assert_usable(alice)


async def test_body_at_the_limit_is_accepted(connect):
    _, alice = await connect("/ws/rooms/limit/")
    await send(alice, {"type": "message", "body": "x" * 4096})
    assert (await alice.receive_json_from())["type"] == "message"


@pytest.mark.parametrize("origin", [b"http://evil.example", None])
async def test_handshake_from_a_foreign_or_missing_origin_is_refused(connect, origin):
    headers = [(b"origin", origin)] if origin else []
    connected, _ = await connect(headers=headers, welcome=False)
    assert not connected


@pytest.mark.parametrize("path", ["/ws/rooms/bad%20name/", "/ws/rooms/" + "a" * 65 + "/", "/ws/other/"])
async def test_handshake_on_a_path_that_is_not_a_room_is_refused(connect, path):
    connected, _ = await connect(path, welcome=False)
    assert not connected


@override_settings(RATE_LIMIT_PER_SECOND=0.1, RATE_LIMIT_BURST=3, RATE_LIMIT_STRIKES=2)
async def test_rate_limit_answers_rate_limited_then_closes_with_1008(connect):
    _, alice = await connect()
    for _ in range(3):
        await assert_usable(alice)
    for _ in range(2):
        await send(alice, {"type": "ping"})
        assert (await alice.receive_json_from())["error"] == "rate_limited"
    await send(alice, {"type": "ping"})
    assert await alice.receive_output() == {"type": "websocket.close", "code": 1008}


def stop_reading(communicator):
    """Test double: the client behind this communicator stopped reading (its sends never return)."""
    async def never_returns(**_):
        await asyncio.Event().wait()

    SESSIONS[communicator.welcome["session"]].consumer.send = never_returns


@override_settings(OUTBOUND_QUEUE_MAX=5)
async def test_slow_consumer_is_closed_with_1013_and_the_room_loses_nothing(connect):
    _, slow = await connect("/ws/rooms/slow/")
    _, fast = await connect("/ws/rooms/slow/")
    stop_reading(slow)
    before = metrics.ERRORS.labels("slow_consumer")._value.get()
    for i in range(20):
        await send(fast, {"type": "message", "body": str(i)})
    bodies = [(await fast.receive_json_from())["body"] for _ in range(20)]
    assert bodies == [str(i) for i in range(20)]
    assert await slow.receive_output() == {"type": "websocket.close", "code": 1013}
    assert metrics.ERRORS.labels("slow_consumer")._value.get() == before + 1


@override_settings(OUTBOUND_QUEUE_BYTES=65536)
async def test_a_slow_consumer_is_closed_by_bytes_long_before_the_frame_count(connect):
    _, slow = await connect("/ws/rooms/slowbytes/")
    _, fast = await connect("/ws/rooms/slowbytes/")
    stop_reading(slow)
    body = "\U0001F600" * 4096  # 49 KB once JSON-escaped: the largest frame a body can make
    for _ in range(4):
        await send(fast, {"type": "message", "body": body})
        assert (await fast.receive_json_from())["body"] == body
    assert await slow.receive_output() == {"type": "websocket.close", "code": 1013}


@override_settings(MAX_CONNECTIONS=2)
async def test_over_max_connections_new_handshakes_are_refused(connect):
    SESSIONS.clear()
    assert (await connect())[0] and (await connect())[0]
    connected, _ = await connect(welcome=False)
    assert not connected


async def test_drain_sends_reconnect_then_1012_and_refuses_new_handshakes(connect):
    _, alice = await connect()
    _, bob = await connect()
    draining.start_drain(0.2)
    for communicator in (alice, bob):
        notice = await communicator.receive_json_from(timeout=2)
        assert notice["type"] == "reconnect"
        assert await communicator.receive_output(timeout=2) == {"type": "websocket.close", "code": 1012}
    connected, _ = await connect(welcome=False)
    assert not connected
    draining.stop_drain()
    assert (await connect())[0]


async def test_active_connections_gauge_follows_the_registry(connect):
    _, alice = await connect()
    assert metrics.ACTIVE_CONNECTIONS._value.get() == len(SESSIONS) >= 1
    await alice.disconnect()
    await asyncio.sleep(0)
    assert metrics.ACTIVE_CONNECTIONS._value.get() == len(SESSIONS)


async def test_production_routes_rooms_to_the_consumer_without_fault_injection():
    assert routing.room_consumer is RoomConsumer


@override_settings(FAULT_ERROR_SHARE=0.5)
async def test_fault_injection_fails_the_configured_share_of_messages(connect):
    app = URLRouter([re_path(r"^ws/rooms/(?P<room>\w+)/$", FaultInjectingRoomConsumer.as_asgi())])
    _, alice = await connect("/ws/rooms/faults/", app=app)
    kinds = []
    for _ in range(4):
        await send(alice, {"type": "message", "body": "x"})
        frame = await alice.receive_json_from()
        kinds.append(frame.get("error", frame["type"]))
    assert sorted(kinds) == ["internal", "internal", "message", "message"]


async def test_a_client_gone_before_accept_leaves_no_session_or_room_member(connect, monkeypatch):
    from channels.generic.websocket import AsyncWebsocketConsumer

    from rooms.hub import get_hub

    async def accept_fails(self, *args, **kwargs):  # test double: what the server does once the client left
        raise RuntimeError("Expected ASGI message 'websocket.send' or 'websocket.close'")

    monkeypatch.setattr(AsyncWebsocketConsumer, "accept", accept_fails)
    before = dict(SESSIONS)
    with pytest.raises(TimeoutError):  # the communicator's way of saying that no answer came
        await connect("/ws/rooms/vanished/")
    assert SESSIONS == before
    assert not get_hub().rooms.get("vanished")


@pytest.mark.parametrize("frame", ["[" * 5000, '{"type": ' + "[" * 5000 + "]" * 5000 + "}", "1" * 5000])
async def test_a_frame_that_does_not_parse_is_invalid_json_whatever_the_parser_raises(connect, frame):
    _, alice = await connect()
    await alice.send_to(text_data=frame)
    error = await alice.receive_json_from()
    assert error["error"] == "invalid_json"
    await assert_usable(alice)


async def test_a_deeply_nested_type_is_unknown_type_without_naming_it(connect):
    _, alice = await connect()
    await alice.send_to(text_data='{"type": ' + "[" * 500 + "]" * 500 + "}")
    error = await alice.receive_json_from()
    assert error["error"] == "unknown_type" and "[[" not in error["detail"]
    await assert_usable(alice)


async def test_whatever_a_consumer_raises_the_client_gets_1011_and_nothing_is_left(connect, monkeypatch):
    from rooms.hub import get_hub

    async def broken(self, data):  # test double: a bug in a handler
        raise KeyError("bug")

    monkeypatch.setattr(RoomConsumer, "on_message", broken)
    _, alice = await connect("/ws/rooms/broken/")
    session = alice.welcome["session"]
    closed = metrics.CONNECTIONS_CLOSED.labels("1011")._value.get()
    faults = metrics.ERRORS.labels("consumer")._value.get()
    await send(alice, {"type": "message", "body": "x"})
    assert await alice.receive_output() == {"type": "websocket.close", "code": 1011}
    await alice.wait()  # the application returned: its cleanup ran
    assert session not in SESSIONS and not get_hub().rooms.get("broken")
    assert metrics.ACTIVE_CONNECTIONS._value.get() == len(SESSIONS)
    assert metrics.CONNECTIONS_CLOSED.labels("1011")._value.get() == closed + 1
    assert metrics.ERRORS.labels("consumer")._value.get() == faults + 1
