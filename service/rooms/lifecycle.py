"""Process lifecycle: what the ASGI lifespan runs at startup and shutdown.

Readiness state is in rooms.readiness, control commands in rooms.control, draining in
rooms.draining.
"""

import asyncio
import logging

from django.conf import settings

from . import metrics, policies
from .control import control_loop
from .gctuning import tune_gc
from .hub import get_hub
from .readiness import STATE, is_ready

log = logging.getLogger(__name__)


async def startup():
    tune_gc()
    metrics.forget_dead_workers()
    metrics.BUILD_INFO.labels(settings.COLOR, settings.APP_VERSION, settings.REPLICA).set(1)
    metrics.MAX_CONNECTIONS.set(settings.MAX_CONNECTIONS)
    await get_hub().start()
    STATE.tasks = [asyncio.create_task(control_loop()), asyncio.create_task(state_gauges())]
    if settings.ACCOUNTS_ENABLED:
        STATE.tasks.append(asyncio.create_task(policies.refresh_loop()))
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
