"""The chat page at / and the static files it loads, served by the service itself."""

import re

import pytest
from django.conf import settings
from django.test import Client

from rooms.views import STATIC_TYPES


@pytest.fixture
def client():
    return Client(HTTP_HOST="localhost")


def test_page_names_its_server_and_loads_only_its_own_files(client, monkeypatch):
    for name, value in {"COLOR": "green", "APP_VERSION": "v<1>", "REPLICA": "r1"}.items():
        monkeypatch.setattr(settings, name, value)
    response = client.get("/")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/html; charset=utf-8"
    page = response.content.decode()
    assert 'id="server-color">green<' in page and "v&lt;1&gt;" in page
    assert re.findall(r'(?:src|href)="(/[^"]+)"', page) == ["/static/chat.css", "/static/chat.js"]
    assert "default-src 'self'" in response["Content-Security-Policy"]
    for label in ("room", "name", "text"):
        assert f'<label for="{label}"' in page, f"the {label} field has a label"


@pytest.mark.parametrize("name", sorted(STATIC_TYPES))
def test_static_files_have_their_content_type_and_revalidate(client, name):
    response = client.get(f"/static/{name}")
    assert response.status_code == 200
    assert response["Content-Type"] == STATIC_TYPES[name]
    assert response["X-Content-Type-Options"] == "nosniff"  # module scripts need the right type
    assert response["Cache-Control"] == "no-cache"
    again = client.get(f"/static/{name}", HTTP_IF_NONE_MATCH=response["ETag"])
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize("path", ["/static/nope.js", "/static/../views.py", "/static/%2e%2e%2fviews.py"])
def test_other_static_paths_are_404(client, path):
    assert client.get(path).status_code == 404
