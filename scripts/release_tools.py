"""Release checks that promote.sh runs in a throwaway container on the overlay network.

Standard library and `websockets` only (both are in the app image), so any app image can run it.
switch-local runs as a Swarm job on every edge node instead (scripts/lib.sh edge_job), with that
node's Docker socket:
  smoke --preview URL --live URL --color C [--version V] [--origin O]
                                                            HTTP, WebSocket and cross-color checks,
                                                            as a browser at Origin O would connect
  expect-color --color C [--url URL] [--nginx-service NAME --count N --down K]
                                                            the public route serves color C; with
                                                            --nginx-service, through every Nginx
                                                            (N of them), each also saying so itself;
                                                            K on nodes that are down may not answer
  edges --nginx-service NAME --record C [--count N --down K]  each Nginx: its node and its color
  switch-local --service NAME --color C                     in a job on an edge node: switch-color C
                                                            in each Nginx container on this node
  wait-drained --service NAME --timeout S                   until the service holds no WebSockets
  watch --prometheus URL --color C --seconds N --max-error-ratio R --replicas N
                                                            the release gate (docs/operations.md)
"""

import argparse
import asyncio
import datetime
import http.client
import json
import math
import re
import secrets
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

ORIGIN = "http://localhost"
STEP_TIMEOUT = 5.0
# A recorded sample older than this (two rule evaluations) is from before a Prometheus restart.
FRESH_SECONDS = 10


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def get(url, timeout=STEP_TIMEOUT, headers=None):
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def ws_url(base, path):
    return base.replace("http://", "ws://", 1).rstrip("/") + path


async def recv_json(ws, want_type):
    """The next frame of the wanted type (errors fail the check)."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), STEP_TIMEOUT))
        check(frame.get("type") != "error", f"server answered an error: {frame}")
        if frame.get("type") == want_type:
            return frame


async def smoke(args):
    for _ in range(4):  # several requests, so that several replicas answer
        status, body = get(args.preview + "/version")
        check(status == 200, f"GET {args.preview}/version answered {status}")
        version = json.loads(body)
        check(version["color"] == args.color, f"preview serves {version['color']}, not {args.color}")
        if args.version:
            check(version["version"] == args.version, f"version {version['version']} != {args.version}")
        status, _ = get(args.preview + "/readyz")
        check(status == 200, f"GET {args.preview}/readyz answered {status}")
    print(f"ok: HTTP /version and /readyz on {args.color}")
    # The page, as the public host name: Django answers 400 for a host outside ALLOWED_HOSTS.
    host = urllib.parse.urlsplit(args.origin).netloc
    status, _ = get(args.preview + "/", headers={"Host": host})
    check(status == 200, f"GET / with Host {host} answered {status}: is {host} in ALLOWED_HOSTS?")
    print(f"ok: the page answers for Host {host}")

    room = "smoke-" + secrets.token_hex(4)
    path = f"/ws/rooms/{room}/"
    try:
        idle = await connect(ws_url(args.preview, path), origin=args.origin, open_timeout=STEP_TIMEOUT)
    except InvalidStatus as exc:
        raise CheckFailed(f"{args.color} refused a WebSocket from Origin {args.origin} "
                          f"({exc.response.status_code}): is its host in ALLOWED_HOSTS?") from None
    async with idle, connect(ws_url(args.live, path), origin=args.origin, open_timeout=STEP_TIMEOUT) as live:
        welcome = await recv_json(idle, "welcome")
        check(welcome["color"] == args.color, f"idle welcome from {welcome['color']}")
        live_welcome = await recv_json(live, "welcome")
        await idle.send('{"type":"ping"}')
        await recv_json(idle, "pong")
        print(f"ok: WebSocket round trip on {args.color} ({welcome['replica']})")
        for sender, name in ((idle, args.color), (live, live_welcome["color"])):
            body = f"smoke from {name} {secrets.token_hex(4)}"
            await sender.send(json.dumps({"type": "message", "body": body}))
            got = [await recv_json(ws, "message") for ws in (idle, live)]
            check(all(m["body"] == body for m in got), f"broadcast from {name} not delivered: {got}")
            check(got[0]["seq"] == got[1]["seq"], f"seq differs between colors: {got}")
        print(f"ok: broadcast between {args.color} and {live_welcome['color']} through the shared Redis")


def served_color(url, times=6):
    """The color /version answers at url, asked several times (several replicas); one color only."""
    colors = set()
    for _ in range(times):
        status, body = get(url)
        check(status == 200, f"GET {url} answered {status}")
        colors.add(json.loads(body)["color"])
    check(len(colors) == 1, f"{url} serves several colors: {sorted(colors)}")
    return colors.pop()


def nginx_addresses(service):
    """The address of every Nginx task, through Swarm's DNS (tasks.<service>; dnsrr)."""
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(f"tasks.{service}", 8081, socket.AF_INET)})
    except socket.gaierror:
        return []


def ask_nginx(address):
    """(node, color) an Nginx reports on its internal port (nginx.conf, location /active-color)."""
    request = urllib.request.Request(f"http://{address}:8081/active-color")
    with urllib.request.urlopen(request, timeout=STEP_TIMEOUT) as response:
        return response.headers.get("X-Edge-Node", "?"), response.read().decode().strip()


def edge_disagreements(args, public):
    """Ask every Nginx; print one line each and return what is wrong (empty: all serve args.color,
    and there are --count of them). With public, also its public route's /version. Up to --down
    addresses may not answer: Nginx on nodes that are down, which Swarm's DNS may still list."""
    wrong, silent, agree = [], [], 0
    addresses = nginx_addresses(args.nginx_service)
    for address in addresses:
        try:
            node, color = ask_nginx(address)
            if public and color == args.color:
                color = served_color(f"http://{address}:8080/version", times=2)
        except (OSError, CheckFailed, ValueError, KeyError) as exc:
            silent.append(f"nginx at {address}: no answer ({exc})")
            print(silent[-1], flush=True)
            continue
        line = f"nginx on {node} ({address}): {color}"
        if color == args.color:
            agree += 1
        else:
            wrong.append(line)
            line += f"  <- DISAGREES with the record ({args.color})"
        print(line, flush=True)
    if len(silent) > args.down:
        wrong.extend(silent)
    if args.count is not None and agree < args.count:
        wrong.append(f"{agree} Nginx serve {args.color}, {args.count} run on nodes that are up")
    return wrong


def expect_color(args):
    if args.url:
        color = served_color(args.url)
        check(color == args.color, f"{args.url} serves {color}, not {args.color}")
        print(f"ok: {args.url} serves {args.color}")
    if not args.nginx_service:
        return
    # A new Nginx enters Swarm's DNS a moment after its task runs: ask again for a bounded time.
    deadline = time.monotonic() + args.timeout
    while wrong := edge_disagreements(args, public=True):
        check(time.monotonic() < deadline, "not every Nginx serves " + args.color + ": " + "; ".join(wrong))
        time.sleep(1)
    print(f"ok: every Nginx of {args.nginx_service} serves {args.color}")


def edges(args):
    wrong = edge_disagreements(args, public=False)
    check(not wrong, f"{len(wrong)} disagreement(s) with the record {args.color}")


class DockerSocket(http.client.HTTPConnection):
    """HTTP to the local Docker engine's API over its unix socket (standard library only)."""

    def __init__(self, path, timeout=STEP_TIMEOUT * 4):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def docker_api(path, method="GET", body=None, socket_path="/var/run/docker.sock"):
    """(status, raw body) of one Docker API call; a new connection each (exec start closes it)."""
    connection = DockerSocket(socket_path)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def docker_json(path, method="GET", body=None, socket_path="/var/run/docker.sock", ok=(200, 201)):
    status, raw = docker_api(path, method, body, socket_path)
    check(status in ok, f"Docker API {method} {path} answered {status}: {raw[:200]!r}")
    return json.loads(raw) if raw else None


def demux(raw):
    """The text of a non-TTY exec's output: frames of an 8-byte header (stream, size) and data."""
    out = []
    while len(raw) >= 8:
        size = int.from_bytes(raw[4:8], "big")
        out.append(raw[8:8 + size])
        raw = raw[8 + size:]
    return b"".join(out).decode(errors="replace").strip()


def containers(service, status, sock, label="com.docker.swarm.service.name"):
    filters = json.dumps({"label": [f"{label}={service}"], "status": [status]})
    return docker_json("/containers/json?all=1&filters=" + urllib.parse.quote(filters), socket_path=sock)


def switch_local(args):
    """In a job on an edge node: `switch-color C` in every running Nginx container of this node."""
    sock = args.socket
    node = docker_json("/info", socket_path=sock)["Name"]
    # Containers of earlier edge jobs on this node: they outlive their service (scripts/lib.sh).
    for old in containers("edge", "exited", sock, label="com.wsapp.job"):
        docker_api(f"/containers/{old['Id']}?force=1", "DELETE", socket_path=sock)
    running = containers(args.service, "running", sock)
    if not running:
        print(f"{node}: no running Nginx of {args.service} (one that starts gets the recorded color)")
        return
    failed = []
    for container in running:
        name = container["Names"][0].lstrip("/")
        command = {"AttachStdout": True, "AttachStderr": True, "Cmd": ["switch-color", args.color]}
        exec_id = docker_json(f"/containers/{container['Id']}/exec", "POST", command, socket_path=sock)["Id"]
        _, raw = docker_api(f"/exec/{exec_id}/start", "POST", {"Detach": False, "Tty": False},
                            socket_path=sock)
        deadline = time.monotonic() + STEP_TIMEOUT * 4
        while (result := docker_json(f"/exec/{exec_id}/json", socket_path=sock))["Running"]:
            check(time.monotonic() < deadline, f"{node} {name}: switch-color still runs")
            time.sleep(0.2)
        output = demux(raw).replace("\n", "; ")
        print(f"{node} {name}: exit {result['ExitCode']}: {output}", flush=True)
        if result["ExitCode"] != 0:
            failed.append(name)
    check(not failed, f"{node}: switch-color {args.color} failed in {', '.join(failed)}")


def connections(service):
    """Sum of ws_active_connections over every replica of the service (0 when none is left)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(f"tasks.{service}", 8000, socket.AF_INET)}
    except socket.gaierror:
        return 0
    total = 0
    for address in addresses:
        try:
            _, text = get(f"http://{address}:8000/metrics", timeout=2)
        except OSError:
            continue  # a replica that is gone holds no connections
        for line in text.splitlines():
            if line.startswith("ws_active_connections "):
                total += int(float(line.split()[1]))
    return total


def wait_drained(args):
    started = time.monotonic()
    remaining = connections(args.service)
    last_report = 0.0
    while remaining and time.monotonic() - started < args.timeout:
        if time.monotonic() - last_report >= 2:
            print(f"{remaining} connections left on {args.service}", flush=True)
            last_report = time.monotonic()
        time.sleep(0.5)
        remaining = connections(args.service)
    elapsed = time.monotonic() - started
    if remaining:
        print(f"drain window over after {elapsed:.1f}s with {remaining} connections left on "
              f"{args.service}; they get 1012 when it stops")
    else:
        print(f"drained {args.service} in {elapsed:.1f}s")


def prometheus_query(base, expr):
    """Instant query: {frozenset(labels.items()): value}. Raises CheckFailed on an API error."""
    url = base.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body = get(url)
    check(status == 200, f"Prometheus answered {status} to {expr!r}: {body[:200]}")
    answer = json.loads(body)
    check(answer.get("status") == "success", f"Prometheus failed {expr!r}: {answer}")
    return {frozenset(r["metric"].items()): float(r["value"][1]) for r in answer["data"]["result"]}


def fresh(selector):
    """Only samples of `selector` recorded in the last FRESH_SECONDS. Prometheus writes no staleness
    markers when it stops, so after a restart the recorded series of replicas and colors from
    before would answer for the 5-minute lookback (observability/prometheus/rules.yml)."""
    return f"{selector} and time() - timestamp({selector}) < {FRESH_SECONDS}"


def prometheus_uptime(base):
    """Seconds since the Prometheus process started (its runtime information)."""
    status, body = get(base.rstrip("/") + "/api/v1/status/runtimeinfo")
    check(status == 200, f"Prometheus answered {status} to runtimeinfo: {body[:200]}")
    started = json.loads(body)["data"]["startTime"]  # RFC 3339 with nanoseconds
    started = datetime.datetime.fromisoformat(re.sub(r"\.\d+", "", started))
    return time.time() - started.timestamp()


def scalar(result):
    """The value of a one-series result, or None when there is none."""
    return next(iter(result.values())) if result else None


def watch(args):
    """Release gate: watch the new color for args.seconds after the switch.

    Fails (CheckFailed) when the server-side error ratio of the color exceeds --max-error-ratio
    while it receives at least --min-rate messages/s, or when fewer than --replicas replicas are
    ready for longer than --grace seconds, or when readiness was never visible at all. No traffic
    means no ratio, which is not a failure. Only samples Prometheus recorded in the last
    FRESH_SECONDS count, and readiness is not judged while Prometheus is younger than --discovery
    (it restarted and has not scraped every replica yet): a restart neither passes nor fails the
    gate on series from before it. Every query is bounded, and so is the whole watch.
    """
    color = f'{{color="{args.color}"}}'
    queries = {
        "ratio": fresh(f"color:ws_server_error_ratio:rate1m{color}"),
        "rate": fresh(f"color:ws_messages_received:rate1m{color}"),
        "ready": fresh(f"color:ws_ready_replicas:sum{color}"),
        "up": fresh(f"color:ws_targets_up:sum{color}"),
    }
    print(f"watching {args.color} for {args.seconds:g}s: error ratio <= {args.max_error_ratio:g} "
          f"(at >= {args.min_rate:g} messages/s), {args.replicas} replicas ready "
          f"(grace {args.grace:g}s), via {args.prometheus}", flush=True)
    started = time.monotonic()
    deadline = started + args.seconds
    not_ready_since = None
    seen_ready = False
    answered = 0
    last_error = None
    while True:
        now = time.monotonic()
        try:
            values = {name: scalar(prometheus_query(args.prometheus, q)) for name, q in queries.items()}
            uptime = prometheus_uptime(args.prometheus)
        except (CheckFailed, OSError, ValueError, KeyError) as exc:
            last_error = exc
            print(f"  {now - started:5.1f}s Prometheus query failed: {exc}", flush=True)
        else:
            answered += 1
            ratio, rate = values["ratio"], values["rate"] or 0.0
            ready, up = int(values["ready"] or 0), int(values["up"] or 0)
            shown = "n/a" if ratio is None or math.isnan(ratio) else f"{ratio:.3f}"
            print(f"  {now - started:5.1f}s error ratio {shown} at {rate:.1f} msg/s, "
                  f"{ready}/{args.replicas} ready, {up} targets up", flush=True)
            if ratio is not None and not math.isnan(ratio) and rate >= args.min_rate:
                check(ratio <= args.max_error_ratio,
                      f"{args.color}: server error ratio {ratio:.3f} > {args.max_error_ratio:g} "
                      f"({rate:.1f} messages/s)")
            if ready >= args.replicas:
                seen_ready, not_ready_since = True, None
            elif uptime < args.discovery:
                not_ready_since = None
                print(f"  Prometheus started {uptime:.0f}s ago: readiness not judged before it has "
                      f"scraped every replica ({args.discovery:g}s)", flush=True)
            else:
                not_ready_since = now if not_ready_since is None else not_ready_since
                # Until every replica has been seen ready, Prometheus may still be discovering them.
                allowed = args.grace if seen_ready else args.grace + args.discovery
                check(now - not_ready_since <= allowed,
                      f"{args.color}: only {ready} of {args.replicas} replicas ready "
                      f"for {now - not_ready_since:.0f}s ({up} targets up)")
        if now >= deadline:
            break
        time.sleep(max(0.0, min(args.interval, deadline - time.monotonic())))
    check(answered, f"Prometheus at {args.prometheus} never answered: {last_error}")
    check(seen_ready, f"{args.color}: readiness of {args.replicas} replicas never visible in Prometheus")
    print(f"ok: {args.color} passed the watch ({answered} polls)")


def main(argv=None):
    # Named: promote.sh runs it as `python -` (the script on standard input).
    parser = argparse.ArgumentParser(
        prog="release_tools.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("smoke")
    p.add_argument("--preview", required=True)
    p.add_argument("--live", required=True)
    p.add_argument("--color", required=True)
    p.add_argument("--version", default="")
    p.add_argument("--origin", default=ORIGIN, help=f"the production Origin (default {ORIGIN})")
    p = sub.add_parser("expect-color")
    p.add_argument("--url", help="a public URL whose /version must answer the color")
    p.add_argument("--color", required=True)
    p.add_argument("--nginx-service", help="ask every task of this Nginx service (tasks.<name>)")
    p.add_argument("--count", type=int, help="how many Nginx must answer (the running tasks)")
    p.add_argument("--down", type=int, default=0, help="how many may not answer (on nodes that are down)")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds for every Nginx to agree")
    p = sub.add_parser("edges")
    p.add_argument("--nginx-service", required=True)
    p.add_argument("--record", dest="color", required=True, help="the recorded active color")
    p.add_argument("--count", type=int, help="how many Nginx must answer (the running tasks)")
    p.add_argument("--down", type=int, default=0, help="how many may not answer (on nodes that are down)")
    p = sub.add_parser("switch-local")
    p.add_argument("--service", required=True, help="the Nginx service")
    p.add_argument("--color", required=True, choices=("blue", "green"))
    p.add_argument("--socket", default="/var/run/docker.sock", help="this node's Docker engine")
    p = sub.add_parser("wait-drained")
    p.add_argument("--service", required=True)
    p.add_argument("--timeout", type=float, required=True)
    p = sub.add_parser("watch", help="the release gate: poll Prometheus for the new color")
    p.add_argument("--prometheus", required=True, help="Prometheus base URL")
    p.add_argument("--color", required=True)
    p.add_argument("--seconds", type=float, required=True, help="how long to watch")
    p.add_argument("--max-error-ratio", type=float, required=True)
    p.add_argument("--replicas", type=int, required=True, help="replicas that must be ready")
    p.add_argument("--min-rate", type=float, default=0.5,
                   help="messages/s below which the ratio is not judged (default 0.5)")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds fewer replicas may be ready before the gate fails (default 10)")
    p.add_argument("--discovery", type=float, default=15.0,
                   help="extra seconds before every replica is first seen ready: Prometheus finds new "
                        "targets through a DNS refresh, a target update and a scrape, 5 s each (default 15)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls (default 2)")
    args = parser.parse_args(argv)
    try:
        if args.command == "smoke":
            asyncio.run(smoke(args))
        elif args.command == "expect-color":
            expect_color(args)
        elif args.command == "edges":
            edges(args)
        elif args.command == "switch-local":
            switch_local(args)
        elif args.command == "watch":
            watch(args)
        else:
            wait_drained(args)
    except (CheckFailed, OSError, TimeoutError, KeyError, ValueError, WebSocketException) as exc:
        print(f"FAILED {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
