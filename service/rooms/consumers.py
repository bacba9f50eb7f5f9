"""The room consumer: the application's WebSocket protocol (docs/protocol.md)."""

import asyncio
import json
import logging
import secrets
from collections import deque

from channels.exceptions import StopConsumer
from django.conf import settings

from wsserver import SEND_TEXT_NOWAIT

from . import draining, metrics, resume
from .generic import DatabaseFreeConsumer
from .hub import HubUnavailable, frame_seq, get_hub
from .names import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_SERVER_ERROR,
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN_LATER,
    Error,
)
from .ratelimit import TokenBucket
from .readiness import refusal
from .sessions import Session, register, unregister
from .tasks import spawn

log = logging.getLogger(__name__)

RELEASE_FLUSH_SECONDS = 2.0


class RoomConsumer(DatabaseFreeConsumer):
    session_id = None
    closing = False  # class defaults: a fault before connect() set them still closes cleanly
    close_code = None
    writer = None
    outbox_bytes = 0  # what the outbox holds; frames are JSON text, ASCII (json.dumps escapes the rest)
    seq = 0  # the room's seq when this connection joined (its welcome's)
    skip_to = None  # while set, room messages up to this seq are dropped: the backlog had them

    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room"]
        reason = refusal()
        if reason is not None:
            await self.refuse(reason)
            return
        self.outbox = ()  # a deque once something has to wait: most connections never need one
        self.outbox_max = settings.OUTBOUND_QUEUE_MAX  # read once: Django's settings proxy is slow per frame
        self.outbox_bytes_max = settings.OUTBOUND_QUEUE_BYTES
        self.writer = None
        # Offered by wsserver.protocol; absent under other servers and in tests with a communicator.
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
            cut = await self.replay(backlog)
            if cut is not None:
                # The rest of the history went (trimmed, or Redis lost) while this client was read
                # its first pages: live frames would leave a gap. It resumes from what it got.
                self.outbox = ()
                self.outbox_bytes = 0
                await self.send(text_data=draining.notice(cut, draining.REASON_RESUME))
                await self.close_with(CLOSE_SERVICE_RESTART)
                return
        except Exception as exc:  # the client left while the room was being joined
            log.info("handshake not completed: %r", exc)
            raise StopConsumer from exc  # DatabaseFreeConsumer runs disconnect()
        # Live frames up to the backlog's seq, queued while joining or still on their way from Redis,
        # were in the backlog: drop them (rooms.resume).
        self.skip_to = backlog.seq
        if self.outbox:
            self.outbox = deque(resume.after_seq(self.outbox, backlog.seq))
            self.outbox_bytes = sum(map(len, self.outbox))
        self.open = True
        self.kick()

    async def replay(self, backlog):
        """Send the backlog a page at a time, so that only one page is held for a client that does
        not read. None once every frame up to backlog.seq is sent, else the last seq sent."""
        frames, sent = backlog.frames, None
        while frames:
            for frame in frames:
                await self.send(text_data=frame)
            sent = frame_seq(frames[-1])
            if sent >= backlog.seq:
                return None
            try:
                frames = await get_hub().page(self.room, sent, backlog.seq)
            except HubUnavailable:
                return sent
            if not frames or frame_seq(frames[0]) != sent + 1:
                return sent
        return None

    async def refuse_since(self, detail):
        metrics.ERRORS.labels(Error.INVALID_SINCE).inc()
        await self.accept()
        error = {"type": "error", "error": Error.INVALID_SINCE, "detail": detail}
        await self.send(text_data=json.dumps(error))
        await self.close(code=CLOSE_POLICY_VIOLATION)

    async def server_fault(self):
        metrics.ERRORS.labels(Error.CONSUMER).inc()
        await self.close_with(CLOSE_SERVER_ERROR)

    async def refuse(self, reason):
        metrics.HANDSHAKES_REJECTED.labels(reason).inc()
        await self.close()

    async def disconnect(self, code):
        if self.session_id is None:
            # Refused, or failed before its welcome: it may have joined the room all the same.
            if hasattr(self, "room"):
                await get_hub().leave(self.room, self)
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
                metrics.ERRORS.labels(Error.RATE_LIMITED_CLOSE).inc()
                await self.close_with(CLOSE_POLICY_VIOLATION)
            else:
                self.error(Error.RATE_LIMITED, f"over {settings.RATE_LIMIT_PER_SECOND:g} messages/s")
            return
        self.strikes = 0
        if text_data is None:
            self.error(Error.UNSUPPORTED_FRAME, "send JSON text frames, not binary")
            return
        try:
            data = json.loads(text_data)
        except Exception:  # not only ValueError: deep nesting raises RecursionError
            self.error(Error.INVALID_JSON, "the frame is not valid JSON")
            return
        if not isinstance(data, dict):
            self.error(Error.INVALID_MESSAGE, "send a JSON object with a 'type'")
            return
        kind = data.get("type")
        if kind == "ping":
            self.deliver('{"type":"pong"}')
        elif kind == "message":
            await self.on_message(data)
        else:
            # Named back only if short: repr() of a deeply nested value can itself raise.
            shown = repr(kind) if isinstance(kind, str) and len(kind) <= 64 else "of that kind"
            self.error(Error.UNKNOWN_TYPE, f"unknown message type {shown}; use 'message' or 'ping'")

    async def on_message(self, data):
        body = data.get("body")
        if not isinstance(body, str):
            self.error(Error.INVALID_BODY, "'body' must be a string")
        elif len(body) > settings.MAX_BODY_CHARS:
            self.error(Error.BODY_TOO_LONG, f"'body' is over {settings.MAX_BODY_CHARS} characters")
        else:
            await self.publish(body)

    async def publish(self, body):
        try:
            await get_hub().publish(self.room, self.session_id, body)
        except HubUnavailable:
            self.error(Error.UNAVAILABLE, "the message could not be published; try again")
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
        if self.outbox and (len(self.outbox) >= self.outbox_max
                            or self.outbox_bytes + len(frame) > self.outbox_bytes_max):
            self.outbox = ()
            self.outbox_bytes = 0
            metrics.ERRORS.labels(Error.SLOW_CONSUMER).inc()
            spawn(self.close_with(CLOSE_TRY_AGAIN_LATER))
            return
        if not self.outbox:
            self.outbox = deque()
        self.outbox.append(frame)
        self.outbox_bytes += len(frame)
        self.kick()

    def kick(self):
        if self.open and self.writer is None and self.outbox:
            self.writer = asyncio.get_running_loop().create_task(self.flush())

    async def flush(self):
        try:
            while self.outbox:
                frame = self.outbox.popleft()
                self.outbox_bytes -= len(frame)
                await self.send(text_data=frame)
        except Exception:
            metrics.ERRORS.labels(Error.SEND).inc()
        finally:
            self.outbox = ()
            self.outbox_bytes = 0
            self.writer = None

    async def close_with(self, code):
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        if self.writer is not None:
            self.writer.cancel()
        await self.close(code=code)

    async def release(self, code):
        """Send what is queued and a last notice, then close: used when draining."""
        if self.closing:
            return
        # Built as it is queued, not when the drain picked this connection: frames fanned out in
        # between are queued before it, and its seq must count them.
        self.deliver(draining.reconnect_notice(self.room, self.seq))
        self.closing = True
        await self.flush_and_close(code)

    def resume(self, frame, seq):
        """The hub missed room messages or saw the seq go back (rooms.hub.fan_out): deliver nothing
        more, and have the client resume with ?since= from what it was sent (a notice, then 1012)."""
        if self.closing:
            return
        if self.skip_to is not None and seq <= self.seq + 1:
            self.deliver(frame)  # nothing live sent since its welcome, and this follows on from it
            return
        self.deliver(draining.reconnect_notice(self.room, self.seq, reason=draining.REASON_RESUME))
        self.closing = True
        spawn(self.flush_and_close(CLOSE_SERVICE_RESTART))

    async def flush_and_close(self, code):
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
