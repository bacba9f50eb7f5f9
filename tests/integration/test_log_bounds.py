"""A refused request costs one log line of bounded size (docs/security.md, "Logs"): real Uvicorn, real
Redis, the service started through entrypoint.sh, its output read as the container's log would be.

Found from outside: a bad Host wrote a ~2 KB traceback per request, and a 404 under /ws/ logged its
whole path (2.7 MB of log in 3 s from one connection).
"""

import http.client
import time

import pytest
import websockets

from config.logbounds import MAX_CHARS
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

REQUESTS = 20
LONG = 6000  # characters of path or Host: far above the bound, well under Uvicorn's header limit
# A log line: time, level, logger name, pid, then the bounded message and its marker.
LINE_BYTES = MAX_CHARS + 150


def exchange(port, path, host, requests=REQUESTS):
    """`requests` GETs on one keep-alive connection, as a flood would; their statuses."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    statuses = []
    try:
        for _ in range(requests):
            connection.putrequest("GET", path, skip_host=True)
            connection.putheader("Host", host)
            connection.endheaders()
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        connection.close()
    return statuses


def new_lines(server, before, expected):
    """The log lines written after offset `before`, once there are `expected` (and a moment for more)."""
    wait_until(lambda: len(server.log()[before:].splitlines()) >= expected, 10, f"{expected} log lines")
    time.sleep(0.5)  # a traceback or a second line would come right after
    return server.log()[before:].splitlines()


def assert_one_bounded_line_each(lines, requests, marker):
    sizes = [len(line.encode()) for line in lines]
    print(f"{requests} requests: {len(lines)} lines, {sum(sizes)} bytes, longest {max(sizes)} bytes")
    assert len(lines) == requests, "\n".join(line[:200] for line in lines[:30])
    assert all(marker in line for line in lines), lines[0][:300]
    assert max(sizes) <= LINE_BYTES


def test_a_bad_host_is_one_short_line_without_a_traceback(make_server):
    server = make_server()
    before = len(server.log())
    host = "evil-" + "x" * LONG + ".example"
    assert exchange(server.port, "/", host) == [400] * REQUESTS
    lines = new_lines(server, before, REQUESTS)
    assert_one_bounded_line_each(lines, REQUESTS, "Invalid HTTP_HOST header")
    assert not any("Traceback" in line for line in lines)


def test_a_long_path_under_ws_is_one_line_with_a_bounded_prefix(make_server):
    server = make_server()
    before = len(server.log())
    # An encoded line break must not start a line of the client's choosing.
    path = "/ws/%0A1970-01-01%2000:00:00,000%20ERROR%20forged" + "a" * LONG
    assert exchange(server.port, path, "localhost") == [404] * REQUESTS
    lines = new_lines(server, before, REQUESTS)
    assert_one_bounded_line_each(lines, REQUESTS, r"Not Found: /ws/\n1970-01-01 00:00:00,000 ERROR forged")
    assert not any(line.startswith("1970") for line in lines)


@pytest.mark.parametrize("level, lines_each", [("warning", 0), ("info", 2)])
async def test_a_websocket_on_a_long_unknown_path_logs_bounded_lines(make_server, level, lines_each):
    """The service's refusal (UnknownPathConsumer) logs nothing; Uvicorn at its default level (the
    stack's) neither, at info its two lines per refused handshake, the path in them bounded."""
    server = make_server(UVICORN_LOG_LEVEL=level)
    before = len(server.log())
    for _ in range(REQUESTS):
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(f"{server.ws_url}/ws/{'b' * LONG}", origin="http://localhost"):
                pass
    lines = new_lines(server, before, REQUESTS * lines_each)
    sizes = [len(line.encode()) for line in lines]
    print(f"Uvicorn at {level}: {REQUESTS} refused handshakes, {len(lines)} lines, {sum(sizes)} bytes")
    assert len(lines) == REQUESTS * lines_each, lines[:4]
    assert max(sizes, default=0) <= LINE_BYTES
