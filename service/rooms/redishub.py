"""The Redis room hub: the scripts of rooms.scripts, one pub/sub subscriber per process, and the
repairs that keep every member's stream whole when Redis misbehaves (docs/protocol.md, "Redis
outages"):

- A publish is never retried: a reply that does not come (a stall, a dropped connection) leaves the
  attempt's fate unknown, and fence() settles it (rooms.scripts, "Sent ids").
- After every (re)subscription, each room with members is reconciled with Redis: members whose epoch
  is not the room's, or who lack messages published while the subscription was down (and that do
  not arrive live within RECONCILE_GRACE), resume.
- The subscriber's reads time out (it hears its own heartbeat every HEARTBEAT_SECONDS), and a
  listener that has not been connected for HEARTBEAT_STALE_SECONDS, stuck in a connect or a
  subscribe to a Redis that never answers, is replaced.
- While a process has members in a room it keeps the room's seq and epoch keys alive, so that a
  connected client never sees the counter start again; the history itself is not kept alive: its
  entries are too old to be replayed anyway.
- Presence (rooms.presence): every PRESENCE_TTL_SECONDS / 3 a process refreshes the entries of its
  members, room by room, which also publishes the leaves of entries whose time is up.
"""

import asyncio
import logging
import time

import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import OutOfMemoryError

from . import metrics
from .frames import Backlog, frame_parts
from .hub import (
    BaseHub,
    Duplicate,
    HubUnavailable,
    NotPublished,
    Published,
    RoomRateLimited,
    RoomRefused,
    replay_page,
    sent_field,
)
from .names import (
    CHANNEL_PREFIX,
    CONTROL_CHANNEL_PREFIX,
    CREATED_PREFIX,
    EPOCH_PREFIX,
    HEARTBEAT_CHANNEL,
    HISTORY_PREFIX,
    PRESENCE_PREFIX,
    ROOM_RATE_PREFIX,
    ROOMS_INDEX,
    SENT_PREFIX,
    SENT_TIMES_PREFIX,
    SEQ_PREFIX,
    Error,
)
from .presence import PRESENCE_SCRIPT, grace_ms, heads, refresh_seconds, snapshot, ttl_ms
from .redis_url import sentinel_kwargs
from .scripts import BACKLOG_SCRIPT, FENCE_SCRIPT, KEEP_ALIVE_SCRIPT, PUBLISH_SCRIPT, TRIM_SCRIPT
from .tasks import spawn

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
HEARTBEAT_STALE_SECONDS = 10.0
SUBSCRIBE_TIMEOUT = 5.0
RECONCILE_GRACE = 1.0  # how long messages published before a resubscription may still arrive live
# No retry: a command whose reply was lost may have run, and a publish must not run twice. A pooled
# connection that died while idle is found by a health check (a PING) before it is used instead.
NO_RETRY = Retry(NoBackoff(), 0)
HEALTH_CHECK_SECONDS = 2
TRIM_BATCH = 16  # rooms whose history TRIM_SCRIPT deletes between two readings of used_memory


class NotSent(aioredis.ConnectionError):
    """No connection could be had (refused, no primary, none free): the command was never sent."""


class TellsNotSent:
    """A pool whose failures to hand out a connected connection say that nothing was sent, so that a
    publish to a Redis that is down is answered at once as not published (no fence needed)."""

    async def get_connection(self, *args, **kwargs):
        try:
            return await super().get_connection(*args, **kwargs)
        except Exception as exc:
            raise NotSent(str(exc) or type(exc).__name__) from exc


class BlockingPool(TellsNotSent, aioredis.BlockingConnectionPool):
    """The pool with REDIS_URL: it waits for a free connection instead of failing at once."""


class BlockingSentinelPool(TellsNotSent, SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A pool of connections to the primary the Sentinels name that waits for a free connection (as
    the pool with REDIS_URL does) instead of failing at once."""


def unavailable(exc):
    return HubUnavailable(str(exc) or type(exc).__name__)


class RedisHub(BaseHub):
    def __init__(self, url, sentinels=None):
        """`url`, or with `sentinels` (rooms.redis_url.Sentinels) the primary they name."""
        super().__init__()
        self.url = url
        self.sentinels = sentinels
        self.subscribed = {}  # room -> Event set once Redis confirmed the subscription
        self.unchecked = set()  # rooms whose epoch this process has not checked since their first member
        self.pubsub = None
        self.last_beat = 0.0
        self.listener_started = 0.0
        self.tasks = []
        self.redis = None
        self.listener = None

    @property
    def connected(self):
        return self.pubsub is not None and time.monotonic() - self.last_beat < HEARTBEAT_STALE_SECONDS

    async def start(self):
        await self.connect()
        self.tasks = [
            asyncio.create_task(self._listen()),
            asyncio.create_task(self._beat()),
            asyncio.create_task(self._keep_alive()),
            asyncio.create_task(self._refresh_presence()),
        ]

    @property
    def can_publish(self):
        return self.redis is not None

    async def connect(self):
        """The publishing side only (pool and scripts), without a subscriber: what start() needs first,
        and all a process that only publishes needs (rooms.publishing, e.g. a management command)."""
        options = dict(
            max_connections=settings.REDIS_MAX_CONNECTIONS,
            timeout=settings.REDIS_CONNECT_TIMEOUT,
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT,
            health_check_interval=HEALTH_CHECK_SECONDS,
            retry=NO_RETRY,
        )
        # The subscriber hears its own heartbeat every HEARTBEAT_SECONDS: a read that waits longer
        # than HEARTBEAT_STALE_SECONDS is on a dead or stalled connection.
        listener_options = dict(
            socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT, socket_timeout=HEARTBEAT_STALE_SECONDS,
            decode_responses=True, retry=NO_RETRY,
        )
        if self.sentinels is None:
            pool = BlockingPool.from_url(self.url, **options)
            self.listener = aioredis.Redis.from_url(self.url, **listener_options)
        else:
            # Every new connection of both asks the Sentinels for the primary: after a failover the
            # pool's connections fail (or get READONLY, which drops them) and reconnect to the new
            # one, and the subscriber reconnects through _listen or _beat.
            sentinel = Sentinel(
                self.sentinels.addresses,
                sentinel_kwargs=sentinel_kwargs(self.sentinels, settings.REDIS_CONNECT_TIMEOUT),
            )
            master = self.sentinels.master
            login = dict(username=self.sentinels.username, password=self.sentinels.password)
            pool = BlockingSentinelPool(master, sentinel, **login, **options)
            self.listener = sentinel.master_for(master, **login, **listener_options)
        self.redis = aioredis.Redis(connection_pool=pool)
        self.publish_script = self.redis.register_script(PUBLISH_SCRIPT)
        self.fence_script = self.redis.register_script(FENCE_SCRIPT)
        self.backlog_script = self.redis.register_script(BACKLOG_SCRIPT)
        self.keep_alive_script = self.redis.register_script(KEEP_ALIVE_SCRIPT)
        self.trim_script = self.redis.register_script(TRIM_SCRIPT)
        self.presence_script = self.redis.register_script(PRESENCE_SCRIPT)
        self.control_channel = CONTROL_CHANNEL_PREFIX + settings.COLOR
        self.history = [settings.ROOM_HISTORY_MAX, settings.ROOM_HISTORY_SECONDS, settings.ROOM_HISTORY_BYTES]
        self.ids_seconds, self.ids_max = settings.ROOM_IDS_SECONDS, settings.ROOM_IDS_MAX

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
            self.unchecked.add(room)
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
        self.unchecked.discard(room)
        if self.pubsub is not None:
            try:
                await self.pubsub.unsubscribe(CHANNEL_PREFIX + room)
            except Exception:  # the listener notices a broken connection and resubscribes
                metrics.ERRORS.labels(Error.REDIS).inc()

    async def publish(self, room, session, body, msg_id, sender, attempt, name=None):
        """Published(epoch, seq); Duplicate if this sender's msg_id was published already; NotPublished
        if it certainly was not (no connection, or the attempt was fenced); HubUnavailable if the reply
        did not come (settle it with fence())."""
        head, tail = frame_parts(room, session, body, time.time(), msg_id, name)
        keys = [SEQ_PREFIX + room, HISTORY_PREFIX + room, CHANNEL_PREFIX + room, EPOCH_PREFIX + room,
                SENT_PREFIX + room, SENT_TIMES_PREFIX + room, ROOM_RATE_PREFIX + room, ROOMS_INDEX]
        args = [head, tail, *self.history, sent_field(sender, msg_id), attempt, self.ids_seconds,
                self.ids_max, settings.ROOM_MESSAGES_PER_SECOND, room]
        try:
            kind, *result = await self.publish_script(keys=keys, args=args)
        except NotSent as exc:
            raise NotPublished(str(exc)) from exc
        except OutOfMemoryError as exc:  # Redis refuses a script only before its first write
            raise NotPublished(f"Redis is full: {exc}") from exc
        except (aioredis.RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        if kind == 0:
            raise NotPublished("the attempt was fenced")
        if kind == 3:
            raise RoomRateLimited(f"room {room!r} is over {settings.ROOM_MESSAGES_PER_SECOND} messages/s")
        if kind == 2:
            raise Duplicate(result[0].decode(), result[1])
        return Published(result[0].decode(), result[1])

    async def fence(self, room, msg_id, sender, attempt):
        """Settle an attempt whose publish reply was lost: Published if the id is in the room (by
        this attempt or an earlier one), None if it is not and now never will be by this attempt."""
        keys = [SENT_PREFIX + room, SENT_TIMES_PREFIX + room]
        try:
            kind, *result = await self.fence_script(keys=keys, args=[sent_field(sender, msg_id), attempt,
                                                                      self.ids_seconds])
        except (aioredis.RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        return Published(result[0].decode(), result[1]) if kind == 2 else None

    async def backlog(self, room, since, epoch=None, address=None, check=False):
        """The room's epoch and seq and, if since is given, its kept frames after since (all, if it
        is ahead or epoch is not the room's). RoomRefused if the room does not exist and `address`
        (None: no limit) may not create it, or Redis is too full to create any.

        The epoch is checked against Redis's replication id, and the room's keys refreshed, with
        `check` and for the room's first member here; later members only read them, which is all a
        handshake needs (rooms.scripts, BACKLOG_SCRIPT), while _keep_alive refreshes the keys: a
        handshake storm into rooms with members costs Redis no write and no `INFO`. Without since,
        that read is one MGET."""
        check = check or room in self.unchecked
        try:
            if since is None and not check:
                record, seq = await self.redis.mget(EPOCH_PREFIX + room, SEQ_PREFIX + room)
                if record is not None and seq is not None and b":" in record:
                    return Backlog(record.split(b":", 1)[0].decode(), int(seq), 0, [])
            keys = [SEQ_PREFIX + room, HISTORY_PREFIX + room, EPOCH_PREFIX + room,
                    CREATED_PREFIX + (address or "")]
            limit = settings.ROOM_CREATIONS_PER_ADDRESS if address is not None else 0
            args = ["" if since is None else since, self.history[1], replay_page(), epoch or "", limit,
                    settings.ROOM_CREATIONS_WINDOW_SECONDS, settings.REDIS_MEMORY_REFUSE,
                    "1" if check else ""]
            current, seq, oldest, *frames = await self.backlog_script(keys=keys, args=args)
        except (aioredis.RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        if not current:
            raise RoomRefused(frames[0].decode())
        if check:
            self.unchecked.discard(room)
        return Backlog(current.decode(), seq, oldest, [frame.decode() for frame in frames])

    async def page(self, room, after, upto):
        """The next page of kept frames with after < seq <= upto (it starts above after + 1 if
        those were trimmed meanwhile)."""
        try:
            entries = await self.redis.xrange(HISTORY_PREFIX + room, f"{after + 1}-0", f"{upto}-0",
                                              count=replay_page())
        except (aioredis.RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        return [fields[b"f"].decode() for _, fields in entries]

    async def _keep_alive(self):
        """Keep the seq and epoch keys of every room with local members from expiring."""
        interval = max(0.2, min(60.0, self.history[1] / 3))
        while True:
            await asyncio.sleep(interval)
            rooms = list(self.rooms)
            keys = [key for room in rooms for key in (SEQ_PREFIX + room, EPOCH_PREFIX + room)]
            try:
                for start in range(0, len(keys), 1000):
                    await self.keep_alive_script(keys=keys[start : start + 1000], args=[self.history[1]])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.ERRORS.labels(Error.REDIS).inc()
                log.warning("refreshing the keys of %d rooms failed: %s", len(rooms), exc)

    async def presence_join(self, room, entry):
        """Register a connection's presence entry: the room's `presence` frame, or None if Redis did
        not take it (the next refresh registers it; the connection goes on without a snapshot)."""
        try:
            users, anonymous = await self._presence(room, "join", [entry])
        except HubUnavailable as exc:
            metrics.ERRORS.labels(Error.REDIS).inc()
            log.warning("room %r: presence not registered at the handshake: %s", room, exc)
            return None
        return snapshot(room, users.decode(), int(anonymous))

    def presence_leave(self, room, entry):
        """A connection closed: its entry expires PRESENCE_GRACE_SECONDS from now (in the background:
        a close never waits for Redis). If Redis does not take it, the entry expires by its TTL."""
        spawn(self._presence_leave(room, [entry]))

    async def _presence_leave(self, room, entries):
        try:
            await self._presence(room, "leave", entries)
        except HubUnavailable as exc:
            metrics.ERRORS.labels(Error.REDIS).inc()
            log.warning("room %r: %d presence entries left to expire by their TTL: %s", room, len(entries),
                        exc)

    async def _presence(self, room, op, entries):
        join_head, leave_head = heads(room)
        args = [op, ttl_ms(), grace_ms(), settings.PRESENCE_MAX_ENTRIES, join_head, leave_head, *entries]
        try:
            return await self.presence_script(keys=[PRESENCE_PREFIX + room, CHANNEL_PREFIX + room], args=args)
        except (aioredis.RedisError, OSError) as exc:
            raise unavailable(exc) from exc

    async def _refresh_presence(self):
        """Refresh the entries of this process' members, room by room (which also publishes the
        leaves whose time came). A member that closed while its room's refresh was on its way may
        have had its entry refreshed after its leave: its leave is sent again."""
        while True:
            await asyncio.sleep(refresh_seconds())
            for room, members in list(self.rooms.items()):
                refreshed = [(member, entry) for member in tuple(members)
                             if (entry := getattr(member, "presence_entry", None)) is not None]
                if not refreshed:
                    continue
                try:
                    await self._presence(room, "refresh", [entry for _, entry in refreshed])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    metrics.ERRORS.labels(Error.REDIS).inc()
                    log.warning("refreshing the presence of room %r failed: %s", room, exc)
                    break  # Redis is down or stalled: not one timeout per room; the next round retries
                left = [entry for member, entry in refreshed if member not in self.rooms.get(room, ())]
                if left:
                    await self._presence_leave(room, left)

    async def _reconcile(self, room):
        """After a (re)subscription: members resume if the room's epoch changed or messages were
        published that they were not sent and that do not arrive live within RECONCILE_GRACE."""
        try:
            state = await self.backlog(room, None, check=True)  # a failover may have come between
        except HubUnavailable as exc:
            log.warning("room %r not reconciled after resubscribing: %s", room, exc)
            return  # the subscription is failing again: the next one reconciles
        for final in (False, True):
            if final:
                await asyncio.sleep(RECONCILE_GRACE)
            for member in tuple(self.rooms.get(room, ())):
                member.reconcile(state.epoch, state.seq, final)

    async def _listen(self):
        delay = 0.2
        while True:
            self.listener_started = time.monotonic()
            pubsub = self.listener.pubsub()
            try:
                rooms = set(self.rooms)
                await pubsub.subscribe(HEARTBEAT_CHANNEL, self.control_channel,
                                       *(CHANNEL_PREFIX + room for room in rooms))
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
                log.warning("room subscriber lost Redis (%s); retrying in %.1fs", exc or type(exc).__name__,
                            delay)
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
        elif channel == self.control_channel:
            if kind == "message":
                from .control import handle_control_text

                handle_control_text(message["data"])
        elif kind == "message":
            self.fan_out(channel[len(CHANNEL_PREFIX) :], message["data"])
        elif kind == "subscribe":
            room = channel[len(CHANNEL_PREFIX) :]
            event = self.subscribed.get(room)
            if event is not None:
                event.set()
                if any(member.welcomed for member in self.rooms.get(room, ())):
                    spawn(self._reconcile(room))  # a resubscription: messages may have been missed

    def _on_old_primary(self):
        """Whether the subscriber is connected elsewhere than the primary the Sentinels named last
        (_beat asks them). A demoted primary keeps its subscribers and, as a replica, even passes
        them what the new primary publishes, but they would stay on a replica for good."""
        primary = getattr(self.redis.connection_pool, "master_address", None)
        connection = self.pubsub.connection if self.pubsub is not None else None
        if self.sentinels is None or primary is None or connection is None:
            return False
        return (connection.host, connection.port) != tuple(primary)

    async def _trim(self):
        """Read Redis's memory for the gauges and, over REDIS_MEMORY_TRIM of maxmemory, delete the
        history of the rooms that published least recently (rooms.scripts, TRIM_SCRIPT)."""
        try:
            args = [HISTORY_PREFIX, settings.REDIS_MEMORY_TRIM, self.history[1], TRIM_BATCH, SENT_PREFIX,
                    SENT_TIMES_PREFIX, settings.ROOM_IDS_PRESSURE_SECONDS]
            used, limit, deleted = await self.trim_script(keys=[ROOMS_INDEX], args=args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("reading Redis's memory failed: %s", exc or type(exc).__name__)
            return
        metrics.REDIS_USED_MEMORY.set(used)
        metrics.REDIS_MAXMEMORY.set(limit)
        if deleted:
            metrics.HISTORIES_TRIMMED.inc(deleted)
            log.warning("Redis used %d of %d bytes: trimmed the history and old ids of %d rooms", used, limit,
                        deleted)

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
                log.warning("heartbeat to Redis failed: %s", exc or type(exc).__name__)
            await self._trim()
            stuck = not self.connected and time.monotonic() - self.listener_started > HEARTBEAT_STALE_SECONDS
            if stuck or (self.pubsub is not None and self._on_old_primary()):
                # Silent, stuck connecting to a Redis that never answers, or on a demoted primary.
                log.warning("room subscriber %s; replacing it", "stuck" if stuck else "on a demoted primary")
                self.tasks[0].cancel()
                self.tasks[0] = asyncio.create_task(self._listen())
            await asyncio.sleep(HEARTBEAT_SECONDS)
