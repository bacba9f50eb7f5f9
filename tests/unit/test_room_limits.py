"""The room limits and the control messages' stamps, in-process (LocalHub; the Redis side is in
tests/integration/test_memory_budget.py)."""


from channels.testing import WebsocketCommunicator
from django.test import override_settings

from config.asgi import application
from rooms import control
from rooms.readiness import STATE
from tests.helpers import ORIGIN_HEADER


@override_settings(ROOM_MESSAGES_PER_SECOND=2)
async def test_a_room_over_its_messages_per_second_refuses_by_id():
    communicator = WebsocketCommunicator(application, "/ws/rooms/u-busy/", headers=[ORIGIN_HEADER])
    assert (await communicator.connect())[0]
    await communicator.receive_json_from()  # welcome
    for n in range(3):
        await communicator.send_json_to({"type": "message", "body": "x", "id": f"m{n}"})
    answers = [await communicator.receive_json_from() for _ in range(3)]
    assert [frame["type"] for frame in answers[:2]] == ["message", "message"]
    assert answers[2]["error"] == "room_rate_limited" and answers[2]["id"] == "m2"
    await communicator.disconnect()


@override_settings(ROOM_CREATIONS_PER_ADDRESS=1)
async def test_an_address_over_its_room_creations_gets_room_limit_and_1013():
    client = ("203.0.113.9", 1234)
    first = WebsocketCommunicator(application, "/ws/rooms/u-new-1/", headers=[ORIGIN_HEADER])
    first.scope["client"] = client
    assert (await first.connect())[0]
    await first.disconnect()
    second = WebsocketCommunicator(application, "/ws/rooms/u-new-2/", headers=[ORIGIN_HEADER])
    second.scope["client"] = client
    assert (await second.connect())[0]
    assert (await second.receive_json_from())["error"] == "room_limit"
    assert (await second.receive_output())["code"] == 1013


def test_a_control_message_heard_twice_or_late_is_applied_once(monkeypatch):
    applied = []
    monkeypatch.setattr(control, "start_drain", lambda seconds: applied.append("drain"))
    monkeypatch.setattr(control, "stop_drain", lambda: applied.append("undrain"))
    monkeypatch.setattr(control.Applied, "stamp", 0)
    drain, undrain = {"type": "control.drain", "stamp": 10}, {"type": "control.undrain", "stamp": 20}
    control.handle_control_text('{"type": "control.drain", "stamp": 10}')  # by pub/sub
    control.handle_control(drain)  # the same, by the channel layer
    control.handle_control(undrain)
    control.handle_control_text('{"type": "control.drain", "stamp": 10}')  # late: older than the undrain
    assert applied == ["drain", "undrain"]
    assert not STATE.draining


def test_a_control_message_stamped_by_a_clock_that_went_back_is_applied(monkeypatch):
    """A failover to a Redis whose clock is behind: its stamps are older than those applied before.
    Left at "older, ignore", every later drain or undrain would be ignored until that clock caught up."""
    applied = []
    monkeypatch.setattr(control, "start_drain", lambda seconds: applied.append("drain"))
    monkeypatch.setattr(control, "stop_drain", lambda: applied.append("undrain"))
    monkeypatch.setattr(control.Applied, "stamp", 0)
    before = 1_000 * 1_000_000
    control.handle_control({"type": "control.drain", "stamp": before})
    behind = before - 120 * 1_000_000  # the new primary's clock is two minutes behind
    control.handle_control({"type": "control.undrain", "stamp": behind})
    control.handle_control({"type": "control.undrain", "stamp": behind})  # its copy by the other way
    assert applied == ["drain", "undrain"]

