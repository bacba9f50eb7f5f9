"""The Redis primary dies under traffic: it stops answering (its container frozen, as a hung or
cut-off machine: a SIGKILL alone is followed by Swarm's restart within seconds, which the Sentinels
rightly do not fail over for), then is killed once it has been replaced. The Sentinels (three, spread
over the nodes) promote the replica; the service's publishers and subscribers and the channel layer
follow the new primary by themselves; clients resume. Messages sent while no primary answered are
refused with `unavailable` (never published; the client knows), nothing published is lost. Then a
promotion, whose drain travels through the channel layer, runs on the new primary, and the old
primary comes back as a replica. docs/operations.md, "Redis: replica and Sentinel"."""

import asyncio

import pytest

from tests.e2e.load import Traffic

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

SERVICE_NODE = {"wsapp_redis": 1, "wsapp_redis-replica": 2}  # where the lab's labels pin them


def sentinel(lab, *command):
    """A Sentinel's answer (redis-cli in a sentinel container, with the password from its secret)."""
    node, container = next((n, c) for n in range(1, lab.nodes + 1) for c in lab.docker(
        n, "ps", "-q", "--filter", "label=com.docker.swarm.service.name=wsapp_sentinel", check=False).split())
    script = 'REDISCLI_AUTH="$(cat /run/secrets/redis_admin_password)" redis-cli --user admin -p 26379 "$@"'
    return lab.docker(node, "exec", container, "sh", "-c", script, "sh", *command)


def primary(lab):
    """The service whose Redis the Sentinels call primary (they announce service names)."""
    host = sentinel(lab, "sentinel", "get-master-addr-by-name", "wsapp").split()[0]
    assert host in SERVICE_NODE, host
    return host


def primary_container(lab):
    """(the primary's service, the other Redis service, the primary's node, its running container)."""
    old = primary(lab)
    new = next(name for name in SERVICE_NODE if name != old)
    node = SERVICE_NODE[old]
    container = lab.docker(node, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={old}")
    assert container, f"{old} does not run on node {node}"
    return old, new, node, container


def rejoined(lab, name):
    """Whether the Sentinels list the Redis service `name` as a replica that answers."""
    replicas = sentinel(lab, "sentinel", "replicas", "wsapp").split()
    return name in replicas and "s_down" not in " ".join(replicas)


async def freeze_until_promoted(lab, node, container, new):
    """Freeze the primary's container (a hung machine) and wait until the Sentinels promote `new`;
    the seconds that took."""
    await asyncio.to_thread(lab.docker, node, "pause", container)
    return await asyncio.to_thread(
        lab.wait, lambda: primary(lab) == new, 60, f"the Sentinels to promote {new}", 0.5)


async def test_the_redis_primary_dies_and_everything_follows_the_new_one(lab):
    old, new, node, container = primary_container(lab)

    traffic = Traffic(lab.url(1), lab.ws_url(1), clients=20, rooms=4, message_interval=0.25, keepalive=5.0,
                      redis_failover=True)
    runner = asyncio.create_task(traffic.run())
    try:
        await asyncio.wait_for(traffic.connected.wait(), 60)
        await asyncio.sleep(2)
        promoted = await freeze_until_promoted(lab, node, container, new)
        await asyncio.to_thread(lab.docker, node, "kill", "--signal", "KILL", container)
        received = traffic.received
        flowing = await asyncio.to_thread(
            lab.wait, lambda: traffic.received > received + 50, 60, "messages to flow again", 0.2)
        await asyncio.sleep(5)
    finally:
        traffic.stop.set()
        await runner
    print(f"{old} frozen: {new} promoted after {promoted:.1f}s, messages flowing again "
          f"{promoted + flowing:.1f}s after the kill; HTTP {traffic.http_ok} ok / "
          f"{len(traffic.http_failures)} failed; {traffic.summary()}")
    traffic.assert_every_message_reached_every_client_once_in_order()
    assert traffic.epoch_resyncs >= 20, "every client is told of the promoted replica's new epoch"
    assert traffic.http_failures == []

    # The channel layer on the new primary: a promotion's drain travels through it, and its release
    # gate must see every new replica on every node in Prometheus (dns_sd and scrapes every 5 s).
    before = lab.version(1)["color"]
    lab.run(3, ["./promote.sh", "--image", lab.docker(3, "service", "inspect", "--format",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}}", f"wsapp-{before}_app")], 600,
            DRAIN_SECONDS="5", WATCH_SECONDS="20", WATCH_GRACE="15")
    assert lab.version(1)["color"] != before

    # Swarm restarted the killed Redis on its node; it came back as the new primary's replica.
    lab.wait(lambda: rejoined(lab, old), 90, f"{old} to rejoin as a replica", 1)
    assert primary(lab) == new
