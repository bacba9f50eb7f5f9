"""The WebSocket server protocol Uvicorn runs (`--ws wsserver.protocol:WebSocketProtocol`).

This module holds only what the application needs to know about it, so that importing the name of
the extension does not import Uvicorn. The protocol is in `protocol.py`; the Uvicorn internals it
overrides or relies on are listed in `uvicorn_internals.py`, checked by
tests/unit/test_uvicorn_internals.py.
"""

import os

# ASGI scope extension: a synchronous send of a text frame to an idle connection (see protocol.py).
SEND_TEXT_NOWAIT = "wsapp.send_text_nowait"

# Flow control of each socket (docs/security.md, "Memory per connection"). While more than
# WS_WRITE_BUFFER_HIGH bytes wait to be sent, the connection neither sends nor reads (so the pongs a
# client's pings are owed cannot pile up); it resumes below WS_WRITE_BUFFER_LOW, and one that stays
# over the mark for WS_WRITE_STALL_SECONDS is closed with 1013. config.settings validates the same
# variables at startup; the server reads them itself because it does not import its application.
WRITE_BUFFER_HIGH = 65536  # asyncio's and uvloop's own default
WRITE_BUFFER_LOW = 16384
WRITE_STALL_SECONDS = 20.0


def write_limits(environ=os.environ):
    """(high, low, stall seconds) from the environment, defaults where a variable is unset."""

    def read(name, default, kind):
        raw = environ.get(name, "").strip()
        return kind(raw) if raw else default

    high = read("WS_WRITE_BUFFER_HIGH", WRITE_BUFFER_HIGH, int)
    low = read("WS_WRITE_BUFFER_LOW", WRITE_BUFFER_LOW, int)
    return high, low, read("WS_WRITE_STALL_SECONDS", WRITE_STALL_SECONDS, float)
