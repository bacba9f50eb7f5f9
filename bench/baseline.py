"""The baseline: a bare `websockets` server on uvloop speaking the service's JSON protocol.

It parses every frame, answers `ping` with `pong` and fans `message` out to its room with a
per-room `seq`, in one process and without limits, metrics, Django or Redis: the upper bound
of a Python server for this protocol.

    python -m bench.baseline --port 8100
"""

import argparse
import json
import re
import secrets
import time

import uvloop
from websockets.asyncio.server import broadcast, serve

ROOM_PATH = re.compile(r"/ws/rooms/([A-Za-z0-9_-]{1,64})/")
PONG = '{"type":"pong"}'

rooms = {}  # room -> set of connections
seqs = {}  # room -> last seq


def error(code, detail):
    return json.dumps({"type": "error", "error": code, "detail": detail})


async def handler(ws):
    match = ROOM_PATH.fullmatch(ws.request.path.split("?", 1)[0])
    if match is None:
        await ws.close(1008)
        return
    room = match[1]
    session = secrets.token_urlsafe(9)
    members = rooms.setdefault(room, set())
    members.add(ws)
    try:
        await ws.send(
            json.dumps(
                {
                    "type": "welcome",
                    "room": room,
                    "session": session,
                    "color": "baseline",
                    "replica": "baseline",
                }
            )
        )
        async for text in ws:
            try:
                data = json.loads(text)
            except ValueError:
                await ws.send(error("invalid_json", "the frame is not valid JSON"))
                continue
            kind = data.get("type") if isinstance(data, dict) else None
            if kind == "ping":
                await ws.send(PONG)
            elif kind == "message" and isinstance(data.get("body"), str):
                seq = seqs[room] = seqs.get(room, 0) + 1
                broadcast(
                    members,
                    json.dumps(
                        {
                            "type": "message",
                            "room": room,
                            "seq": seq,
                            "body": data["body"],
                            "session": session,
                            "ts": time.time(),
                        }
                    ),
                )
            else:
                await ws.send(error("unknown_type", "use 'message' or 'ping'"))
    finally:
        members.discard(ws)
        if not members:
            del rooms[room]


async def main(host, port):
    async with serve(handler, host, port) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvloop.run(main(args.host, args.port))
