"""Generic consumer plumbing, kept apart from the application's consumers as Channels does."""

import asyncio
import logging

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from .names import CLOSE_ABNORMAL, CLOSE_SERVER_ERROR

log = logging.getLogger(__name__)


class DatabaseFreeConsumer(AsyncWebsocketConsumer):
    """A consumer for code that never touches the ORM or a channel layer.

    Channels' AsyncConsumer runs close_old_connections in a worker thread before every message,
    to protect ORM users from stale database connections, and reads its client through
    await_many_dispatch, which makes a task and an asyncio.wait per message so that it can also
    read a channel layer. Without the ORM the hop protects nothing; without a channel layer there
    is only one source to read. Together they cost more than half of the throughput and a task
    per connection, so this base reads and dispatches in a plain loop instead.
    Do not use this base for a consumer that queries the database or joins channel-layer groups.

    Whatever a handler raises, the client gets a 1011 close (see server_fault) and disconnect()
    runs exactly once, so a consumer's cleanup never depends on its handlers being bug-free.
    """

    async def __call__(self, scope, receive, send):
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        self.disconnected = False
        self.lost_code = CLOSE_ABNORMAL  # the code disconnect() gets if no websocket.disconnect came
        try:
            while True:
                await self.dispatch(await receive())
                # Yield between messages, as Channels' loop does, so that tasks this consumer
                # started (its writer) run even while its client's frames arrive in a burst.
                await asyncio.sleep(0)
        except StopConsumer:
            pass
        except Exception:
            log.exception("%s failed; closing with %d", type(self).__name__, CLOSE_SERVER_ERROR)
            self.lost_code = CLOSE_SERVER_ERROR
            try:
                await self.server_fault()
            except Exception as exc:  # the client is gone as well
                log.info("closing after a fault failed: %r", exc)
        finally:
            if not self.disconnected:
                self.disconnected = True
                await self.disconnect(self.lost_code)

    async def dispatch(self, message):
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_disconnect(self, message):
        """Channels' without its group_discard loop (no channel layer) and its close_old_connections
        in a worker thread (no ORM): that thread hop cost every closed connection about 50 us of CPU."""
        self.disconnected = True  # before disconnect(): if it raises, it is not run twice
        await self.disconnect(message["code"])
        raise StopConsumer

    async def server_fault(self):
        """A handler raised: tell the client (before accept, a close is a refused handshake)."""
        await self.close(code=CLOSE_SERVER_ERROR)
