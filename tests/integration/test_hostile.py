"""Hostile input against the service as it runs: entrypoint.sh, Uvicorn with the project's protocol,
two workers and a real Redis."""

import asyncio
import json

import pytest
import websockets

pytestmark = pytest.mark.integration

ORIGIN = "http://localhost"


async def test_a_deeply_nested_frame_is_invalid_json_and_the_session_is_unregistered(app_server):
    """5 KB of `[` made json.loads raise RecursionError: the consumer died, the client saw 1006 and
    its session stayed registered (and counted in ws_active_connections) for good."""
    async with websockets.connect(f"{app_server.ws_url}/ws/rooms/deep/", origin=ORIGIN) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "welcome"
        await app_server.until_metric("ws_active_connections", 1)
        await ws.send("[" * 5000)
        error = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert error["type"] == "error" and error["error"] == "invalid_json"
        await ws.send('{"type": "ping"}')
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}
    await app_server.until_metric("ws_active_connections", 0)
    assert "Traceback" not in app_server.log()
