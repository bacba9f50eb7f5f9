"""Room fan-out: one Redis subscription per room per process, one pre-encoded frame per message.

A message is published by a Lua script that increments the room's sequence number, appends the
finished frame to the room's history and publishes it, in one atomic step, so every subscriber of
every process, replica and color sees the room's messages in `seq` order, and the history holds
exactly what was published. Each process then hands the same string to each of its local members.
Without REDIS_URL the LocalHub does the same inside one process.

History (docs/protocol.md, "History and resume"): a Redis Stream per room whose entry ids are
`<seq>-0`, trimmed to ROOM_HISTORY_MAX entries and to ROOM_HISTORY_SECONDS (by Redis's clock). Both
keys of a room expire ROOM_HISTORY_SECONDS after its last message, so an idle room costs nothing.
While a process has members in a room it keeps the room's seq key alive (keep_alive), so that a
connected client never sees the counter go back to 1; the history itself is not kept alive: its
entries are too old to be replayed anyway.

Why not the channel layer's group_send: it cannot give seq a total order across processes, and
it costs one Redis operation and one consumer dispatch per member per message (docs/protocol.md).
"""

import asyncio
import json
import logging
import time
from collections import deque
from typing import NamedTuple

import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from . import metrics
from .names import CHANNEL_PREFIX, HEARTBEAT_CHANNEL, HISTORY_PREFIX, SEQ_PREFIX, Error

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
HEARTBEAT_STALE_SECONDS = 10.0
SUBSCRIBE_TIMEOUT = 5.0
# One immediate retry (a pooled connection that died while idle), then fail: redis-py's default
# backs off for seconds, during which clients would wait instead of getting an error frame.
FAIL_FAST = Retry(NoBackoff(), 1)

# Drops history entries older than the cutoff (ms); every entry is {"t", ms, "f", frame}.
TRIM_LUA = """
local function trim(history, cutoff)
  local first = redis.call('XRANGE', history, '-', '+', 'COUNT', 1)
  if #first == 0 or tonumber(first[1][2][2]) >= cutoff then return end
  local start = '-'
  while true do
    local batch = redis.call('XRANGE', history, start, '+', 'COUNT', 64)
    if #batch == 0 then redis.call('DEL', history) return end
    for _, entry in ipairs(batch) do
      if tonumber(entry[2][2]) >= cutoff then redis.call('XTRIM', history, 'MINID', entry[1]) return end
    end
    start = '(' .. batch[#batch][1]
  end
end
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
"""

# KEYS: seq, history, channel. ARGV: frame head, frame tail, history max, history seconds.
PUBLISH_SCRIPT = TRIM_LUA + """
local seq = redis.call('INCR', KEYS[1])
local frame = ARGV[1] .. seq .. ARGV[2]
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', ARGV[3], seq .. '-0', 't', now, 'f', frame)
if type(added) == 'table' and added.err then
  -- The history is ahead of the counter (its key was deleted): it belongs to an older counter.
  redis.call('DEL', KEYS[2])
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], seq .. '-0', 't', now, 'f', frame)
end
trim(KEYS[2], now - ARGV[4] * 1000)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', KEYS[3], frame)
return seq
"""

# KEYS: seq, history. ARGV: since ('' for none), history seconds, page size.
# Returns {seq, oldest kept seq (0: none), the first page of frames with seq > since...}; of all
# kept frames when since is ahead of seq. Atomic with PUBLISH_SCRIPT, so the frames end at seq.
BACKLOG_SCRIPT = TRIM_LUA + """
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
if seq > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if ARGV[1] == '' then return {seq, 0} end
trim(KEYS[2], now - ARGV[2] * 1000)
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #first == 0 or tonumber(string.match(last[1][1], '^%d+')) > seq then return {seq, 0} end
local after = tonumber(ARGV[1])
if after > seq then after = 0 end
local result = {seq, tonumber(string.match(first[1][1], '^%d+'))}
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], (after + 1) .. '-0', '+', 'COUNT', ARGV[3])) do
  result[#result + 1] = entry[2][4]
end
return result
"""


class HubUnavailable(Exception):
    """The hub cannot reach Redis right now."""


def frame_parts(room, session, body, ts):
    """The message frame around its seq, which only the publisher (Redis) knows."""
    head = '{"type":"message","room":%s,"seq":' % json.dumps(room)
    tail = ',"body":%s,"session":%s,"ts":%s}' % (json.dumps(body), json.dumps(session), ts)
    return head, tail


def frame_ts(frame):
    return float(frame[frame.rindex('"ts":') + 5 : -1])


def frame_seq(frame):
    start = frame.index('"seq":') + 6
    return int(frame[start : frame.index(",", start)])


def replay_page():
    """Frames per page of a replay: a page of the largest frames fits in OUTBOUND_QUEUE_BYTES, so a
    resuming client that does not read pins no more than a live one (a body of MAX_BODY_CHARS
    characters is at most 12 bytes each once JSON-escaped, plus the frame's other fields)."""
    return max(1, settings.OUTBOUND_QUEUE_BYTES // (12 * settings.MAX_BODY_CHARS + 256))


class Backlog(NamedTuple):
    """A room's state read atomically: its seq, its oldest kept seq (0: none) and the first page
    (replay_page()) of the kept frames to replay; hub.page() gives the next pages."""

    seq: int
    oldest: int
    frames: list


class BaseHub:
    def __init__(self):
        self.rooms = {}  # room -> set of members; a member has deliver(frame) and resume(frame, seq)
        self.fanned_out = {}  # room -> the seq of the last frame handed to its members here

    def last_seq(self, room):
        """The seq of the last frame handed to the room's local members (0 if none)."""
        return self.fanned_out.get(room, 0)

    def fan_out(self, room, frame):
        members = self.rooms.get(room)
        if not members:
            return
        seq, last = frame_seq(frame), self.fanned_out.get(room)
        if last is not None and seq != last + 1:
            # Frames were missed (the subscription was down while the room published) or the
            # counter went back (its keys were lost): members would see a silent gap or drop what
            # follows as seen. They resume from what they have instead (docs/protocol.md).
            log.warning("room %r: seq %d after %d; its %d members here resume", room, seq, last, len(members))
            metrics.ERRORS.labels(Error.REDIS).inc()  # Redis lost a subscription or keys
            for member in tuple(members):
                member.resume(frame, seq)
            self.fanned_out[room] = seq
            return
        self.fanned_out[room] = seq
        metrics.BROADCAST_DELAY.observe(max(0.0, time.time() - frame_ts(frame)))
        for member in tuple(members):
            member.deliver(frame)
        metrics.MESSAGES_SENT.inc(len(members))


class LocalHub(BaseHub):
    """In-process fan-out and history for development and unit tests (one worker only).

    Behaves as RedisHub does: a room's seq and history are forgotten ROOM_HISTORY_SECONDS after its
    last message or its last member leaving, whichever is later.
    """

    connected = True
    clock = staticmethod(time.monotonic)

    def __init__(self):
        super().__init__()
        self.seq = {}
        self.history = {}  # room -> deque of (seq, time, frame)
        self.expires = {}  # room -> clock() after which a room without members is forgotten

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
            for table in (self.seq, self.history, self.expires):
                table.pop(room, None)

    async def leave(self, room, member):
        members = self.rooms.get(room)
        if members is not None:
            members.discard(member)
            if not members:
                del self.rooms[room]
                self.fanned_out.pop(room, None)
                self._touch(room)

    def _touch(self, room):
        if room in self.seq:
            self.expires[room] = self.clock() + settings.ROOM_HISTORY_SECONDS

    def _kept(self, room):
        """The room's history without what is too old."""
        history = self.history.get(room, ())
        cutoff = self.clock() - settings.ROOM_HISTORY_SECONDS
        while history and history[0][1] < cutoff:
            history.popleft()
        return history

    async def publish(self, room, session, body):
        history = self._kept(room) or self.history.setdefault(room, deque())
        seq = self.seq[room] = self.seq.get(room, 0) + 1
        head, tail = frame_parts(room, session, body, time.time())
        frame = f"{head}{seq}{tail}"
        history.append((seq, self.clock(), frame))
        while len(history) > settings.ROOM_HISTORY_MAX:
            history.popleft()
        self._touch(room)
        self.fan_out(room, frame)
        return seq

    async def backlog(self, room, since):
        history = self._kept(room)
        seq = self.seq.get(room, 0)
        if since is None or not history:
            return Backlog(seq, 0, [])
        after = 0 if since > seq else since
        return Backlog(seq, history[0][0], self._after(history, after, seq))

    async def page(self, room, after, upto):
        """The next page of kept frames with after < seq <= upto (it starts above after + 1 if
        those were dropped meanwhile)."""
        return self._after(self._kept(room), after, upto)

    @staticmethod
    def _after(history, after, upto):
        frames = [frame for number, _, frame in history if after < number <= upto]
        return frames[: replay_page()]


class RedisHub(BaseHub):
    def __init__(self, url):
        super().__init__()
        self.url = url
        self.subscribed = {}  # room -> Event set once Redis confirmed the subscription
        self.pubsub = None
        self.last_beat = 0.0
        self.tasks = []
        self.redis = None
        self.listener = None
        self.script = None
        self.backlog_script = None

    @property
    def connected(self):
        return self.pubsub is not None and time.monotonic() - self.last_beat < HEARTBEAT_STALE_SECONDS

    async def start(self):
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=settings.REDIS_MAX_CONNECTIONS,
            timeout=settings.REDIS_CONNECT_TIMEOUT,
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
            retry=FAIL_FAST,
        )
        self.redis = aioredis.Redis(connection_pool=pool)
        # The subscriber blocks on reads for as long as rooms are quiet: no socket timeout;
        # the heartbeat notices a dead connection instead.
        self.listener = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT, decode_responses=True,
            retry=FAIL_FAST,
        )
        self.script = self.redis.register_script(PUBLISH_SCRIPT)
        self.backlog_script = self.redis.register_script(BACKLOG_SCRIPT)
        self.history_max = settings.ROOM_HISTORY_MAX
        self.history_seconds = settings.ROOM_HISTORY_SECONDS
        self.tasks = [
            asyncio.create_task(self._listen()),
            asyncio.create_task(self._beat()),
            asyncio.create_task(self._keep_alive()),
        ]

    async def stop(self):
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for client in (self.redis, self.listener):
            if client is not None:
                await client.aclose()

    async def join(self, room, member):
        members = self.rooms.get(room)
        first = members is None
        if first:
            members = self.rooms[room] = set()
            self.subscribed[room] = asyncio.Event()
        members.add(member)
        try:
            if first and self.pubsub is not None:
                await self.pubsub.subscribe(CHANNEL_PREFIX + room)
            await asyncio.wait_for(self.subscribed[room].wait(), SUBSCRIBE_TIMEOUT)
        except (TimeoutError, KeyError):
            await self.leave(room, member)
            raise HubUnavailable(f"no subscription to room {room!r} within {SUBSCRIBE_TIMEOUT}s") from None
        except (aioredis.RedisError, OSError) as exc:  # the subscriber's connection broke: it resubscribes
            await self.leave(room, member)
            raise HubUnavailable(f"subscribing to room {room!r} failed: {exc}") from exc

    async def leave(self, room, member):
        members = self.rooms.get(room)
        if members is None:
            return
        members.discard(member)
        if members:
            return
        del self.rooms[room]
        self.subscribed.pop(room, None)
        self.fanned_out.pop(room, None)
        if self.pubsub is not None:
            try:
                await self.pubsub.unsubscribe(CHANNEL_PREFIX + room)
            except Exception:  # the listener notices a broken connection and resubscribes
                metrics.ERRORS.labels(Error.REDIS).inc()

    async def publish(self, room, session, body):
        head, tail = frame_parts(room, session, body, time.time())
        keys = [SEQ_PREFIX + room, HISTORY_PREFIX + room, CHANNEL_PREFIX + room]
        try:
            return await self.script(keys=keys, args=[head, tail, self.history_max, self.history_seconds])
        except (aioredis.RedisError, OSError) as exc:
            raise HubUnavailable(str(exc)) from exc

    async def backlog(self, room, since):
        """The room's seq and, if since is given, its kept frames after since (all, if it is ahead)."""
        keys = [SEQ_PREFIX + room, HISTORY_PREFIX + room]
        args = ["" if since is None else since, self.history_seconds, replay_page()]
        try:
            seq, oldest, *frames = await self.backlog_script(keys=keys, args=args)
        except (aioredis.RedisError, OSError) as exc:
            raise HubUnavailable(str(exc)) from exc
        return Backlog(seq, oldest, [frame.decode() for frame in frames])

    async def page(self, room, after, upto):
        """The next page of kept frames with after < seq <= upto (it starts above after + 1 if
        those were trimmed meanwhile)."""
        try:
            entries = await self.redis.xrange(HISTORY_PREFIX + room, f"{after + 1}-0", f"{upto}-0",
                                              count=replay_page())
        except (aioredis.RedisError, OSError) as exc:
            raise HubUnavailable(str(exc)) from exc
        return [fields[b"f"].decode() for _, fields in entries]

    async def _keep_alive(self):
        """Keep the seq key of every room with local members from expiring (see the module doc)."""
        interval = max(0.2, min(60.0, self.history_seconds / 3))
        while True:
            await asyncio.sleep(interval)
            rooms = list(self.rooms)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for room in rooms:
                        pipe.expire(SEQ_PREFIX + room, self.history_seconds)
                    await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.ERRORS.labels(Error.REDIS).inc()
                log.warning("refreshing the seq keys of %d rooms failed: %s", len(rooms), exc)

    async def _listen(self):
        delay = 0.2
        while True:
            pubsub = self.listener.pubsub()
            try:
                rooms = set(self.rooms)
                await pubsub.subscribe(HEARTBEAT_CHANNEL, *(CHANNEL_PREFIX + room for room in rooms))
                self.pubsub = pubsub
                self.last_beat = time.monotonic()
                # Rooms joined while the subscribe above was in flight saw no pubsub yet.
                missed = set(self.rooms) - rooms
                if missed:
                    await pubsub.subscribe(*(CHANNEL_PREFIX + room for room in missed))
                async for message in pubsub.listen():
                    delay = 0.2
                    self._handle(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.ERRORS.labels(Error.REDIS).inc()
                log.warning("room subscriber lost Redis (%s); retrying in %.1fs", exc, delay)
            finally:
                self.pubsub = None
                for event in self.subscribed.values():
                    event.clear()
                try:
                    await pubsub.aclose()
                except Exception:
                    pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _handle(self, message):
        kind, channel = message["type"], message["channel"]
        if channel == HEARTBEAT_CHANNEL:
            self.last_beat = time.monotonic()
        elif kind == "message":
            self.fan_out(channel[len(CHANNEL_PREFIX) :], message["data"])
        elif kind == "subscribe":
            event = self.subscribed.get(channel[len(CHANNEL_PREFIX) :])
            if event is not None:
                event.set()

    async def _beat(self):
        while True:
            try:
                await self.redis.publish(HEARTBEAT_CHANNEL, "1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat to Redis failed: %s", exc)
            if self.pubsub is not None and not self.connected:
                self.tasks[0].cancel()  # a silent connection: restart the subscriber
                self.tasks[0] = asyncio.create_task(self._listen())
            await asyncio.sleep(HEARTBEAT_SECONDS)


_hub = None


def get_hub():
    global _hub
    if _hub is None:
        _hub = RedisHub(settings.REDIS_URL) if settings.REDIS_URL else LocalHub()
    return _hub
