"""`make bench-durability`: what acknowledged writes would cost the room hub's publish script.

A Redis primary and one replica on loopback (core SERVER_CPU); PUBLISHERS publishers (core CLIENT_CPU),
one connection each, in closed loops calling the publish script with EVALSHA and the keys and
arguments RedisHub.publish gives it (8 rooms, one sender per publisher, a new message id each time).
The variants:

  old      the publish script of OLD (before epochs and per-sender ids; read from git, not imported)
  current  rooms.scripts.PUBLISH_SCRIPT
  wait     the current script, then `WAIT 1 100` on the same connection (pipelined): the reply comes
           once the replica has the write, or after 100 ms without it
  minrep   the current script with `min-replicas-to-write 1`, `min-replicas-max-lag 10` on the primary

Each runs SECONDS in all, in ROUNDS rounds whose order rotates, so that noise on the shared machine
falls on all alike. Then the replica is frozen (SIGSTOP: how long minrep goes on accepting writes)
and stopped (what wait and minrep do then). Latency is send -> last reply on the publisher's clock;
"Redis us" is the primary's own time per publish (INFO commandstats: EVALSHA, plus WAIT).

The publishers speak RESP over asyncio streams (standard library), so that the client's cost stays
small beside Redis's. Every process it starts is stopped by its pid.

    .venv-bench/bin/python -m bench.durability [--seconds 10] [--publishers 16] [--old 28dc874]
"""

import argparse
import ast
import asyncio
import datetime
import itertools
import json
import os
import resource
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.servers import CLIENT_CPU, SERVER_CPU, pinned
from testkit import ROOT, RedisServer

sys.path.insert(0, str(Path(ROOT, "service")))
from rooms import frames, names, scripts  # noqa: E402 (service/ is not on the path before)

ROOMS = 8
BODY = "Are we still on for the release review at four? I can bring the numbers."
# The service's defaults (service/config/settings.py): ROOM_HISTORY_MAX, _SECONDS, _BYTES and
# ROOM_IDS_SECONDS, _MAX.
HISTORY = (1000, 600, 262144)
IDS = (600, 10000)
WAIT = ("WAIT", 1, 100)
MIN_REPLICAS = ("min-replicas-to-write", 1, "min-replicas-max-lag", 10)
FROZEN_LIMIT = 30.0  # seconds to wait for minrep to refuse with the replica frozen


class ReplyError(str):
    """An error reply (e.g. NOREPLICAS ...)."""


def encode(command):
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Connection:
    """One RESP2 connection: commands are sent together (a pipeline) and their replies read in order."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port):
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def reply(self):
        line = await self.reader.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"*":
            return [await self.reply() for _ in range(int(rest))]
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else (await self.reader.readexactly(size + 2))[:-2]
        if kind == b":":
            return int(rest)
        if kind == b"-":
            return ReplyError(rest.decode())
        if kind == b"+":
            return rest.decode()
        raise ConnectionError(f"not a RESP reply: {line!r}")

    async def call(self, *commands):
        self.writer.write(b"".join(map(encode, commands)))
        return [await self.reply() for _ in commands]

    async def one(self, *command):
        (reply,) = await self.call(command)
        if isinstance(reply, ReplyError):
            raise RuntimeError(f"{command[0]}: {reply}")
        return reply

    async def info(self, section):
        text = (await self.one("INFO", section)).decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    async def close(self):
        self.writer.close()
        await self.writer.wait_closed()


def old_script(ref):
    """PUBLISH_SCRIPT and frame_parts as they were at `ref` (service/rooms/hub.py there imports Django,
    so its assignments and that function are taken from the source, not imported)."""
    source = subprocess.run(
        ["git", "-C", ROOT, "show", f"{ref}:service/rooms/hub.py"], capture_output=True, text=True, check=True
    ).stdout
    wanted = [
        node
        for node in ast.parse(source).body
        if (isinstance(node, ast.Assign) and node.targets[0].id in ("TRIM_LUA", "PUBLISH_SCRIPT"))
        or (isinstance(node, ast.FunctionDef) and node.name == "frame_parts")
    ]
    namespace = {"json": json}
    exec(compile(ast.Module(wanted, type_ignores=[]), f"{ref}:service/rooms/hub.py", "exec"), namespace)
    return namespace["PUBLISH_SCRIPT"], namespace["frame_parts"]


@dataclass
class Publisher:
    room: str
    session: str = field(default_factory=lambda: secrets.token_urlsafe(9))
    sender: str = field(default_factory=lambda: secrets.token_urlsafe(16))


MESSAGE_IDS = itertools.count()


def old_publish(sha, frame_parts):
    """The EVALSHA of RedisHub.publish at OLD: keys seq, history, channel, ids; args head, tail, max,
    seconds, bytes, id."""

    def commands(p):
        msg_id = f"m{next(MESSAGE_IDS)}"
        head, tail = frame_parts(p.room, p.session, BODY, time.time(), msg_id)
        keys = [names.SEQ_PREFIX, names.HISTORY_PREFIX, names.CHANNEL_PREFIX, "wsapp:ids:"]
        return [("EVALSHA", sha, len(keys), *(k + p.room for k in keys), head, tail, *HISTORY, msg_id)]

    return commands


def current_publish(sha, then=()):
    """The EVALSHA of RedisHub.publish (then `then`, pipelined)."""
    prefixes = (
        names.SEQ_PREFIX,
        names.HISTORY_PREFIX,
        names.CHANNEL_PREFIX,
        names.EPOCH_PREFIX,
        names.SENT_PREFIX,
        names.SENT_TIMES_PREFIX,
        names.ROOM_RATE_PREFIX,
    )

    def commands(p):
        msg_id = f"m{next(MESSAGE_IDS)}"
        head, tail = frames.frame_parts(p.room, p.session, BODY, time.time(), msg_id)
        keys = [*(k + p.room for k in prefixes), names.ROOMS_INDEX]
        # No room rate limit (0): the publishers share a few rooms far above it.
        args = [head, tail, *HISTORY, f"{p.sender}:{msg_id}", secrets.token_urlsafe(9), *IDS, 0, p.room]
        return [("EVALSHA", sha, len(keys), *keys, *args), *then]

    return commands


@dataclass
class Run:
    latencies: list = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    unacked: int = 0  # WAIT answered fewer than 1 replica
    first_error: float | None = None  # seconds from the start to the first error reply
    wall: float = 0.0
    redis_usec: float = 0.0
    redis_cpu: float = 0.0
    client_cpu: float = 0.0

    def add(self, other):
        self.latencies += other.latencies
        self.errors += other.errors
        self.unacked += other.unacked
        for name in ("wall", "redis_usec", "redis_cpu", "client_cpu"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def redis_totals(admin):
    """(usec spent in EVALSHA and WAIT, CPU seconds) of the primary so far."""
    stats, cpu = await admin.info("commandstats"), await admin.info("cpu")
    usec = sum(
        int(dict(kv.split("=") for kv in stats[name].split(","))["usec"])
        for name in ("cmdstat_evalsha", "cmdstat_wait")
        if name in stats
    )
    return usec, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def publish_for(connections, publishers, commands, seconds, stop_on_error=False):
    """Every publisher in a closed loop for `seconds` (or until the first error reply)."""
    run = Run()
    started = time.perf_counter()
    stop_at = started + seconds

    async def loop(connection, publisher):
        while time.perf_counter() < stop_at:
            batch = commands(publisher)
            sent = time.perf_counter()
            replies = await connection.call(*batch)
            run.latencies.append(time.perf_counter() - sent)
            for command, reply in zip(batch, replies, strict=True):
                if isinstance(reply, ReplyError):
                    run.errors[reply.split(" script: ")[0]] += 1  # not the script's sha and line
                    if run.first_error is None:
                        run.first_error = time.perf_counter() - started
                    if stop_on_error:
                        return
                elif command[0] == "WAIT" and reply < 1:
                    run.unacked += 1

    await asyncio.gather(*(loop(c, p) for c, p in zip(connections, publishers, strict=True)))
    run.wall = time.perf_counter() - started
    return run


async def measure(admin, connections, publishers, commands, seconds, stop_on_error=False):
    """One run, with the primary's time per publish and both sides' CPU share."""
    usec0, redis_cpu0 = await redis_totals(admin)
    cpu0 = cpu_seconds()
    run = await publish_for(connections, publishers, commands, seconds, stop_on_error)
    usec, redis_cpu = await redis_totals(admin)
    run.redis_usec, run.redis_cpu, run.client_cpu = usec - usec0, redis_cpu - redis_cpu0, cpu_seconds() - cpu0
    return run


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else None


def summary(run):
    count = len(run.latencies)
    return {
        "publishes_per_s": count / run.wall,
        "p50_ms": 1000 * percentile(run.latencies, 0.5),
        "p99_ms": 1000 * percentile(run.latencies, 0.99),
        "redis_us": run.redis_usec / count,
        "redis_cpu": run.redis_cpu / run.wall,
        "client_cpu": run.client_cpu / run.wall,
        "count": count,
        "errors": dict(run.errors),
        "unacked": run.unacked,
    }


async def replica_link_up(admin, replica_admin, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        link = (await replica_admin.info("replication")).get("master_link_status")
        slaves = (await admin.info("replication")).get("connected_slaves")
        if link == "up" and slaves == "1":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the replica's link is {link}, the primary has {slaves} replicas")
        await asyncio.sleep(0.1)


async def benchmark(args, primary, replica):
    admin, replica_admin = await Connection.open(primary.port), await Connection.open(replica.port)
    # The sync goes through the socket on both sides (the primary's default): no file is written.
    await admin.one("CONFIG", "SET", "repl-diskless-sync", "yes")
    await replica_admin.one("CONFIG", "SET", "repl-diskless-load", "on-empty-db")
    await replica_admin.one("REPLICAOF", "127.0.0.1", primary.port)
    await replica_link_up(admin, replica_admin)
    old_source, old_frame_parts = old_script(args.old)
    old_sha = (await admin.one("SCRIPT", "LOAD", old_source)).decode()
    sha = (await admin.one("SCRIPT", "LOAD", scripts.PUBLISH_SCRIPT)).decode()
    variants = {
        "old": old_publish(old_sha, old_frame_parts),
        "current": current_publish(sha),
        "wait": current_publish(sha, then=[WAIT]),
        "minrep": current_publish(sha),
    }
    publishers = [Publisher(f"durability-{i % ROOMS}") for i in range(args.publishers)]
    connections = [await Connection.open(primary.port) for _ in publishers]

    async def run(name, seconds, stop_on_error=False):
        minrep = name.startswith("minrep")
        if minrep:
            await admin.one("CONFIG", "SET", *MIN_REPLICAS)
        try:
            return await measure(
                admin, connections, publishers, variants[name.split()[0]], seconds, stop_on_error
            )
        finally:
            if minrep:
                await admin.one("CONFIG", "SET", "min-replicas-to-write", 0)

    print(f"warming up ({ROOMS} rooms)", flush=True)
    for name in variants:
        await run(name, 1.0)
    results = {name: Run() for name in variants}
    kinds = list(variants)
    for i in range(args.rounds):
        order = kinds[i % len(kinds) :] + kinds[: i % len(kinds)]
        for name in order:
            one = await run(name, args.seconds / args.rounds)
            print(f"  round {i + 1} {name}: {json.dumps(summary(one), default=str)}", flush=True)
            results[name].add(one)
    print("the replica frozen (SIGSTOP)", flush=True)
    replica.process.proc.send_signal(signal.SIGSTOP)
    try:
        frozen = await run("minrep frozen", FROZEN_LIMIT, stop_on_error=True)
    finally:
        replica.process.proc.send_signal(signal.SIGCONT)
    await replica_link_up(admin, replica_admin)
    print("the replica stopped", flush=True)
    await replica_admin.close()
    replica.stop()
    while (await admin.info("replication")).get("connected_slaves") != "0":
        await asyncio.sleep(0.05)
    results["wait, replica stopped"] = await run("wait", args.degraded_seconds)
    results["minrep, replica stopped"] = await run("minrep", args.degraded_seconds)
    for connection in (*connections, admin):
        await connection.close()
    return {name: summary(r) for name, r in results.items()}, frozen


DESCRIPTIONS = {
    "old": "(a) publish script of {old}",
    "current": "(b) current publish script",
    "wait": "(c) current + `WAIT 1 100`, pipelined",
    "minrep": "(d) current, `min-replicas-to-write 1`, `min-replicas-max-lag 10`",
    "wait, replica stopped": "(c) with the replica stopped",
    "minrep, replica stopped": "(d) with the replica stopped",
}


def ratio(value, reference):
    return f"{value / reference:.0%}" if reference else "-"


def outcome(result):
    parts = [f"{count:,} x {error}" for error, count in result["errors"].items()]
    if result["unacked"]:
        parts.append(f"{result['unacked']:,} of {result['count']:,} WAIT answered 0 replicas")
    return "; ".join(parts) or f"{result['count']:,} published"


def markdown(results, frozen, args):
    base = results["current"]
    lines = [
        "| Variant | Publishes/s | p50 ms | p99 ms | Redis us per publish | Publishes/s vs (b) | p50 vs (b) "
        "| p99 vs (b) | Outcome |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {DESCRIPTIONS[name].format(old=f'`{args.old}`')} | {r['publishes_per_s']:,.0f} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['redis_us']:.1f} "
            f"| {ratio(r['publishes_per_s'], base['publishes_per_s'])} "
            f"| {ratio(r['p50_ms'], base['p50_ms'])} | {ratio(r['p99_ms'], base['p99_ms'])} | {outcome(r)} |"
        )
    cpu = ", ".join(f"{name} {r['redis_cpu']:.2f}/{r['client_cpu']:.2f}" for name, r in results.items())
    if frozen.first_error is None:
        refused = f"it went on accepting writes for all {FROZEN_LIMIT:.0f} s"
    else:
        refused = (
            f"it accepted {len(frozen.latencies) - frozen.errors.total():,} more publishes for "
            f"{frozen.first_error:.1f} s, "
            f"then refused: {next(iter(frozen.errors))}"
        )
    return "\n".join(
        [
            *lines,
            "",
            f"CPU share, Redis primary / publishers: {cpu}.",
            "",
            f"(d) with the replica frozen (SIGSTOP, its connection open): {refused}.",
        ]
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10, help="measured seconds per variant (10)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds the seconds are split into (5)")
    parser.add_argument("--publishers", type=int, default=16, help="concurrent publishers (16)")
    parser.add_argument(
        "--degraded-seconds", type=float, default=3, help="seconds per replica-stopped run (3)"
    )
    parser.add_argument("--old", default="28dc874", help="the commit of variant (a) (28dc874)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()[0]
    primary, replica = RedisServer(prefix=pinned(SERVER_CPU)), RedisServer(prefix=pinned(SERVER_CPU))
    try:
        primary.start()
        replica.start()
        results, frozen = asyncio.run(benchmark(args, primary, replica))
    finally:
        if replica.process is not None:
            replica.process.proc.send_signal(signal.SIGCONT)
        replica.stop()
        primary.stop()
    seconds = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
    print()
    command = "make bench-durability" if os.environ.get("MAKELEVEL") else shlex.join(sys.argv)
    print(
        f"Measured {started:%Y-%m-%d %H:%M} UTC by `{command}` ({seconds:.0f} s; 1-minute load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after); {args.publishers} publishers, {ROOMS} "
        f"rooms, {args.seconds:g} s per variant in {args.rounds} rounds, {args.degraded_seconds:g} s per "
        "replica-stopped run.",
    )
    print()
    print(markdown(results, frozen, args))


if __name__ == "__main__":
    main()
