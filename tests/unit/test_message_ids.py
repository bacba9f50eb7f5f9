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


SENDER = "alice-sender-token-0001"


async def test_the_id_is_echoed_in_the_broadcast_frame_and_made_by_the_server_without_one(connect):
    _, alice = await connect("/ws/rooms/id-echo/")
    _, bob = await connect("/ws/rooms/id-echo/")
    frame = await send(alice, body="hi", id="a-1_B")
    assert (frame["type"], frame["id"], frame["seq"]) == ("message", "a-1_B", 1)
    assert await bob.receive_json_from() == frame
    made = (await send(alice, body="no id"))["id"]
    assert made.startswith("~") and len(made) == 17, "every published message has an id"


async def test_a_resent_id_is_answered_duplicate_and_not_published_again(connect):
    _, alice = await connect(f"/ws/rooms/id-dup/?sender={SENDER}")
    first = await send(alice, body="once", id="m1")
    _, again = await connect(f"/ws/rooms/id-dup/?sender={SENDER}")  # as after a reconnect: another session
    assert await send(again, body="once", id="m1") == {
        "type": "duplicate", "id": "m1", "epoch": first["epoch"], "seq": 1}
    assert await alice.receive_nothing(timeout=0.1), "nothing was published"
    assert [seq for seq, _, _ in get_hub().history["id-dup"]] == [1]
    assert (await send(again, body="next", id="m2"))["seq"] == 2


async def test_another_sender_cannot_claim_an_id(connect):
    _, alice = await connect(f"/ws/rooms/id-claim/?sender={SENDER}")
    await send(alice, body="mine", id="m1")
    _, mallory = await connect("/ws/rooms/id-claim/?sender=mallory-sender-token-1")
    theirs = await send(mallory, body="theirs", id="m1")
    assert (theirs["type"], theirs["seq"], theirs["body"]) == ("message", 2, "theirs")


@override_settings(ROOM_HISTORY_MAX=2)
async def test_an_id_is_kept_after_its_message_left_the_history(connect):
    _, alice = await connect(f"/ws/rooms/id-old/?sender={SENDER}")
    for n in (1, 2, 3):
        await send(alice, body=str(n), id=f"m{n}")  # m1's message is trimmed from the history
    assert [seq for seq, _, _ in get_hub().history["id-old"]] == [2, 3]
    assert (await send(alice, body="1", id="m1"))["type"] == "duplicate"


@override_settings(ROOM_IDS_MAX=2)
async def test_ids_are_bounded_per_room(connect):
    _, alice = await connect(f"/ws/rooms/id-max/?sender={SENDER}")
    for n in (1, 2, 3):
        await send(alice, body=str(n), id=f"m{n}")
    assert len(get_hub().sent["id-max"]) == 2
    assert (await send(alice, body="1", id="m1"))["seq"] == 4, "the oldest id went"


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
