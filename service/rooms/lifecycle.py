"""Process lifecycle: startup, readiness, draining on command, shutdown.

Control commands reach every process of a color through the channel layer (group
`control.<color>`); rooms.ctl sends them.
"""

import asyncio
import gc
import json
import logging

from channels.layers import get_channel_layer
from django.conf import settings

from . import metrics
from .hub import get_hub
from .names import DRAIN, UNDRAIN, control_group
from .sessions import SESSIONS

log = logging.getLogger(__name__)

CLOSE_SERVICE_RESTART = 1012
GROUP_REFRESH_SECONDS = 600  # channels-redis forgets group members after a day
DRAIN_SPREAD = 0.8  # share of the drain window over which connections are released
# Upper bound of the random wait a released client should take before reconnecting: the drain
# already spreads releases over the window; this only keeps one release's clients apart.
RECONNECT_RETRY_MS = 250


class State:
    started = False
    draining = False
    control_ok = False
    ever_ready = False  # ready at least once: later outages are Redis's, not this replica's
    tasks = []
    drain_task = None


STATE = State()


_background = set()


def spawn(coro):
    """Run coro as a task that is kept referenced until done (the loop holds only weak refs)."""
    task = asyncio.create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


def is_ready():
    ready = STATE.started and STATE.control_ok and get_hub().connected and not STATE.draining
    STATE.ever_ready = STATE.ever_ready or ready
    return ready


def refusal():
    """Why a new handshake must be refused now, or None."""
    if STATE.draining:
        return "draining"
    if len(SESSIONS) >= settings.MAX_CONNECTIONS:
        return "capacity"
    return None


def tune_gc():
    """Leave what exists at startup (Django, modules) out of every collection; collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(settings.GC_GEN0_THRESHOLD, 20, 100)


async def startup():
    tune_gc()
    metrics.forget_dead_workers()
    metrics.BUILD_INFO.labels(settings.COLOR, settings.APP_VERSION, settings.REPLICA).set(1)
    metrics.MAX_CONNECTIONS.set(settings.MAX_CONNECTIONS)
    await get_hub().start()
    STATE.tasks = [asyncio.create_task(control_loop()), asyncio.create_task(state_gauges())]
    STATE.started = True
    log.info("started: color=%s version=%s replica=%s",
             settings.COLOR, settings.APP_VERSION, settings.REPLICA)


async def shutdown():
    STATE.draining = True
    for task in STATE.tasks:
        task.cancel()
    await asyncio.gather(*STATE.tasks, return_exceptions=True)
    await get_hub().stop()
    metrics.mark_self_dead()


async def state_gauges():
    """Keep this process's ready/draining gauges current (each worker reports its own)."""
    while True:
        metrics.READY.set(int(is_ready()))
        metrics.DRAINING.set(int(STATE.draining))
        await asyncio.sleep(1)


async def control_loop():
    layer = get_channel_layer()
    groups = (control_group(settings.COLOR),)
    delay = 0.2
    while True:
        channel = None
        try:
            channel = await layer.new_channel("control.")
            while True:
                for group in groups:
                    await layer.group_add(group, channel)
                STATE.control_ok = True
                delay = 0.2
                try:
                    message = await asyncio.wait_for(layer.receive(channel), GROUP_REFRESH_SECONDS)
                except TimeoutError:
                    continue
                handle_control(message)
        except asyncio.CancelledError:
            if channel is not None:
                for group in groups:
                    try:
                        await asyncio.wait_for(layer.group_discard(group, channel), 1)
                    except Exception:
                        pass
            raise
        except Exception as exc:
            STATE.control_ok = False
            metrics.ERRORS.labels("channel_layer").inc()
            log.warning("control channel lost (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def handle_control(message):
    kind = message.get("type")
    if kind == DRAIN:
        start_drain(float(message.get("seconds", 0)))
    elif kind == UNDRAIN:
        stop_drain()
    else:
        metrics.ERRORS.labels("control").inc()
        log.warning("unknown control message ignored: %r", message)


def start_drain(seconds):
    """Refuse new handshakes and release every connection, spread over the window."""
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
            spawn(consumer.release(CLOSE_SERVICE_RESTART, reconnect_notice(consumer.room, consumer.seq)))
        await asyncio.sleep(gap)


def reconnect_notice(room, joined_seq):
    """The drain notice: what a client needs to resume (docs/protocol.md, "History and resume").

    Queued after every frame already handed to the connection, so the last seq it will have been
    sent is the last one fanned out in its room here, or its welcome's seq if none came since.
    """
    seq = max(joined_seq, get_hub().last_seq(room))
    return json.dumps({"type": "reconnect", "reason": "release", "color": settings.COLOR, "seq": seq,
                       "retry_ms": RECONNECT_RETRY_MS})
