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
    notice = json.dumps({"type": "reconnect", "reason": "release", "color": settings.COLOR})
    for session in sessions:
        if session.id in SESSIONS:
            spawn(session.consumer.release(CLOSE_SERVICE_RESTART, notice))
        await asyncio.sleep(gap)
