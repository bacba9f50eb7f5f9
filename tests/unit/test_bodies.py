"""Message bodies must be Unicode text: a lone surrogate ("\\ud800" in JSON, valid JSON) is refused with an
error frame that carries the message's id, and nothing is relayed; anything else is relayed as sent."""

import json

from channels.testing import WebsocketCommunicator
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.asgi import application
from tests.helpers import ORIGIN_HEADER as ORIGIN

EXAMPLES = 300

# Text with lone surrogates (category Cs) among ordinary, astral (sent as escaped pairs) and control
# characters; most examples contain at least one surrogate.
bodies = st.text(st.characters(categories=["Cs", "Lu", "Ll", "Nd", "So", "Cc", "Zs"]), max_size=40)


def lone_surrogate(text):
    return any(0xD800 <= ord(char) <= 0xDFFF for char in text)


async def member(room):
    communicator = WebsocketCommunicator(application, f"/ws/rooms/{room}/", headers=[ORIGIN])
    connected, _ = await communicator.connect()
    assert connected
    assert (await communicator.receive_json_from())["type"] == "welcome"
    return communicator


@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(body=bodies, with_id=st.booleans())
async def test_a_body_is_relayed_only_if_it_is_unicode_text(body, with_id):
    # 300 examples in one room outrun its ROOM_MESSAGES_PER_SECOND on a quick run (the answer is then
    # room_rate_limited, not the message): that limit is another test's (test_room_limits.py).
    with override_settings(ROOM_MESSAGES_PER_SECOND=1_000_000):
        await relay_or_refuse(body, with_id)


async def relay_or_refuse(body, with_id):
    sender, other = await member("text"), await member("text")
    try:
        message = {"type": "message", "body": body, **({"id": "m1"} if with_id else {})}
        await sender.send_to(text_data=json.dumps(message))  # ensure_ascii: "\ud800" escapes
        answer = await sender.receive_json_from()
        # What the server reads: an adjacent high and low surrogate escape parse as one character.
        body = json.loads(json.dumps(body))
        if lone_surrogate(body):
            assert answer["type"] == "error" and answer["error"] == "invalid_body", answer
            assert "Unicode" in answer["detail"] and answer.get("id") == ("m1" if with_id else None)
            assert await other.receive_nothing(timeout=0.01)
        else:
            assert answer["type"] == "message" and answer["body"] == body
            relayed = await other.receive_from()
            relayed.encode()  # strict UTF-8: no surrogate made it into the frame
            assert json.loads(relayed)["body"] == body
    finally:
        await sender.disconnect()
        await other.disconnect()


async def test_a_surrogate_pair_is_one_character_and_is_relayed():
    sender = await member("pair")
    try:
        await sender.send_to(text_data='{"type": "message", "body": "\\ud83d\\ude00"}')
        assert (await sender.receive_json_from())["body"] == "\U0001F600"
    finally:
        await sender.disconnect()
