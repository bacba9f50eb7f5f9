"""Fault injection for testing release gates (FAULT_ERROR_SHARE). Never enabled in production."""

from django.conf import settings

from .consumers import RoomConsumer
from .names import Error

_messages_seen = 0


def injected_fault():
    """Deterministic: message n fails when floor(n * share) steps up."""
    global _messages_seen
    share = settings.FAULT_ERROR_SHARE
    if not share:
        return False
    _messages_seen += 1
    return int(_messages_seen * share) > int((_messages_seen - 1) * share)


class FaultInjectingRoomConsumer(RoomConsumer):
    """The room consumer that rooms.routing serves when FAULT_ERROR_SHARE is set."""

    async def publish(self, body, msg_id=None):
        if injected_fault():
            self.error(Error.INTERNAL, "injected fault (FAULT_ERROR_SHARE)", msg_id)
        else:
            await super().publish(body, msg_id)
