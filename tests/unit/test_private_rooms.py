"""Private rooms, anonymous posting and tickets at the handshake, in-process. The unit tier has no
database at all (DATABASES = {}), so everything here also proves the WebSocket side needs none: the
policies are set as a process' refresh would have loaded them (rooms.policies)."""

import time
from urllib.parse import quote

import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from config.asgi import application
from rooms import tickets
from rooms.policies import POLICIES, Policy
from tests.helpers import ORIGIN_HEADER

KEYS = ["k" * 40]


@pytest.fixture(autouse=True)
def accounts():
    with override_settings(ACCOUNTS_ENABLED=True, TICKET_KEYS=KEYS, TICKET_SECONDS=300):
        POLICIES.rooms = {"u-board": Policy(private=True, anonymous=False),
                          "u-news": Policy(private=False, anonymous=False)}
        yield
    POLICIES.rooms = {}


def ticket(rooms=(), user=7, name="Alice Doe", **kwargs):
    return tickets.issue(user, name, rooms, **kwargs)[0]


async def handshake(room, token=None, opened=None):
    query = f"?ticket={quote(token)}" if token else ""
    communicator = WebsocketCommunicator(application, f"/ws/rooms/{room}/{query}", headers=[ORIGIN_HEADER])
    if opened is not None:
        opened.append(communicator)
    assert (await communicator.connect())[0]
    return communicator, await communicator.receive_json_from()


@pytest.fixture
async def opened():
    communicators = []
    yield communicators
    for communicator in communicators:
        await communicator.disconnect()


async def test_a_private_room_refuses_a_handshake_without_a_ticket_with_forbidden_and_1008():
    communicator, first = await handshake("u-board")
    assert first["type"] == "error" and first["error"] == "forbidden"
    assert (await communicator.receive_output())["code"] == 1008


async def test_a_private_room_refuses_a_ticket_that_names_other_rooms():
    communicator, first = await handshake("u-board", ticket(["u-other"]))
    assert first["error"] == "forbidden"
    assert (await communicator.receive_output())["code"] == 1008


async def test_a_forged_or_expired_ticket_is_refused_with_ticket_invalid():
    expired = ticket(["u-board"], now=time.time() - 301)
    for token in (expired, ticket(["u-board"])[:-3] + "abc"):
        communicator, first = await handshake("u-lobby", token)
        assert first["error"] == "ticket_invalid"
        assert (await communicator.receive_output())["code"] == 1008


async def test_a_member_joins_and_its_messages_carry_the_name_from_its_ticket(opened):
    communicator, welcome = await handshake("u-board", ticket(["u-board"]), opened)
    assert welcome["type"] == "welcome"
    await communicator.send_json_to({"type": "message", "body": '{"name":"Mallory","text":"hi"}', "id": "m1"})
    echo = await communicator.receive_json_from()
    assert echo["type"] == "message" and echo["name"] == "Alice Doe" and echo["id"] == "m1"


async def test_a_public_room_without_a_ticket_is_as_before_and_its_messages_have_no_name(opened):
    communicator, welcome = await handshake("u-lobby", None, opened)
    assert welcome["type"] == "welcome"
    await communicator.send_json_to({"type": "message", "body": "hi"})
    assert "name" not in await communicator.receive_json_from()


async def test_a_room_without_anonymous_posting_refuses_messages_without_a_ticket_by_id(opened):
    anonymous, _ = await handshake("u-news", None, opened)
    await anonymous.send_json_to({"type": "message", "body": "hi", "id": "a1"})
    refused = await anonymous.receive_json_from()
    assert (refused["error"], refused["id"]) == ("forbidden", "a1")
    member, _ = await handshake("u-news", ticket(), opened)
    await member.send_json_to({"type": "message", "body": "hi", "id": "b1"})
    assert (await member.receive_json_from())["name"] == "Alice Doe"


async def test_renew_gives_a_later_ticket_for_the_same_claims(opened):
    communicator, _ = await handshake("u-board", ticket(["u-board"], now=time.time() - 100), opened)
    await communicator.send_json_to({"type": "renew"})
    answer = await communicator.receive_json_from()
    assert answer["type"] == "ticket" and answer["expires"] >= time.time() + 299
    renewed = tickets.verify(answer["ticket"])
    assert (renewed.user, renewed.name, renewed.rooms) == (7, "Alice Doe", {"u-board"})


async def test_renew_takes_a_new_ticket_of_the_same_user_only(opened):
    communicator, _ = await handshake("u-lobby", ticket(), opened)
    await communicator.send_json_to({"type": "renew", "ticket": ticket(user=8, name="Bob")})
    assert (await communicator.receive_json_from())["error"] == "ticket_invalid"
    fresh = ticket(name="Alice D.")
    await communicator.send_json_to({"type": "renew", "ticket": fresh})
    assert await communicator.receive_json_from() == {"type": "ticket", "ticket": fresh,
                                                      "expires": tickets.verify(fresh).expires}
    await communicator.send_json_to({"type": "message", "body": "x"})
    assert (await communicator.receive_json_from())["name"] == "Alice D."


async def test_renew_without_a_ticket_is_an_error_and_the_connection_stays(opened):
    communicator, _ = await handshake("u-lobby", None, opened)
    await communicator.send_json_to({"type": "renew"})
    assert (await communicator.receive_json_from())["error"] == "ticket_invalid"
    await communicator.send_json_to({"type": "ping"})
    assert (await communicator.receive_json_from()) == {"type": "pong"}


async def test_a_private_room_closes_a_connection_whose_ticket_expired_unrenewed():
    communicator, welcome = await handshake("u-board", ticket(["u-board"], now=time.time() - 298))
    assert welcome["type"] == "welcome"
    expired = await communicator.receive_json_from(timeout=5)
    assert expired["error"] == "ticket_invalid" and "expired" in expired["detail"]
    assert (await communicator.receive_output(timeout=5))["code"] == 1008


async def test_without_a_database_tickets_are_ignored_and_renew_is_unknown(opened):
    with override_settings(ACCOUNTS_ENABLED=False):
        communicator, welcome = await handshake("u-board", "anything", opened)
        assert welcome["type"] == "welcome"  # no policies without a database: every room is public
        await communicator.send_json_to({"type": "renew"})
        assert (await communicator.receive_json_from())["error"] == "unknown_type"
