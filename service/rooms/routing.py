from django.conf import settings
from django.urls import re_path

from .consumers import RoomConsumer, UnknownPathConsumer
from .faults import FaultInjectingRoomConsumer
from .names import ROOM_PATTERN

# Fault injection is a separate consumer, so that the production one never checks for it.
room_consumer = FaultInjectingRoomConsumer if settings.FAULT_ERROR_SHARE else RoomConsumer

websocket_urlpatterns = [
    re_path(rf"^ws/rooms/(?P<room>{ROOM_PATTERN})/$", room_consumer.as_asgi()),
    re_path(r"", UnknownPathConsumer.as_asgi()),
]
