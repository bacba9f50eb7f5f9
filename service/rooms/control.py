"""Control commands: every process of a color listens on the channel-layer group `control.<color>`.

rooms.ctl sends them (drain, undrain), each also on the pub/sub channel `wsapp:control:<color>`, which
the room hub's subscriber hears (rooms.redishub): PUBLISH needs no memory, so it works when Redis is at
maxmemory and the channel layer's writes are refused.
"""

import asyncio
import json
import logging

from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import OutOfMemoryError

from . import metrics
from .draining import start_drain, stop_drain
from .names import DRAIN, UNDRAIN, Error, control_group
from .readiness import STATE

log = logging.getLogger(__name__)

GROUP_REFRESH_SECONDS = 600  # channels-redis forgets group members after a day


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
            # A Redis at maxmemory refuses the layer's group_add, not the room hub's subscription to
            # the control channel: the process still hears control messages (rooms.ctl sends both).
            STATE.control_ok = isinstance(exc, OutOfMemoryError)
            metrics.ERRORS.labels(Error.CHANNEL_LAYER).inc()
            log.warning("control channel lost (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class Applied:
    stamp = 0  # of the newest stamped control message applied


# A copy of a control message comes late only through the channel layer, which drops a message older
# than its expiry (channels-redis: 60 s). A stamp older than that behind the newest applied is no copy:
# the stamping clock went back (a failover to a Redis whose clock is behind), so it is a new message.
LATE_MICROSECONDS = 60 * 1_000_000


def handle_control_text(text):
    """A control message from the color's pub/sub channel (rooms.ctl sends each one both ways)."""
    try:
        message = json.loads(text)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        metrics.ERRORS.labels(Error.CONTROL).inc()
        log.warning("control message that is not a JSON object ignored: %.200r", text)
        return
    handle_control(message)


def handle_control(message):
    stamp = message.get("stamp")
    if isinstance(stamp, int):
        if Applied.stamp - LATE_MICROSECONDS < stamp <= Applied.stamp:
            return  # the same message by the other way, or older than one applied
        Applied.stamp = stamp
    kind = message.get("type")
    if kind == DRAIN:
        start_drain(float(message.get("seconds", 0)))
    elif kind == UNDRAIN:
        stop_drain()
    else:
        metrics.ERRORS.labels(Error.CONTROL).inc()
        log.warning("unknown control message ignored: %r", message)
