from django.urls import re_path

from .consumers import RoomConsumer, UnknownPathConsumer

ROOM_PATTERN = r"[A-Za-z0-9_-]{1,64}"

websocket_urlpatterns = [
    re_path(rf"^ws/rooms/(?P<room>{ROOM_PATTERN})/$", RoomConsumer.as_asgi()),
    re_path(r"", UnknownPathConsumer.as_asgi()),
]
