"""POST /api/rooms/<room>/messages/: other services publish into a room (rooms.publishing) with an API
key (members.ApiKey) scoped to rooms, rate limited per key (API_RATE_PER_SECOND, API_RATE_BURST, in
each process) and by the room's own ROOM_MESSAGES_PER_SECOND.

    curl -X POST -H "Authorization: Bearer wsk_..." -H "Content-Type: application/json" \\
         -d '{"body": "deploy finished", "id": "deploy-4711"}' https://chat.example.com/api/rooms/ops/messages/
"""

import json

from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from rooms.names import Error
from rooms.publishing import PublishError, publish
from rooms.ratelimit import TokenBucket

from .models import ApiKey

BUCKETS = {}  # ApiKey pk -> TokenBucket, in this process
STATUS = {Error.ROOM_RATE_LIMITED: 429, Error.UNAVAILABLE: 503, "unknown": 503}


def answer(status, **body):
    response = JsonResponse(body, status=status)
    response["Cache-Control"] = "no-store"
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="wsapp"'
    if status in (429, 503):
        response["Retry-After"] = "1"
    return response


def bucket(key):
    found = BUCKETS.get(key.pk)
    if found is None:
        found = BUCKETS[key.pk] = TokenBucket(settings.API_RATE_PER_SECOND, settings.API_RATE_BURST)
    return found


@csrf_exempt  # no cookies: the key is the credential
@require_POST
def publish_message(request, room):
    scheme, _, plain = request.headers.get("Authorization", "").partition(" ")
    key = ApiKey.find(plain.strip()) if scheme.lower() == "bearer" else None
    if key is None:
        return answer(401, error="unauthorized", detail="send 'Authorization: Bearer <API key>'")
    if room not in key.room_names():
        return answer(403, error="forbidden", detail=f"this key may not publish to {room!r}")
    if not bucket(key).take():
        return answer(429, error="rate_limited", detail=f"over {settings.API_RATE_PER_SECOND:g} messages/s")
    if len(request.body) > settings.WS_MAX_MESSAGE_BYTES:
        return answer(413, error="too_large", detail=f"over {settings.WS_MAX_MESSAGE_BYTES} bytes")
    try:
        message = json.loads(request.body)
    except ValueError:
        return answer(400, error="invalid_json", detail="send a JSON object: {\"body\": ..., \"id\": ...}")
    if not isinstance(message, dict) or "body" not in message:
        return answer(400, error="invalid_message", detail="send a JSON object with 'body'")
    try:
        published = publish(room, message["body"], id=message.get("id"), name=key.name,
                            sender=f"key{key.pk}")
    except PublishError as exc:
        return answer(STATUS.get(exc.code, 400), error=str(exc.code), detail=exc.detail)
    return answer(201, room=room, epoch=published.epoch, seq=published.seq)
