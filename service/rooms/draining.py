"""Draining: refuse new handshakes and release every connection, spread over a window."""

import asyncio
import json
import logging

from django.conf import settings

from .names import CLOSE_SERVICE_RESTART
from .readiness import STATE
from .sessions import SESSIONS
from .tasks import spawn

log = logging.getLogger(__name__)

DRAIN_SPREAD = 0.8  # share of the drain window over which connections are released
# Upper bound of the random wait a released client should take before reconnecting: the drain
# already spreads releases over the window; this only keeps one release's clients apart.
RECONNECT_RETRY_MS = 250
REASON_RELEASE = "release"  # the replica is draining
REASON_RESUME = "resume"  # the connection cannot be sent its room's messages in order: resume to get them


def start_drain(seconds):
    if STATE.draining:
        return
    STATE.draining = True
    log.info("draining %d connections over %.1fs", len(SESSIONS), seconds)
    STATE.drain_task = asyncio.create_task(drain(seconds))


def stop_drain():
    STATE.draining = False
    if STATE.drain_task is not None:
        STATE.drain_task.cancel()
        STATE.drain_task = None
    log.info("drain cancelled; accepting connections again")


async def drain(seconds):
    sessions = list(SESSIONS.values())
    gap = seconds * DRAIN_SPREAD / max(1, len(sessions))
    for session in sessions:
        if session.id in SESSIONS:
            consumer = session.consumer
            spawn(consumer.release(CLOSE_SERVICE_RESTART))
        await asyncio.sleep(gap)


def notice(epoch, seq, reason):
    """A reconnect notice telling the client that (epoch, seq) is the last message this connection
    was sent (docs/protocol.md, "History and resume"): every frame queued before it is sent first."""
    return json.dumps({"type": "reconnect", "reason": reason, "color": settings.COLOR, "epoch": epoch,
                       "seq": seq, "retry_ms": RECONNECT_RETRY_MS})
