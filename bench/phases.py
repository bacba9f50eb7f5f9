"""The benchmark's phases: each runs bench.load (pinned to CLIENT_CPU) against a server and keeps its
JSON result, with the server's CPU share over the phase added."""

import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass

from bench.servers import CLIENT_CPU, pinned, start_baseline, start_redis, start_service
from testkit import ROOT

IDLE_WARMUP = 100
LOAD_TIMEOUT = 180


@dataclass(frozen=True)
class Sizes:
    """How much each phase does. The defaults are the benchmark; SMOKE only shows that it runs."""

    seconds: float = 5  # measured seconds of the round-trip phase
    fanout_seconds: float = 10  # sending seconds of each fan-out phase
    repeats: int = 3  # round trips and handshakes: the best of this many runs
    handshakes: int = 2000
    idle: int = 5000  # idle connections whose memory is measured
    capacity: int = 10000  # connections the service must then hold (its MAX_CONNECTIONS)


SMOKE = Sizes(seconds=1, fanout_seconds=1, repeats=1, handshakes=200, idle=200, capacity=400)


def load(server, phase, *extra):
    """Run one load phase against `server`; adds the server's CPU share and seconds to the result."""
    cpu0, t0 = server.cpu(), time.monotonic()
    args = pinned(CLIENT_CPU, [sys.executable, "-m", "bench.load", phase, server.url, *extra])
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=LOAD_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{phase} against {server.name} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    cpu = server.cpu() - cpu0
    result["server_cpu"] = round(cpu / (time.monotonic() - t0), 2)
    result["server_cpu_seconds"] = round(cpu, 3)
    print(f"  {server.name} {phase} {' '.join(map(str, extra))}: {json.dumps(result)}", flush=True)
    return result


def settle(servers, quiet=0.02, period=0.25, limit=5.0):
    """Wait (at most `limit` s) until no server used more than `quiet` s of CPU over `period` s: a
    server still closing the last run's connections would otherwise take the next run's core."""
    servers, deadline = list(servers), time.monotonic() + limit
    while time.monotonic() < deadline:
        before = [server.cpu() for server in servers]
        time.sleep(period)
        if all(server.cpu() - cpu < quiet for server, cpu in zip(servers, before, strict=True)):
            return


def best(repeats, key, servers, phase, *extra):
    """`repeats` runs of a phase against each server ({who: server}) in turn, the order rotating by
    one each round so that machine noise falls on all alike; the run with the highest `key` for each:
    {who: result}. Runs on one core vary: the baseline's round trips ranged 10k-18k/s between runs,
    and its handshakes fell from about 1,300/s to 700/s after its first run of 2,000. Each run waits
    for every server to settle first: a server measured right after the baseline's handshakes ran
    20-50% slower, and the rotation put the service there in two rounds of three."""
    names = list(servers)
    runs = {who: [] for who in names}
    for i in range(repeats):
        turn = i % len(names)
        for who in names[turn:] + names[:turn]:
            settle(servers.values())
            runs[who].append(load(servers[who], phase, *extra))
    return {who: max(results, key=lambda run: run[key]) for who, results in runs.items()}


def hold(server, totals):
    """Grow idle connections to each total in turn; returns [{held, errors, rss, ...}, ...] after each."""
    args = pinned(CLIENT_CPU, [sys.executable, "-m", "bench.load", "hold", server.url, "--limit", 300])
    client = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    points = []
    try:
        for total in totals:
            client.stdin.write(f"{total}\n")
            client.stdin.flush()
            line = client.stdout.readline()
            if not line:
                raise RuntimeError(f"hold against {server.name} ended early")
            result = json.loads(line)
            time.sleep(1.0)
            result["rss"] = server.rss()
            print(f"  {server.name} hold {total}: {json.dumps(result)}", flush=True)
            points.append(result)
        client.stdin.write("quit\n")
        client.stdin.flush()
        client.wait(60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    return points


def fanout(servers, seconds):
    """One room, one member sending 100 messages/s to 200, then 500 members, on each server in turn."""
    runs = {
        f"fan{members}": best(
            1, "delivered", servers, "fanout", "--members", members, "--rate", 100, "--seconds", seconds
        )
        for members in (200, 500)
    }
    return {who: {phase: results[who] for phase, results in runs.items()} for who in servers}


def throughput(servers, sizes):
    """Round trips, handshakes and fan-out, each phase on every server in turn."""
    rt = best(
        sizes.repeats,
        "roundtrips_per_s",
        servers,
        "roundtrips",
        "--connections",
        100,
        "--seconds",
        sizes.seconds,
    )
    hs = best(sizes.repeats, "handshakes_per_s", servers, "handshakes", "--connections", sizes.handshakes)
    fan = fanout(servers, sizes.fanout_seconds)
    return {who: {"rt": rt[who], "hs": hs[who], **fan[who]} for who in servers}


def measured(starters, measure):
    """Start servers ({who: start}), measure them together ({who: server} -> result), stop them all
    (by pid, also when a start or the measurement fails)."""
    with contextlib.ExitStack() as stack:
        servers = {}
        for who, start in starters.items():
            servers[who] = start()
            stack.callback(servers[who].stop)
        return measure(servers)


def run(sizes, workdir, before=None):
    """Every phase against the baseline and the service, and the service of checkout `before` if
    given (on its own Redis): {(who, phase): result}, who in baseline, service, service2 (2 workers)
    and before, before2."""
    services = {"service": ROOT, **({"before": before} if before else {})}
    with contextlib.ExitStack() as stack:
        redis_urls = {}
        for who in services:
            redis = start_redis()
            stack.callback(redis.stop)
            redis_urls[who] = redis.url

        def service(who, workers=1):
            return lambda: start_service(workers, redis_urls[who], workdir, root=services[who], name=who)

        def baseline():
            return start_baseline(workdir)

        print(
            f"phases: round trips, handshakes, fan-out ({', '.join(services)}: 1 worker, then 2 workers)",
            flush=True,
        )
        one_worker = {"baseline": baseline, **{who: service(who) for who in services}}
        results = measured(one_worker, lambda servers: throughput(servers, sizes))
        two_workers = {f"{who}2": service(who, 2) for who in services}
        results |= measured(two_workers, lambda servers: fanout(servers, sizes.fanout_seconds))
        print("phases: idle memory (fresh processes), then capacity", flush=True)
        idle = (IDLE_WARMUP, IDLE_WARMUP + sizes.idle)
        for who in services:
            results[who]["hold"] = measured(
                {who: service(who)}, lambda servers, who=who: hold(servers[who], (*idle, sizes.capacity))
            )
        results["baseline"]["hold"] = measured(
            {"baseline": baseline}, lambda servers: hold(servers["baseline"], idle)
        )
    return {(who, phase): result for who, phases in results.items() for phase, result in phases.items()}
