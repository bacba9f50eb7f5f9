"""rooms.publish / rooms.apublish: Django code publishes into a room through the same hub, seq and
history as members' messages (in-process here, LocalHub; through Redis in
tests/integration/test_publish_api.py)."""

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command

import rooms
from rooms.publishing import PublishError


async def test_a_published_message_reaches_members_in_the_rooms_seq_order(connect):
    _, member = await connect("/ws/rooms/u-pub/")
    await member.send_json_to({"type": "message", "body": "from a member", "id": "m1"})
    first = await member.receive_json_from()
    published = await rooms.apublish("u-pub", {"text": "from Django"}, name="deploy bot")
    frame = await member.receive_json_from()
    assert (published.epoch, published.seq) == (frame["epoch"], frame["seq"])
    assert (frame["epoch"], frame["seq"]) == (first["epoch"], first["seq"] + 1)
    assert (frame["body"], frame["session"]) == ('{"text": "from Django"}', "api")
    assert frame["name"] == "deploy bot"


async def test_the_sync_form_publishes_from_synchronous_code_too(connect):
    _, member = await connect("/ws/rooms/u-pub-sync/")
    published = await sync_to_async(rooms.publish)("u-pub-sync", "plain text")
    frame = await member.receive_json_from()
    assert (frame["body"], frame["seq"]) == ("plain text", published.seq)
    assert "name" not in frame


async def test_an_id_makes_a_retry_publish_once(connect):
    _, member = await connect("/ws/rooms/u-pub-once/")
    first = await rooms.apublish("u-pub-once", "once", id="job-1")
    again = await rooms.apublish("u-pub-once", "once", id="job-1")
    assert again == first
    await rooms.apublish("u-pub-once", "next")
    bodies = [(await member.receive_json_from())["body"] for _ in range(2)]
    assert bodies == ["once", "next"]


@pytest.mark.parametrize(
    ("room", "data", "options", "code"),
    [
        ("no spaces", "x", {}, "invalid_room"),
        ("u-pub-bad", "x" * 5000, {}, "body_too_long"),
        ("u-pub-bad", "x", {"id": "not valid!"}, "invalid_id"),
        ("u-pub-bad", {1, 2}, {}, "invalid_body"),
    ],
)
async def test_what_cannot_be_published_is_refused_with_a_code(room, data, options, code):
    with pytest.raises(PublishError) as refused:
        await rooms.apublish(room, data, **options)
    assert refused.value.code == code


def test_the_command_refuses_to_publish_without_redis():
    """Without Redis its process' rooms are not the server's: publishing there would reach nobody."""
    with pytest.raises(CommandError, match="needs REDIS_URL"):
        call_command("publish", "lobby", "hello")
