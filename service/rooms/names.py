"""Names shared by the settings, the service and its operator commands (no Django imports).

Each name used in more than one place is defined here once: Redis keys, control messages,
close codes and the kinds counted by ws_errors_total.
"""

from enum import StrEnum

CHANNEL_LAYER_PREFIX = "wsapp"
ROOM_PATTERN = r"[A-Za-z0-9_-]{1,64}"  # a room's name, in its URL and in the database (members.Room)
DEFAULT_PORT = 8000  # settings.PORT, and what `rooms.ctl probe` asks when PORT is unset
DRAIN = "control.drain"
UNDRAIN = "control.undrain"

# Redis keys and pub/sub channels of the room hub.
CHANNEL_PREFIX = "wsapp:room:"  # + room: pub/sub channel of the room's frames
SEQ_PREFIX = "wsapp:seq:"  # + room: the room's last seq
HISTORY_PREFIX = "wsapp:history:"  # + room: Stream of the room's kept frames (docs/protocol.md)
EPOCH_PREFIX = "wsapp:epoch:"  # + room: the room's epoch and the replication id it was written under
SENT_PREFIX = "wsapp:sent:"  # + room: hash of the message ids published (or fenced), per sender
SENT_TIMES_PREFIX = "wsapp:sentt:"  # + room: sorted set of the same ids by time, to bound the hash
HEARTBEAT_CHANNEL = "wsapp:heartbeat"
CONTROL_CHANNEL_PREFIX = "wsapp:control:"  # + color: control messages by pub/sub, which full memory allows
ROOM_RATE_PREFIX = "wsapp:rate:"  # + room: messages published in the current second
CREATED_PREFIX = "wsapp:created:"  # + address: rooms it created in the current window
PRESENCE_PREFIX = "wsapp:presence:"  # + room: its connections' entries by expiry (rooms.presence)
ROOMS_INDEX = "wsapp:rooms"  # sorted set: room -> time of its last publish (ms), for the trimmer

# WebSocket close codes the service sends or counts (RFC 6455, section 7.4.1). The WebSocket layer
# (wsserver.protocol) keeps its own (1011 on a keepalive timeout): a server does not import its app.
CLOSE_ABNORMAL = 1006  # counted for a connection that ended without a close frame; never sent
CLOSE_POLICY_VIOLATION = 1008  # rate limit: too many limited frames in a row; a malformed since
CLOSE_SERVER_ERROR = 1011  # a fault of the service while handling this connection
CLOSE_SERVICE_RESTART = 1012  # drained for a release: reconnect at once
CLOSE_TRY_AGAIN_LATER = 1013  # slow consumer: the client fell too far behind

# Handshakes the room limits refuse (docs/security.md, "Redis memory"): the `error` frame's code and the
# reason of ws_handshakes_rejected_total.
ROOM_FULL = "room_full"  # the room has ROOM_MAX_MEMBERS members on this process
ROOM_LIMIT = "room_limit"  # the address created ROOM_CREATIONS_PER_ADDRESS rooms in the window
REDIS_FULL = "redis_full"  # Redis is over REDIS_MEMORY_REFUSE: no room is created


class Error(StrEnum):
    """Kinds of ws_errors_total; the client-caused ones are also the `error` frame codes."""

    # Client-caused: the client has to change what it sends or how fast it reads.
    RATE_LIMITED = "rate_limited"
    RATE_LIMITED_CLOSE = "rate_limited_close"
    UNSUPPORTED_FRAME = "unsupported_frame"
    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_BODY = "invalid_body"
    BODY_TOO_LONG = "body_too_long"
    INVALID_SINCE = "invalid_since"
    INVALID_ID = "invalid_id"
    SLOW_CONSUMER = "slow_consumer"
    ROOM_RATE_LIMITED = "room_rate_limited"  # the room is over ROOM_MESSAGES_PER_SECOND
    # With a database (docs/accounts.md): a private room, or posting where anonymous posting is off,
    # without a ticket that allows it; a ticket that is not valid (forged, expired, another key).
    FORBIDDEN = "forbidden"
    TICKET_INVALID = "ticket_invalid"
    # Server-side: the release gate and the alerts count these (observability/prometheus/rules.yml).
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    SEND = "send"
    REDIS = "redis"
    CHANNEL_LAYER = "channel_layer"
    CONTROL = "control"
    CONSUMER = "consumer"


SERVER_ERRORS = frozenset(
    {Error.INTERNAL, Error.UNAVAILABLE, Error.SEND, Error.REDIS, Error.CHANNEL_LAYER, Error.CONTROL,
     Error.CONSUMER}
)


def control_group(color):
    return f"control.{color}"
