"""The WebSocket Origin check (rooms.origins) and its setting, PUBLIC_ORIGINS."""

import os
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rooms.origins import (
    ANY_ORIGIN,
    InvalidOrigin,
    OriginCheck,
    format_origin,
    origins_from_hosts,
    parse_origin,
)
from tests.helpers import ROOT
from tests.unit.test_settings import run


@pytest.mark.parametrize(("text", "origin"), [
    ("http://localhost", ("http", "localhost", 80)),
    ("http://localhost:80", ("http", "localhost", 80)),
    ("https://Chat.Example", ("https", "chat.example", 443)),
    ("HTTPS://chat.example:8443", ("https", "chat.example", 8443)),
    ("http://[::1]:8000", ("http", "::1", 8000)),
    ("http://127.0.0.1", ("http", "127.0.0.1", 80)),
])
def test_an_origin_is_its_scheme_host_and_port(text, origin):
    assert parse_origin(text) == origin


@pytest.mark.parametrize("text", [
    "null", "localhost", "//localhost", "ws://localhost", "ftp://localhost", "http://", "http://localhost/",
    "http://localhost/path", "http://localhost?x", "http://user@localhost", "http://localhost:99999",
    "http://localhost:x", "http://[::1", "http://*.example.com", "",
])
def test_anything_else_is_not_an_origin(text):
    with pytest.raises(InvalidOrigin):
        parse_origin(text)


names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,6}){0,2}", fullmatch=True)
hosts = names | st.sampled_from(["127.0.0.1", "::1", "10.1.2.3"])


@given(scheme=st.sampled_from(["http", "https"]), host=hosts, port=st.integers(1, 65535))
def test_a_formatted_origin_parses_back_to_itself(scheme, host, port):
    assert parse_origin(format_origin((scheme, host, port))) == (scheme, host, port)


def test_the_default_is_each_allowed_host_over_http_and_https():
    assert origins_from_hosts(["localhost", "[::1]", ".example.com"]) == [
        "http://localhost", "https://localhost", "http://[::1]", "https://[::1]"]
    assert origins_from_hosts(["*"]) == [ANY_ORIGIN]


async def check(allowed, *headers):
    """What OriginCheck(allowed) does with a handshake carrying these headers: 'app' or 'refused'."""
    sent = []

    async def app(scope, receive, send):
        sent.append("app")

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "websocket", "headers": [(b"origin", value) for value in headers]}
    await OriginCheck(app, allowed)(scope, receive, send)
    return "app" if sent == ["app"] else ("refused" if sent == [{"type": "websocket.close"}] else sent)


PUBLIC = {parse_origin("https://chat.example"), parse_origin("http://localhost:8000")}


@pytest.mark.parametrize(("headers", "outcome"), [
    ((b"https://chat.example",), "app"),
    ((b"https://chat.example:443",), "app"),
    ((b"http://localhost:8000",), "app"),
    ((b"http://chat.example",), "refused"),  # scheme
    ((b"https://chat.example:8443",), "refused"),  # port
    ((b"http://localhost",), "refused"),  # port: 80
    ((b"https://evil.example",), "refused"),
    ((b"https://chat.example.evil.example",), "refused"),
    ((b"null",), "refused"),
    ((b"https://chat.example\xff",), "refused"),
    ((), "refused"),
    ((b"https://chat.example", b"https://evil.example"), "refused"),  # two headers: which one is meant?
])
async def test_only_a_public_origin_reaches_the_application(headers, outcome):
    assert await check(PUBLIC, *headers) == outcome


async def test_any_origin_reaches_the_application_in_development():
    assert await check({ANY_ORIGIN}) == "app"


@pytest.mark.parametrize(("env", "message"), [
    ({"ALLOWED_HOSTS": "*"}, "'*' in ALLOWED_HOSTS or PUBLIC_ORIGINS turns off"),
    ({"PUBLIC_ORIGINS": "*"}, "'*' in ALLOWED_HOSTS or PUBLIC_ORIGINS turns off"),
    ({"PUBLIC_ORIGINS": "https://chat.example,chat.example"}, "PUBLIC_ORIGINS: 'chat.example' is not"),
    ({"PUBLIC_ORIGINS": "https://chat.example/"}, "an origin has no user, path or query"),
    ({"ALLOWED_HOSTS": ".example.com"}, "PUBLIC_ORIGINS is not set and ALLOWED_HOSTS=.example.com names no"),
])
def test_a_wildcard_or_bad_origin_stops_startup(env, message):
    result = run([os.path.join(ROOT, "entrypoint.sh")], **env)
    assert result.returncode == 64 and message in result.stderr, result.stderr
    assert "starting uvicorn" not in result.stderr


@pytest.mark.parametrize("env", [{"ALLOWED_HOSTS": "*"}, {"PUBLIC_ORIGINS": "*"}])
def test_a_wildcard_is_accepted_in_development(env):
    code = "from django.conf import settings; print(sorted(settings.PUBLIC_ORIGINS))"
    result = run([sys.executable, "-c", f"import django; django.setup(); {code}"],
                 DJANGO_DEBUG="1", DJANGO_SETTINGS_MODULE="config.settings", **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['*']"


async def test_a_verdict_is_kept_per_value_and_their_number_bounded():
    """Each Origin value is parsed once; past VERDICTS_MAX values (or over VERDICT_MAX_BYTES) the
    check still decides, by parsing every time, and the kept verdicts are not evicted."""
    async def app(scope, receive, send):
        pass

    origins = OriginCheck(app, PUBLIC)
    origins.VERDICTS_MAX = 2
    assert origins.allows({"headers": [(b"origin", b"https://chat.example")]})
    assert not origins.allows({"headers": [(b"origin", b"https://evil.example")]})
    assert origins.verdicts == {b"https://chat.example": True, b"https://evil.example": False}
    assert not origins.allows({"headers": [(b"origin", b"https://evil2.example")]})
    assert origins.allows({"headers": [(b"origin", b"HTTPS://CHAT.EXAMPLE")]})
    long = b"https://" + b"a" * OriginCheck.VERDICT_MAX_BYTES + b".example"
    assert not origins.allows({"headers": [(b"origin", long)]})
    assert origins.verdicts == {b"https://chat.example": True, b"https://evil.example": False}
    assert not origins.allows({"headers": [(b"origin", b"https://chat.example")] * 2})


def test_a_flood_of_other_origins_first_leaves_the_allowed_ones_unparsed(monkeypatch):
    """Found by flooding the check from outside: 100,000 distinct Origins before any real client
    filled the verdicts, and the real origin was then parsed on every handshake (6 us instead of
    0.3 us). The allowed origins, as browsers send them, are answered without parsing."""
    origins = OriginCheck(None, PUBLIC)
    for index in range(OriginCheck.VERDICTS_MAX + 10):
        assert not origins.allows({"headers": [(b"origin", b"https://evil-%d.example" % index)]})
    assert len(origins.verdicts) == OriginCheck.VERDICTS_MAX

    def parsed(value):
        raise AssertionError(f"{value!r} was parsed")

    monkeypatch.setattr("rooms.origins.origin_of", parsed)
    assert origins.allows({"headers": [(b"origin", b"https://chat.example")]})
    assert b"https://chat.example" not in origins.verdicts
