"""Ops endpoints, settings validation and the token bucket, without any server."""

import json
import os
import subprocess
import sys

import pytest

from rooms import draining, readiness
from rooms.ratelimit import TokenBucket
from tests.helpers import ROOT


async def get(app, path):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    await app(scope, receive, send)
    headers = dict(sent[0]["headers"])
    return sent[0]["status"], headers[b"content-type"], sent[1]["body"]


async def test_healthz_answers_200(app):
    assert (await get(app, "/healthz"))[0] == 200


async def test_readyz_is_503_until_started(app, monkeypatch):
    monkeypatch.setattr(readiness.STATE, "started", False)
    status, _, body = await get(app, "/readyz")
    assert status == 503 and json.loads(body)["ready"] is False


async def test_readyz_is_200_when_started_and_503_while_draining(app, monkeypatch):
    monkeypatch.setattr(readiness.STATE, "started", True)
    monkeypatch.setattr(readiness.STATE, "control_ok", True)
    assert (await get(app, "/readyz"))[0] == 200
    draining.start_drain(0)
    status, _, body = await get(app, "/readyz")
    assert status == 503 and json.loads(body)["draining"] is True


async def test_version_names_color_version_and_replica(app):
    status, content_type, body = await get(app, "/version")
    assert status == 200 and content_type == b"application/json"
    assert {"color", "version", "replica"} <= set(json.loads(body))


async def test_metrics_is_prometheus_text_with_the_contract_names(app):
    status, content_type, body = await get(app, "/metrics")
    assert status == 200 and content_type.startswith(b"text/plain")
    for name in (b"ws_active_connections", b"ws_messages_received_total", b"ws_errors_total"):
        assert name in body
    # The capacity the "connections near the limit" alert divides by (set at startup).
    assert b"\nws_max_connections " in body


def test_token_bucket_allows_the_burst_then_the_rate():
    bucket = TokenBucket(rate=10, burst=3, clock=lambda: 0.0)
    assert [bucket.take(now=0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(now=0.1) and not bucket.take(now=0.1)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL is not a redis://"),
        ({"RATE_LIMIT_BURST": "many"}, "RATE_LIMIT_BURST must be an integer"),
        ({"DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY or DJANGO_SECRET_KEY_FILE must be set"),
        ({"DJANGO_SECRET_KEY_FILE": "/nonexistent"}, "DJANGO_SECRET_KEY_FILE=/nonexistent cannot be read"),
    ],
)
def test_bad_settings_fail_at_startup_with_the_variable_named(env, message):
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DJANGO_DEBUG")}
    base.update({"DJANGO_SECRET_KEY": "x", "DJANGO_SETTINGS_MODULE": "config.settings"}, **env)
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=os.path.join(ROOT, "service"), env=base, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0 and message in result.stderr
