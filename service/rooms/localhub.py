"""In-process fan-out and history for development and unit tests (one worker only).

Behaves as RedisHub does: a room's epoch, seq and history are forgotten ROOM_HISTORY_SECONDS after
its last message or its last member leaving, whichever is later, and its next epoch is a new one; a
sender's message ids are kept ROOM_IDS_SECONDS, at most ROOM_IDS_MAX per room; the room limits
(ROOM_MESSAGES_PER_SECOND, ROOM_CREATIONS_PER_ADDRESS) hold within this process. Nothing here can fail
half-way, so fence() only reports.
"""

import asyncio
import secrets
import time
from collections import OrderedDict, deque

from django.conf import settings

from .frames import Backlog, frame_parts, join_parts
from .hub import BaseHub, Duplicate, Published, RoomRateLimited, RoomRefused, replay_page, sent_field
from .names import ROOM_LIMIT
from .presence import PresenceSet, grace_ms, snapshot


class LocalHub(BaseHub):
    connected = True
    can_publish = True  # in this process only: without Redis no other process has the room
    clock = staticmethod(time.monotonic)

    def __init__(self):
        super().__init__()
        self.epoch = {}
        self.seq = {}
        self.history = {}  # room -> deque of (seq, time, frame)
        self.sent = {}  # room -> OrderedDict {sender:id: (epoch, seq, time)}, oldest first
        self.expires = {}  # room -> clock() after which a room without members is forgotten
        self.rate = {}  # room -> (second, messages published in it)
        self.created = {}  # address -> (end of its window, rooms it created in it)
        self.presence = {}  # room -> PresenceSet (rooms.presence)

    async def start(self):
        pass

    async def stop(self):
        pass

    async def join(self, room, member):
        if room not in self.rooms:
            self._forget_idle()
        self.rooms.setdefault(room, set()).add(member)

    def _forget_idle(self):
        """Drop every room without members idle too long, as if its keys had expired (one pass over
        the idle rooms per new room joined: enough for development and tests)."""
        now = self.clock()
        idle = [room for room, expires in self.expires.items() if expires < now and room not in self.rooms]
        for room in idle:
            for table in (self.epoch, self.seq, self.history, self.expires, self.sent, self.rate):
                table.pop(room, None)

    async def leave(self, room, member):
        members = self.rooms.get(room)
        if members is not None:
            members.discard(member)
            if not members:
                del self.rooms[room]
                self._touch(room)

    async def presence_join(self, room, entry):
        users, anonymous = self._presence(room, "join", [entry])
        return snapshot(room, users, anonymous)

    def presence_leave(self, room, entry):
        self._presence(room, "leave", [entry])
        asyncio.get_running_loop().call_later(grace_ms() / 1000 + 0.01, self._presence, room, "refresh", [])

    def _presence(self, room, op, entries):
        """As the Redis script does, in this process; an open connection's entry never expires here."""
        people = self.presence.setdefault(room, PresenceSet())
        frames, result = people.apply(room, op, entries, self.clock() * 1000, ttl=float("inf"))
        if not people.entries:
            del self.presence[room]
        for frame in frames:
            self.fan_out(room, frame)
        return result

    def _touch(self, room):
        if room in self.seq:
            self.expires[room] = self.clock() + settings.ROOM_HISTORY_SECONDS

    def _epoch(self, room):
        if room not in self.epoch:
            self.epoch[room] = secrets.token_hex(8)
        return self.epoch[room]

    def _kept(self, room):
        """The room's history without what is too old."""
        history = self.history.get(room, ())
        cutoff = self.clock() - settings.ROOM_HISTORY_SECONDS
        while history and history[0][1] < cutoff:
            history.popleft()
        return history

    def _sent(self, room):
        """The room's sent ids without those too old or too many."""
        sent = self.sent.setdefault(room, OrderedDict())
        cutoff = self.clock() - settings.ROOM_IDS_SECONDS
        while sent and (len(sent) > settings.ROOM_IDS_MAX or next(iter(sent.values()))[2] < cutoff):
            sent.popitem(last=False)
        return sent

    async def publish(self, room, session, body, msg_id, sender, attempt=None, name=None):
        sent, field = self._sent(room), sent_field(sender, msg_id)
        if field in sent:
            raise Duplicate(*sent[field][:2])
        limit, second = settings.ROOM_MESSAGES_PER_SECOND, int(self.clock())
        count = self.rate[room][1] + 1 if self.rate.get(room, (None,))[0] == second else 1
        self.rate[room] = (second, count)
        if limit and count > limit:
            raise RoomRateLimited(f"room {room!r} is over {limit} messages/s")
        history = self._kept(room) or self.history.setdefault(room, deque())
        epoch = self._epoch(room)
        seq = self.seq[room] = self.seq.get(room, 0) + 1
        head, tail = frame_parts(room, session, body, time.time(), msg_id, name)
        frame = join_parts(head, epoch, seq, tail)
        history.append((seq, self.clock(), frame))
        while len(history) > settings.ROOM_HISTORY_MAX:
            history.popleft()
        kept = sum(len(entry[2].encode()) for entry in history)
        while len(history) > 1 and kept > settings.ROOM_HISTORY_BYTES:  # the newest always stays
            kept -= len(history.popleft()[2].encode())
        sent[field] = (epoch, seq, self.clock())
        self._sent(room)
        self._touch(room)
        self.fan_out(room, frame)
        return Published(epoch, seq)

    async def fence(self, room, msg_id, sender, attempt):
        known = self._sent(room).get(sent_field(sender, msg_id))
        return None if known is None else Published(*known[:2])

    async def backlog(self, room, since, epoch=None, address=None):
        if room not in self.epoch and address is not None and settings.ROOM_CREATIONS_PER_ADDRESS:
            now = self.clock()
            end, count = self.created.get(address, (0.0, 0))
            if end < now:
                end, count = now + settings.ROOM_CREATIONS_WINDOW_SECONDS, 0
            if count >= settings.ROOM_CREATIONS_PER_ADDRESS:
                raise RoomRefused(ROOM_LIMIT)
            self.created[address] = (end, count + 1)
        history = self._kept(room)
        current, seq = self._epoch(room), self.seq.get(room, 0)
        if since is None or not history:
            return Backlog(current, seq, 0, [])
        after = 0 if since > seq or (epoch is not None and epoch != current) else since
        return Backlog(current, seq, history[0][0], self._after(history, after, seq))

    async def page(self, room, after, upto):
        """The next page of kept frames with after < seq <= upto (it starts above after + 1 if
        those were dropped meanwhile)."""
        return self._after(self._kept(room), after, upto)

    @staticmethod
    def _after(history, after, upto):
        frames = [frame for number, _, frame in history if after < number <= upto]
        return frames[: replay_page()]
