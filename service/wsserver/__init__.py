"""The WebSocket server protocol Uvicorn runs (`--ws wsserver.protocol:WebSocketProtocol`).

This module holds only what the application needs to know about it, so that importing the name of
the extension does not import Uvicorn. The protocol is in `protocol.py`; the Uvicorn internals it
overrides or relies on are listed in `uvicorn_internals.py`, checked by
tests/unit/test_uvicorn_internals.py.
"""

# ASGI scope extension: a synchronous send of a text frame to an idle connection (see protocol.py).
SEND_TEXT_NOWAIT = "wsapp.send_text_nowait"
