"""Helpers shared by the test tiers."""

import os
import random
import shutil
import socket

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
