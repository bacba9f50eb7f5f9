"""The WebSocket protocol Uvicorn runs (`--ws wsserver.protocol:WebSocketProtocol`).

Uvicorn's sans-I/O implementation (websockets' ServerProtocol, no tasks of its own) costs far less
per connection and per frame than its legacy `websockets` one. As of Uvicorn 0.38 it lacks what
this service needs, added here:

- Flow control. Sends wait while the socket's buffer is over its high-water mark
  (pause_writing/resume_writing), so the consumer's outbox fills up behind a slow client and the
  slow-consumer bound (1013) applies instead of a buffer that grows without limit. Reading stops
  meanwhile too: a ping is owed a pong, which websockets writes at once, so a client that pings
  and never reads would otherwise grow the buffer without limit. A connection that stays over the
  mark for WS_WRITE_STALL_SECONDS is closed with 1013, and aborted if even that cannot be sent.
- Keepalive. Every `--ws-ping-interval` seconds a ping; a connection that sent nothing within
  `--ws-ping-timeout` seconds of it is closed with 1011, so vanished clients do not hold sessions
  forever. One timer per connection, no task.
- A synchronous send for idle connections, offered to the application as an ASGI extension
  (SEND_TEXT_NOWAIT), so a room fan-out costs no task per member.
- Less memory per connection: the receive queue and the write gate are small classes instead of
  asyncio.Queue and asyncio.Event (three deques and an Event, about 3 KiB), and the handshake's
  request and response objects are let go once the handshake is answered.
- Fan-out frames encoded once. A broadcast hands the same str object to every member; the frame
  of the last text sent is kept, so each further member costs one transport write. Only without
  extensions: a compressed stream differs per connection.
"""

import asyncio

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import ProtocolError
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import State

from wsserver import SEND_TEXT_NOWAIT, write_limits

CLOSE_KEEPALIVE_TIMEOUT = 1011
CLOSE_WRITE_STALLED = 1013  # the client reads too slowly: as the application's slow-consumer close
CLOSE_TIMEOUT = 10.0  # seconds a closed connection may take to flush before it is aborted

_last_text = None
_last_frame = b""


def text_frame(text):
    """The unmasked, uncompressed frame for `text`; computed once per distinct str object."""
    global _last_text, _last_frame
    if text is not _last_text:
        _last_frame = Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
        _last_text = text
    return _last_frame


class Inbox:
    """What the protocol uses of asyncio.Queue, for its one reader (the ASGI receive).

    A second concurrent get() would wait forever: one waiter only, as Channels reads one at a time."""

    __slots__ = ("items", "waiter")

    def __init__(self):
        self.items = []
        self.waiter = None

    def put_nowait(self, item):
        self.items.append(item)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def empty(self):
        return not self.items

    async def get(self):
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.items.pop(0)


class Gate:
    """What the protocol uses of asyncio.Event: open while the transport takes writes."""

    __slots__ = ("open", "waiters")

    def __init__(self):
        self.open = True
        self.waiters = []

    def is_set(self):
        return self.open

    def set(self):
        self.open = True
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def clear(self):
        self.open = False

    async def wait(self):
        while not self.open:
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            await waiter


class WebSocketProtocol(WebSocketsSansIOProtocol):
    heard = True
    pinged = False
    keepalive = None
    abort_timer = None
    lost = False
    write_high, write_low, write_stall_seconds = write_limits()
    write_paused = False  # the transport holds over write_high unsent bytes: no reading either
    stall_timer = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.queue = Inbox()
        self.writable = Gate()

    def pause_writing(self):
        self.writable.clear()
        self.write_paused = True
        self.transport.pause_reading()
        if self.stall_timer is None:
            self.stall_timer = self.loop.call_later(self.write_stall_seconds, self.write_stalled)

    def resume_writing(self):
        self.writable.set()
        self.write_paused = False
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None
        if not self.read_paused:  # else the application's receive resumes it
            self.transport.resume_reading()

    def write_stalled(self):
        """Over the high-water mark for write_stall_seconds: the client does not read what it is sent."""
        self.stall_timer = None
        self.logger.debug("%s - %d bytes unsent for %gs, closing", self.client,
                          self.transport.get_write_buffer_size(), self.write_stall_seconds)
        self.fail(CLOSE_WRITE_STALLED, "not reading")

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.set_write_buffer_limits(high=self.write_high, low=self.write_low)
        self.schedule_keepalive(self.config.ws_ping_interval)

    def connection_lost(self, exc):
        self.lost = True
        for timer in (self.keepalive, self.abort_timer, self.stall_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)
        self.writable.set()  # a send waiting for the buffer to drain now fails as disconnected

    async def receive(self):
        """Uvicorn's, replaced whole, except: reading resumes only if the write buffer allows it too."""
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            if not self.write_paused:
                self.transport.resume_reading()
        return message

    def data_received(self, data):
        self.heard = True
        super().data_received(data)

    def schedule_keepalive(self, delay):
        if delay:
            self.keepalive = self.loop.call_later(delay, self.check_alive)

    def check_alive(self):
        """Alternately: ping (after the interval), then check that something came back (after the timeout)."""
        if self.transport.is_closing():
            return
        if self.conn.state is State.CONNECTING:  # the application has not accepted yet
            self.schedule_keepalive(self.config.ws_ping_interval)
            return
        if self.conn.state is not State.OPEN:
            return
        if self.pinged and not self.heard:
            self.fail(CLOSE_KEEPALIVE_TIMEOUT, "keepalive ping timeout")
            return
        self.pinged = not self.pinged
        if self.pinged:
            self.heard = False
            self.conn.send_ping(b"")
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.schedule_keepalive(self.config.ws_ping_timeout or self.config.ws_ping_interval)
        else:
            self.schedule_keepalive(self.config.ws_ping_interval)

    def fail(self, code, reason):
        """Close from this side, whatever the application is doing: it gets its disconnect now."""
        if self.transport.is_closing():
            return
        if self.conn.state is State.OPEN and not self.close_sent:
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code})
            self.conn.send_close(code, reason)
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
        self.transport.close()
        self.abort_later()

    def abort_later(self):
        """A closing transport waits to flush its buffer, which a client that reads nothing never allows."""
        if self.abort_timer is None and not self.lost:
            self.abort_timer = self.loop.call_later(CLOSE_TIMEOUT, self.transport.abort)

    def handle_close(self, event):
        super().handle_close(event)
        self.abort_later()

    def handle_parser_exception(self):
        conn = self.conn
        if conn.close_rcvd is not None and isinstance(conn.parser_exc, ProtocolError):
            # A close frame inside a fragmented message: websockets fails the connection with 1002,
            # but RFC 6455 lets control frames come between fragments, and a close is answered with
            # its own code (Autobahn 7.1.5). Only this error is raised after a close was parsed.
            conn.data_to_send()  # drop websockets' 1002 close frame
            received = conn.close_rcvd
            payload = b"" if received.code == CloseCode.NO_STATUS_RCVD else received.serialize()
            self.transport.write(Frame(Opcode.CLOSE, payload).serialize(mask=False))
            conn.close_sent = received
        super().handle_parser_exception()
        self.abort_later()

    def send_receive_event_to_app(self):
        """Uvicorn's, replaced whole (no extra call per message), except: invalid UTF-8 closes with
        1007 without logging a traceback (the client's fault, and one ERROR per hostile frame floods
        the logs), and a message after the server's own close (an earlier message of the same read
        was invalid UTF-8) is dropped, where Uvicorn tries a second close frame and raises
        InvalidState. Found by tests/integration/test_hostile."""
        # Not `conn.state is not OPEN`: websockets parses a whole read before its events are handled,
        # so the messages that came in the same read as the client's close frame are handled with the
        # state already CLOSING, and must still reach the application before handle_close queues the
        # disconnect (Uvicorn's test_server_can_read_messages_in_buffer_after_close). Dropped: what
        # comes after this side's close (its disconnect is queued already), and frames sent before
        # the handshake was answered.
        if self.close_sent or self.conn.state is State.CONNECTING:
            return
        if self.curr_msg_data_type == "text":
            try:
                self.queue.put_nowait({"type": "websocket.receive", "text": self.bytes.decode()})
            except UnicodeDecodeError:
                self.logger.debug("%s - invalid UTF-8 in a text message, closing with 1007", self.client)
                if self.conn.state is State.OPEN:  # else the client's close, later in this read, is answered
                    self.conn.send_close(CloseCode.INVALID_DATA, "invalid UTF-8")
                    self.handle_parser_exception()
                return
        else:
            self.queue.put_nowait({"type": "websocket.receive", "bytes": self.bytes})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def shutdown(self):
        if self.handshake_complete and (self.close_sent or self.conn.state is not State.OPEN):
            self.transport.close()  # closing already; websockets refuses a second close frame
        else:
            super().shutdown()
        self.abort_later()

    def handle_connect(self, event):
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # none when the upgrade was refused
        if scope is not None:
            scope["extensions"][SEND_TEXT_NOWAIT] = self.send_text_nowait

    def send_text_nowait(self, text):
        """Write a text frame at once if the socket takes it without waiting; False otherwise.

        Offered to the application as the ASGI extension "wsapp.send_text_nowait", so that a room
        fan-out reaches an idle connection without a task per member. The caller keeps the order
        of its frames by using it only while nothing of its own is queued for the ASGI send.
        """
        if not (self.writable.is_set() and self.is_open()) or self.conn.extensions:
            return False
        self.transport.write(text_frame(text))
        return True

    def is_open(self):
        """Accepted, no close sent or received, connection not lost (websockets' state is OPEN from
        the 101 response until a close frame passes either way; a lost one is a closing transport)."""
        return self.conn.state is State.OPEN and not self.transport.is_closing()

    async def send(self, message):
        kind = message["type"]
        if kind == "websocket.send" and self.is_open():
            await self.writable.wait()
            text = message.get("text")
            if text is not None and self.send_text_nowait(text):
                return
            if self.is_open():  # binary, deflate on, or still open after waiting
                self.send_data(text, message.get("bytes"))
                return
        if kind == "websocket.close" and self.is_open():
            self.writable.set()  # a close does not wait for a slow client: it is written, then aborted
            self.abort_later()
        await super().send(message)
        if kind == "websocket.accept":
            self.request = self.response = None  # only needed to answer the handshake

    def send_data(self, text, data):
        """One message, empty ones included: Uvicorn's send drops them (`if text_data:`, Autobahn 1.2.1)."""
        if text is not None:
            self.conn.send_text(text.encode())
        elif data is not None:
            self.conn.send_binary(data)
        else:
            raise RuntimeError("ASGI 'websocket.send' needs 'text' or 'bytes', got neither")
        self.transport.write(b"".join(self.conn.data_to_send()))
