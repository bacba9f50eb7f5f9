"""Presence through a real release on the swarm: clients in a room while `promote.sh` drains their
color and they reconnect to the other see no `leave` and no `join` for each other, and the list is
complete after it (docs/protocol.md, "Presence")."""

import asyncio
import json
import time

import pytest
import websockets

from tests.e2e.helpers import WS_URL, run, version

# It leaves the system as a release does, so test_release.py's first test may take it as it stands.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600), pytest.mark.takes_standing_system]

ROOM = "presence-e2e"
MEMBERS = 4
DRAIN_SECONDS = 5
GRACE, TTL = 10, 15  # the defaults (stack/release.env sets neither)


class Member:
    """A client that asks for presence and reconnects at once after every close, with its sender."""

    def __init__(self, index):
        self.sender = f"presence-e2e-member-{index:04d}"
        self.snapshots, self.events, self.colors = [], [], []

    async def run(self):
        url = f"{WS_URL}/ws/rooms/{ROOM}/?presence=1&sender={self.sender}"
        while True:
            try:
                async with websockets.connect(url, origin="http://localhost", open_timeout=10,
                                              close_timeout=2) as ws:
                    async for raw in ws:
                        frame = json.loads(raw)
                        if frame["type"] == "welcome":
                            self.colors.append(frame["color"])
                        elif frame["type"] == "presence":
                            self.snapshots.append(frame)
                        elif frame["type"] in ("join", "leave"):
                            self.events.append(frame)
            except (websockets.ConnectionClosed, OSError, TimeoutError):
                pass
            await asyncio.sleep(0.05)


def counted(member):
    """The number of members this member was told of last (its list, or the latest join)."""
    return (member.events[-1] if member.events else member.snapshots[-1])["anonymous"]


async def until(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"not within {seconds}s: {what}"
        await asyncio.sleep(0.1)


async def test_a_release_shows_no_leave_and_no_join_and_the_list_is_whole_after_it(system):
    before = version()["color"]
    members = [Member(i) for i in range(MEMBERS)]
    tasks = [asyncio.create_task(member.run()) for member in members]
    try:
        await until(lambda: all(m.snapshots for m in members), 30, "every member's first list")
        # The list of whichever joined last is whole (the members connect at once, in any order: the last
        # join sees the others), and every other member saw the ones after it join.
        await until(lambda: max(m.snapshots[0]["anonymous"] for m in members) == MEMBERS, 10,
                    "the last member's list")
        await until(lambda: all(counted(m) == MEMBERS for m in members), 10, "every member's joins")
        seen = [len(m.events) for m in members]
        started = time.monotonic()
        result = await asyncio.to_thread(run, ["./promote.sh"], 500, False, DRAIN_SECONDS=str(DRAIN_SECONDS),
                                         WATCH_SECONDS="0")  # the gate is not what this is about
        assert result.returncode == 0, result.stderr[-4000:]
        after = version()["color"]
        assert after != before
        await until(lambda: all(m.colors[-1] == after for m in members), 30, "every member on the new color")
        # The old connections' grace, and a sweep after it: their leave would have come by now.
        await asyncio.sleep(GRACE + TTL / 3 + 2)
        took = time.monotonic() - started
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    churn = [m.events[count:] for m, count in zip(members, seen, strict=True)]
    assert churn == [[]] * MEMBERS, churn
    assert all(len(m.snapshots) >= 2 for m in members)  # each reconnected, and was given the list again
    assert [m.snapshots[-1]["anonymous"] for m in members] == [MEMBERS] * MEMBERS
    print(f"release {before} -> {after}: {MEMBERS} members reconnected, 0 join/leave frames in {took:.0f}s")
