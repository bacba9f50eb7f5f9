"""Presence in-process (LocalHub, rooms.presence.PresenceSet): the snapshot, join and leave frames, the
grace that hides a reconnect, anonymous connections counted by their sender token, and the bound on
a room's entries. The Redis script is held to the same behaviour in tests/integration/test_presence.py."""

import asyncio
import json
from urllib.parse import quote

import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from config.asgi import application
from rooms import presence, tickets
from rooms.presence import PresenceSet
from tests.helpers import ORIGIN_HEADER

KEYS = ["k" * 40]
SENDER = "s" * 16


class Ticket:
    def __init__(self, user, name):
        self.user, self.name = user, name


def alice(session="A"):
    return presence.entry(session, Ticket(1, "Alice"), SENDER)


def events(frames):
    return [(json.loads(frame)["type"], json.loads(frame)["user"], json.loads(frame)["anonymous"])
            for frame in frames]


@override_settings(PRESENCE_TTL_SECONDS=15, PRESENCE_GRACE_SECONDS=10, PRESENCE_MAX_ENTRIES=3)
def test_the_model_joins_once_per_user_and_leaves_only_after_the_grace_and_the_last_connection():
    people = PresenceSet()
    frames, (users, anonymous) = people.apply("r", "join", [alice("A")], 0)
    assert events(frames) == [("join", {"id": 1, "name": "Alice"}, 0)]
    assert json.loads(users) == [{"id": 1, "name": "Alice"}] and anonymous == 0
    assert people.apply("r", "join", [alice("B")], 1000)[0] == []  # a second connection: no join
    assert people.apply("r", "leave", [alice("A")], 2000)[0] == []
    assert people.apply("r", "refresh", [alice("B")], 13000)[0] == []  # A's grace is over, B stays
    assert alice("A") not in people.entries
    assert people.apply("r", "leave", [alice("B")], 14000)[0] == []
    # Back within the grace (a release's reconnect): nothing to see.
    assert people.apply("r", "join", [alice("C")], 20000)[0] == []
    assert people.apply("r", "refresh", [alice("C")], 30000)[0] == []
    people.apply("r", "leave", [alice("C")], 31000)
    assert events(people.apply("r", "refresh", [], 41000)[0]) == [("leave", {"id": 1, "name": "Alice"}, 0)]
    assert people.entries == {}


@override_settings(PRESENCE_TTL_SECONDS=15, PRESENCE_GRACE_SECONDS=10, PRESENCE_MAX_ENTRIES=3)
def test_the_model_counts_anonymous_senders_expires_unrefreshed_entries_and_keeps_its_bound():
    people = PresenceSet()
    anonymous = [presence.entry(str(i), None, chr(ord("a") + i) * 16) for i in range(4)]
    frames, (users, count) = people.apply("r", "join", anonymous[:1], 0)
    assert events(frames) == [("join", None, 1)] and users == "[]" and count == 1
    assert events(people.apply("r", "join", anonymous[1:2], 0)[0]) == [("join", None, 2)]
    # The same sender again (its client reconnecting): one anonymous member, not two.
    same = presence.entry("again", None, "a" * 16)
    assert people.apply("r", "join", [same], 0)[0] == []
    # Full (PRESENCE_MAX_ENTRIES = 3): the next entry is not kept, and not shown.
    frames, (_, count) = people.apply("r", "join", anonymous[2:3], 0)
    assert frames == [] and count == 2 and len(people.entries) == 3
    # Nobody refreshed them (their process died): gone after the TTL, with one leave per member.
    frames = people.apply("r", "refresh", [], 15000)[0]
    assert events(frames) == [("leave", None, 0), ("leave", None, 0)]  # each with the count after it
    assert people.entries == {}


def test_an_entry_shows_a_user_by_its_ticket_and_an_anonymous_connection_by_nothing_but_null():
    shown = '{"id": 7, "name": "Bo \\"B\\" \\\\"}'
    assert presence.entry("S1", Ticket(7, 'Bo "B" \\'), "x" * 16) == "u7\tS1\t" + shown
    assert presence.entry("S2", None, "x" * 16) == "a" + "x" * 16 + "\tS2\tnull"  # the sender stays inside


@pytest.fixture
def accounts():
    with override_settings(ACCOUNTS_ENABLED=True, TICKET_KEYS=KEYS, TICKET_SECONDS=300,
                           PRESENCE_GRACE_SECONDS=0.3):
        yield


@pytest.fixture
async def join():
    opened = []

    async def open_one(room, user=None, query="?presence=1"):
        if user is not None:
            token = tickets.issue(user, f"user {user}", ())[0]
            query += f"&ticket={quote(token)}"
        path = f"/ws/rooms/{room}/{query}"
        communicator = WebsocketCommunicator(application, path, headers=[ORIGIN_HEADER])
        opened.append(communicator)
        assert (await communicator.connect())[0]
        communicator.welcome = await communicator.receive_json_from()
        return communicator

    yield open_one
    for communicator in opened:
        await communicator.disconnect()


async def test_a_member_gets_the_list_then_joins_and_leaves_after_the_grace(accounts, join):
    first = await join("u-presence", user=1)
    assert await first.receive_json_from() == {"type": "presence", "room": "u-presence",
                                               "users": [{"id": 1, "name": "user 1"}], "anonymous": 0}
    assert (await first.receive_json_from())["type"] == "join"  # its own, published with it: no change
    second = await join("u-presence", user=2)
    listed = await second.receive_json_from()
    assert listed["type"] == "presence" and [user["id"] for user in listed["users"]] == [1, 2]
    assert await first.receive_json_from() == {"type": "join", "room": "u-presence",
                                               "user": {"id": 2, "name": "user 2"}, "anonymous": 0}
    await second.disconnect()
    assert await first.receive_nothing(0.15)  # within the grace: still present
    assert await first.receive_json_from(timeout=2) == {"type": "leave", "room": "u-presence",
                                                        "user": {"id": 2, "name": "user 2"}, "anonymous": 0}


async def test_a_reconnect_within_the_grace_shows_no_leave_and_no_join(accounts, join):
    first = await join("u-return", user=1)
    await first.receive_json_from()
    await first.receive_json_from()
    second = await join("u-return", user=2)
    await first.receive_json_from()  # its join
    await second.disconnect()
    again = await join("u-return", user=2)  # the same user, a new connection: as after a release
    listed = await again.receive_json_from()
    assert [user["id"] for user in listed["users"]] == [1, 2]
    assert await first.receive_nothing(0.6)  # past the grace of the closed connection: nothing


async def test_anonymous_members_are_counted_and_only_connections_that_ask_get_presence_frames(join):
    sender = "q" * 20
    watcher = await join("u-anon", query=f"?presence=1&sender={sender}")
    assert await watcher.receive_json_from() == {"type": "presence", "room": "u-anon", "users": [],
                                                 "anonymous": 1}
    await watcher.receive_json_from()  # its own join
    plain = await join("u-anon", query="")  # an older client: no presence frames at all
    assert await watcher.receive_json_from() == {"type": "join", "room": "u-anon", "user": None,
                                                 "anonymous": 2}
    await plain.send_json_to({"type": "ping"})
    assert await plain.receive_json_from() == {"type": "pong"}
    assert await plain.receive_nothing(0.1)


async def test_presence_must_be_0_or_1(join):
    path = "/ws/rooms/u-bad/?presence=yes"
    communicator = WebsocketCommunicator(application, path, headers=[ORIGIN_HEADER])
    assert (await communicator.connect())[0]
    error = await communicator.receive_json_from()
    assert error["error"] == "invalid_since" and "presence" in error["detail"]
    assert (await communicator.receive_output())["code"] == 1008
    await asyncio.sleep(0)
