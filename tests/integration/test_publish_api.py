"""The publish API against real processes: `manage.py publish` (its own process, through Redis) and
POST /api/rooms/<room>/messages/ with an API key reach WebSocket members with the room's seq, in
order with the members' own messages; keys are stored hashed, scoped to rooms and rate limited."""

import asyncio
import json

import httpx
import pytest
import websockets

pytestmark = pytest.mark.integration

ORIGIN = "http://localhost"


async def member_of(server, room):
    ws = await websockets.connect(f"{server.ws_url}/ws/rooms/{room}/", origin=ORIGIN)
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert welcome["type"] == "welcome"
    return ws, welcome


async def next_frame(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


def post(server, room, key, message):
    return httpx.post(f"{server.url}/api/rooms/{room}/messages/", json=message, timeout=10,
                      headers={"Authorization": f"Bearer {key}"})


async def test_the_command_publishes_once_per_id_in_the_rooms_order(accounts_server):
    server = accounts_server()
    ws, welcome = await member_of(server, "ops")
    try:
        out = await asyncio.to_thread(server.manage, "publish", "ops", "from cron", "--id", "cron-1",
                                      "--name", "cron")
        frame = await next_frame(ws)
        assert (frame["body"], frame["name"], frame["session"]) == ("from cron", "cron", "api")
        assert frame["seq"] == welcome["seq"] + 1 and f"seq {frame['seq']}" in out
        again = await asyncio.to_thread(server.manage, "publish", "ops", "from cron", "--id", "cron-1")
        assert f"seq {frame['seq']}" in again  # the first copy: not published twice
        await ws.send(json.dumps({"type": "message", "body": "mine"}))
        mine = await next_frame(ws)
        assert (mine["body"], mine["seq"]) == ("mine", frame["seq"] + 1)
    finally:
        await ws.close()


async def test_an_api_key_publishes_to_its_rooms_between_the_members_messages(accounts_server,
                                                                             postgres_server):
    server = accounts_server()
    key = (await asyncio.to_thread(server.manage, "create_api_key", "deployer", "--room", "ops")).strip()
    stored = postgres_server.sql("SELECT prefix || ' ' || digest || ' ' || rooms FROM members_apikey")
    assert stored and key.split("_", 2)[2] not in stored  # only a digest of the secret is kept
    ws, _ = await member_of(server, "ops")
    try:
        await ws.send(json.dumps({"type": "message", "body": "before"}))
        before = await next_frame(ws)
        message = {"body": {"status": "deployed"}, "id": "d1"}
        answer = await asyncio.to_thread(post, server, "ops", key, message)
        assert answer.status_code == 201, answer.text
        api = await next_frame(ws)
        assert api["seq"] == answer.json()["seq"] == before["seq"] + 1
        assert (json.loads(api["body"]), api["name"]) == ({"status": "deployed"}, "deployer")
        await ws.send(json.dumps({"type": "message", "body": "after"}))
        assert (await next_frame(ws))["seq"] == api["seq"] + 1
    finally:
        await ws.close()
    assert (await asyncio.to_thread(post, server, "board", key, {"body": "x"})).status_code == 403
    assert (await asyncio.to_thread(post, server, "ops", key[:-2] + "zz", {"body": "x"})).status_code == 401
    assert (await asyncio.to_thread(post, server, "ops", key, {"text": "x"})).status_code == 400


async def test_an_api_key_over_its_rate_gets_429(accounts_server):
    server = accounts_server(workers=1, API_RATE_PER_SECOND="0.1", API_RATE_BURST="3")
    key = (await asyncio.to_thread(server.manage, "create_api_key", "chatty", "--room", "ops")).strip()
    codes = [(await asyncio.to_thread(post, server, "ops", key, {"body": f"n{n}"})).status_code
             for n in range(4)]
    assert codes == [201, 201, 201, 429]
