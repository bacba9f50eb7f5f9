"""Room fan-out: one Redis subscription per room per process, one pre-encoded frame per message.

A message is published by a Lua script (rooms.scripts) that gives it the room's next seq under the
room's epoch, appends the finished frame to the room's history and publishes it, in one atomic step,
so every subscriber of every process, replica and color sees the room's messages in `seq` order, and
the history holds exactly what was published. Each process then hands the same string to each of its
local members; each member checks that it follows on from the last one it was sent (same epoch, seq
one more) and otherwise resumes (rooms.consumers). rooms.redishub has the Redis hub, rooms.localhub
the in-process one for development and unit tests (one worker only).

Why not the channel layer's group_send: it cannot give seq a total order across processes, and
it costs one Redis operation and one consumer dispatch per member per message (docs/protocol.md).
"""

import time
from typing import NamedTuple

from django.conf import settings

from . import metrics
from .frames import frame_epoch, frame_seq, frame_ts
from .presence import is_event


class HubUnavailable(Exception):
    """The hub cannot reach Redis right now. For a publish: the attempt may or may not have run."""


class NotPublished(Exception):  # noqa: N818 (an answer, not a fault)
    """The message was certainly not published, and this attempt never will be: it was never sent
    to Redis, or it was fenced (rooms.scripts)."""


class RoomRateLimited(NotPublished):
    """The room is over ROOM_MESSAGES_PER_SECOND: the message was not published; send it again later."""


class RoomRefused(Exception):  # noqa: N818 (an answer, not a fault)
    """The room does not exist and may not be created now; args[0] is the reason, an error code."""


class Published(NamedTuple):
    epoch: str
    seq: int


class Duplicate(Exception):  # noqa: N818 (not an error: the message is in the room already)
    """This sender's message id was published already, as (epoch, seq); nothing was published now."""

    def __init__(self, epoch, seq):
        super().__init__(epoch, seq)
        self.epoch = epoch
        self.seq = seq


def replay_page():
    """Frames per page of a replay: a page of the largest frames fits in OUTBOUND_QUEUE_BYTES, so a
    resuming client that does not read pins no more than a live one (a body of MAX_BODY_CHARS
    characters is at most 12 bytes each once JSON-escaped, plus the frame's other fields)."""
    return max(1, settings.OUTBOUND_QUEUE_BYTES // (12 * settings.MAX_BODY_CHARS + 256))


def sent_field(sender, msg_id):
    """A message id as the room keeps it: scoped to its sender, so no other member can claim it."""
    return f"{sender}:{msg_id}"


class BaseHub:
    """What both hubs share: the local members of each room, and handing them a room's frames.

    A member has room_frame(frame, epoch, seq), presence_frame(frame), reconcile(epoch, seq, final)
    and `presence_entry` (rooms.presence; None until registered).
    """

    def __init__(self):
        self.rooms = {}  # room -> set of members

    def fan_out(self, room, frame):
        members = self.rooms.get(room)
        if not members:
            return
        if is_event(frame):  # a join or leave (rooms.presence): no seq, only for members who asked
            for member in tuple(members):
                member.presence_frame(frame)
            return
        epoch, seq = frame_epoch(frame), frame_seq(frame)
        metrics.BROADCAST_DELAY.observe(max(0.0, time.time() - frame_ts(frame)))
        for member in tuple(members):
            member.room_frame(frame, epoch, seq)
        metrics.MESSAGES_SENT.inc(len(members))


_hub = None


def get_hub():
    global _hub
    if _hub is None:
        if settings.REDIS_ENABLED:
            from .redishub import RedisHub

            _hub = RedisHub(settings.REDIS_URL, settings.REDIS_SENTINELS)
        else:
            from .localhub import LocalHub

            _hub = LocalHub()
    return _hub
