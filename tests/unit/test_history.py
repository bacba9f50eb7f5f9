"""Room history and resume (?since=) on the real routed application with the in-process LocalHub."""

import json
import os
import subprocess
import sys

import pytest
from django.test import override_settings

from rooms import draining, metrics, resume
from rooms.hub import get_hub
from rooms.sessions import SESSIONS
from tests.helpers import ROOT


async def say(communicator, *bodies):
    """Send messages and wait for each to come back, so they are published before going on."""
    for body in bodies:
        await communicator.send_to(text_data=json.dumps({"type": "message", "body": body}))
        assert (await communicator.receive_json_from())["body"] == body


async def frames(communicator, count):
    return [await communicator.receive_json_from() for _ in range(count)]


async def test_welcome_carries_the_rooms_seq_and_the_version(connect):
    _, alice = await connect("/ws/rooms/h-welcome/")
    assert alice.welcome["seq"] == 0 and alice.welcome["version"] == "dev"
    await say(alice, "a", "b")
    _, bob = await connect("/ws/rooms/h-welcome/")
    assert bob.welcome["seq"] == 2
    assert await bob.receive_nothing(timeout=0.1), "no replay without since"


async def test_since_replays_what_was_missed_then_continues_live(connect):
    _, alice = await connect("/ws/rooms/h-gap/")
    await say(alice, "1", "2", "3", "4", "5")
    _, bob = await connect("/ws/rooms/h-gap/?since=2")
    assert bob.welcome["seq"] == 5
    assert [(f["type"], f["seq"], f["body"]) for f in await frames(bob, 3)] == [
        ("message", 3, "3"), ("message", 4, "4"), ("message", 5, "5")]
    await say(alice, "6")
    assert (await bob.receive_json_from())["seq"] == 6
    assert await bob.receive_nothing(timeout=0.1)


async def test_a_resume_and_its_replayed_messages_are_counted(connect):
    """ws_resumes_total and ws_replayed_messages_total: the release report plots them."""
    _, alice = await connect("/ws/rooms/h-count/")
    await say(alice, "1", "2", "3")
    resumes, replayed = metrics.RESUMES._value.get(), metrics.REPLAYED._value.get()
    _, bob = await connect("/ws/rooms/h-count/?since=1")
    await frames(bob, 2)
    assert metrics.RESUMES._value.get() == resumes + 1
    assert metrics.REPLAYED._value.get() == replayed + 2


async def test_since_equal_to_the_rooms_seq_replays_nothing(connect):
    _, alice = await connect("/ws/rooms/h-same/")
    await say(alice, "1", "2")
    _, bob = await connect("/ws/rooms/h-same/?since=2")
    assert await bob.receive_nothing(timeout=0.1)


async def test_the_seam_has_no_duplicate_and_no_gap_when_others_send_while_joining(connect, monkeypatch):
    """A message published after the join but before the read is both buffered live and in the backlog;
    one published after the read is only buffered live: each must reach the client exactly once."""
    _, alice = await connect("/ws/rooms/h-seam/")
    await say(alice, "1", "2")
    hub = get_hub()
    read = type(hub).backlog

    async def racing_backlog(self, room, since, epoch=None, address=None):
        await self.publish(room, "other", "during join", "d1", "other-sender")
        backlog = await read(self, room, since, epoch, address)
        await self.publish(room, "other", "after read", "d2", "other-sender")
        return backlog

    monkeypatch.setattr(type(hub), "backlog", racing_backlog)
    _, bob = await connect("/ws/rooms/h-seam/?since=1")
    monkeypatch.undo()
    assert bob.welcome["seq"] == 3
    assert [f["seq"] for f in await frames(bob, 3)] == [2, 3, 4]
    assert [f["seq"] for f in await frames(alice, 2)] == [3, 4]
    await say(alice, "5")
    assert (await bob.receive_json_from())["seq"] == 5
    assert await bob.receive_nothing(timeout=0.1)


async def test_a_live_frame_the_backlog_had_is_dropped_even_when_it_arrives_after_the_replay(connect):
    """With Redis, pub/sub can hand over a message after the backlog read that already held it."""
    _, alice = await connect("/ws/rooms/h-late/")
    await say(alice, "1", "2")
    _, bob = await connect("/ws/rooms/h-late/?since=0")
    assert [f["seq"] for f in await frames(bob, 2)] == [1, 2]
    late = get_hub().history["h-late"][-1][2]  # test double: seq 2 arriving late from Redis
    SESSIONS[bob.welcome["session"]].consumer.room_frame(late, bob.welcome["epoch"], 2)
    await say(alice, "3")
    assert (await bob.receive_json_from())["seq"] == 3
    assert await bob.receive_nothing(timeout=0.1)


@override_settings(ROOM_HISTORY_MAX=3)
async def test_since_older_than_the_history_gets_resync_too_old_then_what_is_kept(connect):
    _, alice = await connect("/ws/rooms/h-old/")
    await say(alice, *"123456")
    _, bob = await connect("/ws/rooms/h-old/?since=1")
    resync, *replayed = await frames(bob, 4)
    assert resync == {"type": "resync", "room": "h-old", "since": 1, "epoch": bob.welcome["epoch"], "from": 4,
                      "seq": 6, "reason": "too_old"}
    assert [f["seq"] for f in replayed] == [4, 5, 6]


@override_settings(ROOM_HISTORY_MAX=3)
async def test_since_just_before_the_oldest_kept_message_is_not_too_old(connect):
    _, alice = await connect("/ws/rooms/h-edge/")
    await say(alice, *"123456")
    _, bob = await connect("/ws/rooms/h-edge/?since=3")
    assert [f["seq"] for f in await frames(bob, 3)] == [4, 5, 6]
    assert await bob.receive_nothing(timeout=0.1)


async def test_since_ahead_of_the_room_gets_resync_ahead_then_everything_kept(connect):
    _, alice = await connect("/ws/rooms/h-ahead/")
    await say(alice, "1", "2")
    _, bob = await connect("/ws/rooms/h-ahead/?since=100")
    resync, *replayed = await frames(bob, 3)
    assert resync == {"type": "resync", "room": "h-ahead", "since": 100, "epoch": bob.welcome["epoch"],
                      "from": 1, "seq": 2, "reason": "ahead"}
    assert [f["seq"] for f in replayed] == [1, 2]


async def test_since_ahead_of_an_empty_room_replays_nothing_from_seq_plus_one(connect):
    _, bob = await connect("/ws/rooms/h-empty/?since=7")
    resync = await bob.receive_json_from()
    assert (resync["reason"], resync["from"], resync["seq"]) == ("ahead", 1, 0)
    assert await bob.receive_nothing(timeout=0.1)


@pytest.mark.parametrize("query", ["since=abc", "since=", "since=-1", "since=1.5", "since=" + "9" * 19,
                                   "since=1&since=2", "since=%201", "since=1&epoch=a-b", "sender=short"])
async def test_malformed_since_is_refused_with_invalid_since_and_1008(connect, query):
    _, bob = await connect(f"/ws/rooms/h-bad/?{query}", welcome=False)
    error = await bob.receive_json_from()
    assert error["type"] == "error" and error["error"] == "invalid_since" and error["detail"]
    assert await bob.receive_output() == {"type": "websocket.close", "code": 1008}
    assert "h-bad" not in get_hub().rooms


@override_settings(ROOM_HISTORY_BYTES=4096)
async def test_history_keeps_at_most_room_history_bytes_of_frames(connect):
    """A room flooded with large messages keeps only the newest that fit (RedisHub does the same in
    its Lua script: tests/integration/test_history.py)."""
    _, alice = await connect("/ws/rooms/h-bytes/")
    await say(alice, *(str(n) * 1000 for n in range(1, 10)))
    kept = get_hub().history["h-bytes"]
    assert [seq for seq, _, _ in kept] == [7, 8, 9]
    assert sum(len(frame.encode()) for _, _, frame in kept) <= 4096
    _, bob = await connect("/ws/rooms/h-bytes/?since=0")
    resync, *replayed = await frames(bob, 4)
    assert (resync["reason"], resync["from"]) == ("too_old", 7)
    assert [f["seq"] for f in replayed] == [7, 8, 9]


@override_settings(ROOM_HISTORY_BYTES=4096, MAX_BODY_CHARS=8000)
async def test_a_frame_larger_than_room_history_bytes_is_still_kept_as_the_newest(connect):
    _, alice = await connect("/ws/rooms/h-big/")
    await say(alice, "small", "x" * 5000)
    assert [seq for seq, _, _ in get_hub().history["h-big"]] == [2]


@override_settings(ROOM_HISTORY_SECONDS=10)
async def test_history_older_than_its_window_is_not_replayed(connect, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(get_hub(), "clock", lambda: now[0])
    _, alice = await connect("/ws/rooms/h-aged/")
    await say(alice, "1", "2")
    now[0] += 11
    await say(alice, "3")
    _, bob = await connect("/ws/rooms/h-aged/?since=0")
    resync, replayed = await frames(bob, 2)
    assert (resync["reason"], resync["from"]) == ("too_old", 3) and replayed["seq"] == 3


@override_settings(ROOM_HISTORY_SECONDS=10)
async def test_an_idle_room_is_forgotten_but_not_while_it_has_members(connect, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(get_hub(), "clock", lambda: now[0])
    _, alice = await connect("/ws/rooms/h-idle/")
    await say(alice, "1")
    now[0] += 60
    _, bob = await connect("/ws/rooms/h-idle/")
    assert bob.welcome["seq"] == 1, "a room with members keeps its seq however quiet"
    await alice.disconnect()
    await bob.disconnect()
    now[0] += 9
    _, carol = await connect("/ws/rooms/h-idle/")
    assert carol.welcome["seq"] == 1
    await carol.disconnect()
    now[0] += 11
    _, dave = await connect("/ws/rooms/h-idle/")
    assert dave.welcome["seq"] == 0
    assert "h-idle" not in get_hub().history


async def test_drain_notice_carries_the_last_seq_sent_and_retry_ms(connect):
    _, alice = await connect("/ws/rooms/h-drain/")
    await say(alice, "1", "2")
    _, bob = await connect("/ws/rooms/h-drain/")
    await say(alice, "3")
    assert (await bob.receive_json_from())["seq"] == 3
    _, carol = await connect("/ws/rooms/h-drain-quiet/")
    draining.start_drain(0.1)
    for communicator, seq in ((alice, 3), (bob, 3), (carol, 0)):
        notice = await communicator.receive_json_from(timeout=2)
        assert notice == {"type": "reconnect", "reason": "release", "color": "dev",
                          "epoch": communicator.welcome["epoch"], "seq": seq,
                          "retry_ms": draining.RECONNECT_RETRY_MS}
        assert await communicator.receive_output(timeout=2) == {"type": "websocket.close", "code": 1012}


def test_the_query_reads_since_epoch_and_sender_among_other_parameters():
    assert resume.Query(b"").since is None
    assert resume.Query(b"x=1").since is None
    assert resume.Query(b"x=1&since=42").since == 42
    assert resume.Query(b"since=" + b"9" * 18).since == 10**18 - 1
    query = resume.Query(b"since=3&epoch=ab12&sender=" + b"s" * 16)
    assert (query.since, query.epoch, query.sender) == (3, "ab12", "s" * 16)


async def test_a_resume_from_another_epoch_gets_resync_epoch_then_everything_kept(connect):
    _, alice = await connect("/ws/rooms/h-epoch/")
    await say(alice, "1", "2")
    _, bob = await connect("/ws/rooms/h-epoch/?since=2&epoch=older")
    resync, *replayed = await frames(bob, 3)
    assert (resync["reason"], resync["epoch"], resync["from"], resync["seq"]) == (
        "epoch", alice.welcome["epoch"], 1, 2)
    assert [f["seq"] for f in replayed] == [1, 2]


async def test_a_room_forgotten_while_idle_comes_back_under_a_new_epoch(connect):
    _, alice = await connect("/ws/rooms/h-reborn/")
    await say(alice, "1")
    await alice.disconnect()
    hub = get_hub()
    hub.expires["h-reborn"] = hub.clock() - 1  # as if its keys had expired
    _, other = await connect("/ws/rooms/h-reborn-other/")  # joining a new room forgets idle ones
    _, bob = await connect(f"/ws/rooms/h-reborn/?since=1&epoch={alice.welcome['epoch']}")
    resync = await bob.receive_json_from()
    assert resync["reason"] == "epoch" and resync["epoch"] != alice.welcome["epoch"]


@pytest.mark.parametrize(("env", "message"), [
    ({"ROOM_HISTORY_MAX": "0"}, "ROOM_HISTORY_MAX must be at least 1"),
    ({"ROOM_HISTORY_SECONDS": "ten"}, "ROOM_HISTORY_SECONDS must be an integer"),
    ({"ROOM_HISTORY_BYTES": "1000"}, "ROOM_HISTORY_BYTES must be at least 4096"),
    ({"REDIS_MEMORY_TRIM": "0.8", "REDIS_MEMORY_REFUSE": "0.7"}, "REDIS_MEMORY_TRIM <= REDIS_MEMORY_REFUSE"),
    ({"REDIS_MEMORY_REFUSE": "1"}, "REDIS_MEMORY_REFUSE <= 0.95"),
    ({"ROOM_MAX_MEMBERS": "0"}, "ROOM_MAX_MEMBERS must be at least 1"),
])
def test_bad_room_settings_fail_at_startup_with_the_variable_named(env, message):
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DJANGO_DEBUG")}
    base.update({"DJANGO_SECRET_KEY": "x", "DJANGO_SETTINGS_MODULE": "config.settings"}, **env)
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"],
                            cwd=os.path.join(ROOT, "service"), env=base, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0 and message in result.stderr
