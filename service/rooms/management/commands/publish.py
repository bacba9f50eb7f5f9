"""manage.py publish ROOM BODY: publish a message into a room from the command line or a cron job, with
the seq, history and order of the room's other messages (rooms.publishing). Needs Redis."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from rooms.publishing import PublishError, publish


class Command(BaseCommand):
    help = "Publish a message into a room (through Redis, like a member's message)."

    def add_arguments(self, parser):
        parser.add_argument("room")
        parser.add_argument("body", help="the message body, sent as it is (e.g. a JSON string)")
        parser.add_argument("--id", help="message id: running the command again with it publishes once")
        parser.add_argument("--name", help="the name shown with the message")

    def handle(self, room, body, id, name, **options):
        if not settings.REDIS_ENABLED:  # this process' own rooms are not the server's
            raise CommandError("publishing from a command needs REDIS_URL or REDIS_SENTINELS: without "
                               "Redis a room exists only inside the server's process")
        try:
            published = publish(room, body, id=id, name=name)
        except PublishError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"published to {room}: epoch {published.epoch} seq {published.seq}")
