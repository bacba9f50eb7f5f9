"""Locust users for the room service (docs/protocol.md).

Every WebSocket exchange is reported through Locust's request event with its real round trip:
`connect` (handshake to `welcome`), `ping` (ping to pong) and `message` (send to the sender's own
broadcast coming back, through a replay if the connection was released meanwhile). Failures:
connection errors, `error` frames, messages lost, duplicated or out of order (`seq lost` ...), a
`resync`, messages or pongs that never come back, and any close by the server other than 1012
(reported as `close CODE`). A 1012 is the service's "reconnect at once": it is reported as a success
and the user reconnects after random(0, retry_ms) ms, resuming with `?since=<last seq seen>`.

Delivery (loadtest/delivery.py): each chat user checks that every message of its room reached it
exactly once and in order across its reconnects. `handover` requests time how long a user went
without room messages across a release: from the last message on the released connection to the
first (replayed or live) on the next. At the end the totals are printed and, with DELIVERY_REPORT
set, written there as JSON for loadtest/check_report.py.

Run with a shape from loadtest/shapes/, e.g. (see `make soak`):

    locust -f loadtest/locustfile.py,loadtest/shapes/soak.py --headless --host http://localhost \
        --users 200 --spawn-rate 20 --run-time 120s --csv loadtest/reports/soak

Settings (environment): ROOM_SIZE (chat users per room, 10), MESSAGE_INTERVAL (mean seconds
between a chat user's frames, 1), REPLY_TIMEOUT (seconds before a message or pong counts as lost,
10), HTTP_USERS (users polling /version, 2), WS_ORIGIN (the Origin header, http://localhost),
ROOM_PREFIX (soak), DELIVERY_REPORT (path of the JSON delivery totals, none by default).
"""

import itertools
import json
import os
import random
import struct
import time
from collections import Counter, deque

import gevent
import websocket
from locust import HttpUser, User, between, events, task

from delivery import Receipt, new_totals  # locust puts this file's directory on sys.path

ORIGIN = os.environ.get("WS_ORIGIN", "http://localhost")
ROOM_SIZE = int(os.environ.get("ROOM_SIZE", "10"))
ROOM_PREFIX = os.environ.get("ROOM_PREFIX", "soak")
MESSAGE_INTERVAL = float(os.environ.get("MESSAGE_INTERVAL", "1"))
REPLY_TIMEOUT = float(os.environ.get("REPLY_TIMEOUT", "10"))
HTTP_USERS = int(os.environ.get("HTTP_USERS", "2"))
DELIVERY_REPORT = os.environ.get("DELIVERY_REPORT", "")
CONNECT_TIMEOUT = 10.0
RETRY_SECONDS = 1.0  # after a close other than 1012
RETRY_MS = 250  # the jitter window after 1012 when the reconnect notice names none
CLOSE_NORMAL = 1000
CLOSE_RESTART = 1012
CLOSE_ABNORMAL = 1006
WS = "WS"

SERVER_CLOSES = Counter()  # close code sent by the server (1006: dropped without one) -> count
DELIVERY = new_totals()  # summed over every chat user (loadtest/delivery.py)
DELIVERY["sent"] = DELIVERY["unpublished_at_1012"] = DELIVERY["max_handover_ms"] = 0
_user_numbers = itertools.count()


class ProtocolError(Exception):
    """The service broke the protocol's promises (a gap in seq, an unexpected close, an error frame)."""


def ws_url(host, path):
    return host.replace("https://", "wss://", 1).replace("http://", "ws://", 1).rstrip("/") + path


class WebSocketUser(User):
    """A user holding one WebSocket; subclasses set `path()` and send with `send_json`.

    A receiver greenlet reads every frame and reports the exchanges it completes. Connect in
    on_start, close in on_stop; the server's 1012 makes it resume at once (after a short jitter).
    """

    abstract = True

    def __init__(self, environment):
        super().__init__(environment)
        self.ws = None
        self.receiver = None
        self.stopping = False
        self.session = None
        self.receipt = Receipt(DELIVERY)
        self.connection = 0  # number of the current connection
        self.released = set()  # numbers of connections the server closed with 1012
        self.pings = deque()  # send times of pings without a pong, in order
        self.pending = {}  # body -> (send time, connection) of own messages not yet broadcast back
        self.draining = False
        self.retry_ms = RETRY_MS
        self.last_message_at = None
        self.handover_from = None  # set at a 1012: when the released connection's last message came

    def path(self):
        raise NotImplementedError

    def on_start(self):
        self.connect()

    def on_stop(self):
        self.stopping = True
        if self.receiver is not None:
            self.receiver.kill(block=False)
        if self.ws is not None:
            try:
                self.ws.close(status=CLOSE_NORMAL, timeout=1)
            except Exception:
                pass
            self.ws = None

    def report(self, name, started=None, exception=None, length=0):
        elapsed = 0.0 if started is None else (time.perf_counter() - started) * 1000
        self.environment.events.request.fire(
            request_type=WS,
            name=name,
            response_time=elapsed,
            response_length=length,
            exception=exception,
            context={},
        )

    def connect(self):
        """Open the socket (resuming from the last seq seen) and read `welcome`; retry until connected."""
        while not self.stopping:
            started = time.perf_counter()
            try:
                ws = websocket.create_connection(
                    ws_url(self.host, self.path() + self.receipt.query()),
                    origin=ORIGIN,
                    timeout=CONNECT_TIMEOUT,
                    enable_multithread=True,
                )
                welcome = json.loads(ws.recv())
                if welcome.get("type") != "welcome":
                    raise ProtocolError(f"first frame is not welcome: {welcome!r}")
            except websocket.WebSocketBadStatusException as exc:
                self.report("connect", started, ProtocolError(f"handshake refused: HTTP {exc.status_code}"))
                gevent.sleep(RETRY_SECONDS)
                continue
            except Exception as exc:
                self.report("connect", started, exc)
                gevent.sleep(RETRY_SECONDS)
                continue
            ws.settimeout(None)  # quiet rooms are normal: wait for frames as long as it takes
            self.report("connect", started)
            self.receipt.welcome(welcome)
            self.ws, self.session, self.draining = ws, welcome["session"], False
            self.connection += 1
            self.pings.clear()
            self.receiver = gevent.spawn(self.receive_loop, ws)
            return

    def receive_loop(self, ws):
        code = None
        try:
            while True:
                opcode, frame = ws.recv_data_frame(True)
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self.on_frame(json.loads(frame.data), len(frame.data))
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else 1005
                    break
        except Exception:
            code = CLOSE_ABNORMAL
        if self.stopping:
            return
        self.on_close(code)

    def on_close(self, code):
        SERVER_CLOSES[code] += 1
        self.ws = None
        if code == CLOSE_RESTART:
            self.report(f"close {code}")
            self.released.add(self.connection)
            self.handover_from = self.last_message_at or time.perf_counter()
            gevent.sleep(random.uniform(0, self.retry_ms / 1000))
        else:
            self.report(f"close {code}", exception=ProtocolError(f"server closed with {code}"))
            self.expire(0)
            gevent.sleep(RETRY_SECONDS)
        self.connect()

    def on_frame(self, frame, length):
        kind = frame.get("type")
        if kind == "pong":
            if self.pings:
                self.report("ping", self.pings.popleft(), length=length)
        elif kind == "message":
            self.on_message(frame, length)
        elif kind == "resync":
            reason = self.receipt.resync(frame)
            self.report(f"resync {reason}", exception=ProtocolError(f"resync: {frame!r}"))
        elif kind == "error":
            self.report(f"error {frame.get('error')}", exception=ProtocolError(frame.get("detail")))
        elif kind == "reconnect":
            self.draining = True  # the close with 1012 follows: stop sending until reconnected
            self.retry_ms = frame.get("retry_ms", RETRY_MS)

    def on_message(self, frame, length):
        self.last_message_at = time.perf_counter()
        if self.handover_from is not None:
            self.report("handover", self.handover_from)
            handover_ms = (self.last_message_at - self.handover_from) * 1000
            DELIVERY["max_handover_ms"] = max(DELIVERY["max_handover_ms"], round(handover_ms))
            self.handover_from = None
        problem = self.receipt.message(frame["seq"], frame.get("id"))
        if problem is not None:
            self.report(f"seq {problem}", exception=ProtocolError(f"seq {frame['seq']}: {problem}"))
        if frame.get("session") is not None and frame.get("body") in self.pending:
            started, _ = self.pending.pop(frame["body"])
            self.report("message", started, length=length)

    def expire(self, timeout=REPLY_TIMEOUT):
        """Report pings and messages that did not come back within `timeout` as lost.

        A message sent on a connection that was then released may have reached the server after
        it stopped reading: it was never published, which is not a loss of a room message.
        """
        deadline = time.perf_counter() - timeout
        while self.pings and self.pings[0] <= deadline:
            self.report("ping", self.pings.popleft(), ProtocolError("no pong"))
        for body, (started, connection) in list(self.pending.items()):
            if started <= deadline:
                del self.pending[body]
                if connection in self.released:
                    DELIVERY["unpublished_at_1012"] += 1
                    self.report("message unpublished at 1012")
                else:
                    self.report("message", started, ProtocolError("own broadcast never came back"))

    def send_json(self, data):
        """Send a frame if connected and not being drained; returns the send time, or None."""
        ws = self.ws
        if ws is None or self.draining:
            return None
        started = time.perf_counter()
        try:
            ws.send(json.dumps(data))
        except Exception:
            return None  # the receiver sees the broken connection and reports the close
        return started


class ChatUser(WebSocketUser):
    """A member of a room of ROOM_SIZE users: mostly sends messages, sometimes pings."""

    weight = 20
    wait_time = between(MESSAGE_INTERVAL * 0.5, MESSAGE_INTERVAL * 1.5)

    def __init__(self, environment):
        super().__init__(environment)
        self.number = next(_user_numbers)
        self.room = f"{ROOM_PREFIX}-{self.number // ROOM_SIZE}"
        self.sent = itertools.count()

    def path(self):
        return f"/ws/rooms/{self.room}/"

    @task(10)
    def say(self):
        self.expire()
        body = f"{self.number}:{next(self.sent)}"
        started = self.send_json({"type": "message", "body": body})
        if started is not None:
            self.pending[body] = (started, self.connection)
            DELIVERY["sent"] += 1

    @task(1)
    def ping(self):
        self.expire()
        started = self.send_json({"type": "ping"})
        if started is not None:
            self.pings.append(started)


class VersionUser(HttpUser):
    """Polls /version, as a status page or a load balancer check would."""

    fixed_count = HTTP_USERS
    wait_time = between(0.5, 1.5)

    @task
    def version(self):
        with self.client.get("/version", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
            elif "color" not in response.json():
                response.failure(f"no color in {response.text!r}")


@events.quitting.add_listener
def fail_on_unexpected_closes_or_lost_messages(environment, **_kwargs):
    """Print the server's close codes and the delivery totals; a close other than 1012, or any
    message lost, duplicated or out of order, makes the run fail."""
    print(f"server close codes: {dict(SERVER_CLOSES) or 'none'}")
    print("delivery: " + json.dumps(dict(DELIVERY), sort_keys=True))
    if DELIVERY_REPORT:
        with open(DELIVERY_REPORT, "w") as report:
            json.dump(dict(DELIVERY, closes={str(k): v for k, v in SERVER_CLOSES.items()}), report, indent=1)
    if set(SERVER_CLOSES) - {CLOSE_RESTART} or DELIVERY["lost"] or DELIVERY["duplicated"] \
            or DELIVERY["out_of_order"]:
        environment.process_exit_code = 1
