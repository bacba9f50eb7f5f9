"""Attacks that cross edges, on the lab (docs/security.md, "Attacks across edges"): a limit kept in Redis
holds for the whole cluster, a limit kept by each Nginx holds per edge.

One test, while 8 ordinary clients chat in two rooms through both edges and promote.sh releases a new
version: from one address, a room-creation flood through both edges (the rooms it may create are
counted in Redis, ROOM_CREATIONS_PER_ADDRESS per window, whichever edge and replica it reaches); from
another, a handshake flood against both edges (Nginx's limit_req is each edge's own: an address gets
each edge's rate and burst). The attacks are tests/e2e/attacks.py's processes; the ordinary clients'
deliveries are checked by loadtest/delivery.py (through tests/e2e/load.py). The attackers' addresses
are added to the lab's bridge for the test, so that per-address limits tell them from the clients.
"""

import asyncio
import json
import math
import re
import statistics
import subprocess
import sys
import time

import pytest

from tests.e2e.load import Traffic
from tests.helpers import ROOT
from tests.lab.lab import EDGES

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

ATTACK_SECONDS = 600  # at most (tests/e2e/attacks.py's cap): the attacks are stopped once the release is done
WARMUP = 8  # seconds of attack before the release starts
# As tests/lab/test_edges.py, the release gate is not what is tested here; a busy machine may take
# more than the default 120 s to make four new replicas healthy.
RELEASE = {"DRAIN_SECONDS": "3", "WATCH_SECONDS": "0", "HEALTH_TIMEOUT": "300"}


@pytest.fixture
def attackers(lab):
    """Two addresses of this host on the lab's bridge: the room creator's and the handshaker's."""
    bridge, added = f"wsapp-lab{lab.id}", []
    try:
        for last in (201, 202):
            address = f"10.99.{lab.id}.{last}"
            subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", bridge], check=True, timeout=10)
            added.append(address)
        yield added
    finally:
        for address in added:
            subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", bridge], timeout=10)


def release_setting(lab, name):
    """A setting of the lab's release file (scripts/lab.sh writes it from stack/release.env)."""
    path = lab.env(1)["RELEASE_ENV"]
    with open(path) as release:
        return int(next(line.split("=", 1)[1] for line in release if line.startswith(f"{name}=")))


def attack(name, url, source, *options):
    return subprocess.Popen([sys.executable, "-m", "tests.e2e.attacks", name, "--url", url, "--seconds",
                             str(ATTACK_SECONDS), "--addresses", source, *options], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def figures(process):
    process.stdin.close()  # the attack stops if still running, prints its figures and exits
    with process:
        output = process.stdout.read()
    return json.loads(output.strip().splitlines()[-1])


def created_rooms(lab, pids):
    """The rooms the creation floods of these processes made that exist in Redis (their seq keys,
    tests/e2e/attacks.py names them attack-<pid>-<number>), read on the first Redis of node 1 that
    answers (a Redis restarted by a busy machine answers LOADING for a while), or None."""
    login = 'REDISCLI_AUTH="$(cat /run/secrets/redis_admin_password)" redis-cli --user admin'
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for service in ("wsapp_redis", "wsapp_redis-replica"):
            for node in range(1, lab.nodes + 1):
                label = f"label=com.docker.swarm.service.name={service}"
                for container in lab.docker(node, "ps", "-q", "--filter", label).split():
                    scan = lab.run(node, ["docker", "exec", container, "sh", "-c",
                                          f"{login} --scan --pattern 'wsapp:seq:attack-*'"], 60, check=False)
                    if scan.returncode == 0 and "LOADING" not in scan.stdout + scan.stderr:
                        return [key for key in scan.stdout.split()
                                if (match := re.fullmatch(r"wsapp:seq:attack-(\d+)-\d+", key))
                                and int(match[1]) in pids]
        time.sleep(2)
    return None


async def test_redis_limits_hold_across_edges_and_nginx_limits_per_edge(lab, attackers):
    creator, handshaker = attackers
    limit, rate, burst = (release_setting(lab, name) for name in
                          ("ROOM_CREATIONS_PER_ADDRESS", "NGINX_WS_RATE", "NGINX_WS_BURST"))
    tag = lab.next_image(1, "wsapp:lab-attacks")
    traffic = Traffic(lab.url(1), [lab.ws_url(node) for node in EDGES], clients=8, rooms=2,
                      message_interval=0.5)
    runner = asyncio.create_task(traffic.run())
    await asyncio.wait_for(traffic.connected.wait(), 60)
    processes = {}
    for node in EDGES:
        url = f"{lab.ws_url(node)}:80"  # the handshake flood's raw sockets need the port
        processes[("rooms", node)] = attack("room_creation_flood", url, creator, "--connections", "2")
        processes[("handshakes", node)] = attack("handshake_flood", url, handshaker, "--connections", "3")
    try:
        await asyncio.sleep(WARMUP)
        started = time.monotonic()
        result = await asyncio.to_thread(lab.run, 1, ["./promote.sh", "--image", tag], 600, False, **RELEASE)
        released = time.monotonic() - started
        await asyncio.sleep(2)
    finally:
        found = {key: await asyncio.to_thread(figures, process) for key, process in processes.items()}
        traffic.stop.set()
        await runner
    rooms = created_rooms(lab, {processes[("rooms", node)].pid for node in EDGES})
    assert rooms is not None, "no Redis answered the count of the rooms"
    seconds = max(found[("rooms", node)]["seconds"] for node in EDGES)
    latencies = sorted(traffic.latencies) or [float("nan")]
    p99, median = latencies[int(len(latencies) * 0.99)], statistics.median(latencies)
    print(f"\nLAB ATTACKS ({len(EDGES)} edges, {seconds:.0f} s):\n"
          f"  room creation from one address, 2 connections per edge: {len(rooms)} rooms in Redis, budget "
          f"{limit} per window; per edge {[found[('rooms', node)] for node in EDGES]}\n"
          f"  handshakes from one address, 3 connections per edge (limit_req {rate}/s burst {burst} each): "
          f"{[found[('handshakes', node)] for node in EDGES]}\n"
          f"  others: {traffic.received} delivered, p99 {p99 * 1000:.0f} ms, median {median * 1000:.0f} ms; "
          f"{traffic.summary()}\n"
          f"  release: promote.sh exit {result.returncode} in {released:.0f} s")
    assert result.returncode == 0, result.stderr[-4000:]
    assert traffic.connect_failures == [], traffic.connect_failures[:5]
    traffic.assert_every_message_reached_every_client_once_in_order()
    assert traffic.refused == 0, traffic.summary()
    # Cluster-wide: both edges and every replica count the address's rooms in one Redis key.
    assert 0 < len(rooms) <= limit * math.ceil(seconds / 60), (len(rooms), limit, seconds)
    # Per edge: each edge refuses beyond its own budget, and the address gets each edge's.
    accepted = {node: found[("handshakes", node)].get("status_101", 0) for node in EDGES}
    for node in EDGES:
        handshakes = found[("handshakes", node)]
        assert handshakes.get("status_429", 0) > 0, (node, handshakes)
        assert accepted[node] <= burst + rate * handshakes["seconds"] + 2 * rate, (node, handshakes)
    assert sum(accepted.values()) > burst + rate * seconds, accepted
