"""Client message ids (docs/protocol.md, "Message ids"): echoed, and a resend is not published twice.
On the real routed application with the in-process LocalHub; tests/integration/test_history.py runs
the same against Redis's script."""

import json

import pytest
from django.test import override_settings

from rooms.hub import get_hub


async def send(communicator, **frame):
    await communicator.send_to(text_data=json.dumps({"type": "message", **frame}))
    return await communicator.receive_json_from()


async def test_the_id_is_echoed_in_the_broadcast_frame_and_absent_without_one(connect):
    _, alice = await connect("/ws/rooms/id-echo/")
    _, bob = await connect("/ws/rooms/id-echo/")
    frame = await send(alice, body="hi", id="a-1_B")
    assert (frame["type"], frame["id"], frame["seq"]) == ("message", "a-1_B", 1)
    assert await bob.receive_json_from() == frame
    assert "id" not in await send(alice, body="no id")


async def test_a_resent_id_is_answered_duplicate_and_not_published_again(connect):
    _, alice = await connect("/ws/rooms/id-dup/")
    await send(alice, body="once", id="m1")
    _, bob = await connect("/ws/rooms/id-dup/")  # as after a reconnect: another session
    assert await send(bob, body="once", id="m1") == {"type": "duplicate", "id": "m1", "seq": 1}
    assert await alice.receive_nothing(timeout=0.1), "nothing was published"
    assert [seq for seq, _, _ in get_hub().history["id-dup"]] == [1]
    assert (await send(bob, body="next", id="m2"))["seq"] == 2


@override_settings(ROOM_HISTORY_MAX=2)
async def test_an_id_whose_message_is_no_longer_kept_is_published_again(connect):
    _, alice = await connect("/ws/rooms/id-old/")
    await send(alice, body="1", id="m1")
    await send(alice, body="2", id="m2")
    await send(alice, body="3", id="m3")  # m1's message is trimmed, and its id with it
    assert (await send(alice, body="1", id="m1"))["seq"] == 4
    assert set(get_hub().ids["id-old"]) == {"m3", "m1"}


async def test_refusals_of_a_message_with_an_id_echo_it(connect):
    _, alice = await connect("/ws/rooms/id-err/")
    too_long = await send(alice, body="x" * 5000, id="big")
    assert (too_long["type"], too_long["error"], too_long["id"]) == ("error", "body_too_long", "big")
    bad_body = await send(alice, body=3, id="b")
    assert (bad_body["error"], bad_body["id"]) == ("invalid_body", "b")


@override_settings(RATE_LIMIT_PER_SECOND=0.1, RATE_LIMIT_BURST=1)
async def test_a_rate_limited_message_gets_its_id_back(connect):
    _, alice = await connect("/ws/rooms/id-rate/")
    assert (await send(alice, body="1", id="r1"))["type"] == "message"
    limited = await send(alice, body="2", id="r2")
    assert (limited["error"], limited["id"]) == ("rate_limited", "r2")


@pytest.mark.parametrize("bad", ["", "x" * 65, "a b", "é", 7, None, ["a"], "a/b"])
async def test_an_invalid_id_is_refused_with_invalid_id_and_nothing_published(connect, bad):
    _, alice = await connect("/ws/rooms/id-bad/")
    before = get_hub().seq.get("id-bad", 0)
    error = await send(alice, body="hi", id=bad)
    assert (error["type"], error["error"]) == ("error", "invalid_id") and "id" not in error
    assert get_hub().seq.get("id-bad", 0) == before, "nothing published"
    assert (await send(alice, body="hi"))["seq"] == before + 1, "the connection stays usable"
