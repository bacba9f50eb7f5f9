"""Blue/green releases on a real swarm, under load, and the ways they can fail."""

import asyncio
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request

import pytest
import websockets

from tests.e2e.helpers import (
    BASE_URL,
    ENV,
    REPORTS,
    WS_URL,
    active_service,
    docker,
    run,
    stacks,
    version,
)
from tests.e2e.load import Traffic
from tests.e2e.test_browser import ARTIFACTS, CHROMIUM_ARGS, chromium
from tests.helpers import ROOT, reap, start_interruptible, wait_until

# The first test builds every image on a fresh machine (about 3 minutes here). Each test after the first
# takes the system the one before it left (conftest.py's system fixture): every test here leaves it
# serving one color, as a release, a failed release or a rollback must.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900), pytest.mark.takes_standing_system]

DRAIN_SECONDS = 10
WATCH_SECONDS = 15
# An app that starts but never serves, so never gets healthy. Its command, not its entrypoint: the
# release's migration jobs run `python manage.py ...` through the image's entrypoint, and an
# ENTRYPOINT of sleep made them fail, so the release stopped before the health wait these tests are about.
NEVER_HEALTHY = 'CMD ["sleep", "infinity"]'


async def promote_under_load(*args, clients=100, promotions=1, **env):
    """Run promote.sh `promotions` times while traffic flows; return (last result, traffic, seconds).

    traffic.windows gets, per promotion, the seconds from its first close to its last reconnect. The
    release gate watches for WATCH_SECONDS (three scrapes) unless `env` says otherwise, not the default
    30: the gate's own tests are test_observability.py's and test_faults.py's.
    """
    env.setdefault("WATCH_SECONDS", str(WATCH_SECONDS))
    traffic = Traffic(BASE_URL, WS_URL, clients=clients)
    traffic.windows = []
    runner = asyncio.create_task(traffic.run())
    await asyncio.wait_for(traffic.connected.wait(), 60)
    await asyncio.sleep(2)
    started = time.monotonic()
    for _ in range(promotions):
        result = await asyncio.to_thread(run, ["./promote.sh", *args], 600, False,
                                         DRAIN_SECONDS=str(DRAIN_SECONDS), **env)
        await asyncio.sleep(2)
        if traffic.first_close_at is not None:
            traffic.windows.append(max(traffic.reconnected_at.values()) - traffic.first_close_at)
            traffic.first_close_at = None
        if result.returncode != 0:
            break
    seconds = time.monotonic() - started
    traffic.stop.set()
    await runner
    print(f"promote.sh {' '.join(args)} x{promotions}: exit {result.returncode} in {seconds:.1f}s; "
          f"HTTP {traffic.http_ok} ok / {len(traffic.http_failures)} failed; {traffic.summary()}")
    print(result.stderr[-4000:])
    return result, traffic, seconds



async def test_two_promotions_under_load_hand_every_connection_over_losing_nothing(system):
    """100 chatting clients resume with ?since= across two releases: every message of their room
    reaches each of them exactly once and in order, and each release moves them within its drain."""
    before = version()["color"]
    after = "green" if before == "blue" else "blue"
    reports = set(REPORTS.glob("release-*.html"))
    result, traffic, _ = await promote_under_load(promotions=2)
    assert result.returncode == 0, result.stderr
    assert version()["color"] == before
    assert traffic.http_failures == []
    changes = [color for i, color in enumerate(traffic.http_colors)
               if i == 0 or traffic.http_colors[i - 1] != color]
    # Before, after, before again. Nginx's graceful reload lets an old worker accept a connection for a
    # moment after the switch, so one request may still reach the old color (which serves fully until
    # its drain) just after the new one answered: allow one flip back per switch.
    assert changes[0] == before and changes[-1] == before and after in changes, changes
    assert len(changes) <= 3 + 2 * 2, changes
    assert traffic.connect_failures == []
    assert dict(traffic.closes) == {1012: 200}, "every client closed exactly twice, with 1012"
    assert set(traffic.color_of.values()) == {before}
    assert len(traffic.reconnected_at) == 100
    assert len(traffic.windows) == 2 and max(traffic.windows) <= DRAIN_SECONDS, \
        f"a client reconnected after the drain window: {traffic.windows}"
    traffic.assert_every_message_reached_every_client_once_in_order()
    assert traffic.delivery["resumes"] == 200
    assert f"wsapp-{after}" not in stacks()
    print(f"drain: clients reconnected over {', '.join(f'{w:.1f}s' for w in traffic.windows)}")
    new = sorted(set(REPORTS.glob("release-*.html")) - reports)
    assert len(new) == 2 and new[-1].name.endswith(f"-{before}.html"), new
    assert f"last release report: {new[-1]}\n" in run(["./promote.sh", "status"], 60).stdout
    assert_release_report_shows_the_release(new[-1], before, after)
    # Playwright's sync API refuses to run inside this test's event loop: Chromium gets a thread.
    await asyncio.to_thread(look_at_release_report, new[-1])


def assert_release_report_shows_the_release(report, to, old):
    """The report of a release from `old` to `to` under 100 clients: both colors' connections plotted
    in their own colors, the switch and the drain marked."""
    page = report.read_text()
    assert f"released: {to} serves" in page
    connections = page.split("</figure>")[0]
    path = r'<path d="([^"]+)" fill="none" stroke="(#\w+)" [^>]*data-series="(\w+)"'
    plotted = re.findall(path, connections)
    lines = {name: d for d, _, name in plotted}
    assert {name: stroke for _, stroke, name in plotted} == {"blue": "#1f6feb", "green": "#1a7f37"}, plotted
    assert all(d.count("L") >= 5 for d in lines.values()), lines
    assert f"switch to {to}" in connections and f"drain {old}" in connections and "drain ended" in connections
    maxima = dict(re.findall(r"</span>(\w+): max (\d+)", connections))
    assert maxima == {"blue": "100", "green": "100"}, maxima


def look_at_release_report(report):
    """Chromium shows the report, loading nothing but the file itself; its screenshot is kept as
    tests/e2e/artifacts/release-report.png. Playwright's sync API: call it outside the event loop."""
    binary, sync_playwright = chromium()
    os.makedirs(ARTIFACTS, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1100, "height": 900})
            requests = []
            tab.on("request", lambda request: requests.append(request.url))
            tab.goto(report.as_uri())
            assert tab.locator("svg.plot").count() == 6
            assert tab.locator("table tbody tr").count() >= 10
            tab.screenshot(path=os.path.join(ARTIFACTS, "release-report.png"), full_page=True)
        finally:
            browser.close()
    assert requests == [report.as_uri()], "the report loaded something besides itself"


async def assert_failed_release_left_old_color_serving(result, traffic, before):
    assert result.returncode != 0
    assert version()["color"] == before
    assert traffic.http_failures == [] and traffic.connect_failures == []
    assert set(traffic.http_colors) == {before}
    assert dict(traffic.closes) == {}, "a failed release closed client connections"
    traffic.assert_every_message_reached_every_client_once_in_order()
    idle = "green" if before == "blue" else "blue"
    assert f"wsapp-{idle}" not in stacks()


async def test_release_that_never_becomes_healthy_is_removed(system, derived_image):
    before = version()["color"]
    image = derived_image("wsapp-e2e:never-healthy", NEVER_HEALTHY)
    result, traffic, seconds = await promote_under_load("--image", image, clients=20, HEALTH_TIMEOUT="20")
    await assert_failed_release_left_old_color_serving(result, traffic, before)
    # The health wait gave up, not an earlier step (the migration jobs run the new image first).
    gave_up = r"timed out after 20s waiting for all \d+ replicas of \w+ to be healthy"
    assert re.search(gave_up, result.stderr), result.stderr[-2000:]
    assert seconds < 20 + 60, "promote.sh did not give up within its health timeout"


async def test_release_that_fails_the_websocket_smoke_test_is_removed(system, derived_image):
    before = version()["color"]
    # Healthy, but every chat message is refused as too long: the broadcast check fails.
    image = derived_image("wsapp-e2e:smoke-fails", "ENV MAX_BODY_CHARS=1")
    result, traffic, _ = await promote_under_load("--image", image, clients=20)
    await assert_failed_release_left_old_color_serving(result, traffic, before)
    assert "FAILED smoke" in result.stderr


async def test_scaled_replicas_receive_new_connections_without_an_nginx_change(system):
    service = active_service()
    nginx = docker("ps", "-q", "--filter", "label=com.docker.swarm.service.name=wsapp_nginx")
    include = docker("exec", nginx, "cat", "/tmp/nginx/active/color.conf")
    docker("service", "scale", "--detach", f"{service}=3")

    async def replicas_seen():
        seen = set()
        deadline = time.monotonic() + 90
        while f"{service}-3" not in seen:
            assert time.monotonic() < deadline, f"no connection reached {service}-3; saw {seen}"
            async with websockets.connect(f"{WS_URL}/ws/rooms/scale/", origin="http://localhost") as ws:
                seen.add(json.loads(await ws.recv())["replica"])
            await asyncio.sleep(0.2)
        return seen

    seen = await replicas_seen()
    assert {f"{service}-1", f"{service}-2", f"{service}-3"} <= seen
    assert docker("ps", "-q", "--filter", "label=com.docker.swarm.service.name=wsapp_nginx") == nginx
    assert docker("exec", nginx, "cat", "/tmp/nginx/active/color.conf") == include
    docker("service", "scale", f"{service}=2", timeout=180)  # as make up left it, for the next test


def test_every_service_runs_a_pinned_image_from_the_registry(system):
    """Built images are pushed to the registry and run by digest; the registry's own two services
    run the local names (they cannot come from the registry they start)."""
    listing = docker("service", "ls", "--format", "{{.Name}} {{.Image}}")
    images = dict(line.split() for line in listing.splitlines())
    registry = {name: image for name, image in images.items() if name.startswith("wsapp-registry_")}
    pinned = {name: image for name, image in images.items() if name not in registry}
    assert set(registry) == {"wsapp-registry_registry", "wsapp-registry_proxy"}, images
    assert "@" not in "".join(registry.values()), registry
    assert {"wsapp_nginx", "wsapp_redis", "wsapp_prometheus", active_service()} <= set(pinned), images
    for name, image in pinned.items():
        if name == "wsapp_grafana" and docker("service", "inspect", "--format",
                                              "{{.Spec.Mode.Replicated.Replicas}}", name) == "0":
            continue  # no Grafana image here: not deployed, so not pushed
        assert image.startswith("127.0.0.1:5000/") and "@sha256:" in image, (name, image)
    digest = images[active_service()].split("@")[1]
    # The registry answers on this node's loopback, through the node's proxy, and wants the password
    # (the engine has it from its client's login, docs/security.md "The registry").
    with pytest.raises(urllib.error.HTTPError) as unauthorized:
        urllib.request.urlopen("http://127.0.0.1:5000/v2/wsapp/tags/list", timeout=10)
    unauthorized.value.close()
    assert unauthorized.value.code == 401 and unauthorized.value.headers["Docker-Distribution-Api-Version"]
    assert run(["./promote.sh", "status"], 60).stdout.count(f"@{digest}") == 1


def test_up_is_idempotent(system):
    before = docker("service", "ls", "--format", "{{.Name}} {{.Image}} {{.Replicas}}")
    run(["scripts/up.sh"], 300)
    assert docker("service", "ls", "--format", "{{.Name}} {{.Image}} {{.Replicas}}") == before
    wait_until(lambda: version()["color"] in ("blue", "green"), 10, "the site")


def test_interrupting_a_release_restores_the_old_color(system, derived_image):
    """Ctrl-C (SIGINT) while promote.sh waits for the new color: the new stack goes, the old serves."""
    before = version()["color"]
    idle = "green" if before == "blue" else "blue"
    image = derived_image("wsapp-e2e:never-healthy", NEVER_HEALTHY)
    promote = start_interruptible(["./promote.sh", "--image", image], cwd=ROOT, env=ENV)
    try:
        wait_until(lambda: f"wsapp-{idle}" in stacks(), 60, "the new color's stack")
        time.sleep(3)
        promote.send_signal(signal.SIGINT)
        output, _ = promote.communicate(timeout=120)
    finally:
        reap(promote)
    assert promote.returncode == 130, output
    assert f"{before} serves, as before the promotion" in output
    assert version()["color"] == before
    assert f"wsapp-{idle}" not in stacks()


def test_rollback_switches_back_to_a_kept_old_color(system):
    before = version()["color"]
    after = "green" if before == "blue" else "blue"
    fast = {"DRAIN_SECONDS": "3", "WATCH_SECONDS": "0"}
    run(["./promote.sh"], 600, KEEP_OLD="1", **fast)
    assert version()["color"] == after and f"wsapp-{before}" in stacks()
    run(["./promote.sh", "rollback"], 600, **fast)
    assert version()["color"] == before
    assert f"wsapp-{after}" not in stacks()
