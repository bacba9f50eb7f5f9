"""Settings are validated once, in Python; entrypoint.sh only passes on what rooms.ctl prints."""

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT


def run(args, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DJANGO_DEBUG", "PORT")}
    base.update(DJANGO_SECRET_KEY="x", PYTHON=sys.executable, **env)
    return subprocess.run(args, cwd=os.path.join(ROOT, "service"), env=base, capture_output=True,
                          text=True, timeout=30)


def test_server_args_are_the_validated_settings_with_their_defaults():
    result = run([sys.executable, "-m", "rooms.ctl", "server-args"], GRACEFUL_TIMEOUT="3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    options = dict(zip(lines[::2], lines[1::2], strict=True))
    assert options == {"--port": "8000", "--workers": "1", "--ws-max-size": "65536",
                       "--ws-ping-interval": "20.0", "--ws-ping-timeout": "20.0",
                       "--timeout-graceful-shutdown": "3", "--forwarded-allow-ips": "127.0.0.1"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GRACEFUL_TIMEOUT": "1.5"}, "GRACEFUL_TIMEOUT must be an integer, got '1.5'"),
        ({"WS_MAX_MESSAGE_BYTES": "100"}, "WS_MAX_MESSAGE_BYTES must be at least 1024, got 100"),
        ({"PORT": "70000"}, "PORT must be at most 65535, got 70000"),
        ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY must be at least 1, got 0"),
        ({"WEB_CONCURRENCY": "2"}, "WEB_CONCURRENCY=2 needs REDIS_URL"),
        ({"WS_PING_TIMEOUT": "soon"}, "WS_PING_TIMEOUT must be a number, got 'soon'"),
        ({"REDIS_WAIT_SECONDS": "-1"}, "REDIS_WAIT_SECONDS must be at least 0.0, got -1.0"),
        ({"FORWARDED_ALLOW_IPS": "*"}, "FORWARDED_ALLOW_IPS must list the proxy's addresses"),
        ({"REDIS_SENTINELS": "sentinel:x"}, "REDIS_SENTINELS: 'sentinel:x' has no port between 1 and 65535"),
        ({"REDIS_SENTINELS": "s", "REDIS_URL": "redis://r"}, "REDIS_URL and REDIS_SENTINELS are both set"),
        ({"FORWARDED_ALLOW_IPS": "10.0.0.0/8,proxy"}, "'proxy' is not an IP address or network"),
        ({"WS_WRITE_BUFFER_LOW": "65536"}, "WS_WRITE_BUFFER_LOW=65536 must be below WS_WRITE_BUFFER_HIGH"),
        ({"WS_WRITE_STALL_SECONDS": "0"}, "WS_WRITE_STALL_SECONDS must be at least 0.1, got 0.0"),
    ],
)
def test_entrypoint_refuses_a_bad_setting_naming_it_before_starting_anything(env, message):
    result = run([os.path.join(ROOT, "entrypoint.sh")], **env)
    assert result.returncode == 64 and message in result.stderr
    assert "starting uvicorn" not in result.stderr


def test_connection_limits_must_fit_the_open_file_limit():
    """MAX_CONNECTIONS and both Redis pools are descriptors: a limit they do not fit stops startup."""
    import resource

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))

    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DJANGO_DEBUG", "PORT")}
    base.update(DJANGO_SECRET_KEY="x")

    def server_args(**env):
        return subprocess.run([sys.executable, "-m", "rooms.ctl", "server-args"],
                              cwd=os.path.join(ROOT, "service"), env={**base, **env}, capture_output=True,
                              text=True, timeout=30, preexec_fn=low_limit)

    result = server_args()
    assert result.returncode == 2
    assert "MAX_CONNECTIONS=10000 and REDIS_MAX_CONNECTIONS=1000 do not fit" in result.stderr
    assert "open-file limit of 4096" in result.stderr
    fits = server_args(MAX_CONNECTIONS="1000")
    assert fits.returncode == 0, fits.stderr
