"""The release report (scripts/release_report.py): HTML and SVG from canned Prometheus answers, served by a
test double of Prometheus's query API (the unit tier runs no Prometheus; tests/e2e/test_release.py checks a
report of a real release, and looks at it in Chromium)."""

import importlib.util
import json
import math
import re
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.helpers import ROOT

spec = importlib.util.spec_from_file_location("release_report", f"{ROOT}/scripts/release_report.py")
release_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(release_report)

T0 = 1_800_000_000  # the release starts here (UTC)
STEPS = "\n".join(f"{T0 + offset} {name}" for offset, name in [
    (0, "lock"), (1, "preflight"), (2, "image"), (40, "deploy green with wsapp:1 (2 replicas)"),
    (42, "wait for every replica of green to be healthy (at most 120s)"),
    (55, "smoke tests through the preview route"), (60, "switch Nginx to green"), (64, "watch green for 30s"),
    (94, "drain blue over 10s"), (106, "remove blue"), (110, "released wsapp:1 on green")])
END = T0 + 112


def svg_root(page):
    """The page as XML: it must be well-formed (every text escaped), DOCTYPE aside."""
    return ET.fromstring(page.split("\n", 1)[1])


def canned(expr, start, end, step):
    """A release from blue to green in numbers: 100 clients move over during the drain."""
    times = [start + i * step for i in range(int((end - start) // step) + 1)]
    drain = (T0 + 94, T0 + 104)

    def moved(t):
        return 0 if t < drain[0] else 100 if t >= drain[1] else (t - drain[0]) * 10

    def series(color, value):
        return {"metric": {"color": color}, "values": [[t, str(value(t))] for t in times]}

    if "ws_active_connections" in expr:
        return [series("blue", lambda t: 100 - moved(t) if t < T0 + 106 else "NaN"),
                series("green", lambda t: moved(t) if t >= T0 + 40 else "NaN")]
    if "ws_errors_total" in expr:
        return []
    if "ws_resumes_total" in expr:
        raise RuntimeError("bad_data: parse error")
    return [series("blue", lambda t: 10.0 if drain[0] <= t < drain[1] else 0),
            series("green", lambda t: 9.5 if drain[0] <= t < drain[1] + 5 else 0)]


@pytest.fixture
def prometheus():
    """Prometheus's range query API, answering from canned(); seen holds each query's parameters."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            params = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
            seen.append(params)
            try:
                body = {"status": "success", "data": {"resultType": "matrix", "result": canned(
                    params["query"], float(params["start"]), float(params["end"]), float(params["step"]))}}
                code = 200
            except RuntimeError as exc:
                body, code = {"status": "error", "errorType": "bad_data", "error": str(exc)}, 400
            data = json.dumps(body).encode()
            self.send_response(code if url.path == "/api/v1/query_range" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()
    server.server_close()


def make_report(url, **overrides):
    args = dict(prometheus=url, title="Release of wsapp:1 to green", outcome="released", ok=True, steps=STEPS,
                end=END, timeout=10)
    return release_report.report(SimpleNamespace(**{**args, **overrides}), now=END + 2)


def test_the_report_plots_each_color_in_its_color_and_marks_the_switch_and_the_drain(prometheus):
    url, seen = prometheus
    page = make_report(url)
    root = svg_root(page)
    ns = "{http://www.w3.org/2000/svg}"
    plots = root.iter(f"{ns}svg")
    connections = next(plots)
    paths = {p.get("data-series"): p for p in connections.iter(f"{ns}path")}
    assert paths["blue"].get("stroke") == release_report.COLORS["blue"]
    assert paths["green"].get("stroke") == release_report.COLORS["green"]
    # Green has no connections before it is deployed: its line starts then (a gap, not a zero).
    assert paths["green"].get("d").startswith("M") and paths["green"].get("d").count("M") == 1
    labels = [t.text for t in connections.iter(f"{ns}text")]
    assert {"switch to green", "drain blue", "drain ended", "UTC"} <= set(labels)
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d", label or "") for label in labels), labels
    # The window: from 20 s before the deploy to now, one query per panel.
    assert len(seen) == len(release_report.PANELS)
    assert {float(q["start"]) for q in seen} == {T0 + 40 - 20}
    assert {float(q["end"]) for q in seen} == {END + 2}
    assert "no data in the window" in page  # errors: none recorded
    assert "no data: HTTP Error 400" in page  # a query Prometheus refused
    rows = root.find(".//table/tbody")
    assert [row[2].text for row in rows][6] == "switch Nginx to green"
    assert [row[1].text for row in rows][8] == "12 s"


def test_the_report_loads_nothing_from_anywhere(prometheus):
    page = make_report(prometheus[0])
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\(|src=", page, re.I)
    addresses = re.findall(r"https?://[^\"' ]+", page)
    assert addresses == ["http://www.w3.org/2000/svg"] * len(release_report.PANELS)


def test_without_prometheus_the_report_is_still_written_and_says_why(prometheus):
    page = make_report("http://127.0.0.1:9", ok=False, outcome="failed (exit 1)")
    svg_root(page)
    assert page.count("no data: ") == len(release_report.PANELS)
    assert 'class="outcome failed"' in page


def test_a_query_after_the_time_budget_is_not_sent(prometheus):
    url, seen = prometheus
    page = make_report(url, timeout=0)
    assert seen == [] and page.count("no data: out of time") == len(release_report.PANELS)


def test_steps_end_where_the_next_starts_and_the_last_at_the_end():
    steps = release_report.parse_steps(f"{T0} a b\n\nnonsense\n{T0 + 5} c\n", T0 + 7)
    assert steps == [(T0, T0 + 5, "a b"), (T0 + 5, T0 + 7, "c")]


samples = st.lists(st.tuples(
    st.one_of(st.integers(T0 - 100, END + 100), st.floats(allow_nan=True), st.text(max_size=3)),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True),
              st.sampled_from(["NaN", "+Inf", "-Inf", "x", ""]),
              st.integers(-10**12, 10**12).map(str))), max_size=12)
results = st.lists(st.fixed_dictionaries({
    "metric": st.dictionaries(st.sampled_from(["color", "kind", "<&\"'>"]), st.text(max_size=8), max_size=2),
    "values": samples.map(lambda pairs: [list(pair) for pair in pairs])}), max_size=4)


@settings(max_examples=60, deadline=None)
@example([{"metric": {}, "values": [[T0, 1.66453068042807e+308]]}], "", 0, 1)
@given(results, st.text(max_size=20), st.integers(0, 3600), st.integers(1, 60))
def test_any_answer_gives_a_well_formed_plot_with_finite_coordinates(result, title, length, step):
    """Empty series, NaN, infinities, one point, gaps, odd labels and text: never an exception, never
    a NaN in the SVG, always well-formed."""
    steps = release_report.parse_steps(STEPS, END)
    page = release_report.render(title, "released", True, steps,
                                 [(title, "x", result, None), ("t", "u", None, "an <error> & more")],
                                 T0, T0 + length, step)
    root = svg_root(page)
    for element in root.iter():
        for name in ("x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "width", "height"):
            if element.get(name) is not None:
                assert math.isfinite(float(element.get(name))), (name, element.get(name))
        for number in re.findall(r"-?[\d.]+(?:e-?\d+)?|nan|inf", element.get("d") or "", re.I):
            assert math.isfinite(float(number)), element.get("d")
    finite = [p for item in result for p in release_report.points(item["values"])
              if T0 <= p[0] <= T0 + length]
    if len(finite) == 1:
        assert root.find(".//{http://www.w3.org/2000/svg}circle") is not None


def test_a_lone_sample_between_gaps_is_a_dot():
    values = [[T0, "1"], [T0 + 100, "2"], [T0 + 200, "3"], [T0 + 202, "4"]]
    result = [{"metric": {"color": "blue"}, "values": values}]
    figure = release_report.plot("t", "u", result, T0, T0 + 300, 2, [])
    root = ET.fromstring(figure)
    path = root.find(".//{http://www.w3.org/2000/svg}path").get("d")
    assert path.count("M") == 3 and path.count("L") == 1
    assert len(root.findall(".//{http://www.w3.org/2000/svg}circle")) == 2
