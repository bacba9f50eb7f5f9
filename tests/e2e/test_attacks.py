"""Hostile clients through Nginx on a real swarm, each during a release (docs/security.md, "Attacks").

Every test runs one attack from tests/e2e/attacks.py in its own process while 20 ordinary clients
chat in other rooms, and runs promote.sh in the middle of it. It prints one row of figures: the
attacker's resources, the replicas' peak RSS, Redis's peak used_memory, the log bytes written, what
the ordinary clients saw (messages delivered, lost, p99 of their own messages' round trip) and
whether the release completed; the same row goes to tests/e2e/artifacts/attacks.txt. The ordinary
clients connect through localhost; the attackers from addresses of their own (added to `lo` for the
module), so that per-address limits tell them apart.
"""

import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import BASE_URL, HTTP_PORT, WS_URL, docker, redis_cli, run
from tests.e2e.load import Traffic
from tests.helpers import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900), pytest.mark.takes_standing_system]

# The attackers' side: a local address to connect to, and addresses to connect from. Connections
# to a local, non-loopback address reach Nginx's host-mode port through Docker's DNAT, which keeps
# the source address (connections to 127.0.0.1 go through docker-proxy and all look alike).
TARGET = "10.251.0.1"
# One address (or three) per attack, so that no attack starts out limited for what an earlier one did
# (the rooms an address may create are counted over a minute).
PINGS, CREATORS, ROOM_FLOOD, HANDSHAKES, LOGS = ["10.251.0.2"], ["10.251.0.3", "10.251.0.4", "10.251.0.5"], \
    ["10.251.0.6"], ["10.251.0.7"], ["10.251.0.8"]
ATTACKERS = PINGS + CREATORS + ROOM_FLOOD + HANDSHAKES + LOGS
ATTACK_URL = f"ws://{TARGET}:{HTTP_PORT}"
WARMUP = 5  # seconds of attack before the release starts (each floods at full rate within a second)
MiB = 2**20
ARTIFACTS = Path(ROOT, "tests", "e2e", "artifacts")


@pytest.fixture(scope="module", autouse=True)
def attackers():
    """TARGET and the attackers' addresses on `lo`, for the module; each test takes the system the test
    before it left (conftest.py) or gets one of its own."""
    added = []
    try:
        for address in [TARGET, *ATTACKERS]:
            subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True, timeout=10)
            added.append(address)
        yield
    finally:
        for address in added:
            subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], timeout=10)


def app_containers():
    ids = []
    for color in ("blue", "green"):
        ids += docker("ps", "-q", "--no-trunc", "--filter",
                      f"label=com.docker.swarm.service.name=wsapp-{color}_app").split()
    return ids


def rss(container):
    """The container's resident memory (cgroup v1, as this machine's engine runs), or 0 once gone."""
    try:
        stat = Path(f"/sys/fs/cgroup/memory/docker/{container}/memory.stat").read_text()
    except OSError:
        return 0
    return int(next(line.split()[1] for line in stat.splitlines() if line.startswith("total_rss ")))


def redis_memory():
    """used_memory and maxmemory of the Redis primary, in bytes."""
    info = redis_cli("info", "memory")
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return int(fields["used_memory"]), int(fields["maxmemory"])


def log_sizes():
    """Bytes in the json-file log of each container of Nginx and of the app, by container id."""
    sizes = {}
    for service in ("wsapp_nginx", "wsapp-blue_app", "wsapp-green_app"):
        label = f"label=com.docker.swarm.service.name={service}"
        for container in docker("ps", "-aq", "--filter", label).split():
            path = subprocess.run(["docker", "inspect", "--format", "{{.LogPath}}", container],
                                  capture_output=True, text=True, timeout=30).stdout.strip()
            if path and Path(path).exists():  # else the container is gone since it was listed
                sizes[container] = Path(path).stat().st_size
    return sizes


class Watch(threading.Thread):
    """Samples the replicas' RSS and Redis's used_memory until stopped, keeping the peaks, and the
    size of each container's log, so that a container removed by the release still counts."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stopped = threading.Event()
        self.rss_before = max(rss(c) for c in app_containers())
        self.redis_before, self.maxmemory = redis_memory()
        self.rss_peak = self.rss_before
        self.logs = log_sizes()
        self.log_growth = 0
        self.redis_peak = self.redis_before

    def run(self):
        containers, listed = [], 0.0
        while not self.stopped.wait(0.5):
            if time.monotonic() - listed > 2:
                containers, listed = app_containers(), time.monotonic()
                self.count_logs()
            self.rss_peak = max([self.rss_peak] + [rss(c) for c in containers])
            try:
                self.redis_peak = max(self.redis_peak, redis_memory()[0])
            except (AssertionError, IndexError, subprocess.SubprocessError):
                pass  # Redis busy or restarting: the next sample counts

    def stop(self):
        self.stopped.set()
        self.join(10)
        self.count_logs()

    def count_logs(self):
        """Add what each log grew by since the last look; a smaller file is a rotated one, new since."""
        for container, size in log_sizes().items():
            last = self.logs.get(container, 0)
            self.log_growth += size - last if size >= last else size
            self.logs[container] = size


async def under_attack(attack, *options):
    """Run the attack with a release in its middle; return (promote result, traffic, figures)."""
    traffic = Traffic(BASE_URL, WS_URL, clients=20, rooms=4, message_interval=0.5)
    runner = asyncio.create_task(traffic.run())
    await asyncio.wait_for(traffic.connected.wait(), 60)
    watch = Watch()
    watch.start()
    attacker = subprocess.Popen([sys.executable, "-m", "tests.e2e.attacks", attack, "--url", ATTACK_URL,
                                 "--seconds", "300", *options], cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    try:
        await asyncio.sleep(WARMUP)
        started = time.monotonic()
        # The release gate watches for 15 s (three scrapes), not the default 30: the attack runs all along.
        result = await asyncio.to_thread(run, ["./promote.sh"], 600, False, DRAIN_SECONDS="10",
                                         WATCH_SECONDS="15")
        released = time.monotonic() - started
        await asyncio.sleep(3)
    finally:
        attacker.stdin.close()  # the attack stops, prints its figures and exits
        with attacker:
            output = await asyncio.to_thread(attacker.stdout.read)
        traffic.stop.set()
        await runner
        watch.stop()
    figures = json.loads(output.strip().splitlines()[-1])
    latencies = sorted(traffic.latencies)
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else float("nan")
    report = (f"\nATTACK {attack} {' '.join(options)}: {figures}\n"
              f"  replica RSS {watch.rss_before / MiB:.0f} -> peak {watch.rss_peak / MiB:.0f} MiB; "
          f"Redis used_memory {watch.redis_before / MiB:.1f} -> peak {watch.redis_peak / MiB:.1f} MiB "
              f"of {watch.maxmemory / MiB:.0f}; logs +{watch.log_growth / 1024:.0f} KiB\n"
              f"  others: {traffic.received} delivered, p99 {p99 * 1000:.0f} ms, median "
              f"{statistics.median(latencies) * 1000 if latencies else float('nan'):.0f} ms; "
              f"{traffic.summary()}\n"
              f"  release: promote.sh exit {result.returncode} in {released:.0f} s\n")
    print(report)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS / "attacks.txt", "a") as rows:
        rows.write(report)
    if result.returncode != 0:
        print(result.stderr[-3000:])
    figures.update(rss_before=watch.rss_before, rss_peak=watch.rss_peak, redis_peak=watch.redis_peak,
                   maxmemory=watch.maxmemory, log_bytes=watch.log_growth, p99=p99)
    return result, traffic, figures


def assert_others_unharmed(result, traffic, figures):
    assert result.returncode == 0, "the release did not complete during the attack"
    assert traffic.connect_failures == [], traffic.connect_failures[:5]
    traffic.assert_every_message_reached_every_client_once_in_order()
    assert traffic.refused == 0, traffic.summary()
    assert figures["p99"] < 2.0, "ordinary clients waited over 2 s for their own messages"


async def test_ping_flood_that_never_reads(system):
    result, traffic, figures = await under_attack("ping_flood", "--addresses", *PINGS)
    assert_others_unharmed(result, traffic, figures)
    assert figures["rss_peak"] - figures["rss_before"] < 64 * MiB, "the ping flood grew a replica"


async def test_room_creation_flood_from_three_addresses(system):
    result, traffic, figures = await under_attack("room_creation_flood", "--connections", "3",
                                                  "--addresses", ",".join(CREATORS))
    assert_others_unharmed(result, traffic, figures)
    assert figures["redis_peak"] < 0.8 * figures["maxmemory"], "the attack took Redis near maxmemory"


async def test_room_flood_at_the_per_connection_limit(system):
    result, traffic, figures = await under_attack("room_flood", "--connections", "5",
                                                  "--addresses", *ROOM_FLOOD)
    assert_others_unharmed(result, traffic, figures)


async def test_handshake_flood(system):
    result, traffic, figures = await under_attack("handshake_flood", "--connections", "4",
                                                  "--addresses", *HANDSHAKES)
    assert_others_unharmed(result, traffic, figures)
    assert figures.get("status_429", 0) > 0, "no handshake was refused"


async def test_log_flood(system):
    result, traffic, figures = await under_attack("log_flood", "--connections", "2", "--addresses", *LOGS)
    assert_others_unharmed(result, traffic, figures)
    requests = sum(count for key, count in figures.items()
                   if key.startswith(("bad_host_", "long_path_")))
    assert figures["log_bytes"] / max(requests, 1) < 1024, "more than 1 KiB of log per rejected request"
