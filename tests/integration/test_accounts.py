"""Users, private rooms and connection tickets against a real PostgreSQL, a real Redis and the app
started through entrypoint.sh (two workers): login, tickets, the handshake's refusals, the names
shown, and the database statements made by WebSocket handshakes (none)."""

import asyncio
import json
import re
import time
from urllib.parse import quote

import httpx
import pytest
import websockets

from tests.helpers import ACCOUNTS_PASSWORD as PASSWORD
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

ORIGIN = "http://localhost"
@pytest.fixture
def log_in():
    """log_in(server, user): an HTTP client with `user`'s session, through Django's login page; every
    one is closed afterwards."""
    clients = []

    def open_one(server, user):
        client = httpx.Client(base_url=server.url, timeout=10)
        clients.append(client)
        return logged_in(client, user)

    yield open_one
    for client in clients:
        client.close()


def logged_in(client, user):
    page = client.get("/accounts/login/")
    assert page.status_code == 200 and 'name="password"' in page.text
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    answer = client.post("/accounts/login/", data={"username": user, "password": PASSWORD,
                                                   "csrfmiddlewaretoken": token, "next": "/"})
    assert answer.status_code == 302 and answer.headers["location"] == "/", answer.text[:500]
    return client


def ticket_for(client, room):
    answer = client.get("/ticket/", params={"room": room})
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    return answer.json()


async def join(server, room, ticket=None):
    query = f"?ticket={quote(ticket)}" if ticket else ""
    ws = await websockets.connect(f"{server.ws_url}/ws/rooms/{room}/{query}", origin=ORIGIN)
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 5))


async def test_a_member_logs_in_gets_a_ticket_and_chats_under_its_own_name(accounts_server, log_in):
    server = accounts_server()
    alice = log_in(server, "alice")
    issued = ticket_for(alice, "board")
    assert issued["rooms"] == ["board"] and issued["name"] == "Alice Doe"
    assert 250 < issued["expires"] - time.time() <= 300
    ws, welcome = await join(server, "board", issued["ticket"])
    try:
        assert welcome["type"] == "welcome"
        await ws.send(json.dumps({"type": "message", "body": "hello", "id": "m1"}))
        echo = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (echo["type"], echo["name"], echo["body"]) == ("message", "Alice Doe", "hello")
        await ws.send(json.dumps({"type": "renew"}))
        renewed = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert renewed["type"] == "ticket" and renewed["expires"] >= issued["expires"]
    finally:
        await ws.close()


async def test_the_ticket_view_refuses_strangers_and_anonymous_users(accounts_server, log_in):
    server = accounts_server()
    bob = log_in(server, "bob")
    refused = bob.get("/ticket/", params={"room": "board"})
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert ticket_for(bob, "lobby")["rooms"] == []  # a public room: a ticket with his name only
    anonymous = httpx.get(f"{server.url}/ticket/?room=board", timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "login_required"


async def test_a_private_room_refuses_no_ticket_and_a_strangers_ticket_with_1008(accounts_server, log_in):
    server = accounts_server()
    bob_ticket = ticket_for(log_in(server, "bob"), "lobby")["ticket"]
    for ticket in (None, bob_ticket):
        ws, first = await join(server, "board", ticket)
        assert first["type"] == "error" and first["error"] == "forbidden"
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1008


async def test_a_room_made_private_in_the_database_is_enforced_within_the_reload_period(accounts_server):
    server = accounts_server(ROOM_POLICY_SECONDS="0.5")
    ws, welcome = await join(server, "later")
    await ws.close()
    assert welcome["type"] == "welcome"
    server.manage("shell", "-c",
                  "from members.models import Room; Room.objects.create(name='later', private=True)")

    async def refused():
        ws, first = await join(server, "later")
        await ws.close()
        return first.get("error") == "forbidden"

    # Every worker reloads on its own: wait until six handshakes in a row (both workers) are refused.
    deadline = time.monotonic() + 10
    while not all([await refused() for _ in range(6)]):
        assert time.monotonic() < deadline, f"'later' was public on a worker after 10 s:\n{server.log()}"
        await asyncio.sleep(0.2)


def statements_since(postgres, mark):
    """Statements (and connections) Postgres logged after the line containing `mark`."""
    log = postgres.log()
    after = log[log.index(mark):].splitlines()[1:]
    return [line for line in after if ("statement:" in line or "connection authorized" in line)
            and "application_name=psql" not in line]  # the test's own marks


async def test_websocket_handshakes_make_no_database_query(accounts_server, log_in, postgres_server):
    """The reconnect storm of a release must not reach the database: 60 handshakes with tickets,
    to the private room and a public one, with messages and renewals, and Postgres logs nothing."""
    server = accounts_server(ROOM_POLICY_SECONDS="3600")  # the policies' own reload stays out of it
    tickets = [ticket_for(log_in(server, "alice"), "board")["ticket"] for _ in range(2)]
    mark = f"handshakes-start-{time.time_ns()}"
    assert postgres_server.sql(f"SELECT '{mark}'") is not None
    wait_until(lambda: mark in postgres_server.log(), 5, "the mark in the Postgres log", interval=0.05)
    opened = []
    try:
        for n in range(30):
            for room in ("board", "lobby"):
                ws, welcome = await join(server, room, tickets[n % 2])
                opened.append(ws)
                assert welcome["type"] == "welcome", welcome
        await opened[0].send(json.dumps({"type": "renew"}))
        await opened[0].send(json.dumps({"type": "message", "body": "counted"}))
        frames = [json.loads(await asyncio.wait_for(opened[0].recv(), 5)) for _ in range(2)]
        assert {frame["type"] for frame in frames} == {"ticket", "message"}
    finally:
        await asyncio.gather(*(ws.close() for ws in opened))
    end = f"handshakes-end-{time.time_ns()}"
    assert postgres_server.sql(f"SELECT '{end}'") is not None
    wait_until(lambda: end in postgres_server.log(), 5, "the end mark in the Postgres log", interval=0.05)
    made = [line for line in statements_since(postgres_server, mark) if end not in line]
    assert made == [], "\n".join(made)
    # The service's own count says the same (ws_db_queries_total, summed over its two workers): the
    # logins and tickets above were HTTP's, nothing was the WebSockets'.
    status, page = server.get("/metrics")
    assert status == 200
    counted = dict(line.rsplit(" ", 1) for line in page.splitlines()
                   if line.startswith("ws_db_queries_total{"))
    assert float(counted['ws_db_queries_total{origin="websocket"}']) == 0, counted
    assert float(counted['ws_db_queries_total{origin="http"}']) > 0, counted


async def test_with_postgres_down_chat_goes_on_and_tickets_answer_503_quickly(accounts_server, log_in,
                                                                              postgres_server):
    server = accounts_server(DATABASE_CONNECT_TIMEOUT="2")
    alice = log_in(server, "alice")
    issued = ticket_for(alice, "board")
    ws, _ = await join(server, "board", issued["ticket"])
    try:
        postgres_server.stop()
        await ws.send(json.dumps({"type": "message", "body": "still here"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["body"] == "still here"
        again, welcome = await join(server, "board", issued["ticket"])  # a reconnect: no database needed
        await again.close()
        assert welcome["type"] == "welcome"
        started = time.monotonic()
        answer = alice.get("/ticket/", params={"room": "board"})
        assert answer.status_code == 503 and "database is unavailable" in answer.text
        assert time.monotonic() - started < 8
        assert server.get("/readyz")[0] == 200  # the replica stays in service
    finally:
        await ws.close()
