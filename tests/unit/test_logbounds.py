"""config.logbounds: one line of bounded size per log record, tracebacks only for the service's own
errors (the integration tier checks the same through a real Uvicorn)."""

import logging
import sys

from hypothesis import given
from hypothesis import strategies as st

from config.logbounds import MAX_CHARS, BoundedRecord, bounded

MARKER_CHARS = len("... [99999999 characters]")


@given(st.text(max_size=3 * MAX_CHARS))
def test_any_text_becomes_one_line_of_bounded_length(text):
    line = bounded(text)
    assert len(line.splitlines()) <= 1 and line.isprintable()
    assert len(line) <= MAX_CHARS + MARKER_CHARS
    if text.isprintable() and len(text) <= MAX_CHARS:
        assert line == text
    else:
        assert line != text


def record(name, status=None, message="Not Found: %s", args=("/ws/" + "a" * 5000,)):
    try:
        raise ValueError("the client's")
    except ValueError:
        exc_info = sys.exc_info()
    entry = logging.LogRecord(name, logging.WARNING, __file__, 1, message, args, exc_info)
    if status is not None:
        entry.status_code = status
    return entry


def test_a_request_refused_for_the_clients_fault_loses_its_traceback():
    for entry in (record("django.security.DisallowedHost", 400), record("django.request", 404)):
        assert BoundedRecord().filter(entry)
        assert entry.exc_info is None
        assert len(logging.Formatter().format(entry).splitlines()) == 1


def test_the_services_own_error_keeps_its_traceback_and_a_bounded_message():
    for entry in (record("django.request", 500), record("rooms.consumers")):
        assert BoundedRecord().filter(entry)
        assert entry.exc_info is not None
        formatted = logging.Formatter().format(entry)
        assert "Traceback" in formatted and len(formatted.splitlines()[0]) <= MAX_CHARS + MARKER_CHARS
