"""Rooms that are more than a name: private ones with members, and whether anonymous clients may post.

A room with no row here is public and takes anonymous messages, as every room does without a
database. Each process knows the restricted rooms without a query at the handshake (rooms.policies).
"""

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

from rooms.names import ROOM_PATTERN


class Room(models.Model):
    name = models.CharField(
        max_length=64, unique=True,
        validators=[RegexValidator(rf"^{ROOM_PATTERN}\Z", "1 to 64 characters of A-Z, a-z, 0-9, _ and -")],
        help_text="As in the room's URL, /ws/rooms/<name>/",
    )
    private = models.BooleanField(default=False, help_text="Only members may join (with a connection ticket)")
    allow_anonymous = models.BooleanField(
        default=True, help_text="Connections without a ticket (not logged in) may post",
    )
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="chat_rooms")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name
