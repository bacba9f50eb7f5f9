"""Process lifecycle: what the ASGI lifespan runs at startup and shutdown.

Readiness state is in rooms.readiness, control commands in rooms.control, draining in
rooms.draining.
"""

import asyncio
import collections
import logging
import os
import resource

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
    STATE.tasks = [asyncio.create_task(control_loop()), asyncio.create_task(state_gauges()),
                   asyncio.create_task(process_gauges())]
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


# How often the event loop's lag is sampled; the gauge is the worst of the last LAG_WINDOW seconds,
# updated every second, so a scrape every 5 s sees every spike.
LAG_SAMPLE_SECONDS = 0.1
LAG_SAMPLES = 10
LAG_WINDOW = 5
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


async def process_gauges():
    """Keep this process's RSS, open files and event-loop lag gauges current.

    The lag is how much later than asked a sleep of LAG_SAMPLE_SECONDS returns: the time the loop
    spent on other work (or the process stopped) before it could run a task that was due.
    """
    loop = asyncio.get_running_loop()
    recent = collections.deque(maxlen=LAG_WINDOW)
    while True:
        worst = 0.0
        for _ in range(LAG_SAMPLES):
            start = loop.time()
            await asyncio.sleep(LAG_SAMPLE_SECONDS)
            worst = max(worst, loop.time() - start - LAG_SAMPLE_SECONDS)
        recent.append(worst)
        metrics.EVENT_LOOP_LAG.set(max(recent))
        metrics.PROCESS_RSS.set(resident_bytes())
        metrics.PROCESS_OPEN_FDS.set(open_fds())
        metrics.PROCESS_MAX_FDS.set(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def resident_bytes():
    """This process's resident memory (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE
    except OSError:
        return 0


def open_fds():
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0
