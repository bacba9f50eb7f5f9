"""The benchmark's load generator (picows): one phase per run, one JSON result line on stdout.

    python -m bench.load roundtrips URL --connections 100 --seconds 5
    python -m bench.load fanout URL --members 200 --rate 100 --seconds 10
    python -m bench.load handshakes URL --connections 2000
    python -m bench.load hold URL          # reads totals from stdin: "N" holds N connections, "quit"

URL is the server's base, e.g. ws://127.0.0.1:8000. Every phase is bounded in time. The result
includes `client_cpu`, this process's CPU time over the measured wall time, so a saturated load
generator shows.
"""

import argparse
import asyncio
import json
import resource
import sys
import time
import uuid

import uvloop
from picows import WSListener, WSMsgType, ws_connect

ORIGIN = "http://localhost"
PING = b'{"type":"ping"}'
CONNECT_CONCURRENCY = 200
CONNECT_TIMEOUT = 30.0


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values, share):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def ms(seconds):
    return None if seconds is None else round(seconds * 1000, 2)


class Client(WSListener):
    """One connection. `welcome` resolves with the first frame; `on_text` gets every later one."""

    def __init__(self, on_text=None):
        self.on_text = on_text
        self.transport = None
        self.welcome = asyncio.get_running_loop().create_future()
        self.close_code = None
        self.last_seq = None
        self.gaps = 0

    def on_ws_connected(self, transport):
        self.transport = transport

    def on_ws_frame(self, transport, frame):
        if frame.msg_type == WSMsgType.TEXT:
            payload = frame.get_payload_as_bytes()
            if not self.welcome.done():
                self.welcome.set_result(payload)
            elif self.on_text is not None:
                self.on_text(self, payload)
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = int(frame.get_close_code())

    def on_ws_disconnected(self, transport):
        if not self.welcome.done():
            self.welcome.set_exception(ConnectionError(f"closed before welcome ({self.close_code})"))

    def send(self, data):
        self.transport.send(WSMsgType.TEXT, data)


async def connect(url, room, on_text=None):
    _, client = await ws_connect(
        lambda: Client(on_text),
        f"{url}/ws/rooms/{room}/",
        extra_headers={"Origin": ORIGIN},
        websocket_handshake_timeout=CONNECT_TIMEOUT,
    )
    welcome = json.loads(await asyncio.wait_for(client.welcome, CONNECT_TIMEOUT))
    if welcome.get("type") != "welcome":
        raise ConnectionError(f"first frame is not welcome: {welcome!r}")
    return client


async def open_many(url, count, room_of, on_text=None, concurrency=CONNECT_CONCURRENCY, first=0):
    """Open `count` connections, `concurrency` at a time; returns (clients, errors)."""
    gate = asyncio.Semaphore(concurrency)
    errors = []

    async def one(i):
        async with gate:
            try:
                return await connect(url, room_of(i), on_text)
            except Exception as exc:
                errors.append(repr(exc))
                return None

    results = await asyncio.gather(*(one(first + i) for i in range(count)))
    return [c for c in results if c is not None], errors


async def close_all(clients):
    for client in clients:
        client.transport.disconnect()
    await asyncio.gather(*(c.transport.wait_disconnected() for c in clients), return_exceptions=True)


async def roundtrips(url, connections, seconds, warmup=1.0):
    """Closed loop: each connection sends ping, waits for pong, sends the next ping."""
    state = {"measuring": False, "running": True, "count": 0}
    latencies = []
    started_at = {}

    def on_text(client, payload):
        now = time.perf_counter()
        if state["measuring"]:
            state["count"] += 1
            latencies.append(now - started_at[client])
        if state["running"]:
            started_at[client] = time.perf_counter()
            client.send(PING)

    clients, errors = await open_many(url, connections, lambda i: f"rt-{i % 10}", on_text)
    for client in clients:
        started_at[client] = time.perf_counter()
        client.send(PING)
    await asyncio.sleep(warmup)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    state["measuring"] = True
    await asyncio.sleep(seconds)
    state["measuring"] = False
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    state["running"] = False
    await asyncio.sleep(0.2)
    await close_all(clients)
    return {
        "connections": len(clients),
        "errors": len(errors),
        "roundtrips_per_s": round(state["count"] / wall),
        "p50_ms": ms(percentile(latencies, 0.50)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "client_cpu": round(cpu / wall, 2),
    }


async def fanout(url, members, rate, seconds, grace=5.0):
    """One member sends `rate` messages/s for `seconds`; every member should receive every one."""
    room = f"fan-{uuid.uuid4().hex[:8]}"
    sent_at = []
    delays = []
    state = {"received": 0, "last": 0.0}

    def on_text(client, payload):
        now = time.perf_counter()
        frame = json.loads(payload)
        if frame.get("type") != "message":
            return
        seq = frame["seq"]
        if client.last_seq is not None and seq != client.last_seq + 1:
            client.gaps += 1
        client.last_seq = seq
        state["received"] += 1
        state["last"] = now
        delays.append(now - sent_at[int(frame["body"])])

    clients, errors = await open_many(url, members, lambda i: room, on_text)
    sender = clients[0]
    total = int(rate * seconds)
    expected = total * len(clients)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    for i in range(total):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent_at.append(time.perf_counter())
        sender.send(b'{"type":"message","body":"%d"}' % i)
    deadline = time.perf_counter() + grace
    while state["received"] < expected and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    end = state["last"] or time.perf_counter()
    wall, cpu = end - t0, cpu_seconds() - cpu0
    await close_all(clients)
    return {
        "members": len(clients),
        "errors": len(errors),
        "sent": total,
        "expected": expected,
        "received": state["received"],
        "delivered": round(state["received"] / max(1, expected), 4),
        "deliveries_per_s": round(state["received"] / wall),
        "p50_ms": ms(percentile(delays, 0.50)),
        "p99_ms": ms(percentile(delays, 0.99)),
        "seq_gaps": sum(c.gaps for c in clients),
        "client_cpu": round(cpu / wall, 2),
    }


async def handshakes(url, connections, concurrency=100):
    """Open `connections` connections (`concurrency` in flight), each until its welcome arrives."""
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    clients, errors = await open_many(url, connections, lambda i: f"hs-{i % 20}", concurrency=concurrency)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    await close_all(clients)
    return {
        "connections": len(clients),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "handshakes_per_s": round(len(clients) / wall),
        "client_cpu": round(cpu / wall, 2),
    }


async def hold(url, rooms=100):
    """Hold idle connections; each stdin line "N" grows them to N in total; "quit" (or EOF) ends."""
    clients, errors = [], []
    while True:
        line = (await asyncio.to_thread(sys.stdin.readline)).strip()
        if not line or line == "quit":
            break
        more, failed = await open_many(
            url, int(line) - len(clients), lambda i: f"idle-{i % rooms}", first=len(clients)
        )
        clients += more
        errors += failed
        await asyncio.sleep(1.0)  # let the server settle before it is measured
        open_now = sum(1 for c in clients if c.close_code is None)
        print(
            json.dumps(
                {"held": open_now, "errors": len(errors), "first_error": errors[0] if errors else None}
            ),
            flush=True,
        )
    await close_all(clients)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("phase", choices=["roundtrips", "fanout", "handshakes", "hold"])
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--limit", type=float, default=120, help="hard time limit of the run (s)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    phases = {
        "roundtrips": lambda: roundtrips(args.url, args.connections, args.seconds),
        "fanout": lambda: fanout(args.url, args.members, args.rate, args.seconds),
        "handshakes": lambda: handshakes(args.url, args.connections),
        "hold": lambda: hold(args.url),
    }

    async def run():
        return await asyncio.wait_for(phases[args.phase](), args.limit)

    result = uvloop.run(run())
    if result is not None:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
