"""Publishing into a room from Django code: views, management commands and the HTTP API
(members.api). A published message goes through the same hub, script, `seq`, history and ordering as
a message from a socket (rooms.hub); members see a `message` frame with `session` "api" (no
connection has it) and, if given, a `name`.

Inside the server the process' own hub publishes. Anywhere else (a management command, a shell) a
publish-only Redis hub is opened for the call and closed after it: that needs REDIS_URL or
REDIS_SENTINELS, since without Redis a room exists only inside the server's process.
"""

import asyncio
import json
import re
import secrets
from contextlib import asynccontextmanager

from asgiref.sync import async_to_sync
from django.conf import settings

from .frames import server_id
from .hub import Duplicate, HubUnavailable, NotPublished, Published, RoomRateLimited, get_hub
from .names import ROOM_PATTERN, Error

API_SESSION = "api"  # the `session` of published messages; a connection's is 12 characters
API_SENDER = "api"  # the sender that scopes ids given to publish() (docs/protocol.md, "Message ids")
ROOM_NAME = re.compile(ROOM_PATTERN)
MESSAGE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class PublishError(Exception):
    """Not published (or, for `unknown`, perhaps published: publish again with the same id). `code` is
    one of docs/protocol.md's error codes: invalid_room, invalid_body, body_too_long, invalid_id,
    room_rate_limited, unavailable; or unknown."""

    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


def body_of(data):
    """A message body: a string as it is, anything else as JSON."""
    if isinstance(data, str):
        return data
    try:
        return json.dumps(data, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PublishError(Error.INVALID_BODY, f"data must be a string or JSON-serializable: {exc}") from None


@asynccontextmanager
async def publishing_hub():
    hub = get_hub()
    if getattr(hub, "can_publish", False):
        yield hub
        return
    if not settings.REDIS_ENABLED:
        raise PublishError(Error.UNAVAILABLE, "publishing from outside the server needs REDIS_URL or "
                           "REDIS_SENTINELS (without Redis a room exists only inside the server's process)")
    from .redishub import RedisHub

    hub = RedisHub(settings.REDIS_URL, settings.REDIS_SENTINELS)
    try:
        await hub.connect()
        yield hub
    finally:
        await hub.stop()


async def apublish(room, data, *, id=None, name=None, sender=API_SENDER):
    """Publish `data` (a string, or JSON) to `room`; Published(epoch, seq). With `id`, a retry publishes
    once: a second call with the same id (and sender) returns the first copy's epoch and seq.
    Raises PublishError when it was not published."""
    if not isinstance(room, str) or not ROOM_NAME.fullmatch(room):
        raise PublishError("invalid_room", "a room is 1 to 64 characters of A-Z, a-z, 0-9, _ and -")
    body = body_of(data)
    if len(body) > settings.MAX_BODY_CHARS:
        raise PublishError(Error.BODY_TOO_LONG, f"the body is over {settings.MAX_BODY_CHARS} characters")
    if id is not None and not (isinstance(id, str) and MESSAGE_ID.fullmatch(id)):
        raise PublishError(Error.INVALID_ID, "'id' must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -")
    msg_id, attempt = id or server_id(), secrets.token_urlsafe(9)
    async with publishing_hub() as hub:
        try:
            return await hub.publish(room, API_SESSION, body, msg_id, sender, attempt, name=name)
        except Duplicate as duplicate:
            return Published(duplicate.epoch, duplicate.seq)
        except RoomRateLimited as exc:
            raise PublishError(Error.ROOM_RATE_LIMITED, f"{exc}; publish it again later") from None
        except NotPublished as exc:
            raise PublishError(Error.UNAVAILABLE, f"not published: {exc}") from None
        except HubUnavailable:
            return await settle(hub, room, msg_id, sender, attempt)


async def settle(hub, room, msg_id, sender, attempt):
    """The reply was lost: fence the attempt (as the consumer does), within PUBLISH_SETTLE_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + settings.PUBLISH_SETTLE_SECONDS, 0.1
    while (remaining := deadline - loop.time()) > 0:
        try:
            published = await asyncio.wait_for(hub.fence(room, msg_id, sender, attempt), remaining)
        except (HubUnavailable, TimeoutError):
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 2.0)
            continue
        if published is None:
            raise PublishError(Error.UNAVAILABLE, "not published (Redis did not answer); publish it again")
        return published
    raise PublishError("unknown", f"Redis did not answer for {settings.PUBLISH_SETTLE_SECONDS:g}s: the "
                       f"message may have been published; publish it again with the same id ({msg_id})")


def publish(room, data, *, id=None, name=None, sender=API_SENDER):
    """apublish() for synchronous code (a view, a management command)."""
    return async_to_sync(apublish)(room, data, id=id, name=name, sender=sender)
