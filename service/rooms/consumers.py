"""The room consumer and its database-free base."""

import asyncio
import json
import logging
import secrets
from collections import deque

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from config.wsprotocol import SEND_TEXT_NOWAIT

from . import lifecycle, metrics, resume
from .hub import HubUnavailable, get_hub
from .ratelimit import TokenBucket
from .sessions import Session, register, unregister

log = logging.getLogger(__name__)

CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013
RELEASE_FLUSH_SECONDS = 2.0


_messages_seen = 0


def injected_fault():
    """Deterministic fault injection: message n fails when floor(n * share) steps up."""
    global _messages_seen
    share = settings.FAULT_ERROR_SHARE
    if not share:
        return False
    _messages_seen += 1
    return int(_messages_seen * share) > int((_messages_seen - 1) * share)


class DatabaseFreeConsumer(AsyncWebsocketConsumer):
    """A consumer for code that never touches the ORM or a channel layer.

    Channels' AsyncConsumer runs close_old_connections in a worker thread before every message,
    to protect ORM users from stale database connections, and reads its client through
    await_many_dispatch, which makes a task and an asyncio.wait per message so that it can also
    read a channel layer. Without the ORM the hop protects nothing; without a channel layer there
    is only one source to read. Together they cost more than half of the throughput and a task
    per connection, so this base reads and dispatches in a plain loop instead.
    Do not use this base for a consumer that queries the database or joins channel-layer groups.
    """

    async def __call__(self, scope, receive, send):
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
                # Yield between messages, as Channels' loop does, so that tasks this consumer
                # started (its writer) run even while its client's frames arrive in a burst.
                await asyncio.sleep(0)
        except StopConsumer:
            pass

    async def dispatch(self, message):
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)


class RoomConsumer(DatabaseFreeConsumer):
    session_id = None
    seq = 0  # the room's seq when this connection joined (its welcome's)
    skip_to = None  # while set, room messages up to this seq are dropped: the backlog had them

    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room"]
        reason = lifecycle.refusal()
        if reason is not None:
            await self.refuse(reason)
            return
        self.outbox = ()  # a deque once something has to wait: most connections never need one
        self.outbox_max = settings.OUTBOUND_QUEUE_MAX  # read once: Django's settings proxy is slow per frame
        self.writer = None
        # Offered by config.wsprotocol; absent under other servers and in tests with a communicator.
        self.send_nowait = self.scope.get("extensions", {}).get(SEND_TEXT_NOWAIT)
        self.open = False
        self.closing = False
        self.close_code = None
        self.strikes = 0
        self.bucket = TokenBucket(settings.RATE_LIMIT_PER_SECOND, settings.RATE_LIMIT_BURST)
        try:
            since = resume.parse_since(self.scope.get("query_string", b""))
        except resume.InvalidSince as exc:
            await self.refuse_since(str(exc))
            return
        # Join first, then read the room: live frames queue in the outbox meanwhile (see rooms.resume).
        try:
            await get_hub().join(self.room, self)
            backlog = await get_hub().backlog(self.room, since)
        except HubUnavailable as exc:
            log.warning("handshake refused: %s", exc)
            await get_hub().leave(self.room, self)
            await self.refuse("unavailable")
            return
        self.seq = backlog.seq
        self.session_id = secrets.token_urlsafe(9)
        client = self.scope.get("client") or ("", 0)
        register(Session(self.session_id, self.room, f"{client[0]}:{client[1]}", self))
        metrics.CONNECTIONS_OPENED.inc()
        welcome = {
            "type": "welcome",
            "room": self.room,
            "session": self.session_id,
            "color": settings.COLOR,
            "replica": settings.REPLICA,
            "version": settings.APP_VERSION,
            "seq": backlog.seq,
        }
        resync = resume.resync(self.room, since, backlog)
        try:
            await self.accept()
            await self.send(text_data=json.dumps(welcome))
            if resync is not None:
                await self.send(text_data=json.dumps(resync))
            for frame in backlog.frames:
                await self.send(text_data=frame)
        except Exception as exc:  # the client left while the room was being joined
            log.info("handshake not completed: %r", exc)
            await self.disconnect(1006)
            raise StopConsumer from exc
        # Live frames up to the backlog's seq, queued while joining or still on their way from Redis,
        # were in the backlog: drop them (rooms.resume).
        self.skip_to = backlog.seq
        if self.outbox:
            self.outbox = deque(resume.after_seq(self.outbox, backlog.seq))
        self.open = True
        self.kick()

    async def refuse_since(self, detail):
        metrics.ERRORS.labels("invalid_since").inc()
        await self.accept()
        await self.send(text_data=json.dumps({"type": "error", "error": "invalid_since", "detail": detail}))
        await self.close(code=CLOSE_POLICY_VIOLATION)

    async def refuse(self, reason):
        metrics.HANDSHAKES_REJECTED.labels(reason).inc()
        await self.close()

    async def disconnect(self, code):
        if self.session_id is None:
            return
        self.closing = True
        if self.writer is not None:
            self.writer.cancel()
        unregister(self.session_id)
        await get_hub().leave(self.room, self)
        metrics.CONNECTIONS_CLOSED.labels(str(self.close_code or code)).inc()

    async def receive(self, text_data=None, bytes_data=None):
        metrics.MESSAGES_RECEIVED.inc()
        if not self.bucket.take():
            self.strikes += 1
            if self.strikes > settings.RATE_LIMIT_STRIKES:
                metrics.ERRORS.labels("rate_limited_close").inc()
                await self.close_with(CLOSE_POLICY_VIOLATION)
            else:
                self.error("rate_limited", f"over {settings.RATE_LIMIT_PER_SECOND:g} messages/s")
            return
        self.strikes = 0
        if text_data is None:
            self.error("unsupported_frame", "send JSON text frames, not binary")
            return
        try:
            data = json.loads(text_data)
        except ValueError:
            self.error("invalid_json", "the frame is not valid JSON")
            return
        if not isinstance(data, dict):
            self.error("invalid_message", "send a JSON object with a 'type'")
            return
        kind = data.get("type")
        if kind == "ping":
            self.deliver('{"type":"pong"}')
        elif kind == "message":
            await self.on_message(data)
        else:
            self.error("unknown_type", f"unknown message type {kind!r}; use 'message' or 'ping'")

    async def on_message(self, data):
        body = data.get("body")
        if not isinstance(body, str):
            self.error("invalid_body", "'body' must be a string")
        elif len(body) > settings.MAX_BODY_CHARS:
            self.error("body_too_long", f"'body' is over {settings.MAX_BODY_CHARS} characters")
        elif injected_fault():
            self.error("internal", "injected fault (FAULT_ERROR_SHARE)")
        else:
            try:
                await get_hub().publish(self.room, self.session_id, body)
            except HubUnavailable:
                self.error("unavailable", "the message could not be published; try again")
            else:
                metrics.BROADCASTS.inc()

    def error(self, code, detail):
        metrics.ERRORS.labels(code).inc()
        self.deliver(json.dumps({"type": "error", "error": code, "detail": detail}))

    def deliver(self, frame):
        """Queue a frame for this client; a client that falls too far behind is closed."""
        if self.closing:
            return
        if self.skip_to is not None and resume.seen(frame, self):
            return
        if self.open and self.writer is None and not self.outbox and self.send_nowait:
            if self.send_nowait(frame):  # idle and writable: written already, no task needed
                return
        if len(self.outbox) >= self.outbox_max:
            self.outbox = ()
            metrics.ERRORS.labels("slow_consumer").inc()
            lifecycle.spawn(self.close_with(CLOSE_TRY_AGAIN_LATER))
            return
        if not self.outbox:
            self.outbox = deque()
        self.outbox.append(frame)
        self.kick()

    def kick(self):
        if self.open and self.writer is None and self.outbox:
            self.writer = asyncio.get_running_loop().create_task(self.flush())

    async def flush(self):
        try:
            while self.outbox:
                await self.send(text_data=self.outbox.popleft())
        except Exception:
            metrics.ERRORS.labels("send").inc()
        finally:
            self.outbox = ()
            self.writer = None

    async def close_with(self, code):
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        if self.writer is not None:
            self.writer.cancel()
        await self.close(code=code)

    async def release(self, code, notice):
        """Send what is queued and a last notice, then close: used when draining."""
        if self.closing:
            return
        self.deliver(notice)
        self.closing = True
        if self.writer is not None:
            await asyncio.wait([self.writer], timeout=RELEASE_FLUSH_SECONDS)
        if self.writer is not None:  # a client too slow even for that: its frames are dropped
            self.writer.cancel()
        self.close_code = code
        await self.close(code=code)


class UnknownPathConsumer(DatabaseFreeConsumer):
    """Refuses handshakes on paths that are not a room, instead of failing with a 500."""

    async def connect(self):
        metrics.HANDSHAKES_REJECTED.labels("unknown_path").inc()
        await self.close()
