"""Redis faults for the fault tier (issue 16): a primary, a replica and three Sentinels as real
processes, and what can go wrong with them while clients chat.

Standard library only (like the rest of testkit): Redis is asked through redis-cli. Every fault
that changes something outside its process (a stopped Redis, an iptables rule, a thread) is a
context manager or has a stop(), and undoes itself in a `finally`.

- Sentinels: primary + replica + 3 Sentinels through redis/start.sh (testkit.RedisNode), as
  tests/integration/test_sentinel.py starts them.
- kill_pubsub(): CLIENT KILL TYPE pubsub (the app's subscribers; Sentinels' too, they reconnect).
- frozen(): SIGSTOP a Redis, SIGCONT it on the way out.
- replication_cut(): an iptables rule on loopback dropping the one TCP connection between a
  replica and its primary, so the replica falls behind (it still believes the link is up until
  repl-timeout, 60 s, so the Sentinels will promote it).
- failover(): kill the primary (SIGKILL) or SENTINEL FAILOVER, and wait for the Sentinels to name
  the replica.
- BlackHole: a TCP server that accepts connections and never answers; in front of a real Redis it
  forwards until swallow() and again after restore().
- expire_room(): DEL (or PEXPIRE) a room's keys, as if they had expired.
- history(): the frames of a room's history (field `f` of each entry), for the checker.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

from testkit.processes import (
    MissingCommand,
    RedisNode,
    command,
    free_port,
    redis_command,
    redis_credentials,
    wait_until,
)

MASTER = "wsapp"
APP_USER = "wsapp"
# Small, so a failover takes about two seconds: the stack uses 5000 and 60000 (docs/operations.md).
SENTINEL_ENV = {"SENTINEL_DOWN_AFTER_MS": "1000", "SENTINEL_FAILOVER_TIMEOUT_MS": "5000"}
ROOM_KEY_PREFIXES = ("wsapp:seq:", "wsapp:epoch:", "wsapp:history:", "wsapp:sent:", "wsapp:sentt:")
HISTORY_PREFIX = "wsapp:history:"


def fields(raw):
    """The key/value lines of a --raw answer (SENTINEL MASTER, CLIENT LIST's line) as a dict."""
    lines = (raw or "").splitlines()
    return dict(zip(lines[::2], lines[1::2], strict=False))


class Sentinels:
    """A primary, its replica and three Sentinels on loopback, through redis/start.sh, with a
    password file per ACL user (`credentials`). `password` logs in as the admin user (for the
    helpers below); `app_env` is what the app needs to find the primary and log in as `wsapp`."""

    def __init__(self, workdir):
        workdir = Path(workdir)
        self.credentials = redis_credentials(workdir)
        self.password_file = self.credentials[APP_USER]
        self.password = ("admin", self.credentials["admin"].read_text().strip())
        ports = [free_port() for _ in range(5)]
        self.listing = ",".join(f"127.0.0.1:{port}" for port in ports[2:])
        self.app_env = dict(REDIS_SENTINELS=self.listing, REDIS_USERNAME=APP_USER,
                            REDIS_PASSWORD_FILE=str(self.password_file))
        common = dict(workdir=workdir, credentials=self.credentials, sentinels=self.listing,
                      primary=f"127.0.0.1:{ports[0]}")
        # The first Redis finds no Sentinel yet: one question, no wait for a majority, keeps the start quick.
        self.primary = RedisNode("primary", port=ports[0], SENTINEL_WAIT="0", **common)
        self.replica = RedisNode("replica", port=ports[1], SENTINEL_WAIT="0", **common)
        self.sentinels = [RedisNode("sentinel", port=port, SENTINEL_SLOT=str(slot), SENTINEL_WAIT="0",
                                    **SENTINEL_ENV, **common) for slot, port in enumerate(ports[2:], 1)]
        self.nodes = [self.primary, self.replica, *self.sentinels]

    def start(self):
        try:
            for node in self.nodes:
                node.start()
            wait_until(self.converged, 40, "three Sentinels that see each other and the replica", 0.2)
        except BaseException:
            self.stop()
            raise

    def master(self, sentinel):
        return fields(sentinel.command("SENTINEL", "MASTER", MASTER))

    def converged(self):
        for sentinel in self.sentinels:
            state = self.master(sentinel)
            if state.get("num-other-sentinels") != "2" or state.get("num-slaves") != "1":
                return False
        return "master_link_status:up" in (self.replica.command("INFO", "replication") or "")

    def primary_port(self, sentinel=None):
        answer = (sentinel or self.sentinels[0]).command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        lines = (answer or "").split()
        return int(lines[1]) if len(lines) == 2 else None

    def acl_denials(self):
        """Commands, keys and channels some user was refused (ACL LOG, failed logins left out), on
        every node that runs: [(port, reason, user, object)]."""
        denials = []
        for node in self.nodes:
            if node.process is None:
                continue
            lines = (node.command("ACL", "LOG", "128") or "").splitlines()
            for n, line in enumerate(lines):
                if line == "reason" and n + 1 < len(lines) and lines[n + 1] != "auth":
                    entry = fields("\n".join(lines[n:n + 12]))
                    denials.append((node.port, *(entry.get(key) for key in ("reason", "username", "object"))))
        return denials

    def stop(self):
        for node in self.nodes:
            node.stop()


def kill_pubsub(port, password=None):
    """CLIENT KILL TYPE pubsub: how many subscriber connections Redis dropped."""
    answer = redis_command(port, "CLIENT", "KILL", "TYPE", "pubsub", password=password)
    assert answer is not None, f"CLIENT KILL on port {port} failed"
    return int(answer)


@contextlib.contextmanager
def frozen(pid):
    """A process stopped (SIGSTOP) for the block: it keeps its connections and answers nothing."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def require_iptables():
    """iptables, usable by this user, or MissingCommand saying why not."""
    binary = command("iptables", "a replica is made to lag by dropping its link to the primary")
    result = subprocess.run([binary, "-w", "-S", "INPUT"], capture_output=True, text=True)
    if result.returncode != 0:
        raise MissingCommand(f"iptables cannot be used here ({result.stderr.strip()}): the replica-lag "
                             "fault needs root and netfilter")
    return binary


def replica_link_port(primary, password=None):
    """The local port of the replica's connection to `primary` (a RedisNode or a port)."""
    port = getattr(primary, "port", primary)
    answer = redis_command(port, "CLIENT", "LIST", "TYPE", "replica", password=password) or ""
    for line in answer.splitlines():
        addr = dict(part.split("=", 1) for part in line.split() if "=" in part).get("addr", "")
        if addr.startswith("127.0.0.1:"):
            return int(addr.rsplit(":", 1)[1])
    raise AssertionError(f"no replica connected to the Redis on port {port}: {answer!r}")


@contextlib.contextmanager
def replication_cut(primary, password=None):
    """Drop the packets of the one connection between the replica and `primary` (both ways) for the
    block: writes stop reaching the replica, and neither end notices before repl-timeout."""
    iptables = require_iptables()
    local = replica_link_port(primary, password)
    tag = f"wsapp-fault-{os.getpid()}-{local}"
    rules = [["-i", "lo", "-p", "tcp", "--sport", str(local), "--dport", str(primary.port)],
             ["-i", "lo", "-p", "tcp", "--sport", str(primary.port), "--dport", str(local)]]
    added = []
    try:
        for rule in rules:
            spec = [*rule, "-m", "comment", "--comment", tag, "-j", "DROP"]
            subprocess.run([iptables, "-w", "-I", "INPUT", *spec], check=True, capture_output=True)
            added.append(spec)
        yield local
    finally:
        for spec in added:
            subprocess.run([iptables, "-w", "-D", "INPUT", *spec], check=False, capture_output=True)


def leftover_rules():
    """iptables rules this module added and did not remove (there should be none)."""
    iptables = shutil.which("iptables")
    if iptables is None:
        return []
    result = subprocess.run([iptables, "-w", "-S", "INPUT"], capture_output=True, text=True)
    return [line for line in result.stdout.splitlines() if "wsapp-fault-" in line]


def failover(topology, kill=True, timeout=20):
    """Make the replica the primary: kill the primary (SIGKILL) or ask SENTINEL FAILOVER; returns
    once every Sentinel names the replica."""
    if kill:
        topology.primary.kill()
    else:
        assert topology.sentinels[0].command("SENTINEL", "FAILOVER", MASTER) == "OK\n"
    wait_until(lambda: all(topology.primary_port(s) == topology.replica.port for s in topology.sentinels),
               timeout, "the Sentinels to name the replica", 0.1)


class BlackHole:
    """A TCP server on loopback that accepts connections and never answers.

    With `upstream` (a port) it is a proxy that forwards both ways until swallow(): from then on,
    what clients send goes nowhere, on the open connections and on new ones (accepted all the
    same); answers to what was forwarded before still come back. restore() closes every connection
    that was swallowed (their clients reconnect) and forwards new ones again. One thread per
    direction of each connection: enough for the few connections of a test. stop() ends it all.
    """

    def __init__(self, upstream=None):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.swallowing = upstream is None
        self.lock = threading.Lock()
        self.swallowed = []  # client sockets whose data goes nowhere
        self.pairs = []  # (client, upstream) sockets being forwarded
        self.accepted = 0
        self.stopped = False
        self.thread = threading.Thread(target=self.accept, name=f"black-hole-{self.port}", daemon=True)
        self.thread.start()

    def accept(self):
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            with self.lock:
                if self.swallowing:
                    self.swallowed.append(client)
                    self.spawn(self.pump, client, None)
                    continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=2)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, server))
            self.spawn(self.pump, client, server)
            self.spawn(self.pump, server, client, True)

    @staticmethod
    def spawn(target, *args):
        threading.Thread(target=target, args=args, daemon=True).start()

    def pump(self, source, target, answers=False):
        """Copy source to target; a client's data is dropped once its connection is swallowed."""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if target is None or (not answers and source in self.swallowed):
                    continue
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            source.close()  # each socket is the source of one pump: it closes it

    def swallow(self):
        """From now on nothing clients send gets anywhere, and nothing new is answered."""
        with self.lock:
            self.swallowing = True
            self.swallowed.extend(client for client, _ in self.pairs)

    def restore(self):
        """Close every swallowed connection and forward new ones again."""
        assert self.upstream is not None, "a black hole without upstream has nothing to restore"
        with self.lock:
            self.swallowing = False
            closing, self.swallowed = self.swallowed, []
            self.pairs = [pair for pair in self.pairs if pair[0] not in closing]
        for sock in closing:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self):
        self.stopped = True
        with contextlib.suppress(OSError):
            self.listener.close()
        with self.lock:
            socks = [*self.swallowed, *(s for pair in self.pairs for s in pair)]
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(2)


def room_keys(room):
    return [prefix + room for prefix in ROOM_KEY_PREFIXES]


# All of a room's keys at once, as no publish can come between: deleted one by one, a publish between
# two deletions could record an id that the next one deletes, which no expiry does (a publish refreshes
# the expiry of everything it writes).
EXPIRE_ALL = ("for _, key in ipairs(KEYS) do if ARGV[1] == '' then redis.call('DEL', key) "
              "else redis.call('PEXPIRE', key, ARGV[1]) end end")


def expire_room(port, room, password=None, ms=None):
    """Forget a room's keys (seq, epoch, history, ids) as their expiry would: DEL, or PEXPIRE `ms`."""
    keys = room_keys(room)
    args = ("EVAL", EXPIRE_ALL, len(keys), *keys, "" if ms is None else ms)
    assert redis_command(port, *args, password=password) is not None, f"expiring {room} on port {port} failed"


def history(port, room, password=None):
    """The frames kept in a room's history, oldest first (field `f` of each stream entry).
    `password` as for redis_command: a password or a (user, password) pair."""
    user, password = password if isinstance(password, tuple) else (None, password)
    env = dict(os.environ, REDISCLI_AUTH=password) if password else None
    login = ["--user", user] if user else []
    result = subprocess.run(
        [command("redis-cli", "Redis is queried"), "--no-auth-warning", *login, "-h", "127.0.0.1",
         "-p", str(port), "-3", "--json", "XRANGE", HISTORY_PREFIX + room, "-", "+"],
        env=env, capture_output=True, text=True, timeout=10, check=True,
    )
    entries = json.loads(result.stdout or "[]")
    frames = []
    for _, values in entries:
        pairs = dict(zip(values[::2], values[1::2], strict=False)) if isinstance(values, list) else values
        frames.append(pairs["f"])
    return frames
