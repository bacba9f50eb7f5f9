"""Resuming a room from `?since=N` (docs/protocol.md, "History and resume").

The consumer joins the room first (live frames for it are buffered from then on), then reads the
room's seq S and kept history in one atomic step (hub.backlog), and replays. Every message above S
was published after that read, so after the subscription: it comes live, no gap. Messages up to S
may come live too, buffered or still on their way from Redis (pub/sub and the script's reply travel
on different connections): the consumer drops them until the first live message above S, so no
duplicate. Live frames come in seq order, so from then on nothing needs checking.
"""

import re
from urllib.parse import parse_qsl

from .hub import frame_seq

SINCE = re.compile(r"[0-9]{1,18}")
TOO_OLD = "too_old"
AHEAD = "ahead"
MESSAGE_HEAD = '{"type":"message",'


class InvalidSince(ValueError):
    """The `since` query parameter is malformed or repeated."""


def parse_since(query_string):
    """The `since` of a handshake's query string (bytes), or None when there is none."""
    values = [value for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
              if name == "since"]
    if not values:
        return None
    if len(values) > 1:
        raise InvalidSince("give 'since' once")
    if not SINCE.fullmatch(values[0]):
        raise InvalidSince("'since' must be the last seq you saw: 1 to 18 digits")
    return int(values[0])


def resync(room, since, backlog):
    """The resync frame to send before replaying `backlog` to a client resuming from `since`, or None.

    "ahead": since is above the room's seq (its counter was reset or its history lost);
    "too_old": messages after since are no longer kept. Either way the replay starts at `from`.
    """
    if since is None:
        return None
    if since > backlog.seq:
        reason = AHEAD
    elif since < backlog.seq and (not backlog.oldest or since < backlog.oldest - 1):
        reason = TOO_OLD
    else:
        return None
    start = backlog.oldest if backlog.frames else backlog.seq + 1
    return {"type": "resync", "room": room, "since": since, "from": start, "seq": backlog.seq,
            "reason": reason}


def after_seq(frames, seq):
    """The frames without the room messages at or below seq (those the backlog already holds)."""
    return [frame for frame in frames if not frame.startswith(MESSAGE_HEAD) or frame_seq(frame) > seq]


def seen(frame, consumer):
    """Whether a frame for a resuming consumer is a room message the backlog already held."""
    if not frame.startswith(MESSAGE_HEAD):
        return False
    if frame_seq(frame) <= consumer.skip_to:
        return True
    consumer.skip_to = None
    return False
