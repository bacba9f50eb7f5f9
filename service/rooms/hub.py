"""Room fan-out: one Redis subscription per room per process, one pre-encoded frame per message.

A message is published by a Lua script that increments the room's sequence number, appends the
finished frame to the room's history and publishes it, in one atomic step, so every subscriber of
every process, replica and color sees the room's messages in `seq` order, and the history holds
exactly what was published. Each process then hands the same string to each of its local members.
Without REDIS_URL the LocalHub does the same inside one process.

History (docs/protocol.md, "History and resume"): a Redis Stream per room whose entry ids are
`<seq>-0`, trimmed to ROOM_HISTORY_MAX entries, ROOM_HISTORY_BYTES of frames and ROOM_HISTORY_SECONDS
(by Redis's clock). Both keys of a room expire ROOM_HISTORY_SECONDS after its last message, so an
idle room costs nothing.
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
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from . import metrics
from .names import CHANNEL_PREFIX, HEARTBEAT_CHANNEL, HISTORY_PREFIX, IDS_PREFIX, SEQ_PREFIX, Error
from .redis_url import sentinel_kwargs

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
HEARTBEAT_STALE_SECONDS = 10.0
SUBSCRIBE_TIMEOUT = 5.0
# One immediate retry (a pooled connection that died while idle), then fail: redis-py's default
# backs off for seconds, during which clients would wait instead of getting an error frame.
FAIL_FAST = Retry(NoBackoff(), 1)

# Every history entry is {"t", ms, "f", frame, "b", offset}: Redis's clock when it was added, the
# frame, and how many frame bytes the room's history had taken in before it (a running offset, so
# the bytes kept are the newest entry's end minus the oldest entry's offset, with no counter to
# drift when entries are trimmed or the key expires). Entries written before "b" existed count 0.
TRIM_LUA = """
-- Drops the oldest entries whose field number i (2: t, 6: b) is below floor. With keep_newest the
-- newest entry stays whatever its value, otherwise a history with nothing left is deleted.
local function trim_below(history, i, floor, keep_newest)
  local first = redis.call('XRANGE', history, '-', '+', 'COUNT', 1)
  if #first == 0 or tonumber(first[1][2][i] or '0') >= floor then return end
  local start, count, last = '-', 2, nil
  while true do
    local batch = redis.call('XRANGE', history, start, '+', 'COUNT', count)
    if #batch == 0 then
      if keep_newest then redis.call('XTRIM', history, 'MINID', last) else redis.call('DEL', history) end
      return
    end
    for _, entry in ipairs(batch) do
      if tonumber(entry[2][i] or '0') >= floor then redis.call('XTRIM', history, 'MINID', entry[1]) return end
    end
    last = batch[#batch][1]
    start = '(' .. last
    count = math.min(count * 2, 64)
  end
end
local function trim(history, cutoff) trim_below(history, 2, cutoff, false) end
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
"""

# KEYS: seq, history, channel[, ids]. ARGV: frame head, frame tail, history max, history seconds[,
# history bytes[, client message id]]. The last two are optional for tests that publish directly:
# without the bytes, no byte bound; without an id, no duplicate check (and no ids key).
# The byte bound is kept in the same step as XADD: the oldest entries go until the frames kept take
# at most ROOM_HISTORY_BYTES (the newest always stays), so a room flooded with the largest frames
# holds a bounded share of Redis's maxmemory (docs/security.md, "Redis").
# A client message id already published while its message is still kept is not published again:
# the script returns minus the seq it was published with. The ids key holds the ids of the kept
# entries only (trimmed with them), so its size follows the history's.
PUBLISH_SCRIPT = TRIM_LUA + """
local id = ARGV[6] or ''
if id ~= '' then
  local known = redis.call('ZSCORE', KEYS[4], id)
  if known and tonumber(known) <= tonumber(redis.call('GET', KEYS[1]) or '0') then
    local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
    if #first > 0 and tonumber(string.match(first[1][1], '^%d+')) <= tonumber(known) then
      return -tonumber(known)
    end
  end
end
local seq = redis.call('INCR', KEYS[1])
local frame = ARGV[1] .. seq .. ARGV[2]
local offset = 0
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last > 0 then offset = tonumber(last[1][2][6] or '0') + #last[1][2][4] end
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', ARGV[3], seq .. '-0', 't', now, 'f', frame, 'b', offset)
if type(added) == 'table' and added.err then
  -- The history is ahead of the counter (its key was deleted): it belongs to an older counter.
  redis.call('DEL', KEYS[2])
  if KEYS[4] then redis.call('DEL', KEYS[4]) end
  offset = 0
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], seq .. '-0', 't', now, 'f', frame, 'b', offset)
end
trim(KEYS[2], now - ARGV[4] * 1000)
if ARGV[5] then trim_below(KEYS[2], 6, offset + #frame - tonumber(ARGV[5]), true) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if KEYS[4] then
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. string.match(first[1][1], '^%d+'))
  if id ~= '' then
    redis.call('ZADD', KEYS[4], seq, id)
    redis.call('EXPIRE', KEYS[4], ARGV[4])
  end
end
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


class Duplicate(Exception):  # noqa: N818 (not an error: the message is in the room already)
    """A message with this client id was published already (its seq) and is still kept."""

    def __init__(self, seq):
        super().__init__(seq)
        self.seq = seq


def frame_parts(room, session, body, ts, msg_id=None):
    """The message frame around its seq, which only the publisher (Redis) knows. The client's
    message id, when it gave one, goes before "ts", which stays last (frame_ts)."""
    head = '{"type":"message","room":%s,"seq":' % json.dumps(room)
    echo = "" if msg_id is None else ',"id":%s' % json.dumps(msg_id)
    tail = ',"body":%s,"session":%s%s,"ts":%s}' % (json.dumps(body), json.dumps(session), echo, ts)
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
        self.ids = {}  # room -> {client message id: seq} of the kept frames
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
            for table in (self.seq, self.history, self.expires, self.ids):
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

    async def publish(self, room, session, body, msg_id=None):
        history = self._kept(room) or self.history.setdefault(room, deque())
        ids = self.ids.setdefault(room, {})
        if msg_id is not None and msg_id in ids and history and history[0][0] <= ids[msg_id]:
            raise Duplicate(ids[msg_id])
        seq = self.seq[room] = self.seq.get(room, 0) + 1
        head, tail = frame_parts(room, session, body, time.time(), msg_id)
        frame = f"{head}{seq}{tail}"
        history.append((seq, self.clock(), frame))
        while len(history) > settings.ROOM_HISTORY_MAX:
            history.popleft()
        kept = sum(len(entry[2].encode()) for entry in history)
        while len(history) > 1 and kept > settings.ROOM_HISTORY_BYTES:  # the newest always stays
            kept -= len(history.popleft()[2].encode())
        if msg_id is not None:
            ids[msg_id] = seq
        for known in [known for known, number in ids.items() if number < history[0][0]]:
            del ids[known]
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


class BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A pool of connections to the primary the Sentinels name that waits for a free connection (as
    the pool with REDIS_URL does) instead of failing at once."""


class RedisHub(BaseHub):
    def __init__(self, url, sentinels=None):
        """`url`, or with `sentinels` (rooms.redis_url.Sentinels) the primary they name."""
        super().__init__()
        self.url = url
        self.sentinels = sentinels
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
        options = dict(
            max_connections=settings.REDIS_MAX_CONNECTIONS,
            timeout=settings.REDIS_CONNECT_TIMEOUT,
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
            retry=FAIL_FAST,
        )
        # The subscriber blocks on reads for as long as rooms are quiet: no socket timeout;
        # the heartbeat notices a dead connection instead.
        listener_options = dict(
            socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT, decode_responses=True, retry=FAIL_FAST
        )
        if self.sentinels is None:
            pool = aioredis.BlockingConnectionPool.from_url(self.url, **options)
            self.listener = aioredis.Redis.from_url(self.url, **listener_options)
        else:
            # Every new connection of both asks the Sentinels for the primary: after a failover the
            # pool's connections fail (or get READONLY, which drops them) and reconnect to the new
            # one, and the subscriber reconnects through _listen or _beat.
            sentinel = Sentinel(
                self.sentinels.addresses,
                sentinel_kwargs=sentinel_kwargs(self.sentinels, settings.REDIS_CONNECT_TIMEOUT),
            )
            master, password = self.sentinels.master, self.sentinels.password
            pool = BlockingSentinelPool(master, sentinel, password=password, **options)
            self.listener = sentinel.master_for(master, password=password, **listener_options)
        self.redis = aioredis.Redis(connection_pool=pool)
        self.script = self.redis.register_script(PUBLISH_SCRIPT)
        self.backlog_script = self.redis.register_script(BACKLOG_SCRIPT)
        self.history_max = settings.ROOM_HISTORY_MAX
        self.history_seconds = settings.ROOM_HISTORY_SECONDS
        self.history_bytes = settings.ROOM_HISTORY_BYTES
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

    async def publish(self, room, session, body, msg_id=None):
        """The message's seq; Duplicate if msg_id was published already and is still kept."""
        head, tail = frame_parts(room, session, body, time.time(), msg_id)
        keys = [SEQ_PREFIX + room, HISTORY_PREFIX + room, CHANNEL_PREFIX + room, IDS_PREFIX + room]
        args = [head, tail, self.history_max, self.history_seconds, self.history_bytes, msg_id or ""]
        try:
            seq = await self.script(keys=keys, args=args)
        except (aioredis.RedisError, OSError) as exc:
            raise HubUnavailable(str(exc)) from exc
        if seq < 0:
            raise Duplicate(-seq)
        return seq

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

    def _on_old_primary(self):
        """Whether the subscriber is connected elsewhere than the primary the Sentinels named last
        (_beat asks them). A demoted primary keeps its subscribers and, as a replica, even passes
        them what the new primary publishes, but they would stay on a replica for good."""
        primary = getattr(self.redis.connection_pool, "master_address", None)
        connection = self.pubsub.connection if self.pubsub is not None else None
        if self.sentinels is None or primary is None or connection is None:
            return False
        return (connection.host, connection.port) != tuple(primary)

    async def _beat(self):
        while True:
            try:
                if self.sentinels is not None:
                    # Ask the Sentinels who the primary is now: a process that only reads and sends
                    # heartbeats (not writes) would otherwise never learn of a failover that left
                    # the old primary running as a replica. A change drops the pool's idle connections.
                    await self.redis.connection_pool.get_master_address()
                await self.redis.publish(HEARTBEAT_CHANNEL, "1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat to Redis failed: %s", exc)
            if self.pubsub is not None and (not self.connected or self._on_old_primary()):
                # A silent connection, or one to a primary the Sentinels demoted: resubscribe.
                self.tasks[0].cancel()
                self.tasks[0] = asyncio.create_task(self._listen())
            await asyncio.sleep(HEARTBEAT_SECONDS)


_hub = None


def get_hub():
    global _hub
    if _hub is None:
        if settings.REDIS_ENABLED:
            _hub = RedisHub(settings.REDIS_URL, settings.REDIS_SENTINELS)
        else:
            _hub = LocalHub()
    return _hub
