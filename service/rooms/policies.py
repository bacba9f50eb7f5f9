"""What each room allows, known to every process without a query at the handshake.

With a database, rooms that restrict anything (private, or no anonymous posting: members.Room) are
loaded into this process every ROOM_POLICY_SECONDS by one query in a thread of their own; every
other room is public, as before. A process is not ready until its first load (rooms.readiness), so
it never serves a private room as public. When Postgres is down the last load stays in force, so
members go on connecting and chatting (docs/accounts.md).
"""

import asyncio
import contextvars
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from django.conf import settings

log = logging.getLogger(__name__)


class Policy(NamedTuple):
    private: bool = False  # only members, by ticket, may connect
    anonymous: bool = True  # connections without a ticket may post


PUBLIC = Policy()


class Policies:
    def __init__(self):
        self.rooms = {}  # room -> Policy, for restricted rooms only
        self.loaded = False
        self.failing = False


POLICIES = Policies()


def policy(room):
    return POLICIES.rooms.get(room, PUBLIC)


def load_restricted():
    """In a worker thread: the restricted rooms, from the database."""
    from django.db import close_old_connections
    from django.db.models import Q

    from members.models import Room

    close_old_connections()  # a connection broken by a Postgres restart or older than CONN_MAX_AGE goes
    rows = Room.objects.filter(Q(private=True) | Q(allow_anonymous=False)).values_list(
        "name", "private", "allow_anonymous")
    return {name: Policy(private, anonymous) for name, private, anonymous in rows}


async def refresh_loop():
    """Reload the policies for ever; a failure keeps the last ones (and is logged once per outage)."""
    executor = ThreadPoolExecutor(1, thread_name_prefix="room-policies")
    loop = asyncio.get_running_loop()
    # Bounded: the query's own limits (connect and statement timeouts) and this, whichever first.
    limit = settings.DATABASES["default"]["OPTIONS"]["connect_timeout"] + settings.ROOM_POLICY_SECONDS + 5
    try:
        while True:
            try:
                # In this task's context (run_in_executor does not carry it): its statements count
                # under the lifespan, where this task was started (ws_db_queries_total).
                load = contextvars.copy_context().run
                rooms = await asyncio.wait_for(loop.run_in_executor(executor, load, load_restricted), limit)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not POLICIES.failing:
                    log.warning("room policies not reloaded (the last ones stay in force): %r", exc)
                POLICIES.failing = True
            else:
                if POLICIES.failing:
                    log.info("room policies reloaded again: %d restricted rooms", len(rooms))
                POLICIES.rooms, POLICIES.loaded, POLICIES.failing = rooms, True, False
            await asyncio.sleep(settings.ROOM_POLICY_SECONDS)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
