"""Rooms that are more than a name: private ones with members, and whether anonymous clients may post.

A room with no row here is public and takes anonymous messages, as every room does without a
database. Each process knows the restricted rooms without a query at the handshake (rooms.policies).
"""

import hashlib
import hmac
import secrets

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


class ApiKey(models.Model):
    """A key another service publishes with (POST /api/rooms/<room>/messages/), to the rooms listed.

    Only a SHA-256 digest of the key is stored: the key is 32 random bytes, so a fast hash is as good
    as a slow one, and the plain key is shown once, when it is made (manage.py create_api_key).
    """

    name = models.CharField(max_length=100, unique=True, help_text="Shown with its messages")
    prefix = models.CharField(max_length=12, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    rooms = models.TextField(help_text="The rooms it may publish to, one a line")
    active = models.BooleanField(default=True)
    created = models.DateTimeField(auto_now_add=True)

    PREFIX = "wsk_"

    def __str__(self):
        return f"{self.name} ({self.PREFIX}{self.prefix}…)"

    def room_names(self):
        return {line.strip() for line in self.rooms.splitlines() if line.strip()}

    @classmethod
    def digest_of(cls, secret):
        return hashlib.sha256(secret.encode()).hexdigest()

    @classmethod
    def make(cls, name, rooms):
        """(ApiKey, plain key): saved, with the key shown only here."""
        prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        key = cls.objects.create(name=name, prefix=prefix, digest=cls.digest_of(secret),
                                 rooms="\n".join(rooms))
        return key, f"{cls.PREFIX}{prefix}_{secret}"

    @classmethod
    def find(cls, plain):
        """The active key whose plain text this is, or None (compared in constant time)."""
        if not isinstance(plain, str) or not plain.startswith(cls.PREFIX):
            return None
        prefix, _, secret = plain[len(cls.PREFIX):].partition("_")
        key = cls.objects.filter(prefix=prefix, active=True).first()
        if key is None or not hmac.compare_digest(key.digest, cls.digest_of(secret)):
            return None
        return key
