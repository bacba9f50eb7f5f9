"""Helpers shared by the test tiers."""

import os
import random
import shutil
import signal
import socket
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def require_command(name, why):
    """A missing prerequisite fails the test: CI must install it, never skip it quietly."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed ({why}); run `make deps` or `bash .ci/run`", pytrace=False)
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


def start_interruptible(args, **kwargs):
    """Start a script that the test will interrupt as Ctrl-C does, output collected.

    A process started in the background by a non-interactive shell (`cmd &`) ignores SIGINT, its
    children inherit that, and bash cannot trap a signal that was ignored when it started. The
    child gets the default disposition back, so the script's INT trap runs as it does for a user.
    """
    return subprocess.Popen(args, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def reap(process):
    """Kill a process that is still running and collect it, closing its pipe."""
    if process.poll() is None:
        process.kill()
    process.communicate()


def wait_until(predicate, timeout, what, interval=0.5):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)
