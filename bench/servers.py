"""The processes a benchmark measures: Redis, the service and the baseline, pinned to SERVER_CPU.

Started and stopped through testkit (as the integration tier starts them); this module adds the
pinning, the open-files limit and the resource measurements of each server's process tree, and
the checkout of an earlier version whose service is measured beside this one (`--before`).
"""

import contextlib
import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from testkit import ROOT, AppServer, Process, RedisServer, free_port, port_answers, wait_until

SERVICE_PYTHON = Path(ROOT, ".venv", "bin", "python")
SERVER_CPU, CLIENT_CPU = "0", "1"
STARTUP_SECONDS = 30


def pinned(cpu, args=()):
    return ["taskset", "-c", cpu, *map(str, args)]


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Server:
    """A running server: its name, WebSocket URL and pid, and how to stop it."""

    name: str
    url: str
    pid: int
    stop: Callable[[], None]

    def tree(self):
        root = psutil.Process(self.pid)
        return [root, *root.children(recursive=True)]

    def rss(self):
        return sum(p.memory_info().rss for p in self.tree())

    def cpu(self):
        return sum(sum(p.cpu_times()[:2]) for p in self.tree())


def start_redis():
    redis = RedisServer(prefix=pinned(SERVER_CPU))
    redis.start()
    return redis


def start_service(workers, redis_url, workdir, root=ROOT, name="service"):
    """The service of checkout `root` through its entrypoint.sh with .venv's Python, rate limits out
    of the way."""
    app = AppServer(
        redis_url,
        workdir,
        workers=workers,
        python=str(SERVICE_PYTHON),
        root=root,
        prefix=pinned(SERVER_CPU),
        preexec_fn=raise_nofile,
        DJANGO_SECRET_KEY="bench",
        APP_VERSION="bench",
        COLOR="bench",
        RATE_LIMIT_PER_SECOND="1000",
        RATE_LIMIT_BURST="1000",
        ROOM_CREATIONS_PER_ADDRESS="0",  # every bench client comes from loopback
        ROOM_MESSAGES_PER_SECOND="0",
    )
    app.start()
    return Server(f"{name}-{workers}w-{app.port}", app.ws_url, app.process.pid, app.stop)


def git(*args):
    return subprocess.run(
        ["git", "-C", ROOT, *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def commit_of(ref):
    """The short commit id `ref` names; ValueError if it names none."""
    try:
        return git("rev-parse", "--short", "--verify", "--end-of-options", f"{ref}^{{commit}}")
    except subprocess.CalledProcessError:
        raise ValueError(f"{ref!r} names no commit of this repository") from None


@contextlib.contextmanager
def checkout(commit, workdir):
    """A temporary `git worktree` of `commit` in workdir, removed afterwards (also on failure)."""
    path = Path(workdir, f"before-{commit}")
    git("worktree", "add", "--detach", "--quiet", str(path), commit)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", str(path)], check=False)


def start_baseline(workdir):
    port = free_port()
    name = f"baseline-{port}"
    log = open(Path(workdir) / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
    process = Process(
        pinned(SERVER_CPU, [sys.executable, "-m", "bench.baseline", "--port", port]),
        log=log,
        preexec_fn=raise_nofile,
    )

    def stop():
        process.stop(20)
        log.close()

    try:
        wait_until(
            lambda: port_answers(port) or not process.running(),
            STARTUP_SECONDS,
            f"{name} to listen",
            interval=0.2,
        )
        if not process.running():
            raise RuntimeError(f"{name} exited at start; see {log.name}")
    except BaseException:
        stop()
        raise
    return Server(name, f"ws://127.0.0.1:{port}", process.pid, stop)
