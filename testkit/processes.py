"""Processes a test or a benchmark starts on this host, each always stopped by its pid."""

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
STARTUP_SECONDS = 30


class MissingCommand(RuntimeError):
    """A program the caller needs is not installed."""


def command(name, why):
    path = shutil.which(name)
    if path is None:
        raise MissingCommand(f"{name} is not installed ({why}); run `make deps` or `bash .ci/run`")
    return path


def free_port():
    """A free port below the ephemeral range.

    A server port inside the ephemeral range can, once its server stops, be taken by a
    client's reconnect attempt that then connects to itself (TCP self-connect) and hangs.
    """
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
        low = int(ports.read().split()[0])
    for _ in range(100):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def wait_until(predicate, timeout, what, interval=0.5):
    """Call predicate until it is true; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


def port_answers(port):
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


class Process:
    """A child process, stopped by its pid (SIGTERM, then SIGKILL) in stop()."""

    def __init__(self, args, env=None, log=None, preexec_fn=None):
        self.log = log
        self.proc = subprocess.Popen(
            [str(arg) for arg in args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            preexec_fn=preexec_fn,
        )

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc.poll() is None

    def stop(self, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def redis_answers(port):
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16) == b"+PONG\r\n"
    return False


class RedisServer:
    """A throwaway redis-server on loopback: no persistence. start() again after stop() reuses the port.

    `prefix` goes before the command (e.g. taskset), `log` takes its output (default: discarded).
    """

    def __init__(self, port=None, prefix=(), log=subprocess.DEVNULL):
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.prefix, self.log = list(prefix), log
        self.process = None

    def start(self):
        binary = command("redis-server", "a real Redis is started")
        args = [binary, "--port", self.port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = Process([*self.prefix, *args], log=self.log)
        try:
            wait_until(
                lambda: redis_answers(self.port) or not self.process.running(),
                10,
                "redis-server to answer PING",
                interval=0.05,
            )
            assert self.process.running(), f"redis-server on port {self.port} exited at start"
        except BaseException:
            self.stop()
            raise

    def stop(self):
        if self.process is not None:
            self.process.stop()
            self.process = None


def redis_command(port, *args, password=None, timeout=2):
    """One command to a Redis or Sentinel on loopback, through redis-cli; its output or None.
    `password` is a password (the default user's) or a (user, password) pair."""
    user, password = password if isinstance(password, tuple) else (None, password)
    env = dict(os.environ, REDISCLI_AUTH=password) if password else None
    login = ["--user", user] if user else []
    try:
        result = subprocess.run(
            [command("redis-cli", "Redis is queried"), "--no-auth-warning", *login, "-h", "127.0.0.1",
             "-p", str(port), "--raw", *map(str, args)],
            env=env, capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None
    return result.stdout if result.returncode == 0 else None


REDIS_USERS = ("wsapp", "admin", "replication", "sentinel", "metrics")  # redis/start.sh's ACL users
REDIS_SECRET_SETTINGS = {"wsapp": "REDIS_PASSWORD_FILE", "admin": "REDIS_ADMIN_PASSWORD_FILE",
                         "replication": "REDIS_REPLICATION_PASSWORD_FILE",
                         "sentinel": "REDIS_SENTINEL_PASSWORD_FILE", "metrics": "REDIS_METRICS_PASSWORD_FILE"}


def redis_credentials(workdir, prefix="redis"):
    """A password file per ACL user of redis/start.sh in `workdir` (as the stack's Swarm secrets):
    {user: path}."""
    files = {}
    for user in REDIS_USERS:
        files[user] = Path(workdir) / f"{prefix}-{user}.password"
        files[user].write_text(f"{user}-{uuid.uuid4().hex}\n")
    return files


class RedisNode:
    """A Redis or Sentinel on loopback started through redis/start.sh, as the stack starts them
    (REDIS_ROLE primary, replica or sentinel), with the password files of `credentials`
    (redis_credentials()); command() runs as the admin user.

    `sentinels` lists the Sentinels the script asks (host:port,...), `primary` is its REDIS_PRIMARY
    (host:port). Nothing is persisted. start() again after kill() or stop() reuses the port.
    """

    def __init__(self, role, workdir, credentials, sentinels="", primary="", port=None, **env):
        self.role, self.port = role, port or free_port()
        self.password = ("admin", Path(credentials["admin"]).read_text().strip())
        self.workdir = Path(workdir)
        name = f"{role}-{self.port}"
        self.base = self.workdir / f"{name}.base.conf"
        lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.workdir}"]
        if role == "sentinel":
            lines += ["sentinel resolve-hostnames yes", "sentinel announce-hostnames yes"]
        else:
            lines += ['save ""', "appendonly no"]
        self.base.write_text("\n".join(lines) + "\n")
        self.log_path = self.workdir / f"{name}.log"
        self.env = dict(
            os.environ, REDIS_ROLE=role,
            **{REDIS_SECRET_SETTINGS[user]: str(path) for user, path in credentials.items()},
            REDIS_BASE_CONF=str(self.base),
            REDIS_RUN_CONF=str(self.workdir / f"{name}.conf"), REDIS_ANNOUNCE="127.0.0.1",
            REDIS_PORT=str(self.port), REDIS_PRIMARY=primary, SENTINELS=sentinels, **env,
        )
        self.process = None

    def start(self):
        command("redis-server", "a real Redis is started")
        with open(self.log_path, "ab") as log:
            self.process = Process(["sh", os.path.join(ROOT, "redis", "start.sh")], env=self.env, log=log)
        try:
            wait_until(
                lambda: self.command("PING") == "PONG\n" or not self.process.running(),
                15, f"{self.role} on port {self.port} to answer PING", interval=0.05,
            )
            assert self.process.running(), f"{self.role} on port {self.port} exited at start:\n{self.log()}"
        except BaseException:
            self.stop()
            raise

    def command(self, *args):
        return redis_command(self.port, *args, password=self.password)

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self):
        """SIGKILL: the machine or container dies, nothing is flushed."""
        if self.process is not None and self.process.running():
            self.process.proc.kill()
            self.process.proc.wait(5)
        self.process = None

    def stop(self):
        if self.process is not None:
            self.process.stop()
            self.process = None


class AppServer:
    """The service started through entrypoint.sh on loopback, as a replica runs it.

    `python` is the interpreter with the service's requirements (default: this one); `prefix` goes
    before the command (e.g. taskset); `root` is the checkout whose entrypoint.sh and service/ run
    (default: this one); `env` overrides the environment below.
    """

    def __init__(
        self, redis_url, workdir, workers=2, python=sys.executable, prefix=(), preexec_fn=None, root=ROOT,
        **env,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.prefix, self.preexec_fn, self.root = list(prefix), preexec_fn, str(root)
        self.env = dict(
            os.environ,
            PATH=os.path.dirname(python) + os.pathsep + os.environ["PATH"],
            PYTHON=str(python),
            HOST="127.0.0.1",
            PORT=str(self.port),
            WEB_CONCURRENCY=str(workers),
            REDIS_URL=redis_url,
            COLOR="blue",
            APP_VERSION="it",
            DJANGO_SECRET_KEY="integration-tests",
            PROMETHEUS_MULTIPROC_DIR=str(Path(workdir) / f"metrics-{self.port}"),
            GRACEFUL_TIMEOUT="5",
            # The tools' Origin (http://localhost) and a browser's on this server's own page.
            PUBLIC_ORIGINS=f"http://localhost,http://127.0.0.1,{self.url}",
        )
        self.env.update(env)
        self.log_path = Path(workdir) / f"app-{self.port}.log"
        self.process = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.process = Process(
                [*self.prefix, os.path.join(self.root, "entrypoint.sh")],
                env=self.env,
                log=log,
                preexec_fn=self.preexec_fn,
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout=STARTUP_SECONDS):
        deadline = time.monotonic() + timeout
        while self.get("/readyz")[0] != 200:
            if not self.process.running() or time.monotonic() > deadline:
                raise AssertionError(f"app not ready within {timeout}s; log:\n{self.log()}")
            time.sleep(0.1)

    def get(self, path):
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return None, ""

    def metric(self, name):
        """The sum of every series of metric `name` (or of one series, `name{label="..."}`)."""
        _, text = self.get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def until_metric(self, name, value, timeout=5):
        """Wait for a metric (or one labelled series) to reach `value`: the server counts a close when
        its consumer handles the disconnect, just after the client has seen it."""
        deadline = time.monotonic() + timeout
        while self.metric(name) != value:
            assert time.monotonic() < deadline, f"{name} is {self.metric(name)}, expected {value}"
            await asyncio.sleep(0.05)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.process is not None:
            self.process.stop()
