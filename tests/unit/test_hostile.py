"""Hypothesis against the real routed ASGI application, in-process: every message gets one answer,
nothing raises or logs an error, and nothing is left once the client leaves."""

import json
import logging

from asgiref.testing import ApplicationCommunicator
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.asgi import application
from rooms import metrics
from rooms.hub import get_hub
from rooms.names import SERVER_ERRORS, Error
from rooms.sessions import SESSIONS
from tests.helpers import ORIGIN_HEADER as ORIGIN
from tests.hostile import cases

CLIENT_ERRORS = {str(kind) for kind in Error} - {str(kind) for kind in SERVER_ERRORS}
EXAMPLES = 6000
QUERY_EXAMPLES = 1000
# Each wait for an answer: channels' testing default is 1 s, which a machine busy with other work
# (a lab starting beside this tier) exceeded now and then. The answers are what is tested, not their speed.
WAIT = 10


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
        connected, _ = await communicator.connect(WAIT)
        assert connected
        assert (await communicator.receive_json_from(WAIT))["type"] == "welcome"
        for kind, data in case:
            # send_input, not send_to: an empty frame is valid but send_to refuses it.
            key = "text" if kind == "text" else "bytes"
            await communicator.send_input({"type": "websocket.receive", key: data})
            answer = json.loads(await communicator.receive_from(WAIT))
            assert answer["type"] in ("error", "pong", "message"), answer
            if answer["type"] == "error":
                assert answer["error"] in CLIENT_ERRORS and answer["detail"]
    finally:
        await communicator.disconnect(timeout=WAIT)
        logging.getLogger().removeHandler(errors)
    assert not errors.records, [record.getMessage() for record in errors.records]
    assert not SESSIONS and metrics.ACTIVE_CONNECTIONS._value.get() == 0
    assert not get_hub().rooms


queries = st.one_of(
    st.binary(max_size=60),
    st.from_regex(rb"since=[-+ 0-9a-f%]{0,25}", fullmatch=True),
    st.lists(st.sampled_from([b"since=1", b"since=", b"since=x", b"since=" + b"9" * 20, b"since=%31"]),
             max_size=3).map(b"&".join),
)


@settings(max_examples=QUERY_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(query=queries)
async def test_any_handshake_query_gets_a_welcome_or_invalid_since_and_leaves_nothing(query):
    errors = ErrorRecords()
    logging.getLogger().addHandler(errors)
    # The query string exactly as sent: the communicator would parse it out of a path.
    scope = {"type": "websocket", "path": "/ws/rooms/fuzzq/", "query_string": query,
             "headers": [ORIGIN], "subprotocols": []}
    communicator = ApplicationCommunicator(application, scope)
    try:
        await communicator.send_input({"type": "websocket.connect"})
        first = await communicator.receive_output(WAIT)
        assert first["type"] == "websocket.accept", first
        frame = json.loads((await communicator.receive_output(WAIT))["text"])
        if frame["type"] == "error":
            assert frame["error"] == "invalid_since" and frame["detail"]
            assert await communicator.receive_output(WAIT) == {"type": "websocket.close", "code": 1008}
        else:
            assert frame["type"] == "welcome"
    finally:
        await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
        await communicator.wait()
        logging.getLogger().removeHandler(errors)
    assert not errors.records, [record.getMessage() for record in errors.records]
    assert not SESSIONS and metrics.ACTIVE_CONNECTIONS._value.get() == 0
