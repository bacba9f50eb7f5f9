"""Autobahn's fuzzing-client cases 1 to 7, 9 and 10 against the project's WebSocket protocol.

Uvicorn runs wsserver.protocol with an echo application (tests/echo_app.py), as the Autobahn suite
expects of a server under test. The cases are the suite's own case files, driven by kosoku, a
Python 3 runner of them (the official autobahntestsuite runs on Python 2 only). A case passes when
its verdict is OK, NON-STRICT or INFORMATIONAL, as in Autobahn's report. Sections 11 to 13 test
permessage-deflate, which the service turns off.
"""

import asyncio
import os
import sys
import time
from collections import Counter

import pytest
from kosoku import FailureError, run_fuzzingclient

from testkit import port_answers
from tests.helpers import ROOT, Process, free_port, wait_until

pytestmark = pytest.mark.integration

PROTOCOL = "wsserver.protocol:WebSocketProtocol"
MAX_MESSAGE_BYTES = 20 * 2**20  # section 9 sends messages of up to 16 MiB
# Seconds per section; section 9 (16 MiB messages, 1000s of small ones) takes about 10 s here.
SECTION_TIMEOUT = {"9": 180}
DEFAULT_TIMEOUT = 60


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("autobahn") / "uvicorn.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "service"), ROOT]))
    args = [sys.executable, "-m", "uvicorn", "tests.echo_app:app", "--port", str(port),
            "--ws", PROTOCOL, "--ws-max-size", str(MAX_MESSAGE_BYTES), "--lifespan", "off",
            "--log-level", "warning"]
    with open(log_path, "wb") as log:
        server = Process(args, env=env, log=log)
    try:
        wait_until(lambda: port_answers(port) or not server.running(), 15, f"uvicorn to listen on {port}")
        assert server.running(), f"uvicorn exited:\n{log_path.read_text()}"
    except AssertionError:
        server.stop()
        raise
    yield f"ws://127.0.0.1:{port}"
    server.stop()
    log_text = log_path.read_text()
    assert "Traceback" not in log_text, f"the server logged an exception during the run:\n{log_text}"


@pytest.mark.parametrize("section", ["1", "2", "3", "4", "5", "6", "7", "9", "10"])
async def test_autobahn_fuzzingclient_section(echo_server, section):
    started = time.monotonic()
    try:
        async with asyncio.timeout(SECTION_TIMEOUT.get(section, DEFAULT_TIMEOUT)):
            results = await run_fuzzingclient(echo_server, cases=[f"{section}.*"])
    except FailureError as failure:
        failed = [f"{r.case_id} {r.description}: {r.behavior.value}/{r.behavior_close.value}: "
                  + " ".join(dict.fromkeys([r.result, r.result_close]))
                  for r in failure.results if not r.passed]
        pytest.fail(f"Autobahn section {section}: {len(failed)} case(s) failed:\n" + "\n".join(failed),
                    pytrace=False)
    verdicts = Counter(r.behavior.value for r in results)
    print(f"Autobahn section {section}: {len(results)} cases in {time.monotonic() - started:.1f} s: "
          f"{dict(verdicts)}")
    assert results and all(r.passed for r in results)
