"""The HTTP side of the accounts: connection tickets for logged-in users (rooms.tickets)."""

import re

from django.http import JsonResponse
from django.views.decorators.http import require_GET

from rooms import tickets
from rooms.names import ROOM_PATTERN

from .models import Room

ROOM_NAME = re.compile(ROOM_PATTERN)


def display_name(user):
    return user.get_full_name() or user.get_username()


def answer(status, **body):
    response = JsonResponse(body, status=status)
    response["Cache-Control"] = "no-store"
    return response


@require_GET
def ticket(request):
    """GET /ticket/[?room=R]: a ticket for the logged-in user, naming the private room R if it is a
    member (403 if it is not), or without `room` every private room it is a member of."""
    user = request.user
    if not user.is_authenticated:
        return answer(401, error="login_required", detail="log in first", login="/accounts/login/")
    room = request.GET.get("room")
    if room is None:
        rooms = list(Room.objects.filter(private=True, members=user).values_list("name", flat=True))
    elif not ROOM_NAME.fullmatch(room):
        return answer(400, error="invalid_room",
                      detail="a room is 1 to 64 characters of A-Z, a-z, 0-9, _ and -")
    else:
        found = Room.objects.filter(name=room, private=True).first()
        if found is not None and not found.members.filter(pk=user.pk).exists():
            return answer(403, error="forbidden", detail=f"you are not a member of the private room {room!r}")
        rooms = [room] if found is not None else []
    token, issued = tickets.issue(user.pk, display_name(user), rooms)
    return answer(200, ticket=token, expires=issued.expires, name=issued.name, rooms=sorted(issued.rooms))
