"""The chat page in a real browser (Debian's headless Chromium, driven by Playwright) on one app server
and a real redis-server: a message sent while Redis is frozen waits in the page's outbox, "sending…",
and once Redis resumes it is in the room's list exactly once and the outbox is empty.
Screenshots of both moments go to tests/integration/artifacts/."""

import os
import signal
import time

import pytest

from tests.e2e.test_browser import CHROMIUM_ARGS, chromium
from tests.helpers import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ARTIFACTS = os.path.join(ROOT, "tests", "integration", "artifacts")
# REDIS_SOCKET_TIMEOUT at its minimum: a freeze shorter than it only delays the publish's reply.
FAST_REDIS = {"REDIS_SOCKET_TIMEOUT": "6", "REDIS_CONNECT_TIMEOUT": "1", "PUBLISH_SETTLE_SECONDS": "2"}
FREEZE_SECONDS = 3
PUBLISHED_SECONDS = 20
WAIT_MS = 15000  # any one step of the page
ROOM = "pending"
TEXT = "sent while Redis was frozen"

OUTBOX = ("items => items.map(li => [li.querySelector('p').textContent, "
          "li.querySelector('.state').textContent])")
MESSAGES = "items => items.map(li => li.querySelector('p').textContent)"
# The message once in #messages and no longer waiting in #outbox.
PUBLISHED = """text => {
  const shown = [...document.querySelectorAll("#messages li p")].filter(p => p.textContent === text);
  return shown.length === 1 && document.querySelectorAll("#outbox li").length === 0;
}"""


@pytest.fixture
def page(make_server):
    """The chat page of room ROOM as "Ada", connected; the browser is closed afterwards."""
    binary, sync_playwright = chromium()
    server = make_server(**FAST_REDIS)
    crashes = []  # uncaught exceptions in the page's scripts
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS, timeout=WAIT_MS)
        try:
            page = browser.new_page(viewport={"width": 800, "height": 600})
            page.set_default_timeout(WAIT_MS)
            page.on("pageerror", lambda error: crashes.append(str(error)))
            page.goto(f"{server.url}/?room={ROOM}&name=Ada")
            page.wait_for_selector("#status[data-state=open]")
            yield page
            assert crashes == []
        finally:
            browser.close()


def test_a_message_sent_while_redis_is_frozen_waits_in_the_outbox_then_shows_once(page, redis_server):
    os.makedirs(ARTIFACTS, exist_ok=True)
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        frozen = time.monotonic()
        page.fill("#text", TEXT)
        page.press("#text", "Enter")
        page.wait_for_selector("#outbox li")
        assert page.eval_on_selector_all("#outbox li", OUTBOX) == [[TEXT, "sending…"]]
        assert TEXT not in page.eval_on_selector_all("#messages li", MESSAGES)
        assert page.input_value("#text") == "", "the input is cleared as the message is sent"
        page.screenshot(path=os.path.join(ARTIFACTS, "page-pending.png"))
        page.wait_for_timeout(max(0.0, FREEZE_SECONDS - (time.monotonic() - frozen)) * 1000)
        # Still waiting, not failed: the server holds the publish until Redis answers.
        assert page.eval_on_selector_all("#outbox li", OUTBOX) == [[TEXT, "sending…"]]
        assert page.get_attribute("#status", "data-state") == "open"
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    resumed = time.monotonic()
    page.wait_for_function(PUBLISHED, arg=TEXT, timeout=PUBLISHED_SECONDS * 1000)
    published = time.monotonic() - resumed
    page.wait_for_timeout(1000)  # a second copy, if one were coming, would have come by now
    assert page.eval_on_selector_all("#messages li", MESSAGES).count(TEXT) == 1
    assert page.eval_on_selector_all("#outbox li", OUTBOX) == []
    assert page.eval_on_selector("#messages li:last-child", "li => li.classList.contains('mine')")
    page.screenshot(path=os.path.join(ARTIFACTS, "page-published.png"))
    print(f"frozen {FREEZE_SECONDS} s with the message in the outbox; "
          f"in the list {published:.2f} s after SIGCONT")
