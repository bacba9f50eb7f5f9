"""Draining: refuse new handshakes and release every connection, spread over a window."""

import asyncio
import json
import logging

from django.conf import settings

from .hub import get_hub
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
REASON_RESUME = "resume"  # the replica missed room messages (rooms.hub.fan_out): resume to get them


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


def reconnect_notice(room, joined_seq, reason=REASON_RELEASE):
    """The drain notice: what a client needs to resume (docs/protocol.md, "History and resume").

    Queued after every frame already handed to the connection, so the last seq it will have been
    sent is the last one fanned out in its room here, or its welcome's seq if none came since.
    """
    return notice(max(joined_seq, get_hub().last_seq(room)), reason)


def notice(seq, reason):
    """A reconnect notice telling the client that seq is the last one this connection was sent."""
    return json.dumps({"type": "reconnect", "reason": reason, "color": settings.COLOR, "seq": seq,
                       "retry_ms": RECONNECT_RETRY_MS})
