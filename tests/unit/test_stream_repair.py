"""A member's stream stays whole, and a sender learns its message's fate, when Redis misbehaves
(docs/protocol.md, "Message ids" and "Redis outages"). On the real routed application with the
in-process LocalHub; where Redis's failures are the point, the hub's methods are replaced by test
doubles that fail as a Redis client does (the fault tier, tests/integration/test_redis_faults.py,
does the same with real Redis processes)."""

import json

from django.test import override_settings

from rooms.frames import frame_parts, join_parts
from rooms.hub import HubUnavailable, get_hub
from rooms.sessions import SESSIONS

SENDER = "stream-repair-sender-1"


async def say(communicator, body, msg_id=None):
    frame = {"type": "message", "body": body} | ({} if msg_id is None else {"id": msg_id})
    await communicator.send_to(text_data=json.dumps(frame))
    return await communicator.receive_json_from()


def consumer_of(communicator):
    return SESSIONS[communicator.welcome["session"]].consumer


def room_frame(room, epoch, seq):
    head, tail = frame_parts(room, "other", "x", 0, f"m{seq}")
    return join_parts(head, epoch, seq, tail)


async def assert_resumes(communicator, epoch, seq, timeout=1):
    notice = await communicator.receive_json_from(timeout=timeout)
    assert (notice["type"], notice["reason"]) == ("reconnect", "resume")
    assert (notice["epoch"], notice["seq"]) == (epoch, seq)
    assert await communicator.receive_output() == {"type": "websocket.close", "code": 1012}


async def test_a_live_message_after_a_gap_makes_the_member_resume_instead_of_skipping(connect):
    _, alice = await connect("/ws/rooms/r-gap/")
    epoch = (await say(alice, "1"))["epoch"]
    consumer_of(alice).room_frame(room_frame("r-gap", epoch, 3), epoch, 3)  # 2 never came
    await assert_resumes(alice, epoch, 1)


async def test_the_first_live_message_must_follow_the_welcomes_seq(connect):
    _, alice = await connect("/ws/rooms/r-first/")
    epoch = alice.welcome["epoch"]
    consumer_of(alice).room_frame(room_frame("r-first", epoch, 2), epoch, 2)
    await assert_resumes(alice, epoch, 0)


async def test_a_message_of_another_epoch_makes_the_member_resume(connect):
    _, alice = await connect("/ws/rooms/r-epoch/")
    epoch = (await say(alice, "1"))["epoch"]
    consumer_of(alice).room_frame(room_frame("r-epoch", "newer", 2), "newer", 2)
    await assert_resumes(alice, epoch, 1)


async def test_a_reconciliation_resumes_members_of_another_epoch_or_behind(connect):
    _, alice = await connect("/ws/rooms/r-recon/")
    _, bob = await connect("/ws/rooms/r-recon/")
    epoch = (await say(alice, "1"))["epoch"]
    assert (await bob.receive_json_from())["seq"] == 1
    consumer_of(alice).reconcile(epoch, 3, final=False)  # 2 and 3 may still come live
    assert await alice.receive_nothing(timeout=0.1)
    consumer_of(alice).reconcile(epoch, 3, final=True)  # they did not
    await assert_resumes(alice, epoch, 1)
    consumer_of(bob).reconcile("newer", 1, final=False)
    await assert_resumes(bob, epoch, 1)


async def test_a_publish_whose_reply_was_lost_but_that_ran_is_answered_by_its_echo_only(connect, monkeypatch):
    _, alice = await connect(f"/ws/rooms/r-ran/?sender={SENDER}")
    hub = get_hub()
    publish = type(hub).publish

    async def reply_lost(self, *args):  # test double: the script ran, its reply never came
        await publish(self, *args)
        raise HubUnavailable("Timeout reading from socket")

    monkeypatch.setattr(type(hub), "publish", reply_lost)
    echo = await say(alice, "once", "m1")
    assert (echo["type"], echo["id"], echo["seq"]) == ("message", "m1", 1)
    assert await alice.receive_nothing(timeout=0.2), "no second answer"
    assert [seq for seq, _, _ in hub.history["r-ran"]] == [1], "published once, never retried"


async def test_a_publish_whose_reply_was_lost_and_that_did_not_run_is_unavailable(connect, monkeypatch):
    _, alice = await connect(f"/ws/rooms/r-lost/?sender={SENDER}")

    async def never_ran(self, *args):  # test double: the connection broke before Redis read it
        raise HubUnavailable("Connection closed by server.")

    monkeypatch.setattr(type(get_hub()), "publish", never_ran)
    error = await say(alice, "gone", "m1")
    assert (error["type"], error["error"], error["id"]) == ("error", "unavailable", "m1")
    assert "r-lost" not in get_hub().history


@override_settings(PUBLISH_SETTLE_SECONDS=1)
async def test_a_publish_whose_fate_stays_unknown_makes_the_sender_resume_and_resend(connect, monkeypatch):
    _, alice = await connect(f"/ws/rooms/r-unknown/?sender={SENDER}")
    calls = []

    async def redis_away(self, *args):  # test double: Redis stalled for good
        calls.append(args)
        raise HubUnavailable("Timeout reading from socket")

    monkeypatch.setattr(type(get_hub()), "publish", redis_away)
    monkeypatch.setattr(type(get_hub()), "fence", redis_away)
    await alice.send_to(text_data=json.dumps({"type": "message", "body": "?", "id": "m1"}))
    await assert_resumes(alice, alice.welcome["epoch"], 0, timeout=3)
    assert len(calls) > 2, "the fence was tried again until PUBLISH_SETTLE_SECONDS"


def test_time_the_server_kept_a_client_waiting_does_not_count_against_its_rate():
    from rooms.ratelimit import TokenBucket

    bucket = TokenBucket(rate=4, burst=2, clock=lambda: 0.0)
    assert [bucket.take(now=0.0) for _ in range(3)] == [True, True, False]
    bucket.credit(13.0)  # a 13 s Redis stall, during which the client sent 52 frames at 4/s
    assert all(bucket.take(now=0.0) for _ in range(52))
    assert not bucket.take(now=0.0)
    assert bucket.take(now=0.25) and not bucket.take(now=0.25), "back to the rate, and the burst cap"


async def test_a_message_from_a_version_before_epochs_continues_the_stream(connect):
    """During the release that brings epochs, the old color publishes frames without one, on the
    same counter: members of the new color must take them in order, not resume at each."""
    _, alice = await connect("/ws/rooms/r-old/")
    head, tail = frame_parts("r-old", "other", "old color", 0, "m1")
    old_frame = head.replace(',"epoch":"', "") + ',"seq":1' + tail
    consumer_of(alice).room_frame(old_frame, "", 1)
    assert (await alice.receive_json_from())["body"] == "old color"
