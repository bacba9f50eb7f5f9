"""What a failed join leaves behind: nothing may stay in the hub once the client is gone."""

import pytest
import redis.exceptions
from channels.testing import WebsocketCommunicator

from config.asgi import application
from rooms.hub import HubUnavailable, LocalHub, RedisHub, get_hub
from rooms.sessions import SESSIONS
from tests.unit.conftest import ORIGIN


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
