"""Processes a test or a benchmark starts on this host, each always stopped by its pid."""

import asyncio
import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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

    def stop(self, timeout=15, first=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(first)
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


POSTGRES_LIBDIR = Path("/usr/lib/postgresql")  # Debian's postgresql package: <version>/bin/...
POSTGRES_USER = "postgres"  # the unprivileged system user the package creates; postgres refuses root


def postgres_bindir():
    """The bin directory of the newest PostgreSQL installed by Debian's package."""
    found = sorted((path.parent for path in POSTGRES_LIBDIR.glob("*/bin/postgres")),
                   key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0)
    if not found:
        raise MissingCommand(f"no {POSTGRES_LIBDIR}/<version>/bin/postgres (a real PostgreSQL is started; "
                             "Debian's postgresql package); run `make deps` or `bash .ci/run`")
    return found[-1]


def unprivileged():
    """(uid, gid) to run PostgreSQL as when this process is root (it refuses to run as root), else None."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


class PostgresServer:
    """A throwaway PostgreSQL cluster: initdb in a temporary directory, the server on a free loopback
    port and a unix socket in that directory, run as an unprivileged user when the caller is root,
    stopped by its pid (fast shutdown) and its directory removed.

    It has one database, `wsapp`, owned by the user `wsapp` with a random password (`url`), which is
    what the app is given. Durability is off (fsync): nothing here must survive the test.
    `settings` are extra `-c name=value` server settings (e.g. log_statement=all).
    """

    def __init__(self, port=None, **settings):
        self.port = port or free_port()
        self.user = self.database = "wsapp"
        self.password = uuid.uuid4().hex
        self.url = f"postgres://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"
        self.settings = settings
        self.dir = self.process = None

    @property
    def log_path(self):
        return self.dir / "postgres.log"

    def start(self):
        bindir = postgres_bindir()
        owner = unprivileged()
        self.dir = Path(tempfile.mkdtemp(prefix="wsapp-pg-"))
        try:
            password_file = self.dir / "password"
            password_file.write_text(self.password + "\n")
            if owner is not None:
                for path in (self.dir, password_file):
                    os.chown(path, *owner)
            self.run_as_owner(
                [bindir / "initdb", "-D", self.dir / "data", "-U", self.user, "--pwfile", password_file,
                 "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"],
                owner, timeout=120,
            )
            settings = {"listen_addresses": "127.0.0.1", "unix_socket_directories": str(self.dir),
                        "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                        "max_connections": "200", **self.settings}
            options = [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]
            with open(self.log_path, "ab") as log:
                self.process = Process(
                    [bindir / "postgres", "-D", self.dir / "data", "-p", self.port, *options],
                    log=log, preexec_fn=demote(owner),
                )
            wait_until(lambda: self.answers() or not self.process.running(), 30,
                       f"postgres on port {self.port} to answer", interval=0.1)
            assert self.process.running(), f"postgres on port {self.port} exited at start:\n{self.log()}"
            assert self.sql(f"CREATE DATABASE {self.database}", database="postgres") is not None, self.log()
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def run_as_owner(args, owner, timeout):
        result = subprocess.run([str(arg) for arg in args], preexec_fn=demote(owner), capture_output=True,
                                text=True, timeout=timeout, cwd="/")
        assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout}{result.stderr}"

    def sql(self, statement, database=None, timeout=10):
        """Run one statement over the unix socket as the owner (psql); its unaligned output, or None."""
        try:
            result = subprocess.run(
                [str(postgres_bindir() / "psql"), "-X", "-q", "-A", "-t", "-h", str(self.dir),
                 "-p", str(self.port), "-U", self.user, "-d", database or self.database,
                 "-v", "ON_ERROR_STOP=1", "-c", statement],
                capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return None
        return result.stdout if result.returncode == 0 else None

    def answers(self):
        return self.sql("SELECT 1", database="postgres") == "1\n"

    def log(self):
        return self.log_path.read_text(errors="replace") if self.dir and self.log_path.exists() else ""

    def stop(self):
        if self.process is not None:
            # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for every client to disconnect.
            self.process.stop(first=signal.SIGINT)
            self.process = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def demote(owner):
    """A preexec_fn that makes the child run as `owner` (uid, gid); None when there is no need."""
    if owner is None:
        return None

    def switch():
        os.setgroups([])
        os.setgid(owner[1])
        os.setuid(owner[0])

    return switch


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

    def manage(self, *args, timeout=120):
        """`python manage.py ARGS` with this server's settings (e.g. migrate); its output. Raises on
        failure, with the output."""
        # Its own metrics directory, as a one-off container has: not the server's.
        metrics_dir = Path(self.env["PROMETHEUS_MULTIPROC_DIR"] + "-manage")
        metrics_dir.mkdir(exist_ok=True)
        result = subprocess.run([self.env["PYTHON"], "manage.py", *map(str, args)],
                                cwd=os.path.join(self.root, "service"), capture_output=True, text=True,
                                env=dict(self.env, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)),
                                timeout=timeout)
        command_line = " ".join(map(str, args))
        assert result.returncode == 0, f"manage.py {command_line} failed:\n{result.stdout}{result.stderr}"
        return result.stdout

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
