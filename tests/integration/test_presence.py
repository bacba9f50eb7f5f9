"""Presence with a real Redis and two app servers started through entrypoint.sh (two replicas, as two
colors are during a release): the members of a room across both, users by their ticket; a killed
replica's members aging out within the bound; a reconnect within the grace showing no leave or join;
the Redis cost of a member."""

import asyncio
import json
import signal
import time
from urllib.parse import quote

import httpx
import pytest
import redis
import websockets

from tests.integration.test_accounts import logged_in, ticket_for

pytestmark = pytest.mark.integration

ORIGIN = "http://localhost"
# Short times, so that the bounds show within seconds: the defaults are 15 s and 10 s.
TTL, GRACE = 1.5, 1.5
FAST = {"PRESENCE_TTL_SECONDS": str(TTL), "PRESENCE_GRACE_SECONDS": str(GRACE)}


class Member:
    """A client that asked for presence frames: the list it was given and the events it saw since."""

    def __init__(self, ws, welcome, listed):
        self.ws, self.welcome, self.listed, self.events = ws, welcome, listed, []

    async def next_event(self, timeout):
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if frame["type"] in ("join", "leave"):
                self.events.append(frame)
                return frame

    async def quiet(self, seconds):
        """The join and leave frames that came within `seconds`."""
        seen = []
        deadline = time.monotonic() + seconds
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                seen.append(await self.next_event(remaining))
        except TimeoutError:
            pass
        return seen


@pytest.fixture
async def member():
    opened = []

    async def open_one(server, room, ticket=None, sender=None, settle=0.3):
        query = "?presence=1" + (f"&ticket={quote(ticket)}" if ticket else "")
        query += f"&sender={sender}" if sender else ""
        ws = await websockets.connect(f"{server.ws_url}/ws/rooms/{room}/{query}", origin=ORIGIN,
                                      open_timeout=5, close_timeout=2)
        opened.append(ws)
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
        listed = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert welcome["type"] == "welcome" and listed["type"] == "presence", (welcome, listed)
        joined = Member(ws, welcome, listed)
        await joined.quiet(settle)  # its own join, if it was not present: the list has it already
        joined.events.clear()
        return joined

    yield open_one
    await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)


def names(listed):
    return sorted(user["name"] for user in listed["users"])


async def test_users_are_listed_across_two_replicas_by_their_tickets_and_leave_after_the_grace(
        accounts_server, member):
    one = accounts_server(workers=1, **FAST)
    two = accounts_server(workers=1, **FAST)
    with httpx.Client(base_url=one.url, timeout=10) as alice_http, \
            httpx.Client(base_url=two.url, timeout=10) as bob_http:
        alice = await member(one, "lobby", ticket_for(logged_in(alice_http, "alice"), "lobby")["ticket"])
        assert names(alice.listed) == ["Alice Doe"] and alice.listed["anonymous"] == 0
        bob = await member(two, "lobby", ticket_for(logged_in(bob_http, "bob"), "lobby")["ticket"])
        assert names(bob.listed) == ["Alice Doe", "bob"]
        assert bob.listed["users"][1]["id"] != bob.listed["users"][0]["id"]
        joined = await alice.next_event(5)  # published on the other replica, through the room's channel
        assert joined["type"] == "join" and joined["user"]["name"] == "bob"
        anonymous = await member(two, "lobby", sender="a" * 20)
        assert names(anonymous.listed) == ["Alice Doe", "bob"] and anonymous.listed["anonymous"] == 1
        assert (await alice.next_event(5)) | {"room": None} == {"type": "join", "room": None, "user": None,
                                                               "anonymous": 1}
        await bob.ws.close()
        started = time.monotonic()
        left = await alice.next_event(GRACE + TTL + 3)
        took = time.monotonic() - started
        assert left["type"] == "leave" and left["user"]["name"] == "bob"
        # Not before the grace; within it plus a refresh (TTL / 3), with slack for a slow machine.
        assert GRACE - 0.2 <= took <= GRACE + TTL / 3 + 1.5, took
        print(f"a closed connection's user left after {took:.2f}s (grace {GRACE}s)")


async def test_a_killed_replicas_members_age_out_within_the_ttl(make_server, member):
    # A grace far longer than the bound: their leave can come only from their entries' TTL, never
    # from a close (a killed process closes nothing).
    slow_grace = dict(FAST, PRESENCE_GRACE_SECONDS="8")
    one = make_server(**slow_grace)
    two = make_server(**slow_grace)
    watcher = await member(one, "aging", sender="w" * 20)
    gone = [await member(two, "aging", sender=c * 20) for c in "xyz"]
    assert gone[-1].listed["anonymous"] == 4
    assert len(await watcher.quiet(0.5)) == 3  # their joins
    two.process.stop(first=signal.SIGKILL)  # no close, no cleanup: its entries stop being refreshed
    killed = time.monotonic()
    leaves = []
    while len(leaves) < 3:
        frame = await watcher.next_event(TTL * 4 / 3 + 3)
        assert frame["type"] == "leave", frame
        leaves.append(time.monotonic() - killed)
    assert leaves[-1] <= TTL * 4 / 3 + 1.5, leaves  # expired (TTL) and swept (every TTL / 3)
    assert [frame["anonymous"] for frame in watcher.events[-3:]][-1] == 1
    late = await member(one, "aging", sender="v" * 20)
    assert late.listed["anonymous"] == 2  # the watcher and itself: nobody from the dead replica
    print(f"a killed replica's 3 members left after {', '.join(f'{t:.2f}' for t in leaves)}s (TTL {TTL}s)")


async def test_a_reconnect_to_the_other_replica_within_the_grace_shows_no_leave_and_no_join(make_server,
                                                                                              member):
    one = make_server(**FAST)
    two = make_server(**FAST)
    watcher = await member(one, "release", sender="w" * 20)
    moving = [await member(two, "release", sender=c * 20) for c in "mn"]
    assert len(await watcher.quiet(0.5)) == 2
    for client, sender in zip(moving, ("m" * 20, "n" * 20), strict=True):
        await client.ws.close(code=1012)  # as a drain: closed, and back at once on the other side
        back = await member(one, "release", sender=sender, settle=0)
        assert back.listed["anonymous"] == 3
    # Past the grace of the closed connections, and a TTL more: no leave, no join.
    assert await watcher.quiet(GRACE + TTL + 0.5) == []
    again = await member(two, "release", sender="z" * 20)
    assert again.listed["anonymous"] == 4


async def test_a_member_costs_one_sorted_set_entry_and_a_flood_stays_within_the_bound(make_server, member,
                                                                                      redis_server):
    server = make_server(PRESENCE_MAX_ENTRIES="20", **FAST)
    store = redis.Redis.from_url(redis_server.url)
    try:
        members = [await member(server, "costly", sender=f"{i:020d}", settle=0) for i in range(30)]
        assert members[-1].listed["anonymous"] == 20  # the ten beyond the bound are not kept, not shown
        assert store.zcard("wsapp:presence:costly") == 20
        assert [key.decode() for key in store.keys("wsapp:presence:*")] == ["wsapp:presence:costly"]
        used = store.memory_usage("wsapp:presence:costly", samples=0)
        print(f"presence: 1 key per room, {used} bytes for 20 anonymous members ({used / 20:.0f} per member)")
        assert used / 20 < 200
        assert 0 < store.pttl("wsapp:presence:costly") <= (max(TTL, GRACE) + 1) * 1000
    finally:
        store.close()
