"""Observability on a real swarm: Prometheus finds every replica, counts every connection, every
dashboard query evaluates, and the release gate switches a failing release back."""

import asyncio
import json
import time
import urllib.parse
import urllib.request

import pytest
import websockets

from tests.e2e.helpers import BASE_URL, ENV, WS_URL, active_service, docker, run, stacks, version
from tests.e2e.load import ORIGIN, Traffic
from tests.helpers import DASHBOARDS, dashboard_queries

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900), pytest.mark.takes_standing_system]

PROMETHEUS = f"http://localhost:{ENV['PROMETHEUS_PORT']}"
# Panels that must show data while clients chat; errors and closes may rightly be empty.
MAY_BE_EMPTY = {"Errors per second by kind", "Closes per second by code"}


def prometheus(path, **params):
    url = f"{PROMETHEUS}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    return answer["data"]


def query(expr):
    return prometheus("/api/v1/query", query=expr)["result"]


def app_targets(color):
    return [t for t in prometheus("/api/v1/targets", state="active")["activeTargets"]
            if t["labels"]["job"] == "app" and t["labels"].get("color") == color]


async def eventually(check, timeout, what):
    """Poll check() (which returns a true value or raises AssertionError) without blocking clients."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
            problem = f"{check.__name__} returned {result!r}"
        except (AssertionError, OSError) as exc:
            problem = repr(exc)
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}: {problem}"
        await asyncio.sleep(1)


class Chatters:
    """N clients that stay connected and send a message every half second."""

    def __init__(self, count):
        self.count = count
        self.sockets = []
        self.tasks = []

    async def __aenter__(self):
        for index in range(self.count):
            ws = await websockets.connect(f"{WS_URL}/ws/rooms/obs-{index % 3}/", origin=ORIGIN)
            assert json.loads(await ws.recv())["type"] == "welcome"
            self.sockets.append(ws)
            self.tasks += [asyncio.create_task(self._chat(ws)), asyncio.create_task(self._read(ws))]
        return self

    async def _chat(self, ws):
        try:
            while True:
                await ws.send('{"type":"message","body":"observed"}')
                await asyncio.sleep(0.5)
        except websockets.ConnectionClosed:
            return

    async def _read(self, ws):
        """Read the room's broadcasts: a client that reads nothing misses the server's pongs, and
        websockets' own keepalive then closes it (1011) after 40-50 s."""
        try:
            async for _ in ws:
                pass
        except websockets.ConnectionClosed:
            return

    async def __aexit__(self, *exc):
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for ws in self.sockets:
            await ws.close()


async def test_prometheus_sees_every_replica_connection_and_panel(system):
    color = version()["color"]
    service = active_service()
    idle = "green" if color == "blue" else "blue"
    async with Chatters(12):

        def one_healthy_target_per_replica():
            targets = app_targets(color)
            assert [t["health"] for t in targets] == ["up", "up"], targets
            assert len({t["labels"]["instance"] for t in targets}) == 2
            assert all(t["labels"]["color"] == color for t in targets)
            assert app_targets(idle) == []
            return True

        await eventually(one_healthy_target_per_replica, 60, "one healthy target per replica")

        def connections_counted():
            result = query("sum(ws_active_connections)")
            assert result and float(result[0]["value"][1]) == 12, result
            return True

        await eventually(connections_counted, 30, "sum(ws_active_connections) == 12")

        def replicas_named(count):
            def named():
                series = query("color_replica:ws_active_connections:sum")
                names = {s["metric"]["replica"] for s in series}
                assert names == {f"{service}-{slot}" for slot in range(1, count + 1)}, series
                assert sum(float(s["value"][1]) for s in series) == 12
                return True
            return named

        await eventually(replicas_named(2), 30, "connections per replica, with replica names")
        assert [s["metric"]["color"] for s in query("wsapp_active_color")] == [color]

        dashboards = [json.loads(path.read_text()) for path in DASHBOARDS]

        def every_panel_evaluates_and_core_panels_have_data():
            with_data = set()
            for dashboard in dashboards:
                for where, expr in dashboard_queries(dashboard):
                    if query(expr):  # an invalid query fails here (HTTP 400)
                        with_data.add(where.split("'")[1])
            titles = {panel["title"] for d in dashboards for panel in d["panels"]}
            empty = titles - MAY_BE_EMPTY - with_data
            assert not empty, f"core panels without data: {sorted(empty)}"
            return True

        # Rates need two scrapes and a rule evaluation.
        await eventually(every_panel_evaluates_and_core_panels_have_data, 60, "every panel's data")

        docker("service", "scale", "--detach", f"{service}=3")

        def three_healthy_targets():
            targets = app_targets(color)
            assert sorted(t["health"] for t in targets) == ["up"] * 3, targets
            return True

        started = time.monotonic()
        await eventually(three_healthy_targets, 90, "the scaled replica as a target")
        await eventually(replicas_named(3), 30, f"{service}-3 in the per-replica series")
        print(f"scaled replica scraped {time.monotonic() - started:.1f}s after docker service scale")


class FreshConnections:
    """Workers that keep opening new connections through Nginx and chatting on them, so that
    traffic reaches whichever color is active now (Traffic's clients stay where they are)."""

    def __init__(self, workers=5, messages=10):
        self.workers = workers
        self.messages = messages
        self.stop = asyncio.Event()
        self.colors = {}  # color -> connections
        self.errors = {}  # color -> error frames
        self.tasks = []

    def start(self):
        self.tasks = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]

    async def finish(self):
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _worker(self, index):
        while not self.stop.is_set():
            try:
                async with websockets.connect(f"{WS_URL}/ws/rooms/fresh-{index}/", origin=ORIGIN,
                                              open_timeout=5) as ws:
                    color = json.loads(await asyncio.wait_for(ws.recv(), 5))["color"]
                    self.colors[color] = self.colors.get(color, 0) + 1
                    for _ in range(self.messages):
                        await ws.send('{"type":"message","body":"fresh"}')
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                        if frame["type"] == "error":
                            self.errors[color] = self.errors.get(color, 0) + 1
                        await asyncio.sleep(0.1)
            except (OSError, TimeoutError, websockets.WebSocketException):
                await asyncio.sleep(0.2)  # e.g. the new color going away during the switch back


async def test_release_gate_switches_a_failing_release_back(system, derived_image):
    before = version()["color"]
    after = "green" if before == "blue" else "blue"
    image = derived_image("wsapp-e2e:half-fail", "ENV FAULT_ERROR_SHARE=0.5")
    traffic = Traffic(BASE_URL, WS_URL, clients=20)
    runner = asyncio.create_task(traffic.run())
    await asyncio.wait_for(traffic.connected.wait(), 60)
    fresh = FreshConnections()
    fresh.start()
    await asyncio.sleep(2)
    started = time.monotonic()
    result = await asyncio.to_thread(run, ["./promote.sh", "--image", image], 600, False,
                                     WATCH_SECONDS="30", DRAIN_SECONDS="10")
    seconds = time.monotonic() - started
    await asyncio.sleep(2)
    await fresh.finish()
    traffic.stop.set()
    await runner
    print(f"promote.sh with the gate: exit {result.returncode} in {seconds:.1f}s; HTTP {traffic.http_ok} ok "
          f"/ {len(traffic.http_failures)} failed; fresh connections {fresh.colors}, errors {fresh.errors}")
    print(result.stderr[-3000:])
    assert result.returncode != 0
    assert "server error ratio" in result.stderr, "the gate, not another step, stopped the release"
    assert version()["color"] == before
    assert traffic.http_failures == [] and traffic.connect_failures == []
    assert dict(traffic.closes) == {}, "the failed release closed connections on the old color"
    assert fresh.colors.get(after) and fresh.errors.get(after), "traffic never reached the new color"
    assert not fresh.errors.get(before), "the old color answered errors"
    assert f"wsapp-{after}" not in stacks()
    assert seconds < 180
