"""An edge's Nginx dies under traffic (SIGKILL of its container on node 2). Clients reach the site
through both edges, as through DNS with two records, and connect through the next edge each time:
those on node 2 reconnect through node 1 and resume; Swarm restarts node 2's Nginx, which serves
the recorded color (the service's label) at once, without a switch."""

import asyncio
import time

import pytest

from tests.e2e.load import Traffic

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

VICTIM = 2


async def test_an_edge_nginx_dies_and_its_clients_go_through_the_other(lab):
    color = lab.version(1)["color"]
    container = lab.docker(VICTIM, "ps", "-q", "--filter", "label=com.docker.swarm.service.name=wsapp_nginx")
    assert container, f"no Nginx runs on node {VICTIM}"
    traffic = Traffic(lab.url(1), [lab.ws_url(1), lab.ws_url(2)], clients=20, rooms=4, message_interval=0.5)
    runner = asyncio.create_task(traffic.run())
    try:
        await asyncio.wait_for(traffic.connected.wait(), 60)
        await asyncio.sleep(2)
        killed = time.monotonic()
        await asyncio.to_thread(lab.docker, VICTIM, "kill", "--signal", "KILL", container)
        started = time.monotonic()
        while not traffic.closes or traffic.away:
            assert time.monotonic() - started < 60, "clients of the dead Nginx did not come back"
            await asyncio.sleep(0.2)
        clients_back = max(traffic.reconnected_at.values()) - killed

        def restarted():
            try:
                return lab.version(VICTIM, timeout=2)["color"] == color
            except OSError:
                return False
        nginx_back = await asyncio.to_thread(lab.wait, restarted, 60, f"node {VICTIM}'s Nginx to serve", 0.5)
        await asyncio.sleep(3)
    finally:
        traffic.stop.set()
        await runner
    print(f"node {VICTIM}'s Nginx killed: its {sum(traffic.closes.values())} clients were live again "
          f"through node 1 after {clients_back:.1f}s; node {VICTIM} served {color} again after "
          f"{nginx_back:.1f}s; HTTP (through node 1) {traffic.http_ok} ok / {len(traffic.http_failures)} "
          f"failed; {traffic.summary()}")
    traffic.assert_every_message_reached_every_client_once_in_order()
    assert set(traffic.closes) == {1006}
    assert traffic.http_failures == []
    assert {lab.version(edge)["color"] for edge in (1, 2)} == {color}
