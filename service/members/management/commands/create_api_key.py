"""manage.py create_api_key NAME --room R [--room R2 ...]: a key for POST /api/rooms/<room>/messages/,
printed once (only its digest is kept)."""

import re

from django.core.management.base import BaseCommand, CommandError

from members.models import ApiKey
from rooms.names import ROOM_PATTERN


class Command(BaseCommand):
    help = "Make an API key that may publish to the given rooms; the key is printed once."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--room", action="append", required=True, help="a room it may publish to")

    def handle(self, name, room, **options):
        bad = [r for r in room if not re.fullmatch(ROOM_PATTERN, r)]
        if bad:
            raise CommandError(f"not a room name: {bad[0]!r}")
        if ApiKey.objects.filter(name=name).exists():
            raise CommandError(f"an API key named {name!r} exists already")
        _, plain = ApiKey.make(name, room)
        self.stdout.write(plain)
