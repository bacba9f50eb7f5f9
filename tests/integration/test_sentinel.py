"""Redis with a replica and three Sentinels (issue 12): the primary dies, the service follows the new
one by itself. Every Redis and Sentinel is started through redis/start.sh, as the stack starts them,
on loopback; the app runs through entrypoint.sh with REDIS_SENTINELS and 2 workers."""

import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import websockets
from loadtest.delivery import Receipt, new_totals

from rooms.names import CHANNEL_PREFIX, HEARTBEAT_CHANNEL, HISTORY_PREFIX
from testkit.redisfaults import MASTER, failover
from tests.helpers import ROOT, AppServer, wait_until

pytestmark = pytest.mark.integration

ORIGIN = "http://localhost"


@pytest.fixture
def topology(sentinels):
    yield sentinels
    # The app, the replica and the Sentinels did all they did within their ACL users' rights.
    assert sentinels.acl_denials() == []


@pytest.fixture
def sentinel_app(topology, tmp_path):
    server = AppServer("", tmp_path, workers=2, **topology.app_env,
                       RATE_LIMIT_PER_SECOND="1000", RATE_LIMIT_BURST="1000", ROOM_MESSAGES_PER_SECOND="0")
    server.start()
    yield server
    server.stop()


class Chatter:
    """A client that sends a message with an id every `interval`, resumes with ?since= whenever its
    connection ends (a 403 while Redis is away is retried), resends what got `unavailable`, and
    records every seq (loadtest.delivery.Receipt) and when each of its own messages came back."""

    def __init__(self, server, room, totals, interval=0.05):
        self.server, self.room, self.interval = server, room, interval
        self.receipt = Receipt(totals)
        self.acked = {}  # id -> (seq, time it came back)
        self.epochs = {}  # id -> the epoch it was published in
        self.sent = {}  # id -> time sent
        self.bodies = {}  # seq -> body of every message received
        self.unavailable = self.refused = self.reconnects = 0
        self.stopping = False

    async def run(self):
        while not self.stopping:
            url = f"{self.server.ws_url}/ws/rooms/{self.room}/{self.receipt.query()}"
            try:
                async with websockets.connect(url, origin=ORIGIN, open_timeout=5, close_timeout=1) as ws:
                    await self.session(ws)
            except (websockets.InvalidStatus, OSError, TimeoutError):
                self.refused += 1
                await asyncio.sleep(0.2)
            except websockets.ConnectionClosed:
                pass
            self.reconnects += 1

    async def session(self, ws):
        sender = asyncio.create_task(self.send(ws))
        try:
            async for text in ws:
                frame = json.loads(text)
                kind = frame["type"]
                if kind == "welcome":
                    self.receipt.welcome(frame)
                elif kind == "resync":
                    self.receipt.resync(frame)
                elif kind == "message":
                    self.receipt.message(frame["seq"], frame.get("id"))
                    self.bodies[frame.get("epoch"), frame["seq"]] = frame["body"]
                    if frame.get("id") in self.sent:
                        self.acked.setdefault(frame["id"], (frame["seq"], time.monotonic()))
                        self.epochs.setdefault(frame["id"], frame.get("epoch"))
                elif kind == "error" and frame.get("error") == "unavailable":
                    self.unavailable += 1
                    self.sent.pop(frame.get("id"), None)  # not published: a new message goes instead
                if self.stopping:
                    return
        finally:
            sender.cancel()

    async def send(self, ws):
        while not self.stopping:
            msg_id = uuid.uuid4().hex
            self.sent[msg_id] = time.monotonic()
            await ws.send(json.dumps({"type": "message", "body": msg_id, "id": msg_id}))
            await asyncio.sleep(self.interval)


async def test_killing_the_primary_is_survived_without_restarting_the_service(topology, sentinel_app):
    server, room = sentinel_app, "failover"
    totals = new_totals()
    chatters = [Chatter(server, room, totals) for _ in range(4)]
    tasks = [asyncio.create_task(chatter.run()) for chatter in chatters]
    await asyncio.sleep(3)
    assert all(chatter.acked for chatter in chatters), "no traffic before the kill"
    acked_before = sum(len(chatter.acked) for chatter in chatters)

    old_port, new_port = topology.primary.port, topology.replica.port
    killed = time.monotonic()
    topology.primary.kill()
    deadline = killed + 30

    def first_ack_after_kill():
        times = [at for chatter in chatters for msg_id, (_, at) in chatter.acked.items()
                 if chatter.sent.get(msg_id, 0) > killed]
        return min(times) if times else None

    while first_ack_after_kill() is None:
        assert time.monotonic() < deadline, f"nothing published 30 s after the kill; log:\n{server.log()}"
        await asyncio.sleep(0.05)
    failover = first_ack_after_kill() - killed
    promoted = [topology.primary_port(sentinel) for sentinel in topology.sentinels]
    assert promoted == [new_port] * 3, f"Sentinels name {promoted}, expected the replica {new_port}"
    acked_at_recovery = sum(len(chatter.acked) for chatter in chatters)
    await asyncio.sleep(3)  # traffic goes on on the new primary
    for chatter in chatters:
        chatter.stopping = True
    await asyncio.wait(tasks, timeout=10)
    for task in tasks:
        task.cancel()
    acked_after = sum(len(chatter.acked) for chatter in chatters) - acked_at_recovery
    assert acked_after > 20, "the service stopped delivering after the failover"

    # What the new primary keeps against what clients were told was published: an acknowledged
    # message missing there was lost in the replication window; a seq with another body means the
    # counter went back and was reused.
    new_primary = topology.replica
    raw = new_primary.command("XRANGE", HISTORY_PREFIX + room, "-", "+") or ""
    kept = {}
    lines = raw.splitlines()
    for n, line in enumerate(lines):
        if line.endswith("-0") and line[:-2].isdigit() and n + 4 < len(lines):
            kept[int(line[:-2])] = json.loads(lines[n + 4])["body"]
    # The new primary's history is the new epoch's (a new epoch is a new history): what was
    # acknowledged in it must be there.
    epoch = json.loads(lines[4])["epoch"] if len(lines) > 4 else None
    acked = {msg_id: seq for chatter in chatters for msg_id, (seq, _) in chatter.acked.items()
             if chatter.epochs[msg_id] == epoch}
    lost = [msg_id for msg_id, seq in acked.items() if kept.get(seq) != msg_id]
    seen = {}
    for chatter in chatters:
        for epoch_seq, body in chatter.bodies.items():
            seen.setdefault(epoch_seq, set()).add(body)
    reused = [epoch_seq for epoch_seq, bodies in seen.items() if len(bodies) > 1]
    unavailable = sum(chatter.unavailable for chatter in chatters)
    refused = sum(chatter.refused for chatter in chatters)
    reconnects = sum(chatter.reconnects for chatter in chatters)
    print(f"\nfailover: primary killed -> first message published {failover:.2f} s; acknowledged "
          f"{acked_before} before the kill, {len(acked)} in the new epoch, of which not kept {len(lost)}; "
          f"seqs reused {len(reused)}; delivery {dict(totals)}; 'unavailable' errors {unavailable}; "
          f"refused handshakes {refused}; reconnects {reconnects}")
    assert old_port != new_port
    assert totals["duplicated"] == 0 and totals["out_of_order"] == 0, dict(totals)
    assert not reused, f"seqs published twice with different messages in one epoch: {reused[:5]}"
    # The replica is promoted under a new replication id, so every room's epoch changes and every
    # client is told (resync "epoch"): an acknowledged message lost in the replication window is
    # announced, never silently replaced by another under its seq (docs/operations.md).
    assert totals["resync_epoch"] >= len(chatters), dict(totals)
    assert not lost, f"{len(lost)} messages acknowledged in the new epoch are not on the new primary"
    assert totals["lost"] == 0, dict(totals)

    # The channel layer follows too: a drain reaches both workers through the new primary.
    env = {k: v for k, v in server.env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    clients = [await websockets.connect(f"{server.ws_url}/ws/rooms/after/", origin=ORIGIN) for _ in range(6)]
    for ws in clients:
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "welcome"
    for command in (["drain", "blue", "--seconds", "1"], ["undrain", "blue"]):
        await asyncio.to_thread(subprocess.run, [env["PYTHON"], "-m", "rooms.ctl", *command],
                                cwd=os.path.join(ROOT, "service"), env=env, check=True, timeout=30)
        if command[0] == "drain":
            for ws in clients:
                assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "reconnect"
    wait_until(lambda: all(server.get("/readyz")[0] == 200 for _ in range(6)), 10, "undrain on both workers")


async def test_a_manual_failover_and_restarts_follow_the_new_primary(topology, sentinel_app, tmp_path):
    """SENTINEL FAILOVER keeps the old primary alive as a replica: the app's pooled connections get
    READONLY and must reconnect, its subscriber must leave the demoted node. Then the old primary and
    a Sentinel restart through redis/start.sh and must follow the new primary, not their config."""
    server = sentinel_app
    url = f"{server.ws_url}/ws/rooms/manual/?sender=manual-failover-test"
    ws = await websockets.connect(url, origin=ORIGIN)
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
    epochs = [welcome["epoch"]]

    async def say(body):
        """Send body and return its seq; a resume notice (the failover changes the room's epoch)
        is followed as a client would: reconnect with since and epoch, and send again."""
        nonlocal ws
        await ws.send(json.dumps({"type": "message", "body": body, "id": body}))
        while True:
            try:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
            except websockets.ConnectionClosed:
                ws = await websockets.connect(f"{server.ws_url}/ws/rooms/manual/?since={last['seq']}"
                                              f"&epoch={last['epoch']}&sender=manual-failover-test",
                                              origin=ORIGIN)
                await ws.send(json.dumps({"type": "message", "body": body, "id": body}))
                continue
            if frame["type"] in ("welcome", "resync", "message"):
                last.update({k: frame[k] for k in ("epoch", "seq") if k in frame})
                if frame["type"] == "resync":
                    last["seq"] = frame["from"] - 1
                    epochs.append(frame["epoch"])
            if frame["type"] == "message" and frame["body"] == body:
                return frame["seq"]
            assert frame["type"] in ("message", "reconnect", "welcome", "resync"), frame

    last = {"epoch": welcome["epoch"], "seq": welcome["seq"]}

    assert await say("before") == 1
    assert topology.sentinels[0].command("SENTINEL", "FAILOVER", MASTER) == "OK\n"
    wait_until(lambda: all(topology.primary_port(s) == topology.replica.port for s in topology.sentinels),
               20, "the Sentinels to name the replica")
    wait_until(lambda: "role:slave" in (topology.primary.command("INFO", "replication") or ""), 20,
               "the old primary to be demoted")
    started = time.monotonic()
    seq = None
    while seq is None:
        frame_seq = None
        try:
            frame_seq = await say("after")
        except AssertionError:
            pass  # an unavailable error while the pool reconnects
        seq = frame_seq
        assert time.monotonic() - started < 15, "no publish after the manual failover"
    assert seq == 2
    assert len(epochs) == 2 and epochs[0] != epochs[1], "the promoted replica began a new epoch"
    # Both workers' subscribers leave the demoted primary, also the one that published nothing.
    def subscribers(node, channel):
        return (node.command("PUBSUB", "NUMSUB", channel) or "").split()[-1:]

    wait_until(lambda: subscribers(topology.replica, HEARTBEAT_CHANNEL) == ["2"], 15,
               "both workers to subscribe on the new primary")
    assert subscribers(topology.primary, HEARTBEAT_CHANNEL) == ["0"]
    assert subscribers(topology.replica, CHANNEL_PREFIX + "manual") == ["1"]
    await ws.close()

    # The old primary restarts: it asks the Sentinels and comes back as the new primary's replica.
    topology.primary.kill()
    topology.primary.start()
    info = topology.primary.command("INFO", "replication")
    assert "role:slave" in info and f"master_port:{topology.replica.port}" in info, info
    # A Sentinel restarts from the state it kept (its configuration file): the new primary.
    sentinel = topology.sentinels[0]
    sentinel.kill()
    sentinel.start()
    assert topology.primary_port(sentinel) == topology.replica.port
    wait_until(lambda: topology.master(sentinel).get("num-other-sentinels") == "2", 20,
               "the restarted Sentinel to rejoin the others")
    states = [topology.master(s).get("num-other-sentinels") for s in topology.sentinels]
    assert states == ["2", "2", "2"], f"a restarted Sentinel is counted twice: {states}"


def test_after_a_failover_a_restart_of_every_part_keeps_the_promoted_primary(topology):
    """The primary dies, the replica is promoted, then every part stops and starts again, the stale
    old primary first: the Sentinels start from their files (one lost its file: the other two are a
    majority) and name the promoted one, and each Redis starts as what the majority names. Before,
    no Sentinel remembered and the old primary came back as primary over the newer data."""
    failover(topology)
    for node in topology.nodes:
        node.stop()
    lost = topology.sentinels[2]  # as if its slot moved to a node with an empty volume
    empty = Path(lost.env["REDIS_RUN_CONF"]).parent / "empty-node"
    empty.mkdir()
    lost.env["REDIS_RUN_CONF"] = str(empty / "sentinel-3.conf")
    for sentinel in topology.sentinels:
        sentinel.start()
    assert [topology.primary_port(s) for s in topology.sentinels[:2]] == [topology.replica.port] * 2
    for node in (topology.primary, topology.replica):
        node.env["SENTINEL_WAIT"] = "10"
        node.start()
    info = topology.primary.command("INFO", "replication")
    assert "role:slave" in info and f"master_port:{topology.replica.port}" in info, info
    assert "role:master" in topology.replica.command("INFO", "replication")
    wait_until(lambda: all(topology.primary_port(s) == topology.replica.port for s in topology.sentinels), 20,
               "every Sentinel to name the promoted primary")
    assert "Sentinels name 127.0.0.1 %d as primary: starting as its replica" % topology.replica.port in (
        topology.primary.log())
