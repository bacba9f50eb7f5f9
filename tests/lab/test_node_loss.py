"""A machine dies under traffic: node 4's link goes silent and every process of it is killed
(scripts/lab.sh kill-node). Its clients see a silent socket, notice it by keepalive, reconnect
through Nginx to replicas on other nodes and resume; Swarm reschedules its replicas. Chatting
clients and an HTTP poller run throughout (tests/e2e/load.py). docs/operations.md, "Faults"."""

import asyncio
import time

import pytest

from tests.e2e.load import Traffic, until

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

VICTIM = 4
KEEPALIVE = 2.0  # the clients' ping interval and timeout, seconds


async def test_a_node_dies_and_its_clients_resume_elsewhere(lab):
    color = lab.version(1)["color"]
    service = f"wsapp-{color}_app"
    replicas = len(lab.tasks(service))
    victims = {name.replace(".", "-") for name, node in lab.tasks(service).items()
               if node == lab.node_name(VICTIM)}
    assert victims, f"no replica of {service} runs on node {VICTIM}: {lab.tasks(service)}"

    traffic = Traffic(lab.url(1), lab.ws_url(1), clients=40, rooms=5, message_interval=0.5,
                      keepalive=KEEPALIVE)
    runner = asyncio.create_task(traffic.run())
    try:
        await asyncio.wait_for(traffic.connected.wait(), 60)
        await asyncio.sleep(2)
        cut = [i for i, replica in traffic.replica_of.items() if replica in victims]
        assert cut, f"no client landed on {victims}: {set(traffic.replica_of.values())}"
        killed = time.monotonic()
        await asyncio.to_thread(lab.script, "kill-node", str(VICTIM))
        await until(lambda: all(traffic.reconnected_at.get(i, 0) > killed for i in cut), 60,
                    "every client of the dead node to be live again")
        clients_back = max(traffic.reconnected_at[i] for i in cut) - killed
        await until(lambda: len(lab.tasks(service)) == replicas and lab.node_name(VICTIM) not in
                    lab.tasks(service).values(), 120, f"{replicas} replicas on the other nodes", interval=2)
        replicas_back = time.monotonic() - killed
        await asyncio.sleep(3)
    finally:
        traffic.stop.set()
        await runner
    print(f"node {VICTIM} killed with {len(cut)} of {traffic.clients} clients on it: they were live "
          f"again after {clients_back:.1f}s, {replicas} replicas running again after {replicas_back:.1f}s; "
          f"HTTP {traffic.http_ok} ok / {len(traffic.http_failures)} failed {traffic.http_failures[:3]}; "
          f"{traffic.summary()}")
    traffic.assert_every_message_reached_every_client_once_in_order()
    assert set(traffic.closes) <= {1006, 1011}, traffic.closes
    assert sum(traffic.closes.values()) >= len(cut)
    assert traffic.http_failures == []
    lab.script("revive-node", str(VICTIM))
    lab.wait(lambda: lab.docker(1, "node", "inspect", "--format", "{{.Status.State}}",
                                lab.node_name(VICTIM)) == "ready", 90, f"node {VICTIM} to be Ready again")
