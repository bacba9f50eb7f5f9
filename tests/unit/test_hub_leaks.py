"""What a failed join leaves behind: nothing may stay in the hub once the client is gone."""

import asyncio
import json

import pytest
import redis.exceptions
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from config.asgi import application
from rooms import draining
from rooms.hub import HubUnavailable, get_hub
from rooms.localhub import LocalHub
from rooms.redishub import RedisHub
from rooms.sessions import SESSIONS
from tests.helpers import ORIGIN_HEADER as ORIGIN


async def test_a_fault_between_join_and_welcome_leaves_the_room(monkeypatch):
    """Any exception after the hub join (here: reading the backlog) must not leave the consumer a
    member: the hub would keep fanning out to it, keep the room subscribed and its seq key alive."""

    async def broken_backlog(self, room, since):
        raise RuntimeError("boom")

    monkeypatch.setattr(LocalHub, "backlog", broken_backlog)
    communicator = WebsocketCommunicator(application, "/ws/rooms/leak-backlog/", headers=[ORIGIN])
    connected, code = await communicator.connect()
    assert not connected and code == 1011
    await communicator.wait()
    assert "leak-backlog" not in get_hub().rooms
    assert not SESSIONS


class BrokenPubSub:
    """Test double: the subscriber connection breaking exactly as a join subscribes, a race that a
    real Redis cannot be made to lose on demand."""

    async def subscribe(self, *channels):
        raise redis.exceptions.ConnectionError("Connection reset by peer")


async def test_a_subscribe_that_fails_is_unavailable_and_leaves_no_room():
    hub = RedisHub("redis://127.0.0.1:1")
    hub.pubsub = BrokenPubSub()
    with pytest.raises(HubUnavailable):  # the consumer refuses the handshake, not 1011
        await hub.join("leak-subscribe", object())
    assert hub.rooms == {} and hub.subscribed == {}, "an empty room is kept alive (and its seq key) forever"


@override_settings(ROOM_HISTORY_SECONDS=10)
async def test_the_local_hub_forgets_idle_rooms_nobody_comes_back_to(connect, monkeypatch):
    """Each room's seq and history went only when that same room was joined again: a process that
    sees many short-lived rooms kept every one of them."""
    hub = get_hub()
    now = [5000.0]
    monkeypatch.setattr(hub, "clock", lambda: now[0])
    for n in range(5):
        _, client = await connect(f"/ws/rooms/leak-idle-{n}/")
        await client.send_to(text_data=json.dumps({"type": "message", "body": "x"}))
        assert (await client.receive_json_from())["seq"] == 1
        await client.disconnect()
    now[0] += 11
    _, other = await connect("/ws/rooms/leak-idle-other/")
    leaked = [room for room in (*hub.seq, *hub.history, *hub.expires) if room.startswith("leak-idle-")]
    assert leaked == []


async def test_a_message_fanned_out_as_the_drain_picks_a_connection_counts_in_its_notice(connect):
    """The drain chose the connection (and, before, built its notice) a loop step before the notice
    was queued; a message fanned out in that step went out before the notice, with a higher seq."""
    _, alice = await connect("/ws/rooms/drain-race/")
    await alice.send_to(text_data=json.dumps({"type": "message", "body": "1"}))
    assert (await alice.receive_json_from())["seq"] == 1
    draining.start_drain(1.0)
    await asyncio.sleep(0)  # the drain task's first step: it picks alice and spawns her release
    published = await get_hub().publish("drain-race", "other", "2", "m2", "other-sender")
    assert published.seq == 2  # fanned out before the release runs
    assert (await alice.receive_json_from())["seq"] == 2
    notice = await alice.receive_json_from()
    assert (notice["type"], notice["seq"]) == ("reconnect", 2)


@override_settings(OUTBOUND_QUEUE_BYTES=65536, ROOM_HISTORY_MAX=5)  # a replay page of one frame
async def test_a_replay_whose_rest_was_trimmed_meanwhile_ends_in_a_resume_notice(connect, monkeypatch):
    """The replay goes a page at a time; if the history moved on between pages, the client is told
    to resume from what it got, and no live frame (which would jump the gap) is sent before that."""
    _, alice = await connect("/ws/rooms/trimmed/")
    for n in range(1, 4):
        await alice.send_to(text_data=json.dumps({"type": "message", "body": str(n)}))
        assert (await alice.receive_json_from())["seq"] == n
    hub = get_hub()
    read = type(hub).page

    async def trimmed_meanwhile(self, room, after, upto):
        for n in range(5):  # 4..8 are kept now: 2 and 3 are gone
            await self.publish(room, "other", f"more {n}", f"m{n}", "other-sender")
        return await read(self, room, after, upto)

    monkeypatch.setattr(type(hub), "page", trimmed_meanwhile)
    _, bob = await connect("/ws/rooms/trimmed/?since=0")
    monkeypatch.undo()
    assert bob.welcome["seq"] == 3
    assert (await bob.receive_json_from())["seq"] == 1
    notice = await bob.receive_json_from()
    assert (notice["type"], notice["reason"], notice["seq"]) == ("reconnect", "resume", 1)
    assert await bob.receive_output() == {"type": "websocket.close", "code": 1012}
