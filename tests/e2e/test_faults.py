"""Faults on the single-node swarm, each under chatting WebSocket clients that resume with ?since=
and an HTTP poller through Nginx (tests/e2e/load.py): what clients see, how long until every one of
them is live again, and that no message is lost, duplicated or out of order.
docs/operations.md ("Faults") has the table of results."""

import asyncio
import time

import pytest

from tests.e2e.helpers import BASE_URL, WS_URL, active_service, docker, version
from tests.e2e.load import Traffic

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CLIENTS = 30


def containers(service):
    return docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}").split()


def running(service):
    return docker("service", "ls", "--filter", f"name={service}", "--format", "{{.Replicas}}")


async def until(check, timeout, what, interval=0.2):
    """Poll check() without blocking the clients; return the seconds it took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(interval)
    return time.monotonic() - started


def answers():
    try:
        version()
        return True
    except OSError:
        return False


async def fault_under_traffic(fault, clients=CLIENTS):
    """Run fault() (blocking, in a thread) under traffic; wait until every client that was closed
    is live again. Return (traffic, seconds from the fault until the last client's welcome, fault's
    result)."""
    traffic = Traffic(BASE_URL, WS_URL, clients=clients, rooms=5, message_interval=0.5)
    runner = asyncio.create_task(traffic.run())
    try:
        await asyncio.wait_for(traffic.connected.wait(), 60)
        await asyncio.sleep(2)
        started = time.monotonic()
        result = await asyncio.to_thread(fault)
        await until(lambda: traffic.closes and not traffic.away, 90, "every closed client to be back")
        recovered = max(traffic.reconnected_at.values()) - started
        await asyncio.sleep(3)  # live messages after the last reconnect, then compare
    finally:
        traffic.stop.set()
        await runner
    print(f"recovered in {recovered:.1f}s; HTTP {traffic.http_ok} ok / {len(traffic.http_failures)} failed "
          f"{traffic.http_failures[:3]}; connect failures {len(traffic.connect_failures)}; "
          f"{traffic.summary()}")
    return traffic, recovered, result


def assert_nothing_lost(traffic):
    assert traffic.received > 0
    assert traffic.frame_errors == []
    for count in ("lost", "duplicated", "out_of_order", "resync_too_old", "resync_ahead"):
        assert traffic.delivery[count] == 0, f"{count}: {traffic.summary()}"
    assert traffic.delivery["resumes"] >= sum(traffic.closes.values())


async def test_sigkill_of_an_app_replica_loses_nothing_and_fails_no_request(system):
    """Its clients reconnect to the other replica and resume; Nginx retries HTTP elsewhere;
    Swarm starts a replacement."""
    service = active_service()
    victim = containers(service)[0]
    def kill():
        docker("kill", "-s", "KILL", victim)
        return time.monotonic()

    traffic, recovered, killed_at = await fault_under_traffic(kill)
    assert traffic.http_failures == []
    assert traffic.connect_failures == []
    assert traffic.closes, "no client was on the killed replica"
    assert_nothing_lost(traffic)
    await until(lambda: running(service) == "2/2" and victim not in containers(service), 90,
                "Swarm to replace the killed replica")
    print(f"SIGKILL {service}: closes {dict(traffic.closes)}, every client live again after "
          f"{recovered:.1f}s, replacement running {time.monotonic() - killed_at:.1f}s after the kill "
          "or sooner")


async def test_killed_nginx_comes_back_on_the_same_color_and_clients_resume(system):
    before = version()["color"]
    victim = containers("wsapp_nginx")[0]

    def kill_and_time_outage():
        docker("kill", "-s", "KILL", victim)
        started = time.monotonic()
        while not answers():
            assert time.monotonic() - started < 90, "Nginx did not come back within 90 s"
            time.sleep(0.1)
        return time.monotonic() - started

    traffic, recovered, outage = await fault_under_traffic(kill_and_time_outage)
    assert version()["color"] == before
    assert set(traffic.http_colors) == {before} and set(traffic.color_of.values()) == {before}
    assert sum(traffic.closes.values()) == CLIENTS, "every client was connected through the one Nginx"
    assert_nothing_lost(traffic)
    new = containers("wsapp_nginx")
    assert new and victim not in new
    print(f"Nginx SIGKILL: HTTP outage {outage:.1f}s ({len(traffic.http_failures)} failed polls), "
          f"closes {dict(traffic.closes)}, every client live again after {recovered:.1f}s, still {before}")
