"""The room consumer: the application's WebSocket protocol (docs/protocol.md)."""

import asyncio
import json
import logging
import re
import secrets
import time

from channels.exceptions import StopConsumer
from django.conf import settings

from wsserver import SEND_TEXT_NOWAIT

from . import draining, metrics, presence, resume, tickets
from .frames import frame_seq, server_id
from .generic import DatabaseFreeConsumer
from .hub import Duplicate, HubUnavailable, NotPublished, RoomRateLimited, RoomRefused, get_hub
from .names import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_SERVER_ERROR,
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN_LATER,
    REDIS_FULL,
    ROOM_FULL,
    ROOM_LIMIT,
    Error,
)
from .outbox import Outbox
from .policies import policy
from .ratelimit import TokenBucket
from .readiness import refusal
from .sessions import Session, register, unregister
from .tasks import spawn

log = logging.getLogger(__name__)

RELEASE_FLUSH_SECONDS = 2.0
MESSAGE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a client's message id (docs/protocol.md)
# A JSON "\ud800" escape without its pair parses to a lone surrogate: valid JSON, but no Unicode text,
# and strict clients refuse the frame it would be relayed in (a pair parses to one character).
SURROGATE = re.compile(r"[\ud800-\udfff]")
NOT_PUBLISHED = "the message was not published; send it again"
ROOM_REFUSED = {
    ROOM_LIMIT: "this address created too many rooms lately; try again later",
    REDIS_FULL: "the service is short of memory for new rooms; try again later",
}
STALL_SECONDS = 1.0  # a publish that took longer stalled the connection's input (rooms.ratelimit)


def message_id(data):
    """The valid client message id of a parsed frame, else None."""
    if isinstance(data, dict):
        value = data.get("id")
        if isinstance(value, str) and MESSAGE_ID.fullmatch(value):
            return value
    return None


def frame_message_id(text_data):
    """The id of a frame refused before it is read (rate limited), so the client can stop resending
    it. Parsing costs no more than the frame's own handling would: at most RATE_LIMIT_STRIKES."""
    try:
        return message_id(json.loads(text_data)) if text_data is not None else None
    except Exception:  # any frame that does not parse (RecursionError too): no id
        return None


class RoomConsumer(DatabaseFreeConsumer):
    """One member of one room.

    Every room frame reaches the member through room_frame(), which keeps the connection's stream
    whole: within the epoch of its welcome, each message's seq is one more than the last one sent
    (`last`, which starts at the welcome's seq, or the end of the replay). A frame at or below `last`
    was sent already (by the replay); anything else, a jump or another epoch, means messages this
    connection cannot be sent in order, so it resumes: a reconnect notice with what it was sent, and
    1012 (the client comes back with ?since=).
    """

    session_id = None
    closing = False  # class defaults: a fault before connect() set them still closes cleanly
    close_code = None
    outbox = None
    epoch = None  # the epoch of this connection's welcome; None until then
    last = 0  # the seq of the last room message queued for this client

    early = None  # while joining, the room frames that came before the welcome: (frame, epoch, seq)
    ticket = None  # with a database: this connection's verified rooms.tickets.Ticket, if it gave one
    expiry = None  # the timer that closes a private room's connection whose ticket expired
    wants_presence = False  # ?presence=1: this connection is sent presence frames (rooms.presence)
    presence_entry = None  # this connection's entry in the room's presence, once registered

    @property
    def welcomed(self):
        return self.epoch is not None and self.early is None

    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room"]
        reason = refusal()
        if reason is not None:
            await self.refuse(reason)
            return
        # Offered by wsserver.protocol; absent under other servers and in tests with a communicator.
        send_nowait = self.scope.get("extensions", {}).get(SEND_TEXT_NOWAIT)
        self.outbox = Outbox(lambda frame: self.send(text_data=frame), send_nowait,
                             settings.OUTBOUND_QUEUE_MAX, settings.OUTBOUND_QUEUE_BYTES)
        self.early = []
        self.closing = False
        self.close_code = None
        self.strikes = 0
        self.bucket = TokenBucket(settings.RATE_LIMIT_PER_SECOND, settings.RATE_LIMIT_BURST)
        try:
            query = resume.Query(self.scope.get("query_string", b""))
        except resume.InvalidQuery as exc:
            await self.refuse_query(str(exc))
            return
        self.sender = query.sender or secrets.token_urlsafe(16)
        self.wants_presence = query.presence
        if settings.ACCOUNTS_ENABLED and not await self.admitted():
            return
        if len(get_hub().rooms.get(self.room, ())) >= settings.ROOM_MAX_MEMBERS:
            await self.refuse_room(ROOM_FULL, f"the room has {settings.ROOM_MAX_MEMBERS} members here")
            return
        client = self.scope.get("client") or ("", 0)
        # Join first, then read the room: live frames are held meanwhile (see rooms.resume).
        try:
            await get_hub().join(self.room, self)
            backlog = await get_hub().backlog(self.room, query.since, query.epoch, client[0] or None)
        except RoomRefused as exc:
            await get_hub().leave(self.room, self)
            await self.refuse_room(exc.args[0], ROOM_REFUSED[exc.args[0]])
            return
        except HubUnavailable as exc:
            log.warning("handshake refused: %s", exc)
            await get_hub().leave(self.room, self)
            await self.refuse("unavailable")
            return
        self.epoch, self.last = backlog.epoch, backlog.seq
        self.session_id = secrets.token_urlsafe(9)
        register(Session(self.session_id, self.room, f"{client[0]}:{client[1]}", self))
        # Registered after the subscription: every join and leave after this snapshot comes live.
        entry = presence.entry(self.session_id, self.ticket, self.sender)
        members = await get_hub().presence_join(self.room, entry)
        self.presence_entry = entry
        metrics.CONNECTIONS_OPENED.inc()
        if query.since is not None:
            metrics.RESUMES.inc()
        welcome = {
            "type": "welcome",
            "room": self.room,
            "session": self.session_id,
            "color": settings.COLOR,
            "replica": settings.REPLICA,
            "version": settings.APP_VERSION,
            "epoch": backlog.epoch,
            "seq": backlog.seq,
        }
        resync = resume.resync(self.room, query, backlog)
        try:
            await self.accept()
            await self.send(text_data=json.dumps(welcome))
            if resync is not None:
                await self.send(text_data=json.dumps(resync))
            if self.wants_presence and members is not None:
                await self.send(text_data=members)
            cut = await self.replay(backlog)
            if cut is not None:
                # The rest of the history went (trimmed, or Redis lost) while this client was read
                # its first pages: live frames would leave a gap. It resumes from what it got.
                self.last, self.early = cut, None
                self.resume()
                return
        except Exception as exc:  # the client left while the room was being joined
            log.info("handshake not completed: %r", exc)
            raise StopConsumer from exc  # DatabaseFreeConsumer runs disconnect()
        early, self.early = self.early, None
        self.outbox.start()
        for frame, epoch, seq in early:
            if seq is None:  # a join or leave
                self.deliver(frame)
            else:
                self.room_frame(frame, epoch, seq)
        self.watch_expiry()

    async def admitted(self):
        """With a database: verify the handshake's ticket and apply the room's policy, with no query
        (rooms.tickets, rooms.policies). False once the handshake was refused."""
        try:
            self.ticket = tickets.from_query(self.scope.get("query_string", b""))
        except tickets.InvalidTicket as exc:
            await self.refuse_handshake(Error.TICKET_INVALID, str(exc))
            return False
        if policy(self.room).private and (self.ticket is None or self.room not in self.ticket.rooms):
            await self.refuse_handshake(Error.FORBIDDEN, "this room is private: connect with a ticket that "
                                        "names it (GET /ticket/?room=...)")
            return False
        return True

    async def refuse_handshake(self, code, detail):
        """A handshake refused for who the client is (or is not): an error frame that says why, then
        1008, which clients do not retry as it is."""
        metrics.HANDSHAKES_REJECTED.labels(code).inc()
        await self.accept()
        await self.send(text_data=json.dumps({"type": "error", "error": code, "detail": detail}))
        await self.close(code=CLOSE_POLICY_VIOLATION)

    def watch_expiry(self):
        """A member of a private room stays only while its ticket is valid: renewed in time (`renew`),
        or the connection is closed when it expires."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if self.ticket is not None and policy(self.room).private and not self.closing:
            delay = max(0.0, self.ticket.expires - time.time())
            self.expiry = asyncio.get_running_loop().call_later(delay, self.ticket_expired)

    def ticket_expired(self):
        self.expiry = None
        if self.closing or self.ticket is None or self.ticket.valid():
            return
        self.error(Error.TICKET_INVALID, "the ticket expired without being renewed; connect with a new one")
        self.closing = True
        spawn(self.flush_and_close(CLOSE_POLICY_VIOLATION))

    def on_renew(self, data):
        """`renew`: the connection's ticket re-signed for another TICKET_SECONDS (no query), or a new one
        the client fetched over HTTP put in its place. Answered with a `ticket` frame, or an error."""
        given = data.get("ticket")
        try:
            if given is None:
                if self.ticket is None:
                    raise tickets.InvalidTicket("this connection has no ticket to renew: send one in "
                                                "'ticket'")
                token, ticket = tickets.renew(self.ticket)
            else:
                token, ticket = given, tickets.verify(given)
                if self.ticket is not None and ticket.user != self.ticket.user:
                    raise tickets.InvalidTicket("the ticket is another user's")
                if policy(self.room).private and self.room not in ticket.rooms:
                    raise tickets.InvalidTicket("the ticket does not name this room")
        except tickets.InvalidTicket as exc:
            self.error(Error.TICKET_INVALID, str(exc))
            return
        self.ticket = ticket
        self.watch_expiry()
        self.deliver(json.dumps({"type": "ticket", "ticket": token, "expires": ticket.expires}))

    def may_post(self):
        return (self.ticket is not None and self.ticket.valid()) or policy(self.room).anonymous

    def poster(self):
        """The name shown with this connection's messages: its ticket's, or None (anonymous)."""
        return self.ticket.name if self.ticket is not None and self.ticket.valid() else None

    async def replay(self, backlog):
        """Send the backlog a page at a time, so that only one page is held for a client that does
        not read. None once every frame up to backlog.seq is sent, else the last seq sent."""
        frames, sent = backlog.frames, None
        while frames:
            for frame in frames:
                await self.send(text_data=frame)
            metrics.REPLAYED.inc(len(frames))
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

    async def refuse_query(self, detail):
        metrics.ERRORS.labels(Error.INVALID_SINCE).inc()
        await self.accept()
        error = {"type": "error", "error": Error.INVALID_SINCE, "detail": detail}
        await self.send(text_data=json.dumps(error))
        await self.close(code=CLOSE_POLICY_VIOLATION)

    async def refuse_room(self, code, detail):
        """A handshake the room's limits refuse (docs/security.md, "Redis memory"): an error frame
        that says which, then 1013 (try again later)."""
        metrics.HANDSHAKES_REJECTED.labels(code).inc()
        await self.accept()
        await self.send(text_data=json.dumps({"type": "error", "error": code, "detail": detail}))
        await self.close(code=CLOSE_TRY_AGAIN_LATER)

    async def server_fault(self):
        metrics.ERRORS.labels(Error.CONSUMER).inc()
        await self.close_with(CLOSE_SERVER_ERROR)

    async def refuse(self, reason):
        metrics.HANDSHAKES_REJECTED.labels(reason).inc()
        await self.close()

    async def disconnect(self, code):
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if self.session_id is None:
            # Refused, or failed before its welcome: it may have joined the room all the same.
            if hasattr(self, "room"):
                await get_hub().leave(self.room, self)
            return
        self.closing = True
        self.outbox.cancel()
        unregister(self.session_id)
        await get_hub().leave(self.room, self)
        if self.presence_entry is not None:
            get_hub().presence_leave(self.room, self.presence_entry)
        metrics.CONNECTIONS_CLOSED.labels(str(self.close_code or code)).inc()

    async def receive(self, text_data=None, bytes_data=None):
        metrics.MESSAGES_RECEIVED.inc()
        if not self.bucket.take():
            self.strikes += 1
            if self.strikes > settings.RATE_LIMIT_STRIKES:
                metrics.ERRORS.labels(Error.RATE_LIMITED_CLOSE).inc()
                await self.close_with(CLOSE_POLICY_VIOLATION)
            else:
                self.error(Error.RATE_LIMITED, f"over {settings.RATE_LIMIT_PER_SECOND:g} messages/s",
                           frame_message_id(text_data))
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
        elif kind == "renew" and settings.ACCOUNTS_ENABLED:
            self.on_renew(data)
        else:
            # Named back only if short: repr() of a deeply nested value can itself raise.
            shown = repr(kind) if isinstance(kind, str) and len(kind) <= 64 else "of that kind"
            self.error(Error.UNKNOWN_TYPE, f"unknown message type {shown}; use 'message' or 'ping'")

    async def on_message(self, data):
        body, msg_id = data.get("body"), message_id(data)
        if "id" in data and msg_id is None:
            self.error(Error.INVALID_ID, "'id' must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -")
        elif not isinstance(body, str):
            self.error(Error.INVALID_BODY, "'body' must be a string", msg_id)
        elif len(body) > settings.MAX_BODY_CHARS:
            self.error(Error.BODY_TOO_LONG, f"'body' is over {settings.MAX_BODY_CHARS} characters", msg_id)
        elif SURROGATE.search(body):
            self.error(Error.INVALID_BODY, "'body' must be valid Unicode: a surrogate escape (\\ud800 to "
                       "\\udfff) is allowed only as half of a pair", msg_id)
        elif settings.ACCOUNTS_ENABLED and not self.may_post():
            self.error(Error.FORBIDDEN, "this room takes messages only from logged-in users: connect (or "
                       "renew) with a ticket", msg_id)
        else:
            await self.publish(body, msg_id)

    async def publish(self, body, msg_id=None):
        """Publish once, and give the sender exactly one answer: its message's echo (published), a
        `duplicate` (published before), or an error with its id (not published). A publish whose
        reply is lost is never retried: settle() learns its fate."""
        given, msg_id = msg_id, msg_id or server_id()
        attempt = secrets.token_urlsafe(9)
        started = asyncio.get_running_loop().time()
        try:
            await self.publish_once(body, msg_id, given, attempt)
        finally:
            waited = asyncio.get_running_loop().time() - started
            if waited > STALL_SECONDS:  # frames the client sent meanwhile are not over its rate
                self.bucket.credit(waited)

    async def publish_once(self, body, msg_id, given, attempt):
        try:
            await get_hub().publish(self.room, self.session_id, body, msg_id, self.sender, attempt,
                                    self.poster())
        except HubUnavailable:
            await self.settle(msg_id, given, attempt)
        except RoomRateLimited as exc:
            self.error(Error.ROOM_RATE_LIMITED, f"{exc}; send it again later", given)
        except NotPublished:
            self.error(Error.UNAVAILABLE, NOT_PUBLISHED, given)
        except Duplicate as duplicate:  # a resend of a message the room has: say so, publish nothing
            self.deliver(json.dumps({"type": "duplicate", "id": given, "epoch": duplicate.epoch,
                                     "seq": duplicate.seq}))
        else:
            metrics.BROADCASTS.inc()

    async def settle(self, msg_id, given, attempt):
        """Learn the fate of an attempt whose reply was lost, within PUBLISH_SETTLE_SECONDS: fence it
        (rooms.scripts). Published: its echo is the answer. Fenced: an `unavailable` error, and it
        can never be published by that attempt. Still unknown: the client resumes on a new connection
        and resends it (idempotent by its id)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.PUBLISH_SETTLE_SECONDS
        delay = 0.1
        while (remaining := deadline - loop.time()) > 0:
            try:
                published = await asyncio.wait_for(get_hub().fence(self.room, msg_id, self.sender, attempt),
                                                   remaining)
            except (HubUnavailable, TimeoutError):
                await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
                delay = min(delay * 2, 2.0)
                continue
            if published is None:
                self.error(Error.UNAVAILABLE, NOT_PUBLISHED, given)
            else:
                metrics.BROADCASTS.inc()
            return
        log.warning("room %r: the fate of a message stayed unknown for %gs; its sender resumes",
                    self.room, settings.PUBLISH_SETTLE_SECONDS)
        metrics.ERRORS.labels(Error.UNAVAILABLE).inc()
        self.resume()

    def error(self, code, detail, msg_id=None):
        """An error frame; one answering a message that carried a valid id echoes it."""
        metrics.ERRORS.labels(code).inc()
        frame = {"type": "error", "error": code, "detail": detail}
        if msg_id is not None:
            frame["id"] = msg_id
        self.deliver(json.dumps(frame))

    def room_frame(self, frame, epoch, seq):
        """A room message from the hub (see the class docstring)."""
        if self.closing:
            return
        if self.early is not None:  # still joining: kept until the welcome and replay are sent
            self.early.append((frame, epoch, seq))
            if len(self.early) > settings.OUTBOUND_QUEUE_MAX:
                self.early = []
                self.slow_consumer()
            return
        if epoch == self.epoch or not epoch:  # no epoch: published by a version before epochs (the
            # other color, during the release that brings them), on the same counter
            if seq <= self.last:
                return  # the replay had it
            if seq == self.last + 1:
                self.last = seq
                self.deliver(frame)
                return
        log.info("room %r: %s/%d after %s/%d; the member resumes", self.room, epoch, seq, self.epoch,
                 self.last)
        self.resume()

    def presence_frame(self, frame):
        """A join or leave from the hub, for a connection that asked for presence frames. During the
        handshake it is kept with the room frames, and sent after the `presence` snapshot."""
        if self.closing or not self.wants_presence:
            return
        if self.early is not None:
            self.early.append((frame, None, None))
            if len(self.early) > settings.OUTBOUND_QUEUE_MAX:
                self.early = []
                self.slow_consumer()
            return
        self.deliver(frame)

    def reconcile(self, epoch, seq, final):
        """The hub resubscribed and read the room's state: resume if this connection cannot be sent
        what it missed live (another epoch; or, final, messages up to seq that never came)."""
        if self.closing or not self.welcomed:
            return  # a handshake in progress reads the room itself
        if epoch != self.epoch or (final and self.last < seq):
            log.info("room %r: %s/%d in Redis, %s/%d sent; the member resumes", self.room, epoch, seq,
                     self.epoch, self.last)
            metrics.ERRORS.labels(Error.REDIS).inc()  # Redis lost a subscription or writes
            self.resume()

    def deliver(self, frame):
        """Queue a frame for this client; a client that falls too far behind is closed."""
        if self.closing:
            return
        if not self.outbox.put(frame):
            self.slow_consumer()

    def slow_consumer(self):
        metrics.ERRORS.labels(Error.SLOW_CONSUMER).inc()
        spawn(self.close_with(CLOSE_TRY_AGAIN_LATER))

    async def close_with(self, code):
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self.outbox.cancel()
        await self.close(code=code)

    async def release(self, code):
        """Send what is queued and a last notice, then close: used when draining."""
        if self.closing:
            return
        # Built as it is queued, not when the drain picked this connection: frames fanned out in
        # between are queued before it, and its seq must count them.
        self.deliver(draining.notice(self.epoch, self.last, draining.REASON_RELEASE))
        self.closing = True
        await self.flush_and_close(code)

    def resume(self):
        """This connection cannot go on with its room's stream: a notice with the last seq it was
        sent, then 1012, so that the client resumes with ?since= and gets the rest by replay."""
        if self.closing:
            return
        self.deliver(draining.notice(self.epoch, self.last, draining.REASON_RESUME))
        self.closing = True
        spawn(self.flush_and_close(CLOSE_SERVICE_RESTART))

    async def flush_and_close(self, code):
        if self.early is None:  # not during the handshake: the notice must not overtake the welcome
            self.outbox.start()
        await self.outbox.drain(RELEASE_FLUSH_SECONDS)  # a client too slow even for that loses it
        self.close_code = code
        await self.close(code=code)


class UnknownPathConsumer(DatabaseFreeConsumer):
    """Refuses handshakes on paths that are not a room, instead of failing with a 500."""

    async def connect(self):
        metrics.HANDSHAKES_REJECTED.labels("unknown_path").inc()
        await self.close()
