"""Room fan-out: one Redis subscription per room per process, one pre-encoded frame per message.

A message is published by a Lua script that increments the room's sequence number and
publishes the finished frame in one atomic step, so every subscriber of every process, replica
and color sees the room's messages in `seq` order. Each process then hands the same string to
each of its local members. Without REDIS_URL the LocalHub does the same inside one process.

Why not the channel layer's group_send: it cannot give seq a total order across processes, and
it costs one Redis operation and one consumer dispatch per member per message (docs/protocol.md).
"""

import asyncio
import json
import logging
import time

import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from . import metrics
from .names import CHANNEL_PREFIX, HEARTBEAT_CHANNEL, SEQ_PREFIX, Error

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
HEARTBEAT_STALE_SECONDS = 10.0
SUBSCRIBE_TIMEOUT = 5.0
# One immediate retry (a pooled connection that died while idle), then fail: redis-py's default
# backs off for seconds, during which clients would wait instead of getting an error frame.
FAIL_FAST = Retry(NoBackoff(), 1)

PUBLISH_SCRIPT = """
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', KEYS[2], ARGV[1] .. seq .. ARGV[2])
return seq
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


class BaseHub:
    def __init__(self):
        self.rooms = {}  # room -> set of members; a member has deliver(frame)

    def fan_out(self, room, frame):
        members = self.rooms.get(room)
        if not members:
            return
        metrics.BROADCAST_DELAY.observe(max(0.0, time.time() - frame_ts(frame)))
        for member in tuple(members):
            member.deliver(frame)
        metrics.MESSAGES_SENT.inc(len(members))


class LocalHub(BaseHub):
    """In-process fan-out for development and unit tests (one worker only)."""

    connected = True

    def __init__(self):
        super().__init__()
        self.seq = {}

    async def start(self):
        pass

    async def stop(self):
        pass

    async def join(self, room, member):
        self.rooms.setdefault(room, set()).add(member)

    async def leave(self, room, member):
        members = self.rooms.get(room)
        if members is not None:
            members.discard(member)
            if not members:
                del self.rooms[room]

    async def publish(self, room, session, body):
        seq = self.seq[room] = self.seq.get(room, 0) + 1
        head, tail = frame_parts(room, session, body, time.time())
        self.fan_out(room, f"{head}{seq}{tail}")
        return seq


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
        self.tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._beat())]

    async def stop(self):
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for client in (self.redis, self.listener):
            if client is not None:
                await client.aclose()

    async def join(self, room, member):
        members = self.rooms.get(room)
        if members is None:
            members = self.rooms[room] = set()
            self.subscribed[room] = asyncio.Event()
            if self.pubsub is not None:
                await self.pubsub.subscribe(CHANNEL_PREFIX + room)
        members.add(member)
        try:
            await asyncio.wait_for(self.subscribed[room].wait(), SUBSCRIBE_TIMEOUT)
        except (TimeoutError, KeyError):
            await self.leave(room, member)
            raise HubUnavailable(f"no subscription to room {room!r} within {SUBSCRIBE_TIMEOUT}s") from None

    async def leave(self, room, member):
        members = self.rooms.get(room)
        if members is None:
            return
        members.discard(member)
        if members:
            return
        del self.rooms[room]
        self.subscribed.pop(room, None)
        if self.pubsub is not None:
            try:
                await self.pubsub.unsubscribe(CHANNEL_PREFIX + room)
            except Exception:  # the listener notices a broken connection and resubscribes
                metrics.ERRORS.labels(Error.REDIS).inc()

    async def publish(self, room, session, body):
        head, tail = frame_parts(room, session, body, time.time())
        try:
            return await self.script(keys=[SEQ_PREFIX + room, CHANNEL_PREFIX + room], args=[head, tail])
        except (aioredis.RedisError, OSError) as exc:
            raise HubUnavailable(str(exc)) from exc

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
