"""Every service of every stack file has its log rotated (docs/operations.md, "Logs"): Docker's
json-file driver with max-size and max-file, so no container can fill its node's disk with logs.
Found from outside: no stack set it, and the daemon's default keeps json-file logs forever."""

import re
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

STACKS = sorted(Path(ROOT, "stack").glob("*.yml"))
SIZE = re.compile(r"^[1-9][0-9]*[kmg]$")


def services(path):
    return yaml.safe_load(path.read_text())["services"]


def assert_rotated(where, logging):
    assert logging, f"{where} sets no logging"
    assert logging.get("driver") == "json-file", f"{where}: {logging}"
    options = logging.get("options") or {}
    assert SIZE.match(str(options.get("max-size", ""))), f"{where}: max-size {options.get('max-size')!r}"
    assert str(options.get("max-file", "")).isdigit() and int(options["max-file"]) >= 1, f"{where}: {options}"


def test_there_are_stack_files():
    assert {path.name for path in STACKS} >= {"app.yml", "blue.yml", "green.yml", "infra.yml", "registry.yml"}


@pytest.mark.parametrize("path", STACKS, ids=lambda path: path.name)
def test_every_service_rotates_its_log(path):
    for name, service in services(path).items():
        if "image" in service:
            assert_rotated(f"{path.name}: {name}", service.get("logging"))
        else:  # a color's overlay: stack/app.yml plus it; the definition there must rotate
            assert "logging" not in service, f"{path.name}: {name} overrides the logging of stack/app.yml"
            base = services(Path(ROOT, "stack", "app.yml"))[name]
            assert_rotated(f"app.yml: {name} (under {path.name})", base.get("logging"))


def test_the_operators_proxy_container_rotates_its_log_too():
    """scripts/up.sh's ops proxy is a plain container, not a stack service."""
    up = Path(ROOT, "scripts", "up.sh").read_text()
    proxy = up[up.index("start_ops_proxy() {"):]
    proxy = proxy[:proxy.index("\n}\n")]
    for option in ("--log-driver json-file", "--log-opt max-size=", "--log-opt max-file="):
        assert option in proxy
