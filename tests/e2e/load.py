"""Traffic during a release: chatting WebSocket clients and an HTTP poller, bounded in time.

Clients behave as docs/protocol.md asks: on 1012 they reconnect at once. Everything they see
is recorded so the tests can assert on it.
"""

import asyncio
import json
import random
import time
import urllib.request
from collections import Counter

import websockets

ORIGIN = "http://localhost"


class Traffic:
    def __init__(self, base_url, ws_url, clients=100, rooms=10, message_interval=1.0, poll_interval=0.05):
        self.base_url = base_url
        self.ws_url = ws_url
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
        self.sent = 0
        self.received = 0
        self.color_of = {}  # client index -> color of its current connection
        self.reconnected_at = {}  # client index -> time of its latest welcome after a close
        self.first_close_at = None
        self.connected = asyncio.Event()
        self._open = 0

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
        room = f"e2e-{index % self.rooms}"
        closed_before = False
        while not self.stop.is_set():
            try:
                url = f"{self.ws_url}/ws/rooms/{room}/"
                ws = await websockets.connect(url, origin=ORIGIN, open_timeout=10)
            except Exception as exc:
                self.connect_failures.append(repr(exc))
                await asyncio.sleep(0.5)
                continue
            try:
                welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
                self.color_of[index] = welcome["color"]
                if closed_before:
                    self.reconnected_at[index] = time.monotonic()
                else:
                    self._open += 1
                    if self._open == self.clients:
                        self.connected.set()
                talker = asyncio.create_task(self._talk(ws))
                try:
                    await self._listen(ws)
                finally:
                    talker.cancel()
            except websockets.ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else 1006
                if not self.stop.is_set():
                    self.closes[code] += 1
                    self.first_close_at = self.first_close_at or time.monotonic()
                    closed_before = True
                    if code != 1012:
                        await asyncio.sleep(0.5)
            finally:
                await ws.close()

    async def _talk(self, ws):
        await asyncio.sleep(random.uniform(0, self.message_interval))
        try:
            while not self.stop.is_set():
                await ws.send(json.dumps({"type": "message", "body": "hello"}))
                self.sent += 1
                await asyncio.sleep(self.message_interval)
        except websockets.ConnectionClosed:
            return  # the listener records the close
        await ws.close()

    async def _listen(self, ws):
        async for frame in ws:
            if json.loads(frame)["type"] == "message":
                self.received += 1
