"""Hostile clients, each run as its own process so that its flood does not slow the test's own clients.

    python -m tests.e2e.attacks NAME --url ws://localhost:18080 [--seconds S] [--addresses A,B]

An attack runs until its standard input closes or --seconds pass, whichever comes first, then prints
one line of JSON: what it sent and what it was answered. Every attack is bounded in time and in
connections, and only ever talks to the URL it is given (this project's Nginx on loopback).
"""

import argparse
import asyncio
import base64
import json
import os
import socket
import sys
import time
import urllib.parse
from collections import Counter

import websockets

ORIGIN = "http://localhost"
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux 4.2; Python 3.12 names it
EMOJI_BODY = "\U0001f600" * 4096  # 16 KiB of UTF-8, 4,096 characters: the longest body allowed


def handshake(url, path, source, origin=ORIGIN):
    """A WebSocket opening handshake on a raw socket; returns (socket, status)."""
    sock = connect(url, source)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Origin: {origin}\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return sock, status


def connect(url, source):
    """A TCP connection to the URL's host and port, from the given source address (or any).

    The source port is left to connect() (IP_BIND_ADDRESS_NO_PORT): a port taken by bind() is held,
    through TIME_WAIT, from every other connect() on the machine, so a flood of short connections from
    a bound address used up the ephemeral ports and the ordinary clients' connects failed with
    EADDRNOTAVAIL (the attack then measured the test machine, not the service)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(5)
        if source:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        sock.connect((url.hostname, url.port))
    except BaseException:
        sock.close()
        raise
    return sock


def masked_frame(opcode, payload):
    """A client frame (FIN set, masked with a zero key: masking is required, its key is not secret)."""
    assert len(payload) <= 125
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def stopper(seconds):
    """An event set when standard input closes or the time is up."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def closed():
        if not sys.stdin.buffer.read1(1):
            loop.remove_reader(sys.stdin.fileno())
            stop.set()

    loop.add_reader(sys.stdin.fileno(), closed)
    loop.call_later(seconds, stop.set)
    return stop


async def ping_flood(args, stop):
    """Connections that send 125-byte pings as fast as they can and never read a byte."""
    url = urllib.parse.urlsplit(args.url)
    ping = masked_frame(0x9, b"p" * 125) * 64
    figures = Counter()

    def flood():
        sock, status = handshake(url, "/ws/rooms/attack-pings/", args.source)
        figures[f"status_{status}"] += 1
        sock.settimeout(0.5)
        started = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    figures["bytes_sent"] += sock.send(ping)
                except TimeoutError:
                    figures["send_stalls"] += 1  # the other side stopped reading: what we want
        except OSError as exc:
            figures["closed_by_server"] += 1
            figures["closed_after_s"] = max(figures["closed_after_s"], round(time.monotonic() - started))
            figures[f"error_{type(exc).__name__}"] += 1
        finally:
            sock.close()

    await asyncio.gather(*(asyncio.to_thread(flood) for _ in range(args.connections)))
    return figures


async def room_creation_flood(args, stop):
    """From each address, connections that each open new room after new room and fill each one with
    6 messages of the longest body: the way to make Redis hold as much as possible."""
    figures = Counter()
    counter = iter(range(10**9))

    async def one(source):
        while not stop.is_set():
            room = f"attack-{os.getpid()}-{next(counter)}"
            try:
                async with websockets.connect(f"{args.url}/ws/rooms/{room}/", origin=ORIGIN, open_timeout=5,
                                              close_timeout=1, max_size=2**22,
                                              local_addr=(source, 0) if source else None) as ws:
                    await ws.recv()  # welcome
                    for number in range(6):
                        await ws.send(json.dumps({"type": "message", "id": f"m{number}", "body": EMOJI_BODY}))
                    answered = 0
                    while answered < 6:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                        if frame["type"] == "message":
                            figures["published"] += 1
                            answered += 1
                        elif frame["type"] == "error":
                            figures[f"refused_{frame.get('error')}"] += 1
                            answered += 1
                    figures["rooms_tried"] += 1
            except websockets.InvalidStatus as exc:
                figures[f"handshake_{exc.response.status_code}"] += 1
                await asyncio.sleep(0.1)
            except Exception as exc:  # whatever the server does to an attacker is a figure, not a crash
                figures[f"error_{type(exc).__name__}"] += 1
                await asyncio.sleep(0.1)

    sources = args.addresses or [None]
    await asyncio.gather(*(one(source) for source in sources for _ in range(args.connections)))
    return figures


async def room_flood(args, stop):
    """One connection that sends the longest bodies as fast as its rate limit lets it into one room,
    read by members that each take 200 KB/s."""
    figures = Counter()
    room = "attack-room-flood"

    local = (args.source, 0) if args.source else None

    async def flooder():
        async with websockets.connect(f"{args.url}/ws/rooms/{room}/", origin=ORIGIN, max_size=2**22,
                                      local_addr=local) as ws:
            await ws.recv()
            number = 0
            while not stop.is_set():
                await ws.send(json.dumps({"type": "message", "id": f"f{number}", "body": EMOJI_BODY}))
                number += 1
                figures["sent"] += 1
                await asyncio.sleep(1 / 20)
                while True:
                    try:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 0.001))
                    except TimeoutError:
                        break
                    if frame["type"] == "error":
                        figures[f"refused_{frame.get('error')}"] += 1

    async def member():
        try:
            async with websockets.connect(f"{args.url}/ws/rooms/{room}/", origin=ORIGIN, max_size=2**22,
                                          max_queue=1, local_addr=local) as ws:
                while not stop.is_set():
                    text = await ws.recv()
                    figures["member_frames"] += 1
                    await asyncio.sleep(len(text) / 200_000)
        except websockets.ConnectionClosed as closed:
            figures[f"member_closed_{closed.rcvd.code if closed.rcvd else 1006}"] += 1

    members = [asyncio.create_task(member()) for _ in range(args.connections)]
    await asyncio.sleep(1)
    try:
        await flooder()
    except (OSError, websockets.WebSocketException) as exc:
        figures[f"flooder_{type(exc).__name__}"] += 1
    await asyncio.wait(members, timeout=2)
    for task in members:
        task.cancel()
    return figures


async def repeat_in_threads(args, stop, figures, once):
    """Run once() over and over in args.connections threads until stop; an OSError is a figure."""

    def repeat():
        while not stop.is_set():
            try:
                once()
            except OSError as exc:
                figures[f"error_{type(exc).__name__}"] += 1

    await asyncio.gather(*(asyncio.to_thread(repeat) for _ in range(args.connections)))


async def handshake_flood(args, stop):
    """Handshake after handshake, closed at once, from several connections at a time."""
    url = urllib.parse.urlsplit(args.url)
    figures = Counter()

    def once():
        sock, status = handshake(url, "/ws/rooms/attack-handshakes/", args.source)
        sock.close()
        figures[f"status_{status}"] += 1

    await repeat_in_threads(args, stop, figures, once)
    return figures


async def log_flood(args, stop):
    """Requests made to be logged: a Host nobody serves, and long unknown paths under /ws/, over HTTP
    and as WebSocket handshakes."""
    url = urllib.parse.urlsplit(args.url)
    long_path = "/ws/" + "x" * 4000
    figures = Counter()

    def once():
        with connect(url, args.source) as sock:
            sock.sendall(b"GET /version HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
            figures[f"bad_host_{sock.recv(64)[9:12].decode()}"] += 1
        with connect(url, args.source) as sock:
            sock.sendall(f"GET {long_path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            figures[f"long_path_{sock.recv(64)[9:12].decode()}"] += 1
        sock, status = handshake(url, long_path, args.source)
        sock.close()
        figures[f"long_path_ws_{status}"] += 1

    await repeat_in_threads(args, stop, figures, once)
    return figures


ATTACKS = {f.__name__: f for f in (ping_flood, room_creation_flood, room_flood, handshake_flood, log_flood)}


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("attack", choices=sorted(ATTACKS))
    parser.add_argument("--url", required=True, help="ws://host:port of the system's Nginx")
    parser.add_argument("--seconds", type=float, default=60.0, help="at most this long")
    parser.add_argument("--connections", type=int, default=1, help="connections (per address)")
    parser.add_argument("--addresses", type=lambda text: text.split(","), default=None,
                        help="source addresses to connect from, comma-separated")
    args = parser.parse_args()
    args.source = args.addresses[0] if args.addresses else None
    stop = stopper(min(args.seconds, 600))
    started = time.monotonic()
    figures = await ATTACKS[args.attack](args, stop)
    figures["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(dict(figures), sort_keys=True), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
