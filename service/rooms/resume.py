"""Resuming a room from `?since=N&epoch=E` (docs/protocol.md, "History and resume").

The consumer joins the room first (live frames for it are held from then on), then reads the room's
epoch, seq S and kept history in one atomic step (hub.backlog), and replays. Every message above S
was published after that read, so after the subscription: it comes live, no gap. Messages up to S
may come live too, held or still on their way from Redis (pub/sub and the script's reply travel on
different connections): the consumer drops them as it drops any room frame at or below the last one
it sent (rooms.consumers.RoomConsumer.room_frame).
"""

import re
from urllib.parse import parse_qsl

SINCE = re.compile(r"[0-9]{1,18}")
EPOCH = re.compile(r"[A-Za-z0-9]{1,40}")
SENDER = re.compile(r"[A-Za-z0-9_-]{16,64}")
TOO_OLD = "too_old"
AHEAD = "ahead"
NEW_EPOCH = "epoch"


class InvalidQuery(ValueError):
    """The handshake's query string has a malformed or repeated `since`, `epoch`, `sender` or
    `presence`."""


class Query:
    """What a handshake's query string asks for: since (None: start live), epoch and sender (None:
    not given)."""

    def __init__(self, query_string):
        values = {}
        for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if name in ("since", "epoch", "sender", "presence"):
                if name in values:
                    raise InvalidQuery(f"give '{name}' once")
                values[name] = value
        self.since = self.epoch = self.sender = None
        self.presence = False
        if "since" in values:
            if not SINCE.fullmatch(values["since"]):
                raise InvalidQuery("'since' must be the last seq you saw: 1 to 18 digits")
            self.since = int(values["since"])
        if "epoch" in values:
            if not EPOCH.fullmatch(values["epoch"]):
                raise InvalidQuery("'epoch' must be the epoch of that seq: 1 to 40 letters and digits")
            self.epoch = values["epoch"]
        if "sender" in values:
            if not SENDER.fullmatch(values["sender"]):
                raise InvalidQuery("'sender' must be 16 to 64 characters of A-Z, a-z, 0-9, _ and -")
            self.sender = values["sender"]
        if "presence" in values:
            if values["presence"] not in ("0", "1"):
                raise InvalidQuery("'presence' must be 1 (send me presence frames) or 0")
            self.presence = values["presence"] == "1"


def resync(room, query, backlog):
    """The resync frame to send before replaying `backlog` to a client resuming from `query`, or None.

    "epoch": the client's epoch is not the room's (its history is not the one the client's seqs
    belong to); "ahead": since is above the room's seq; "too_old": messages after since are no longer
    kept. In every case the replay starts at `from`.
    """
    since = query.since
    if since is None:
        return None
    if query.epoch is not None and query.epoch != backlog.epoch:
        reason = NEW_EPOCH
    elif since > backlog.seq:
        reason = AHEAD
    elif since < backlog.seq and (not backlog.oldest or since < backlog.oldest - 1):
        reason = TOO_OLD
    else:
        return None
    start = backlog.oldest if backlog.frames else backlog.seq + 1
    return {"type": "resync", "room": room, "since": since, "epoch": backlog.epoch, "from": start,
            "seq": backlog.seq, "reason": reason}
