"""Uvicorn's own WebSocket tests against wsserver.protocol and against the stock sans-I/O class it
extends: the project's class may fail only what the stock class fails too.

The tests are tests/protocols/test_websocket.py of the Uvicorn release pinned in requirements.txt,
taken from that release's sdist (it ships tests/ and their conftest and helpers). pip downloads the
sdist into a cache (~/.cache/wsapp-tests, or $XDG_CACHE_HOME/wsapp-tests) at the first run. Not
vendored: a bump of the pin then brings the new release's tests by itself, the repository carries no
copy of another project's files, and CI reaches PyPI (a failed download fails the test and says so).

Each class gets a run of pytest in a subprocess, both at once, on a copy of the tests with a
conftest.py in tests/protocols/ that overrides Uvicorn's fixtures (a closer conftest wins over
tests/conftest.py; a -p plugin would not): ws_protocol_cls is the class named in $WS_PROTOCOL_CLS,
and http_protocol_cls is httptools only, which entrypoint.sh runs (h11 as well would double the
time). The suite skips three tests for the sans-I/O class, which it recognises by its __name__, so
both classes run as trivial subclasses of another name and nothing is skipped (a skip would hide what
both fail: those three, a rejection's response start and body sent as one). Uvicorn's own pytest
settings apply (warnings are errors), plus one deprecation of websockets' legacy client that
Uvicorn's tests use: they pin websockets 13.1, this project 17.4. Each test gets 5 s (they take under 1 s, but
test_headers hangs with either class: see docs/protocol.md, "Conformance").
"""

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.integration

CLASSES = {
    "wsserver": "wsserver.protocol:WebSocketProtocol",
    "stock": "uvicorn.protocols.websockets.websockets_sansio_impl:WebSocketsSansIOProtocol",
}
SUITE = "tests/protocols/test_websocket.py"
TEST_TIMEOUT = 5  # seconds per test of the suite
RUN_TIMEOUT = 180  # seconds per run of the suite; about 20 s here
DOWNLOAD_TIMEOUT = 180

OVERRIDE = '''\
"""Written by the project's tests/integration/test_uvicorn_suite.py: the class under test."""

import os

import pytest
from uvicorn.importer import import_from_string


@pytest.fixture
def ws_protocol_cls():
    cls = import_from_string(os.environ["WS_PROTOCOL_CLS"])
    return type(cls.__name__ + "UnderTest", (cls,), {})  # the suite's skips go by name: none here


@pytest.fixture
def http_protocol_cls():
    return import_from_string("uvicorn.protocols.http.httptools_impl:HttpToolsProtocol")
'''

PYTEST_INI = f"""\
[pytest]
addopts = --strict-markers --strict-config -p no:asyncio -p no:cacheprovider --timeout {TEST_TIMEOUT}
xfail_strict = true
filterwarnings =
    error
    ignore: websockets.legacy is deprecated.*:DeprecationWarning
    ignore: websockets.server.WebSocketServerProtocol is deprecated.*:DeprecationWarning
    ignore: websockets.client.connect is deprecated.*:DeprecationWarning
    ignore: remove second argument of ws_handler:DeprecationWarning:websockets
    ignore: websockets.exceptions.InvalidStatusCode is deprecated:DeprecationWarning
"""


def pinned_uvicorn():
    text = Path(ROOT, "requirements.txt").read_text()
    match = re.search(r"^uvicorn(?:\[[^\]]*\])?==(\S+)", text, re.MULTILINE)
    assert match, "requirements.txt pins no uvicorn==VERSION"
    return match.group(1)


def sdist(version):
    """The release's sdist, downloaded once into the cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "wsapp-tests")
    path = cache / f"uvicorn-{version}.tar.gz"
    if not path.exists():
        partial = cache / f"download-{os.getpid()}"
        partial.mkdir(parents=True, exist_ok=True)
        try:
            result = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 "--disable-pip-version-check", "--quiet", "--dest", str(partial), f"uvicorn=={version}"],
                capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT)
            downloaded = partial / path.name
            if result.returncode != 0 or not downloaded.exists():
                pytest.fail(f"pip could not download the uvicorn {version} sdist (needs PyPI); put it at "
                            f"{path} to run offline:\n{result.stdout}{result.stderr}", pytrace=False)
            downloaded.replace(path)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return path


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A directory with the release's tests/, the override conftest and the pytest settings."""
    version = pinned_uvicorn()
    prefix = f"uvicorn-{version}/"
    directory = tmp_path_factory.mktemp("uvicorn-suite")
    with tarfile.open(sdist(version)) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix + "tests/")]
        for member in members:
            member.name = member.name[len(prefix):]
        archive.extractall(directory, members=members, filter="data")
    assert (directory / SUITE).exists(), f"the uvicorn {version} sdist has no {SUITE}"
    (directory / "tests" / "protocols" / "conftest.py").write_text(OVERRIDE)
    (directory / "pytest.ini").write_text(PYTEST_INI)
    return directory


class Run:
    def __init__(self, junit, returncode, log):
        self.returncode, self.log = returncode, log
        self.passed, self.failed, self.skipped = set(), set(), set()
        cases = ET.parse(junit).getroot().iter("testcase") if junit.exists() else []
        for case in cases:
            outcomes = {child.tag for child in case}
            if outcomes & {"failure", "error"}:
                self.failed.add(case.get("name"))
            elif "skipped" in outcomes:
                self.skipped.add(case.get("name"))
            else:
                self.passed.add(case.get("name"))

    def ran(self):
        return self.passed | self.failed | self.skipped


@pytest.fixture(scope="module")
def runs(suite, tmp_path_factory):
    """{name: Run} for every class in CLASSES, the runs side by side."""
    out = tmp_path_factory.mktemp("uvicorn-suite-runs")
    env = dict(os.environ, PYTHONPATH=str(Path(ROOT, "service")))  # wsserver, not the project's tests
    env.pop("PYTEST_ADDOPTS", None)
    started, processes = time.monotonic(), {}
    try:
        for name, cls in CLASSES.items():
            with open(out / f"{name}.log", "wb") as log:
                processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "pytest", SUITE, "-q", "-rfEs", f"--junitxml={out / name}.xml"],
                    cwd=suite, env=dict(env, WS_PROTOCOL_CLS=cls), stdout=log, stderr=subprocess.STDOUT)
        deadline = started + RUN_TIMEOUT
        codes = {name: p.wait(timeout=max(0, deadline - time.monotonic())) for name, p in processes.items()}
    finally:
        for p in processes.values():
            if p.poll() is None:
                p.kill()
            p.wait()
    print(f"Uvicorn's suite, {len(CLASSES)} runs side by side: {time.monotonic() - started:.1f} s")
    return {name: Run(out / f"{name}.xml", code, (out / f"{name}.log").read_text())
            for name, code in codes.items()}


@pytest.mark.parametrize("ws_protocol_cls", CLASSES)
def test_uvicorn_suite_runs_against(runs, ws_protocol_cls):
    """The run got as far as results (pytest exits 1 when tests fail, more when it could not run)."""
    run = runs[ws_protocol_cls]
    print(f"{CLASSES[ws_protocol_cls]}: {len(run.passed)} passed, {len(run.skipped)} skipped, "
          f"failed: {sorted(run.failed)}")
    assert run.returncode in (0, 1) and run.passed, f"pytest exited {run.returncode}:\n{run.log[-5000:]}"
    assert not run.skipped, f"skipped, so not compared: {sorted(run.skipped)}"


def test_the_project_class_fails_no_test_that_the_stock_class_passes(runs):
    project, stock = runs["wsserver"], runs["stock"]
    print(f"failed with {CLASSES['wsserver']}: {sorted(project.failed)}")
    print(f"failed with {CLASSES['stock']}: {sorted(stock.failed)}")
    assert project.ran() == stock.ran()
    assert project.failed <= stock.failed, (
        f"fail with the project's class only: {sorted(project.failed - stock.failed)}\n{project.log[-8000:]}")
