"""Operational endpoints and the ASGI lifespan, in front of Django and Channels.

/healthz, /readyz, /version and /metrics are answered here, before Django: probes and
Prometheus reach replicas by IP address, which Django's ALLOWED_HOSTS would refuse, and these
answers must not depend on anything Django does. Nginx does not expose /metrics.
"""

import json
import logging

from django.conf import settings

from . import lifecycle, metrics, readiness

log = logging.getLogger(__name__)

JSON = b"application/json"


def healthz():
    return 200, JSON, b'{"status":"ok"}'


def readyz():
    ready = readiness.is_ready()
    state = readiness.STATE
    body = json.dumps({"ready": ready, "draining": state.draining, "ever_ready": state.ever_ready,
                       "color": settings.COLOR})
    return (200 if ready else 503), JSON, body.encode()


def version():
    body = {"color": settings.COLOR, "version": settings.APP_VERSION, "replica": settings.REPLICA}
    return 200, JSON, json.dumps(body).encode()


def metrics_page():
    body, content_type = metrics.render()
    return 200, content_type.encode(), body


ROUTES = {"/healthz": healthz, "/readyz": readyz, "/version": version, "/metrics": metrics_page}


class OpsRouter:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        # This connection's task (and what it starts) counts its database statements under its type.
        metrics.QUERY_ORIGIN.set(scope["type"] if scope["type"] in metrics.QUERY_ORIGINS else "other")
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        route = ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        status, content_type, body = route()
        headers = [(b"content-type", content_type), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await lifecycle.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await lifecycle.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
