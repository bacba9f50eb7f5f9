"""Hypothesis against the real routed ASGI application, in-process: every message gets one answer,
nothing raises or logs an error, and nothing is left once the client leaves."""

import json
import logging

from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, given, settings

from config.asgi import application
from rooms import metrics
from rooms.hub import get_hub
from rooms.names import SERVER_ERRORS, Error
from rooms.sessions import SESSIONS
from tests.hostile import cases

ORIGIN = (b"origin", b"http://localhost")
CLIENT_ERRORS = {str(kind) for kind in Error} - {str(kind) for kind in SERVER_ERRORS}
EXAMPLES = 6000


class ErrorRecords(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(case=cases)
async def test_every_message_gets_one_answer_and_nothing_is_left(case):
    errors = ErrorRecords()
    logging.getLogger().addHandler(errors)
    communicator = WebsocketCommunicator(application, "/ws/rooms/fuzz/", headers=[ORIGIN])
    try:
        connected, _ = await communicator.connect()
        assert connected
        assert (await communicator.receive_json_from())["type"] == "welcome"
        for kind, data in case:
            # send_input, not send_to: an empty frame is valid but send_to refuses it.
            key = "text" if kind == "text" else "bytes"
            await communicator.send_input({"type": "websocket.receive", key: data})
            answer = json.loads(await communicator.receive_from())
            assert answer["type"] in ("error", "pong", "message"), answer
            if answer["type"] == "error":
                assert answer["error"] in CLIENT_ERRORS and answer["detail"]
    finally:
        await communicator.disconnect()
        logging.getLogger().removeHandler(errors)
    assert not errors.records, [record.getMessage() for record in errors.records]
    assert not SESSIONS and metrics.ACTIVE_CONNECTIONS._value.get() == 0
    assert not get_hub().rooms
