"""Room message frames, built around the epoch and seq that only Redis knows, and read back without
parsing the JSON (docs/protocol.md, "Frames").

A frame is `{"type":"message","room":R,"epoch":"E","seq":N,"body":...,"session":...,"id":...,"ts":T}`:
the publisher (the Lua script, or LocalHub) joins head + epoch + seq + tail. "ts" stays last and
"epoch" before "seq", so that each field is found by its position. Room names, epochs and seqs hold
no quote or comma, so the searches below cannot be fooled by a body.
"""

import json
import secrets
from typing import NamedTuple

EPOCH_FIELD = '"epoch":"'
SERVER_ID_MARK = "~"  # a message id the server made: clients' ids cannot contain it


def frame_parts(room, session, body, ts, msg_id, name=None):
    """The frame before its epoch, and after its seq. `name`: the sender's, from its ticket (with a
    database), or None: no "name" field (anonymous)."""
    head = '{"type":"message","room":%s,%s' % (json.dumps(room), EPOCH_FIELD)
    shown = "" if name is None else ',"name":%s' % json.dumps(name)
    tail = ',"body":%s,"session":%s,"id":%s%s,"ts":%s}' % (json.dumps(body), json.dumps(session),
                                                         json.dumps(msg_id), shown, ts)
    return head, tail


def join_parts(head, epoch, seq, tail):
    """The frame (as the publish script joins it)."""
    return f'{head}{epoch}","seq":{seq}{tail}'


def server_id():
    """An id for a message sent without one, so that every published message has one."""
    return SERVER_ID_MARK + secrets.token_urlsafe(12)


def frame_ts(frame):
    return float(frame[frame.rindex('"ts":') + 5 : -1])


def frame_seq(frame):
    start = frame.index('"seq":') + 6
    return int(frame[start : frame.index(",", start)])


def frame_epoch(frame):
    """The frame's epoch ("" for a frame published before epochs existed)."""
    start = frame.find(EPOCH_FIELD)
    if start < 0:
        return ""
    start += len(EPOCH_FIELD)
    return frame[start : frame.index('"', start)]


class Backlog(NamedTuple):
    """A room's state read atomically: its epoch, its seq, its oldest kept seq (0: none) and the first
    page of the kept frames to replay (rooms.hub.replay_page); hub.page() gives the next pages."""

    epoch: str
    seq: int
    oldest: int
    frames: list
