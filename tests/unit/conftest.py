"""Unit tier: the routed ASGI application in-process, in-memory channel layer and LocalHub."""

import os

import django
import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "unit-tests")
os.environ.pop("REDIS_URL", None)
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
django.setup()

from channels.testing import WebsocketCommunicator  # noqa: E402

from config.asgi import application  # noqa: E402
from rooms import draining  # noqa: E402
from tests.helpers import ORIGIN_HEADER as ORIGIN  # noqa: E402


@pytest.fixture
def app():
    return application


@pytest.fixture
async def connect():
    """Open communicators on the real application; every one is disconnected afterwards."""
    opened = []

    async def open_one(path="/ws/rooms/lobby/", headers=(ORIGIN,), welcome=True, app=application):
        communicator = WebsocketCommunicator(app, path, headers=list(headers))
        opened.append(communicator)
        connected, _ = await communicator.connect()
        if connected and welcome:
            communicator.welcome = await communicator.receive_json_from()
        return connected, communicator

    yield open_one
    for communicator in opened:
        await communicator.disconnect()


@pytest.fixture(autouse=True)
def fresh_lifecycle():
    draining.stop_drain()
    yield
    draining.stop_drain()
