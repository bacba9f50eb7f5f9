"""Where a room's epoch is checked against Redis's replication id (rooms.scripts, "Epoch"), with a real
Redis and the app under Uvicorn: by every publish, by a room's first member in a process, and after a
resubscription; a handshake into a room with members here only reads it (no `INFO`, no write).

A failover is simulated by rewriting the epoch key as a Redis with another replication id would have
written it: to the scripts that is what a promoted replica or a restarted primary looks like.
"""

import asyncio
import json
import time

import pytest

from rooms.names import CHANNEL_PREFIX, EPOCH_PREFIX
from tests.integration import test_history
from tests.integration.test_history import recv, say

# The fixtures of test_history, shared (make_server is in conftest.py).
connect, store = test_history.connect, test_history.store

pytestmark = pytest.mark.integration

OTHER_REPLID = "0" * 40


def written_elsewhere(store, room, epoch):
    """The room's epoch key as if written under another replication id (a failover since)."""
    store.set(EPOCH_PREFIX + room, f"{epoch}:{OTHER_REPLID}", keepttl=True)


def info_calls(store):
    return store.info("commandstats").get("cmdstat_info", {}).get("calls", 0)


async def test_a_handshake_reads_the_epoch_and_the_next_publish_starts_the_new_one(connect, make_server,
                                                                                     store):
    server = make_server()  # one worker: every client below joins a room with members in its process
    alice = await connect(server, "reads")
    epoch = alice.welcome["epoch"]
    await say(alice, "1", "2")
    written_elsewhere(store, "reads", epoch)
    calls = info_calls(store)
    bob = await connect(server, "reads")
    carol = await connect(server, "reads", f"?since=2&epoch={epoch}")
    # One INFO: the previous info_calls(). Frames up to 2 are what this Redis has, so they stand.
    assert info_calls(store) == calls + 1, "a handshake into a room with members ran INFO"
    assert (bob.welcome["epoch"], bob.welcome["seq"]) == (epoch, 2)
    assert (carol.welcome["epoch"], carol.welcome["seq"]) == (epoch, 2)
    await bob.send(json.dumps({"type": "message", "body": "3"}))
    for ws in (alice, bob, carol):  # the publish checked: a new epoch, so every member resumes
        notice = (await recv(ws))[0]
        assert (notice["type"], notice["reason"], notice["epoch"], notice["seq"]) == (
            "reconnect", "resume", epoch, 2)
    dave = await connect(server, "reads", f"?since=2&epoch={epoch}")
    resync, message = await recv(dave, 2)
    assert (resync["type"], resync["reason"], resync["from"]) == ("resync", "epoch", 3)
    assert resync["epoch"] not in (epoch, "") and dave.welcome["epoch"] == resync["epoch"]
    assert (message["epoch"], message["seq"], message["body"]) == (resync["epoch"], 3, "3")


async def test_a_resubscription_and_a_rooms_first_member_check_the_epoch(connect, make_server, store):
    server = make_server()
    alice = await connect(server, "checks")
    epoch = alice.welcome["epoch"]
    await say(alice, "1")
    written_elsewhere(store, "checks", epoch)
    # Redis drops the subscriber (as a failover does): after resubscribing, the hub checks the room.
    store.client_kill_filter(_type="pubsub")
    notice = (await recv(alice))[0]
    assert (notice["type"], notice["reason"], notice["epoch"], notice["seq"]) == ("reconnect", "resume",
                                                                                  epoch, 1)
    await alice.close()
    deadline = time.monotonic() + 5
    while store.pubsub_numsub(CHANNEL_PREFIX + "checks")[0][1]:  # the room has no member left here
        assert time.monotonic() < deadline, "the process kept its subscription to an empty room"
        await asyncio.sleep(0.05)
    renewed = store.get(EPOCH_PREFIX + "checks").decode().split(":")[0]
    assert renewed != epoch
    written_elsewhere(store, "checks", renewed)
    bob = await connect(server, "checks")  # the room's first member here: checked
    assert bob.welcome["epoch"] not in (epoch, renewed) and bob.welcome["seq"] == 1
