"""Postgres as a part of the deployed system (stack/infra.yml, docs/accounts.md): users log in through
Nginx, get a connection ticket and join a private room over WebSocket, a user who is not a member is
refused; then Postgres is killed while clients chat and reconnect: chat goes on, login answers 503
within a bounded time, and login works again once Swarm has restarted it.

Each test takes the system the test before it left (conftest.py); the tests run in file order, the
outage last."""

import asyncio
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
import pytest
import websockets

from tests.e2e.helpers import BASE_URL, LOGIN_RATE, WS_URL, active_service, docker, service_container
from tests.e2e.load import Traffic

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600), pytest.mark.takes_standing_system]

ORIGIN = "http://localhost"
PASSWORD = f"e2e-{uuid.uuid4().hex}"
ROOM = "e2e-board"
POSTGRES = "wsapp_postgres"
# A login through Nginx while Postgres is down: libpq's connect_timeout (3 s) plus the view's work.
UNAVAILABLE_WITHIN = 8.0

# Idempotent: the system may be one an earlier test (or module) left, with users of its own.
SETUP = f"""
import os
from django.contrib.auth.models import User
from members.models import Room
password = os.environ["E2E_PASSWORD"]
for username, first, last in [("alice", "Alice", "Doe"), ("bob", "", "")]:
    user, _ = User.objects.get_or_create(username=username)
    user.first_name, user.last_name = first, last
    user.set_password(password)
    user.save()
room, _ = Room.objects.get_or_create(name="{ROOM}", defaults={{"private": True}})
room.members.set([User.objects.get(username="alice")])
"""


@pytest.fixture
def accounts_system(system):
    """The whole system as `make up` brings it up (the release file's DATABASE_URL: the stack's
    Postgres, migrated by up.sh's job), with users alice (a member of ROOM, private) and bob."""
    docker("exec", "-e", f"E2E_PASSWORD={PASSWORD}", service_container(active_service()),
           "python", "manage.py", "shell", "-c", SETUP, timeout=60)


@pytest.fixture
def clients():
    """Every HTTP client a test opens, closed at its end."""
    opened = []
    yield opened
    for client in opened:
        client.close()


def log_in(user, clients, timeout=10.0):
    """An HTTP client through Nginx with `user`'s session (Django's login page); the login's answer."""
    client = httpx.Client(base_url=BASE_URL, timeout=timeout)
    clients.append(client)
    page = client.get("/accounts/login/")
    assert page.status_code == 200 and 'name="password"' in page.text, page.text[:300]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    answer = client.post("/accounts/login/", data={"username": user, "password": PASSWORD,
                                                   "csrfmiddlewaretoken": token, "next": "/"})
    return client, answer


def logged_in(user, clients):
    client, answer = log_in(user, clients)
    assert answer.status_code == 302 and answer.headers["location"] == "/", answer.text[:300]
    return client


async def join(room, ticket=None):
    query = f"?ticket={quote(ticket)}" if ticket else ""
    ws = await websockets.connect(f"{WS_URL}/ws/rooms/{room}/{query}", origin=ORIGIN, open_timeout=10)
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 10))


async def refused(room, ticket=None):
    ws, first = await join(room, ticket)
    try:
        if first.get("error") != "forbidden":
            return False
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return ws.close_code == 1008
    finally:
        await ws.close()


async def chat(ws, body):
    """Send `body` and return this connection's copy of it (other frames, e.g. presence, skipped)."""
    await ws.send(json.dumps({"type": "message", "body": body}))
    deadline = time.monotonic() + 10
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
        if frame.get("type") == "message" and frame.get("body") == body:
            return frame


async def test_a_member_logs_in_through_nginx_and_joins_the_private_room_a_stranger_is_refused(
        accounts_system, clients):
    # The replicas load the private rooms every ROOM_POLICY_SECONDS (5 s): until then ROOM is public.
    deadline = time.monotonic() + 30
    while not await refused(ROOM):
        assert time.monotonic() < deadline, f"{ROOM} still public 30 s after it was made private"
        await asyncio.sleep(1)

    alice = logged_in("alice", clients)
    issued = alice.get("/ticket/", params={"room": ROOM}).json()
    assert issued["rooms"] == [ROOM] and issued["name"] == "Alice Doe", issued
    ws, welcome = await join(ROOM, issued["ticket"])
    try:
        assert welcome["type"] == "welcome", welcome
        echo = await chat(ws, "hello from alice")
        assert echo["name"] == "Alice Doe"
    finally:
        await ws.close()

    bob = logged_in("bob", clients)
    answer = bob.get("/ticket/", params={"room": ROOM})
    assert answer.status_code == 403 and answer.json()["error"] == "forbidden"
    public_ticket = bob.get("/ticket/", params={"room": "e2e-lobby"}).json()["ticket"]
    assert await refused(ROOM, public_ticket)
    # Anonymous clients in public rooms are as before (the load tests connect without tickets).
    ws, welcome = await join("e2e-lobby")
    await ws.close()
    assert welcome["type"] == "welcome"
    print(f"alice joined {ROOM} with a ticket; bob refused (403 for a ticket, 1008 at the handshake)")


LOGIN_BURST = 5  # NGINX_LOGIN_BURST of stack/release.env
GUESSES = 40


def guess(path, cookies, token):
    """One password guess: a POST with a wrong password; its status, Retry-After and body. Django
    serves its sync views one at a time (asgiref's thread-sensitive executor), and each guess let
    through hashes a password: the timeout allows for the burst's hashes one after another."""
    with httpx.Client(base_url=BASE_URL, timeout=60, cookies=cookies) as client:
        sent = time.monotonic()
        answer = client.post(path, data={"username": "alice", "password": "wrong",
                                         "csrfmiddlewaretoken": token})
        return answer.status_code, answer.headers.get("retry-after"), answer.text, sent


async def test_a_burst_of_login_posts_is_answered_429_while_chat_goes_on(accounts_system, clients):
    """Password guessing at the edge (docs/security.md): POSTs to the login page and the admin's count
    in a per-minute zone of their own; above its burst Nginx answers 429 with a page, before Django
    hashes a password. Chat from the same address is not touched, nor are GETs of the login page."""
    ws, welcome = await join("e2e-lobby")
    try:
        assert welcome["type"] == "welcome", welcome
        await chat(ws, "before the guessing")
        # One page read for the CSRF cookie and token, as a script guessing passwords would do.
        page = httpx.get(f"{BASE_URL}/accounts/login/", timeout=10)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        paths = ["/accounts/login/", "/admin/login/"] * (GUESSES // 2)
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        with ThreadPoolExecutor(GUESSES) as pool:
            guessing = asyncio.gather(*(loop.run_in_executor(pool, guess, path, page.cookies, token)
                                        for path in paths))
            chatted = [(await chat(ws, f"during the guessing {n}"))["seq"] for n in range(5)]
            answers = await guessing
        took = time.monotonic() - started
        await chat(ws, "after the guessing")
        assert httpx.get(f"{BASE_URL}/", timeout=10).status_code == 200
        assert httpx.get(f"{BASE_URL}/accounts/login/", timeout=10).status_code == 200
    finally:
        await ws.close()
    statuses = [status for status, *_ in answers]
    refused = [(retry, text) for status, retry, text, _ in answers if status == 429]
    # Let through: the burst, and what the rate (LOGIN_RATE a minute) refilled while they were sent.
    sends = [sent for *_, sent in answers]
    allowed = LOGIN_BURST + 2 + int((max(sends) - min(sends)) * LOGIN_RATE / 60)
    print(f"{GUESSES} login POSTs (half to /admin/login/) sent within {max(sends) - min(sends):.2f}s from "
          f"one address, all answered in {took:.2f}s: "
          f"{statuses.count(200)} answered 200 (wrong password), {len(refused)} answered 429; "
          f"chat in e2e-lobby went on (seqs {chatted})")
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) <= allowed and len(refused) >= GUESSES - allowed, statuses
    assert all(retry == "60" and "Too many attempts" in text for retry, text in refused)
    assert chatted == sorted(chatted)


def postgres_container():
    return docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={POSTGRES}").split()


async def test_postgres_killed_chat_goes_on_login_answers_503_then_recovers(accounts_system, clients):
    alice = logged_in("alice", clients)
    ticket = alice.get("/ticket/", params={"room": ROOM}).json()["ticket"]
    member, _ = await join(ROOM, ticket)
    traffic = Traffic(BASE_URL, WS_URL, clients=8, rooms=2, message_interval=0.5)
    runner = asyncio.create_task(traffic.run())
    try:
        await asyncio.wait_for(traffic.connected.wait(), 60)
        await asyncio.sleep(2)
        (victim,) = postgres_container()
        docker("kill", victim)
        killed = time.monotonic()

        # Chat needs no database: the member posts, reconnects with its ticket (no query), posts again.
        echo = await chat(member, "during the outage")
        assert echo["name"] == "Alice Doe"
        await member.close()
        member, welcome = await join(ROOM, ticket)
        assert welcome["type"] == "welcome", welcome
        await chat(member, "reconnected during the outage")
        chatted_after = time.monotonic() - killed
        # Login needs it: 503 with a page that says so, within a bounded time. Postgres is down now,
        # so it was all along the chat above (it does not come back and go again).
        started = time.monotonic()
        _, answer = await asyncio.to_thread(log_in, "alice", clients, 20.0)
        unavailable_after = time.monotonic() - started
        assert answer.status_code == 503 and "database is unavailable" in answer.text, \
            (answer.status_code, answer.text[:300])
        assert answer.headers["retry-after"] == "10"
        assert unavailable_after < UNAVAILABLE_WITHIN

        # Swarm restarts the task; login works again once it answers.
        async def login_works():
            _, answer = await asyncio.to_thread(log_in, "alice", clients, 20.0)
            return answer.status_code == 302

        recovered = None
        while recovered is None:
            assert time.monotonic() - killed < 120, "login did not work again within 120 s of the kill"
            if await login_works():
                recovered = time.monotonic() - killed
            else:
                await asyncio.sleep(1)
        assert alice.get("/ticket/", params={"room": ROOM}).status_code == 200
        await asyncio.sleep(2)  # live messages after the recovery, then compare
    finally:
        traffic.stop.set()
        await runner
        await member.close()
    print(f"Postgres killed: login answered 503 in {unavailable_after:.2f}s; the member chatted and "
          f"reconnected within {chatted_after:.2f}s of the kill; login worked again {recovered:.1f}s "
          f"after the kill; HTTP {traffic.http_ok} ok / {len(traffic.http_failures)} failed; "
          f"connect failures {len(traffic.connect_failures)}; messages delivered {traffic.received}; "
          f"{traffic.summary()}")
    traffic.assert_every_message_reached_every_client_once_in_order()
    assert traffic.http_failures == [] and traffic.connect_failures == []
    assert traffic.closes == {}
