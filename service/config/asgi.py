"""ASGI entry point: ops endpoints and lifespan, then Django for HTTP and Channels for WebSockets."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from rooms.ops import OpsRouter  # noqa: E402
from rooms.origins import OriginCheck  # noqa: E402
from rooms.routing import websocket_urlpatterns  # noqa: E402

application = OpsRouter(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            # Not Channels' AllowedHostsOriginValidator: it compares host names only (rooms.origins).
            "websocket": OriginCheck(URLRouter(websocket_urlpatterns), settings.PUBLIC_ORIGINS),
        }
    )
)
