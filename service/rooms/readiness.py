"""This process's state as probes and new handshakes see it."""

from django.conf import settings

from .hub import get_hub
from .policies import POLICIES
from .sessions import SESSIONS


class State:
    started = False
    draining = False
    control_ok = False
    ever_ready = False  # ready at least once: later outages are Redis's, not this replica's
    tasks = []
    drain_task = None


STATE = State()


def is_ready():
    ready = STATE.started and STATE.control_ok and get_hub().connected and not STATE.draining
    if settings.ACCOUNTS_ENABLED:  # never serve a private room as public: know them first
        ready = ready and POLICIES.loaded
    STATE.ever_ready = STATE.ever_ready or ready
    return ready


def refusal():
    """Why a new handshake must be refused now, or None."""
    if STATE.draining:
        return "draining"
    if len(SESSIONS) >= settings.MAX_CONNECTIONS:
        return "capacity"
    return None
