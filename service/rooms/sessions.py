"""SESSIONS: the in-process registry of live WebSocket connections.

It is the single source of the ws_active_connections gauge and what draining iterates over.
"""

import time
from dataclasses import dataclass, field

from . import metrics


@dataclass(slots=True)
class Session:
    id: str
    room: str
    peer: str
    consumer: object = field(repr=False)
    opened_at: float = field(default_factory=time.time)


SESSIONS: dict[str, Session] = {}


def register(session):
    SESSIONS[session.id] = session
    metrics.ACTIVE_CONNECTIONS.set(len(SESSIONS))


def unregister(session_id):
    if SESSIONS.pop(session_id, None) is not None:
        metrics.ACTIVE_CONNECTIONS.set(len(SESSIONS))
