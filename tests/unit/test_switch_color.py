"""nginx/switch-color.sh and nginx/start.sh against a test double of nginx (the unit tier has no
Nginx; the e2e and lab tiers switch real ones): the include is replaced by a rename inside its own
directory, a failed `nginx -t` puts the previous include back, and an Nginx starts with the color
Swarm hands it from the service's label."""

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ROOT

FAKE = r"""#!/bin/sh
# Test double of $1 ({name}): log the call, then do what $1 does.
echo "{name} $*" >>"$CALLS"
{body}
"""
NGINX = 'case "$1" in -t) [ -z "${NGINX_T_FAILS:-}" ] ;; esac'
MV = 'exec /bin/mv "$@"'


def switch(tmp_path, *args, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in (("nginx", NGINX), ("mv", MV)):
        (bin_dir / name).write_text(FAKE.format(name=name, body=body))
        (bin_dir / name).chmod(0o755)
    active = tmp_path / "active"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ACTIVE_DIR": str(active),
           "CALLS": str(tmp_path / "calls"), **env}
    return subprocess.run(["sh", f"{ROOT}/nginx/switch-color.sh", *args], env=env, capture_output=True,
                          text=True, timeout=10)


def include(color):
    return f'map "" $active_color {{ default "{color}"; }}\n'


@pytest.fixture
def active(tmp_path):
    """The include directory, with blue active."""
    directory = tmp_path / "active"
    directory.mkdir()
    (directory / "color.conf").write_text(include("blue"))
    return directory


def test_switch_renames_within_the_include_directory_and_reloads(tmp_path, active):
    result = switch(tmp_path, "green")
    assert result.returncode == 0, result.stderr
    assert (active / "color.conf").read_text() == include("green")
    calls = (tmp_path / "calls").read_text().splitlines()
    moves = [call.split()[1:] for call in calls if call.startswith("mv ")]
    assert moves and all(os.path.dirname(path) == str(active) for move in moves for path in move), moves
    assert "nginx -s reload" in calls
    assert switch(tmp_path).stdout == "green\n"


def test_a_failed_check_keeps_the_previous_color_without_reloading(tmp_path, active):
    result = switch(tmp_path, "green", NGINX_T_FAILS="1")
    assert result.returncode == 1
    assert "nginx -t failed; kept blue" in result.stderr
    assert (active / "color.conf").read_text() == include("blue")
    assert "nginx -s reload" not in (tmp_path / "calls").read_text()


def test_an_unknown_color_is_refused(tmp_path, active):
    result = switch(tmp_path, "red")
    assert result.returncode == 64
    assert "COLOR must be blue or green" in result.stderr


def start(tmp_path, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "nginx").write_text(FAKE.format(name="nginx", body="true"))
    (bin_dir / "nginx").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"),
           "NGINX_RUNTIME_DIR": str(tmp_path / "run"), **env}
    return subprocess.run(["sh", f"{ROOT}/nginx/start.sh"], env=env, capture_output=True, text=True,
                          timeout=10)


@pytest.mark.parametrize("env, color", [
    ({"ACTIVE_COLOR": "green"}, "green"),
    ({"ACTIVE_COLOR": "green", "DEFAULT_COLOR": "blue"}, "green"),
    ({"ACTIVE_COLOR": "", "DEFAULT_COLOR": "green"}, "green"),
    ({"ACTIVE_COLOR": ""}, "blue"),
])
def test_nginx_starts_with_the_recorded_color(tmp_path, env, color):
    """ACTIVE_COLOR is the label com.wsapp.active-color (a Swarm template); DEFAULT_COLOR only without it."""
    result = start(tmp_path, **env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "active" / "color.conf").read_text() == include(color)
    assert "nginx -g daemon off;" in (tmp_path / "calls").read_text()


def test_nginx_refuses_an_unknown_recorded_color(tmp_path):
    result = start(tmp_path, ACTIVE_COLOR="red")
    assert result.returncode == 64
    assert "ACTIVE_COLOR must be blue or green, got 'red'" in result.stderr


def test_websocket_handshakes_get_a_request_rate_of_their_own(tmp_path):
    """Every request under /ws/ (handshakes and plain HTTP alike) is rate-limited per address, apart
    from the other requests' rate, and still bounded in number at once (NGINX_WS_PER_ADDRESS)."""
    result = start(tmp_path, NGINX_WS_RATE="7", NGINX_WS_BURST="9", NGINX_HTTP_RATE="5", NGINX_HTTP_BURST="6")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    zones = (run / "zones.conf").read_text()
    assert "zone=ws_handshakes_per_address:10m rate=7r/s;" in zones
    assert "zone=http_per_address:10m rate=5r/s;" in zones
    assert (run / "ws-limits.conf").read_text().splitlines() == [
        "limit_conn ws_per_address 256;", "limit_req zone=ws_handshakes_per_address burst=9 nodelay;"]
    assert (run / "http-limits.conf").read_text() == "limit_req zone=http_per_address burst=6 nodelay;\n"


def test_a_websocket_rate_of_zero_turns_that_limit_off(tmp_path):
    result = start(tmp_path, NGINX_WS_RATE="0")
    assert result.returncode == 0, result.stderr
    assert "ws_handshakes" not in (tmp_path / "run" / "zones.conf").read_text()
    assert (tmp_path / "run" / "ws-limits.conf").read_text() == "limit_conn ws_per_address 256;\n"


@pytest.mark.parametrize("name", ["NGINX_WS_RATE", "NGINX_WS_BURST"])
def test_a_websocket_rate_setting_must_be_a_whole_number(tmp_path, name):
    result = start(tmp_path, **{name: "2.5"})
    assert result.returncode == 64
    assert f"{name} must be a whole number" in result.stderr


def test_the_nginx_configuration_bounds_what_a_client_puts_in_the_logs():
    """The access log names the request line only through its bounded copy, and a refused request is
    not also logged in the error log (nginx/nginx.conf; the e2e tier measures the bytes)."""
    conf = (Path(ROOT) / "nginx" / "nginx.conf").read_text()
    formats = conf[conf.index("log_format"):conf.index("access_log")]
    assert '"$request_logged"' in formats and "$request " not in formats and '"$request"' not in formats
    assert '"~^(?<request_head>.{256})." "${request_head}...";' in conf
    assert "limit_req_log_level info;" in conf and "limit_conn_log_level info;" in conf
    assert "error_log /dev/stderr warn;" in conf
    assert "large_client_header_buffers 4 8k;" in conf
    assert "include /tmp/nginx/ws-limits.conf;" in conf[conf.index("location /ws/"):]


def test_login_and_admin_posts_get_a_per_minute_rate_of_their_own(tmp_path):
    """Password guessing: POSTs to the login page and under /admin/ count in a zone of their own, per
    minute, keyed by an address that is empty (not counted) for other methods (nginx/nginx.conf)."""
    result = start(tmp_path, NGINX_LOGIN_RATE="12", NGINX_LOGIN_BURST="3")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    assert "limit_req_zone $login_post_address zone=login_posts_per_address:10m rate=12r/m;" in \
        (run / "zones.conf").read_text()
    limits = (run / "login-limits.conf").read_text()
    assert limits == "limit_req zone=login_posts_per_address burst=3 nodelay;\n"
    conf = (Path(ROOT) / "nginx" / "nginx.conf").read_text()
    key = conf[conf.index("map $request_method $login_post_address"):]
    assert key[:key.index("}")].split()[-4:] == ["POST", "$binary_remote_addr;", "default", '"";']
    for location in ("location = /accounts/login/ {", "location /admin/ {"):
        block = conf[conf.index(location):]
        block = block[:block.index("}")]
        assert "include /tmp/nginx/login-limits.conf;" in block
        assert "include /tmp/nginx/http-limits.conf;" in block
        assert "error_page 429 @too_many_logins;" in block
    assert "location @too_many_logins {" in conf and "default_type text/html;" in conf


def test_a_login_rate_of_zero_turns_that_limit_off(tmp_path):
    result = start(tmp_path, NGINX_LOGIN_RATE="0")
    assert result.returncode == 0, result.stderr
    assert "login_posts" not in (tmp_path / "run" / "zones.conf").read_text()
    assert (tmp_path / "run" / "login-limits.conf").read_text() == ""


@pytest.mark.parametrize("name", ["NGINX_LOGIN_RATE", "NGINX_LOGIN_BURST"])
def test_a_login_rate_setting_must_be_a_whole_number(tmp_path, name):
    result = start(tmp_path, **{name: "-1"})
    assert result.returncode == 64
    assert f"{name} must be a whole number" in result.stderr
