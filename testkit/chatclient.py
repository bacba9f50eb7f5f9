"""A chat client that follows the issue-16 contract and logs what it saw in testkit.checker's format.

What it does (docs/protocol.md and the issue-16 contract: epochs, the sender token, acknowledgements):

- It composes a message every 1/`rate` seconds for `seconds` (or up to `messages`), each with its own
  id, and keeps it pending until it is answered: its echo (a room message with its id and one of its
  sessions, live or replayed), a `duplicate`, or an `error` (then it is given up, never resent).
- It sends only once it has its welcome, at most RATE per second in bursts of BURST (under the
  server's rate limit), and on every new connection resends what is still pending, same ids.
- Every connection passes the same `sender` token and, from the second on, `since` (and `epoch`, once
  the server has named one) of the last message it received. A server without epochs is one epoch "".
- A room message is delivered to the app when it is the next one: same epoch, seq = last + 1, and its
  (session, id) not delivered before (a replay after an epoch resync may repeat it: dropped as
  "seen"). A message of another epoch, one beyond last + 1, or an unknown one at or below last makes
  it close and resume instead ("epoch", "gap", "behind").
- After a close it reconnects at once on 1012 or after its own close, with a small backoff
  otherwise (a refused handshake, a dropped connection).
- Once it stops composing it stays until nothing is pending (or `settle` seconds), then leaves;
  catch_up() then resumes once more and reads up to the room's seq, so the checker knows what it
  owed. run_clients() does both for a group, all chats first, then all catch-ups.

The log (testkit.checker): connect, welcome, resync, message, dropped, duplicate, error, reconnect,
sent, close; each event also has "t", seconds since the client started. A frame of a type it does
not know is logged as {"event": "unknown", ...}, which the checker reports.
"""

import asyncio
import contextlib
import json
import secrets
import time

import websockets

ORIGIN = "http://localhost"  # in the service's ALLOWED_HOSTS, as the tests' clients send it
RATE = 15.0  # frames a second: under the server's RATE_LIMIT_PER_SECOND (20), pings included
BURST = 30  # under RATE_LIMIT_BURST (40)
OPEN_TIMEOUT = 5.0
BACKOFF = (0.1, 1.0)  # first and longest wait before reconnecting after a refusal or a drop
CLOSE_RESTART = 1012
POLL_SECONDS = 0.2  # how often a quiet connection checks whether it is done or asked to leave


class TokenBucket:
    def __init__(self, rate, burst):
        self.rate, self.burst = rate, burst
        self.tokens, self.at = float(burst), time.monotonic()

    async def take(self):
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


class ChatClient:
    def __init__(self, ws_url, room, name, rate=4.0, seconds=5.0, messages=None, settle=10.0,
                 send_rate=RATE, burst=BURST):
        self.url = f"{ws_url}/ws/rooms/{room}/"
        self.room, self.name = room, name
        self.rate, self.seconds, self.messages, self.settle = rate, seconds, messages, settle
        self.bucket = TokenBucket(send_rate, burst)
        self.token = secrets.token_urlsafe(24)  # the sender token: 32 of [A-Za-z0-9_-]
        self.prefix = f"{name}{secrets.token_hex(3)}n"
        self.started = time.monotonic()
        self.log = []
        # Where the client is: every number it keeps changes in handle(), nowhere else.
        self.epoch = None  # the epoch of `last` ("" for a server without epochs)
        self.last = None  # the seq of the last room message received (or the first welcome's)
        self.delivered = set()  # (session, id) of every message delivered to the app
        self.sessions = set()
        self.pending = {}  # id -> body: composed, not answered yet (in composing order)
        self.acked, self.refused = set(), set()
        self.composed = 0
        self.composing = True
        self.more = asyncio.Event()  # set when something is composed
        # The current connection.
        self.ws = None
        self.session = None
        self.welcomed = asyncio.Event()
        self.since = None  # the since this connection asked for
        self.awaiting_resync = False
        self.target = None  # the room's seq the welcome (or resync) gave, in `epoch`
        self.ignoring = False  # stopped reading: every frame from now on is not seen
        self.leave_after_send = False
        self.away_until = 0.0  # no connection before this time (time.monotonic())
        self.away_seconds = self.linger = self.deaf = self.deaf_until = 0.0
        self.left_with = None  # the id of the last message it sent right before leaving
        self.sent_ids = set()
        self.catching_up = False
        self.caught_up = False
        self.reconnects = self.refusals = 0

    # -- the log ---------------------------------------------------------------------------------

    def record(self, event, **fields):
        self.log.append({"event": event, "t": round(time.monotonic() - self.started, 3), **fields})

    # -- what the client does with each frame ----------------------------------------------------

    def query(self):
        parts = [f"sender={self.token}"]
        if self.last is not None:
            parts.insert(0, f"since={self.last}")
            if self.epoch:
                parts.insert(1, f"epoch={self.epoch}")
        return "?" + "&".join(parts)

    def handle(self, frame):
        """Take one frame; the reason to close and resume, or None to go on."""
        kind = frame.get("type")
        if kind == "welcome":
            self.record("welcome", frame=frame)
            self.session = frame["session"]
            self.sessions.add(self.session)
            self.welcomed.set()
            epoch = frame.get("epoch", "")
            if self.since is None:
                self.epoch, self.last = epoch, frame["seq"]
            # A resync follows at once for another epoch, or a since above the room's seq (ahead).
            self.awaiting_resync = epoch != self.epoch or self.last > frame["seq"]
            self.target = frame["seq"]
        elif kind == "resync":
            self.record("resync", frame=frame)
            self.epoch = frame.get("epoch", self.epoch)
            self.last = frame["from"] - 1
            self.target = frame["seq"]
            self.awaiting_resync = False
        elif kind == "message":
            return self.on_message(frame)
        elif kind in ("duplicate", "error"):
            self.record(kind, frame=frame)
            msg_id = frame.get("id")
            if msg_id in self.pending:
                del self.pending[msg_id]
                (self.acked if kind == "duplicate" else self.refused).add(msg_id)
        elif kind == "reconnect":
            self.record("reconnect", frame=frame)
        elif kind != "pong":
            self.record("unknown", frame=frame)
        return None

    def on_message(self, frame):
        copy = (frame.get("session"), frame.get("id"))
        if copy[0] in self.sessions and copy[1] in self.pending:  # its echo: published
            del self.pending[copy[1]]
            self.acked.add(copy[1])
        epoch, seq = frame.get("epoch", ""), frame["seq"]
        if epoch != self.epoch:
            reason = "epoch"
        elif seq > self.last + 1:
            reason = "gap"
        elif seq <= self.last:
            reason = "seen" if copy in self.delivered else "behind"
        else:
            self.last = seq
            if copy in self.delivered:
                self.record("dropped", frame=frame, reason="seen")
            else:
                self.delivered.add(copy)
                self.record("message", frame=frame)
            return None
        self.record("dropped", frame=frame, reason=reason)
        return None if reason == "seen" else reason

    # -- the connection --------------------------------------------------------------------------

    async def connect_once(self):
        """One connection, until it closes; (close code or None, who ended it)."""
        wait = self.away_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self.since = self.last
        self.session, self.target, self.awaiting_resync = None, None, False
        self.welcomed = asyncio.Event()
        self.ignoring = False
        query = self.query()
        self.record("connect", query=query)
        ended = "server"
        try:
            async with websockets.connect(self.url + query, origin=ORIGIN, open_timeout=OPEN_TIMEOUT,
                                          close_timeout=1, proxy=None, max_size=2**22) as ws:
                self.ws = ws
                sender = asyncio.create_task(self.send_pending(ws))
                try:
                    ended = await self.read(ws)
                finally:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
                    if ended != "server":
                        with contextlib.suppress(Exception):
                            await ws.close()
        except (websockets.InvalidHandshake, OSError, TimeoutError) as exc:
            self.refusals += 1
            self.record("close", code=None, by="refused", detail=repr(exc)[:200])
            return None, "refused"
        finally:
            self.ws = None
        code = ws.close_code if ended == "server" else 1000
        self.record("close", code=code, by=ended)
        return code, ended

    async def read(self, ws):
        """Frames until the server closes ("server"), or why the client closes."""
        while True:
            if self.finished() or (not self.catching_up and time.monotonic() > self.settle_deadline()):
                return "done"
            try:
                text = await asyncio.wait_for(ws.recv(), POLL_SECONDS)  # recv() is cancellation-safe
            except TimeoutError:
                if self.away() and not self.ignoring:
                    return "away"
                continue
            except websockets.ConnectionClosed:
                return "away" if self.away() else "server"
            if self.ignoring:
                continue  # deaf: unread, until the sender closes
            if self.away():
                return "away"
            reason = self.handle(json.loads(text))
            if reason is not None:
                return reason
            if self.catching_up and self.done_catching_up():
                self.caught_up = True
                return "caught_up"

    def away(self):
        return self.ignoring or time.monotonic() < self.away_until

    def done_catching_up(self):
        return (self.session is not None and not self.awaiting_resync and self.target is not None
                and self.last >= self.target)

    def finished(self):
        return not self.composing and not self.pending and not self.catching_up

    async def send_pending(self, ws):
        """Once welcomed, send every pending message not sent on this connection, then new ones."""
        sent_here = set()
        await self.welcomed.wait()
        if self.catching_up:
            return
        while True:
            todo = [msg_id for msg_id in self.pending if msg_id not in sent_here]
            if not todo:
                self.more.clear()
                await self.more.wait()
                continue
            await self.bucket.take()
            msg_id = todo[0]
            if msg_id not in self.pending:
                continue
            if self.leave_after_send:
                self.leave_after_send = False
                self.ignoring = True  # it reads nothing from here on, not even the echo
                self.deaf_until = time.monotonic() + self.deaf
                self.left_with = msg_id
            sent_here.add(msg_id)
            self.record("sent", id=msg_id, body=self.pending[msg_id], resend=msg_id in self.sent_ids)
            self.sent_ids.add(msg_id)
            await ws.send(json.dumps({"type": "message", "body": self.pending[msg_id], "id": msg_id}))
            if self.ignoring and time.monotonic() >= self.deaf_until:
                await asyncio.sleep(self.linger)
                self.away_until = time.monotonic() + self.away_seconds
                await ws.close()
                return

    # -- composing, leaving, catching up -----------------------------------------------------------

    async def compose(self):
        end = self.started + self.seconds if self.seconds is not None else None
        while (end is None or time.monotonic() < end) and (self.messages is None
                                                             or self.composed < self.messages):
            self.composed += 1
            msg_id = f"{self.prefix}{self.composed}"
            self.pending[msg_id] = f"{self.name} says {self.composed}"
            self.more.set()
            await asyncio.sleep(1 / self.rate)
        self.composing = False
        self.more.set()

    async def run(self):
        """Chat until composing is over and nothing is pending (at most `settle` seconds more)."""
        composer = asyncio.create_task(self.compose())
        delay = BACKOFF[0]
        try:
            while not self.finished():
                if not self.composing and time.monotonic() > self.settle_deadline():
                    break
                code, ended = await self.connect_once()  # bounded: its reader stops at the settle deadline
                self.reconnects += 1
                if ended == "refused" or (ended == "server" and code != CLOSE_RESTART):
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF[1])
                else:
                    delay = BACKOFF[0]
        finally:
            composer.cancel()
            await asyncio.gather(composer, return_exceptions=True)

    def settle_deadline(self):
        return self.started + (self.seconds or 0) + self.settle

    async def catch_up(self, timeout=15.0):
        """Resume once more and read up to the room's seq; True once done within `timeout`."""
        self.catching_up, self.composing = True, False
        deadline = time.monotonic() + timeout
        while not self.caught_up and time.monotonic() < deadline:
            code, ended = await asyncio.wait_for(self.connect_once(), timeout)
            if not self.caught_up and (ended == "refused" or code != CLOSE_RESTART):
                await asyncio.sleep(BACKOFF[0])
        return self.caught_up

    async def leave(self, seconds, after_send=False, linger=0.0, deaf=0.0):
        """Go away for `seconds` (composing goes on: pending messages pile up). With after_send,
        stop reading at the next send, not even its echo, go on sending for `deaf` seconds (a link
        dying under a sender), then close `linger` seconds after the last send (0: at once, often in
        the same read as the message). Returns once it stopped reading."""
        self.away_seconds, self.linger, self.deaf = seconds, linger, deaf
        if after_send:
            self.leave_after_send = True
            deadline = time.monotonic() + 10
            while self.leave_after_send:
                assert time.monotonic() < deadline, f"{self.name} sent nothing in 10 s to leave after"
                await asyncio.sleep(0.005)
            return
        self.away_until = time.monotonic() + seconds
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()

    def summary(self):
        """What happened to this client, in numbers (for a test's output)."""
        counts = {"composed": self.composed, "acked": len(self.acked), "refused": len(self.refused),
                  "pending": len(self.pending), "delivered": len(self.delivered), "refusals": self.refusals}
        for event in self.log:
            kind = event["event"]
            if kind in ("connect", "reconnect", "duplicate", "error", "resync", "dropped"):
                detail = event.get("reason") or event.get("frame", {}).get("reason") or \
                    event.get("frame", {}).get("error")
                name = f"{kind}:{detail}" if detail else kind
                counts[name] = counts.get(name, 0) + 1
            elif kind == "sent" and event["resend"]:
                counts["resent"] = counts.get("resent", 0) + 1
        return counts


async def run_clients(clients, catch_up_timeout=15.0):
    """Every client chats to the end, then every client catches up; {name: log} for the checker."""
    await asyncio.gather(*(client.run() for client in clients))
    await asyncio.gather(*(client.catch_up(catch_up_timeout) for client in clients))
    return {client.name: client.log for client in clients}
