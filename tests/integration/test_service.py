"""The service as it runs: entrypoint.sh, 2 Uvicorn workers, a real Redis, real WebSocket clients."""

import asyncio
import json
import os
import re
import signal
import subprocess
import time

import pytest
import websockets

pytestmark = pytest.mark.integration

ORIGIN = "http://localhost"


async def join(server, room="it", count=1):
    clients = []
    for _ in range(count):
        ws = await websockets.connect(f"{server.ws_url}/ws/rooms/{room}/", origin=ORIGIN)
        ws.welcome = json.loads(await ws.recv())
        clients.append(ws)
    return clients


async def close_all(clients):
    await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)


def worker_of(server):
    """Map each established client port to the pid of the worker that accepted it."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{server.port} )"],
                         capture_output=True, text=True, check=True).stdout
    owners = {}
    for line in out.splitlines():
        peer = line.split()[3]
        pid = re.search(r"pid=(\d+)", line)
        if pid:
            owners[int(peer.rsplit(":", 1)[1])] = int(pid.group(1))
    return owners


async def test_a_broadcast_reaches_clients_on_both_workers(app_server):
    clients = []
    try:
        for _ in range(100):  # the kernel picks the worker; connect until both have clients
            clients += await join(app_server, "both")
            owners = worker_of(app_server)
            if len({owners[ws.local_address[1]] for ws in clients}) == 2:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("100 connections all landed on one worker")
        await clients[0].send(json.dumps({"type": "message", "body": "to all"}))
        frames = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for ws in clients]
        assert {(f["type"], f["body"]) for f in frames} == {("message", "to all")}
        assert len({f["seq"] for f in frames}) == 1
    finally:
        await close_all(clients)


async def test_metrics_sum_across_workers_whichever_answers(app_server):
    clients = await join(app_server, "metrics", 3)
    try:
        for i in range(10):
            await clients[i % 3].send(json.dumps({"type": "message", "body": str(i)}))
        for ws in clients:
            for _ in range(10):
                await asyncio.wait_for(ws.recv(), 5)
        for _ in range(6):  # several scrapes: both workers answer some of them
            assert app_server.metric("ws_active_connections") == 3
            assert app_server.metric("ws_messages_received_total") == 10
            assert app_server.metric("ws_connections_opened_total") == 3
    finally:
        await close_all(clients)


async def test_seq_is_ordered_across_workers_with_concurrent_senders(app_server):
    clients = await join(app_server, "order", 6)
    try:
        async def burst(ws):
            for i in range(20):
                await ws.send(json.dumps({"type": "message", "body": str(i)}))

        await asyncio.gather(*(burst(ws) for ws in clients))
        for ws in clients:
            seqs = [json.loads(await asyncio.wait_for(ws.recv(), 5))["seq"] for _ in range(120)]
            assert seqs == list(range(seqs[0], seqs[0] + 120))
    finally:
        await close_all(clients)


async def test_sigterm_closes_every_client_with_1012_and_exits_within_grace(app_server):
    clients = await join(app_server, "term", 10)
    started = time.monotonic()
    os.kill(app_server.process.pid, signal.SIGTERM)
    codes = []
    for ws in clients:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        codes.append(closed.value.rcvd.code if closed.value.rcvd else 1006)
    assert codes == [1012] * 10
    await asyncio.to_thread(app_server.process.proc.wait, 10)
    assert time.monotonic() - started < 5 + 3, "exit took longer than GRACEFUL_TIMEOUT plus margin"


async def test_idle_clients_outlive_the_redis_socket_timeout(app_server):
    """Idle longer than channels-redis' 5 s BZPOPMIN wait and redis-py's default timeout."""
    clients = await join(app_server, "idle", 2)
    try:
        await asyncio.sleep(7)
        await clients[0].send(json.dumps({"type": "message", "body": "still here"}))
        assert json.loads(await asyncio.wait_for(clients[1].recv(), 5))["body"] == "still here"
        assert app_server.get("/readyz")[0] == 200
    finally:
        await close_all(clients)


async def test_mass_connect_and_disconnect_of_200_clients(app_server):
    for _ in range(2):
        clients = await asyncio.gather(*(join(app_server, "mass") for _ in range(200)))
        clients = [ws for group in clients for ws in group]
        assert app_server.metric("ws_active_connections") == 200
        await close_all(clients)
    await app_server.until_metric("ws_active_connections", 0)
    assert app_server.metric("ws_errors_total") == 0
    assert "Error" not in app_server.log(), app_server.log()[-3000:]
    (ws,) = await join(app_server, "mass")
    await ws.send(json.dumps({"type": "ping"}))
    assert json.loads(await ws.recv()) == {"type": "pong"}
    await ws.close()


async def until_body(ws, body):
    """Read frames (errors included) until a message with this body arrives."""
    while json.loads(await ws.recv()).get("body") != body:
        pass


async def until_type(ws, kind):
    while (frame := json.loads(await ws.recv()))["type"] != kind:
        pass
    return frame


async def test_a_redis_restart_is_survived(make_server, redis_server):
    app_server = make_server(PUBLISH_SETTLE_SECONDS="2")
    clients = await join(app_server, "restart", 2)
    redis_server.stop()
    deadline = time.monotonic() + 15
    while app_server.get("/readyz")[0] != 503:
        assert time.monotonic() < deadline, "readyz stayed 200 with Redis down"
        await asyncio.sleep(0.2)
    # Not published, for sure (no connection could be had: `unavailable`), or of unknown fate (a
    # pooled connection that died with Redis: the client resumes and resends it by its id).
    await clients[0].send(json.dumps({"type": "message", "body": "lost", "id": "lost"}))
    answer = json.loads(await asyncio.wait_for(clients[0].recv(), 10))
    assert answer.get("error") == "unavailable" or answer.get("reason") == "resume", answer
    redis_server.start()
    started = time.monotonic()
    app_server.wait_ready(timeout=15)
    ready = time.monotonic() - started
    # Redis came back under a new replication id (and here without its data): the room's history is
    # not provably the one the clients had, so each is told to resume and gets a resync "epoch".
    resumed = []
    for ws in clients:
        notice = answer if answer["type"] == "reconnect" and ws is clients[0] else None
        notice = notice or await asyncio.wait_for(until_type(ws, "reconnect"), 15)
        assert (notice["reason"], notice["epoch"]) == ("resume", ws.welcome["epoch"])
        again = await websockets.connect(f"{app_server.ws_url}/ws/rooms/restart/?since={notice['seq']}"
                                         f"&epoch={notice['epoch']}", origin=ORIGIN)
        welcome, resync = [json.loads(await asyncio.wait_for(again.recv(), 5)) for _ in range(2)]
        assert resync["reason"] == "epoch" and resync["epoch"] == welcome["epoch"] != ws.welcome["epoch"]
        resumed.append(again)
    heard = {asyncio.ensure_future(until_body(ws, "back")) for ws in resumed}
    try:
        while heard:
            assert time.monotonic() - started < 15, "a client heard nothing 15 s after Redis came back"
            await resumed[0].send(json.dumps({"type": "message", "body": "back"}))
            _, heard = await asyncio.wait(heard, timeout=0.5)
    finally:
        for task in heard:
            task.cancel()
    recovered = time.monotonic() - started
    assert app_server.metric("ws_errors_total") > 0
    print(f"ready {ready:.1f}s and every client served {recovered:.1f}s after Redis came back")
    await close_all(clients + resumed)


async def test_ctl_drain_releases_every_connection_on_both_workers(app_server):
    clients = await join(app_server, "drain", 10)
    env = dict(app_server.env)
    env.pop("PROMETHEUS_MULTIPROC_DIR")
    started = time.monotonic()
    subprocess.run([env["PYTHON"], "-m", "rooms.ctl", "drain", "blue", "--seconds", "2"],
                   cwd=os.path.join(os.path.dirname(__file__), "..", "..", "service"),
                   env=env, check=True, timeout=30)
    for ws in clients:
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "reconnect"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 1012
    assert time.monotonic() - started < 2 + 2
    assert app_server.get("/readyz")[0] == 503
    with pytest.raises(websockets.InvalidStatus):
        await join(app_server, "drain")
    assert app_server.metric("ws_active_connections") == 0
