"""Traffic during a release: chatting WebSocket clients and an HTTP poller, bounded in time.

The one e2e traffic module. Clients behave as docs/protocol.md asks: on 1012 they reconnect after
random(0, retry_ms) ms and resume with `?since=<last seq seen>`; on anything else after 0.5 s, also
resuming. Everything they see is recorded so the tests can assert on it, and every client checks
that each message of its room reached it exactly once and in order (loadtest/delivery.py).
"""

import asyncio
import json
import random
import time
import urllib.request
from collections import Counter

import websockets
from loadtest.delivery import Receipt, new_totals

ORIGIN = "http://localhost"
RETRY_MS = 250  # when a reconnect notice names none


async def until(check, timeout, what, interval=0.2):
    """Poll check() without blocking the clients; return the seconds it took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(interval)
    return time.monotonic() - started


class Traffic:
    def __init__(self, base_url, ws_url, clients=100, rooms=10, message_interval=1.0, poll_interval=0.05,
                 keepalive=20.0, redis_failover=False):
        self.base_url = base_url
        # A Redis failover gives every room a new epoch: each client is told with a resync "epoch"
        # (docs/protocol.md). Expected only where the test makes Redis fail over; an error elsewhere.
        self.redis_failover = redis_failover
        self.epoch_resyncs = 0
        # The client's own pings (websockets' keepalive): how a client notices a connection that
        # went silent (its server's machine died) rather than closed.
        self.keepalive = keepalive
        # One URL, or several (edges behind DNS): a client connects through the next one each time.
        self.ws_urls = [ws_url] if isinstance(ws_url, str) else list(ws_url)
        self.clients = clients
        self.rooms = rooms
        self.message_interval = message_interval
        self.poll_interval = poll_interval
        self.stop = asyncio.Event()
        self.http_ok = 0
        self.http_failures = []
        self.http_colors = []  # color of each answer, in order
        self.closes = Counter()  # close code -> count
        self.connect_failures = []
        self.frame_errors = []  # error frames and protocol surprises, as strings
        self.refused = 0  # messages answered `unavailable`: never published, the sender knows
        self.sent = 0
        self.delivery = new_totals()  # received, lost, duplicated, out_of_order, resumes, replayed, ...
        self.unconfirmed = 0  # own messages never seen back (sent as the connection was released)
        self.latencies = []  # seconds from sending an own message to seeing it back
        # Every own message seen back (the echo is the acknowledgement, docs/protocol.md), in order:
        # (when, room, epoch, seq, body).
        self.acknowledged = []
        self.handovers = []  # seconds each client went without room messages across a 1012
        self.color_of = {}  # client index -> color of its current connection
        self.replica_of = {}  # client index -> replica of its current connection
        self.reconnected_at = {}  # client index -> time of its latest welcome after a close
        self.away = set()  # indexes of clients between a close and their next welcome
        self.first_close_at = None
        self.connected = asyncio.Event()
        self._open = 0

    @property
    def received(self):
        return self.delivery["received"]

    def summary(self):
        longest = max(self.handovers, default=0.0)
        return (f"WS sent {self.sent}, received {self.received}, lost {self.delivery['lost']}, "
                f"duplicated {self.delivery['duplicated']}, out of order {self.delivery['out_of_order']}, "
                f"unconfirmed own {self.unconfirmed}, refused {self.refused}, "
                f"epoch resyncs {self.epoch_resyncs}; "
                f"{self.delivery['resumes']} resumes replayed {self.delivery['replayed']} "
                f"(largest {self.delivery['max_replay']}); longest handover "
                f"{longest * 1000:.0f} ms; closes {dict(self.closes)}")

    def assert_every_message_reached_every_client_once_in_order(self):
        assert self.received > 0
        assert self.frame_errors == []
        for count in ("lost", "duplicated", "out_of_order", "resync_too_old", "resync_ahead"):
            assert self.delivery[count] == 0, f"{count}: {self.summary()}"

    async def run(self):
        tasks = [asyncio.create_task(self.client(i)) for i in range(self.clients)]
        tasks.append(asyncio.create_task(self.poller()))
        await self.stop.wait()
        await asyncio.wait(tasks, timeout=10)
        for task in tasks:
            task.cancel()

    async def poller(self):
        while not self.stop.is_set():
            try:
                body = await asyncio.to_thread(self._get, "/version")
                self.http_ok += 1
                self.http_colors.append(json.loads(body)["color"])
            except Exception as exc:  # every failure is recorded and asserted on
                self.http_failures.append(repr(exc))
            await asyncio.sleep(self.poll_interval)

    def _get(self, path):
        with urllib.request.urlopen(self.base_url + path, timeout=5) as response:
            return response.read()

    async def client(self, index):
        client = Client(self, index)
        room = f"e2e-{index % self.rooms}"
        attempt = index
        while not self.stop.is_set():
            try:
                edge = self.ws_urls[attempt % len(self.ws_urls)]
                attempt += 1
                url = f"{edge}/ws/rooms/{room}/{client.receipt.query()}"
                # close_timeout: a client that found its connection dead does not wait 10 s for a
                # closing handshake that cannot come before it reconnects.
                ws = await websockets.connect(url, origin=ORIGIN, open_timeout=10, close_timeout=1,
                                              ping_interval=self.keepalive, ping_timeout=self.keepalive)
            except Exception as exc:
                self.connect_failures.append(repr(exc))
                await asyncio.sleep(0.5)
                continue
            try:
                welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
                client.receipt.welcome(welcome)
                self.color_of[index] = welcome["color"]
                self.replica_of[index] = welcome.get("replica")
                self.away.discard(index)
                if client.closed_before:
                    self.reconnected_at[index] = time.monotonic()
                else:
                    self._open += 1
                    if self._open == self.clients:
                        self.connected.set()
                talker = asyncio.create_task(client.talk(ws))
                try:
                    await client.listen(ws)
                finally:
                    talker.cancel()
            except websockets.ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else 1006
                if not self.stop.is_set():
                    self.closes[code] += 1
                    self.first_close_at = self.first_close_at or time.monotonic()
                    client.closed_before = True
                    self.away.add(index)
                    if code == 1012:
                        client.handover_from = client.last_message_at or time.monotonic()
                        await asyncio.sleep(random.uniform(0, client.retry_ms / 1000))
                    else:
                        await asyncio.sleep(0.5)
            finally:
                await ws.close()
        self.unconfirmed += len(client.pending)


class Client:
    """One chatting client's state across its connections."""

    def __init__(self, traffic, index):
        self.traffic = traffic
        self.index = index
        self.receipt = Receipt(traffic.delivery)
        self.closed_before = False
        self.retry_ms = RETRY_MS
        self.draining = False
        self.numbers = iter(range(10**9))
        self.pending = {}  # body of each own message not yet seen back -> when it was sent
        self.last_message_at = None
        self.handover_from = None

    async def talk(self, ws):
        self.draining = False
        await asyncio.sleep(random.uniform(0, self.traffic.message_interval))
        try:
            while not self.traffic.stop.is_set() and not self.draining:
                body = f"{self.index}:{next(self.numbers)}"
                await ws.send(json.dumps({"type": "message", "body": body}))
                self.pending[body] = time.monotonic()
                self.traffic.sent += 1
                await asyncio.sleep(self.traffic.message_interval)
        except websockets.ConnectionClosed:
            return  # the listener records the close
        if self.traffic.stop.is_set():
            await ws.close()

    async def listen(self, ws):
        async for text in ws:
            frame = json.loads(text)
            kind = frame["type"]
            if kind == "message":
                self.last_message_at = time.monotonic()
                if self.handover_from is not None:
                    self.traffic.handovers.append(self.last_message_at - self.handover_from)
                    self.handover_from = None
                problem = self.receipt.message(frame["seq"], frame.get("id"))
                if problem is not None:
                    self.traffic.frame_errors.append(f"client {self.index}: seq {frame['seq']} {problem}")
                sent = self.pending.pop(frame["body"], None)
                if sent is not None:
                    self.traffic.latencies.append(self.last_message_at - sent)
                    at = self.last_message_at
                    ack = (at, frame["room"], frame.get("epoch"), frame["seq"], frame["body"])
                    self.traffic.acknowledged.append(ack)
            elif kind == "resync":
                self.receipt.resync(frame)
                if frame.get("reason") == "epoch" and self.traffic.redis_failover:
                    self.traffic.epoch_resyncs += 1
                else:
                    self.traffic.frame_errors.append(f"client {self.index}: {frame}")
            elif kind == "error" and frame.get("error") == "unavailable":
                self.traffic.refused += 1
            elif kind == "reconnect":
                self.draining = True  # stop sending: the close with 1012 follows
                self.retry_ms = frame.get("retry_ms", RETRY_MS)
            else:
                self.traffic.frame_errors.append(f"client {self.index}: {frame}")
