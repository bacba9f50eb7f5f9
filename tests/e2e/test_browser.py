"""The chat page in a real browser (Debian's headless Chromium, driven by Playwright) through Nginx,
while promote.sh releases twice: two users log in through the login page and chat in a private room
they are members of; every page ends still logged in, still in the room, with every message exactly
once, in order, and shows the new color; a third user, not a member, is refused on the page. The
WebSocket handshakes of the release make no database statement (ws_db_queries_total). Screenshots of
the login page and of the room after the releases go to tests/e2e/artifacts/."""

import os
import threading
import time
import uuid
from urllib.parse import quote

import pytest

from tests.e2e.helpers import (
    BASE_URL,
    active_service,
    docker,
    handshakes_and_queries,
    run,
    service_container,
    version,
)
from tests.helpers import ROOT, require_command

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200), pytest.mark.takes_standing_system]

ARTIFACTS = os.path.join(ROOT, "tests", "e2e", "artifacts")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
# Short drain and no Prometheus watch: this test is about the client, test_release.py about the gate.
FAST_RELEASE = {"DRAIN_SECONDS": "4", "WATCH_SECONDS": "0"}
SEND_GAP = 0.15  # seconds between messages, per page: ~13 messages/s for the two, under the rate limit
SETTLE_SECONDS = 60
ROOM = "e2e-browser"
PASSWORD = f"e2e-{uuid.uuid4().hex}"
# Ada and Bob are members of the private ROOM; Carol is a user, but not a member. Idempotent: the
# system may be one an earlier test left, with users of its own.
SETUP = f"""
import os
from django.contrib.auth.models import User
from members.models import Room
password = os.environ["E2E_PASSWORD"]
users = []
for name in ("Ada", "Bob", "Carol"):
    user, _ = User.objects.get_or_create(username=name.lower())
    user.first_name = name
    user.set_password(password)
    user.save()
    users.append(user)
room, _ = Room.objects.get_or_create(name="{ROOM}", defaults={{"private": True}})
room.members.set(users[:2])
"""

# Records every status the chat page shows, so the test can tell a release was seen as a notice only.
STATUS_LOG = """
window.__statuses = [];
document.addEventListener("DOMContentLoaded", () => {
  const status = document.getElementById("status");
  if (!status) return; // the login page
  const note = () => window.__statuses.push([status.dataset.state, status.textContent, performance.now()]);
  new MutationObserver(note).observe(status, { attributes: true, childList: true, characterData: true });
});
"""


def chromium():
    binary = require_command("chromium", "the browser test drives Debian's chromium (.ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: run `make deps`", pytrace=False)
    return binary, sync_playwright


class Releases(threading.Thread):
    """promote.sh twice, one after the other, in the background."""

    def __init__(self):
        super().__init__(daemon=True)
        self.results = []
        self.colors = []

    def run(self):
        for _ in range(2):
            result = run(["./promote.sh"], 600, False, **FAST_RELEASE)
            self.results.append(result)
            if result.returncode != 0:
                return
            self.colors.append(version()["color"])


def offline_spells(statuses):
    """Milliseconds from each "reconnecting" the page showed to the next "open"."""
    spells, since = [], None
    for state, _, at in statuses:
        if state == "reconnecting" and since is None:
            since = at
        elif state == "open" and since is not None:
            spells.append(round(at - since))
            since = None
    return spells


def messages(page):
    script = "items => items.map(li => [Number(li.dataset.seq), li.querySelector('p').textContent])"
    return page.eval_on_selector_all("#messages li", script)


def log_in(page, name, screenshot=None):
    """Django's login page in `page` (its own browser context: its own session cookie), then the room."""
    page.goto(f"{BASE_URL}/accounts/login/?next={quote(f'/?room={ROOM}&name={name}', safe='/')}")
    page.fill("#id_username", name.lower())
    page.fill("#id_password", PASSWORD)
    if screenshot:
        page.screenshot(path=screenshot)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/" not in url, timeout=15000)


def ticket_status(page):
    """The status of this page's GET /ticket/ for ROOM: 200 while its session is logged in."""
    return page.evaluate(f"fetch('/ticket/?room={ROOM}').then(answer => answer.status)")


def test_two_members_chat_in_a_private_room_through_two_releases(system):
    binary, sync_playwright = chromium()
    os.makedirs(ARTIFACTS, exist_ok=True)
    docker("exec", "-e", f"E2E_PASSWORD={PASSWORD}", service_container(active_service()),
           "python", "manage.py", "shell", "-c", SETUP, timeout=60)
    first = version()["color"]
    sent, crashes = [], []  # crashes: uncaught exceptions in the pages' scripts
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
        try:
            # Not a member: logged in, the page says the room refused her, and she is not in it.
            carol = browser.new_page(viewport={"width": 1000, "height": 720})
            log_in(carol, "Carol")
            carol.wait_for_selector("#status[data-state=warning]", timeout=15000)
            refusal = carol.inner_text("#status")
            assert refusal == f"Cannot join {ROOM}: you are not a member of the private room '{ROOM}'", \
                refusal
            carol.screenshot(path=os.path.join(ARTIFACTS, "private-room-refused-Carol.png"))
            carol.close()

            pages = {}
            for name, width in (("Ada", 1000), ("Bob", 390)):
                page = browser.new_page(viewport={"width": width, "height": 720})
                page.add_init_script(STATUS_LOG)
                page.on("pageerror", lambda error, name=name: crashes.append(f"{name}: {error}"))
                log_in(page, name, os.path.join(ARTIFACTS, "login-page.png") if name == "Ada" else None)
                page.wait_for_selector("#status[data-state=open]", timeout=15000)
                assert page.inner_text("#status") == f"In {ROOM} as {name}."
                pages[name] = page
            assert pages["Ada"].inner_text("#server-color") == first

            releases = Releases()
            releases.start()
            started = time.monotonic()
            count = 0
            while releases.is_alive():
                assert time.monotonic() - started < 1100, "promote.sh did not finish"
                for name, page in pages.items():
                    text = f"{name} {count}"
                    page.fill("#text", text)
                    page.press("#text", "Enter")
                    sent.append(text)
                    page.wait_for_timeout(SEND_GAP * 1000)
                count += 1
            for result in releases.results:
                assert result.returncode == 0, result.stderr[-4000:]
            assert len(releases.results) == 2

            # Let the last messages arrive, then compare.
            deadline = time.monotonic() + SETTLE_SECONDS
            while not all(len(messages(page)) >= len(sent) for page in pages.values()):
                assert time.monotonic() < deadline, {n: len(messages(p)) for n, p in pages.items()}
                time.sleep(0.5)
            time.sleep(1)

            final = version()["color"]
            seen, away = {}, {}
            for name, page in pages.items():
                page.screenshot(path=os.path.join(ARTIFACTS, f"private-room-after-two-releases-{name}.png"))
                # Still logged in (the session outlived both colors) and still in the room, as itself.
                assert ticket_status(page) == 200
                assert page.inner_text("#status") == f"In {ROOM} as {name}."
                names = page.eval_on_selector_all("#messages li .who.verified",
                                                  "items => items.map(item => item.textContent)")
                assert set(names) == set(pages), "every message under its sender's verified name"
                got = messages(page)
                seqs = [seq for seq, _ in got]
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{name}: a seq gap or repeat"
                bodies = [body for _, body in got]
                assert sorted(bodies) == sorted(sent), f"{name}: not every message exactly once"
                seen[name] = got
                assert page.inner_text("#server-color") == final
                assert page.get_attribute("body", "data-color") == final
                statuses = page.evaluate("window.__statuses")
                states = {state for state, *_ in statuses}
                assert "reconnecting" in states, f"{name}: the release was not shown as reconnecting"
                assert not states & {"warning", "closed"}, f"{name}: {statuses}"
                assert all(text == "Reconnecting…" for state, text, _ in statuses if state == "reconnecting")
                away[name] = offline_spells(statuses)
                assert len(away[name]) >= 2, f"{name}: each release shows as reconnecting: {statuses}"
            assert seen["Ada"] == seen["Bob"], "both pages show the same messages in the same order"
            assert crashes == []
            for name in pages:  # each page's own messages in the order it sent them
                mine = [body for _, body in seen[name] if body.startswith(name + " ")]
                assert mine == [body for body in sent if body.startswith(name + " ")]
        finally:
            browser.close()
    assert releases.colors == [("green" if first == "blue" else "blue"), first]
    # The color serving now started within the second release: its handshakes are the pages' reconnects.
    handshakes, queries = handshakes_and_queries(f"wsapp-{first}_app")
    print(f"browser chat in the private room {ROOM} through two releases ({first} -> "
          f"{' -> '.join(releases.colors)}): {len(sent)} messages sent, {len(sent)} received by each of "
          f"{len(pages)} pages (exactly once, in order); reconnecting for (ms) {away}; Carol refused: "
          f"{refusal!r}; the serving color since the second release: {handshakes} handshakes, database "
          f"statements by origin {queries}")
    assert handshakes >= len(pages) and queries["websocket"] == 0, (handshakes, queries)
