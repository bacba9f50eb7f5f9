"""nginx/switch-color.sh and nginx/start.sh against a test double of nginx (the unit tier has no
Nginx; the e2e and lab tiers switch real ones): the include is replaced by a rename inside its own
directory, a failed `nginx -t` puts the previous include back, and an Nginx starts with the color
Swarm hands it from the service's label."""

import os
import subprocess

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
