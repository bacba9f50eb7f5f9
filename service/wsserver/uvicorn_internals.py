"""The Uvicorn and websockets internals that wsserver.protocol overrides or relies on.

WebSocketProtocol subclasses a class that Uvicorn does not document as an API, so an upgrade of
either package may break it without an error until a connection misbehaves.
tests/unit/test_uvicorn_internals.py checks every entry below against the installed packages and
says what changed. To upgrade: change the pins in requirements.txt, run that test, read the new
uvicorn/protocols/websockets/websockets_sansio_impl.py against this list, adapt protocol.py, then
update the list (versions, and the hash of each method replaced whole).
"""

UVICORN_VERSION = "0.38.0"
WEBSOCKETS_VERSION = "17.4"
BASE_MODULE = "uvicorn.protocols.websockets.websockets_sansio_impl"
BASE_CLASS = "WebSocketsSansIOProtocol"

# Methods of the base class that the subclass extends (and calls), with their parameters.
EXTENDED = {
    "__init__": ("self", "config", "server_state", "app_state", "_loop"),
    "connection_made": ("self", "transport"),
    "connection_lost": ("self", "exc"),
    "data_received": ("self", "data"),
    "handle_connect": ("self", "event"),  # sets self.scope only when it answers 101
    "handle_close": ("self", "event"),
    "handle_parser_exception": ("self",),  # writes what conn.data_to_send() holds, then closes
    "shutdown": ("self",),
    "send": ("self", "message"),  # drops empty messages (`if text_data:`): the subclass sends data
}

# Methods replaced whole, without calling the base: a change to Uvicorn's version must be merged by
# hand. Value: the first 16 hex digits of the sha256 of the base method's dedented source.
REPLACED = {
    "send_receive_event_to_app": "21c9365074d33dc1",
    "receive": "150d41c7f477225e",  # resumes reading only if the write buffer allows it too
}

# Methods the subclass adds. If the base class (not asyncio's) gains one, Uvicorn now does that
# itself, possibly differently: pause_writing/resume_writing are its missing flow control.
ADDED = (
    "pause_writing",
    "resume_writing",
    "write_stalled",
    "schedule_keepalive",
    "check_alive",
    "fail",
    "abort_later",
    "send_text_nowait",
    "is_open",
    "send_data",
)

# Attributes the base class sets on self and the subclass reads, writes or replaces.
ATTRIBUTES = (
    "config",
    "loop",
    "logger",
    "client",
    "transport",
    "conn",
    "queue",  # replaced by Inbox
    "writable",  # replaced by Gate
    "handshake_complete",
    "close_sent",
    "scope",
    "request",  # let go after the handshake
    "response",
    "bytes",
    "curr_msg_data_type",
    "read_paused",
)

# The base class may call only these methods on the queue and the write gate, which the subclass
# replaces with the smaller Inbox and Gate.
QUEUE_METHODS = ("put_nowait", "get", "empty")
WRITABLE_METHODS = ("wait", "set", "clear", "is_set")

# uvicorn.config.Config attributes read.
CONFIG_ATTRIBUTES = ("ws_ping_interval", "ws_ping_timeout")

# websockets.server.ServerProtocol (self.conn) attributes and methods used.
CONNECTION_ATTRIBUTES = (
    "state",
    "extensions",
    "close_rcvd",
    "close_sent",
    "parser_exc",
    "send_close",
    "send_ping",
    "send_text",
    "send_binary",
    "data_to_send",
)

# Behaviour relied on, shown by tests/unit/test_wsprotocol.py rather than listed:
# - websockets' ServerProtocol serializes a text frame as text_frame() does (the shared fan-out frame);
# - after it parsed a close frame, the only ProtocolError it raises is "incomplete fragmented message"
#   (a close between fragments, answered with the close's own code: Autobahn 7.1.5).
