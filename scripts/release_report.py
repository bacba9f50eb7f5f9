"""The release report: one self-contained HTML file per release (docs/operations.md, "The release report").

promote.sh runs it at the end of every release, released or not, in a container on the overlay network
(where Prometheus answers), and keeps what it prints:

    python release_report.py --prometheus URL --title TEXT --outcome TEXT [--ok] \\
        --steps "EPOCH NAME\\n..." --end EPOCH

It shows the steps with their timings, and plots from Prometheus across the release window (connections,
messages, errors, reconnects and resumes per color) with the switch and the drain marked. Standard library
only; the plots are SVG written here, and the page loads nothing (no script, font or style sheet from
anywhere). A query that fails or returns nothing leaves its plot saying so; the report is still written.
"""

import argparse
import html
import json
import math
import sys
import time
import urllib.parse
import urllib.request

# (title, unit, PromQL). Every query is summed by color, so each color is one line in its own color.
# Rates over 15 s (three scrape intervals): a release lasts a minute or two, which rate1m would smear.
PANELS = [
    ("Connections per color", "connections",
     "sum by (color) (ws_active_connections and on(job, instance, color) (up == 1))"),
    ("Messages received per second", "messages/s", "sum by (color) (rate(ws_messages_received_total[15s]))"),
    ("Errors per second (all kinds)", "errors/s", "sum by (color) (rate(ws_errors_total[15s]))"),
    ("Reconnects: sessions closed with 1012 per second", "closes/s",
     'sum by (color) (rate(ws_connections_closed_total{code="1012"}[15s]))'),
    ("Resumes: handshakes with ?since= per second", "resumes/s",
     "sum by (color) (rate(ws_resumes_total[15s]))"),
    ("Resume replays: messages sent from the history per second", "messages/s",
     "sum by (color) (rate(ws_replayed_messages_total[15s]))"),
]
COLORS = {"blue": "#1f6feb", "green": "#1a7f37"}
OTHER_COLORS = ["#8250df", "#bf3989", "#9a6700", "#57606a"]
# Steps whose start is marked on every plot, by the first word of their name (promote.sh's step names).
MARKS = {"switch": "#cf222e", "drain": "#9a6700", "restore": "#8250df"}
LEAD_SECONDS = 20  # the plots start this long before the new color is deployed
WIDTH, HEIGHT = 960, 230
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 26, 34
TICK_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200]


def parse_steps(text, end):
    """promote.sh's steps, "EPOCH NAME" per line, as (start, end, name): each ends where the next starts."""
    starts = []
    for line in text.splitlines():
        stamp, _, name = line.strip().partition(" ")
        if stamp.isdigit() and name:
            starts.append((int(stamp), name))
    ends = [start for start, _ in starts[1:]] + [end]
    return [(start, max(start, stop), name) for (start, name), stop in zip(starts, ends, strict=True)]


def query_range(prometheus, expr, start, end, step, timeout):
    """The result of a range query: [{"metric": {...}, "values": [[t, "v"], ...]}, ...]."""
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus.rstrip('/')}/api/v1/query_range?{params}",
                                timeout=timeout) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise ValueError(body.get("error") or "Prometheus did not answer success")
    return body["data"]["result"]


def points(values):
    """[(t, v)] with every finite sample; NaN, infinities and malformed samples are left out (gaps)."""
    out = []
    for sample in values or ():
        try:
            t, v = float(sample[0]), float(sample[1])
        except (TypeError, ValueError, IndexError):
            continue
        if math.isfinite(t) and math.isfinite(v):
            out.append((t, v))
    return sorted(out)


def nice_ceiling(value):
    """The smallest of 1, 1.2, 1.6, 2, 2.4, 4, 6, 8 times a power of ten at or above value (1 for nothing):
    its quarters, the grid lines, are round numbers."""
    if not value > 0:
        return 1.0
    # Past 1e300 (or infinite: 1.08 times a sample near the largest float) the plot is clipped there;
    # beyond it factor * power would overflow a float.
    value = min(value, 1e300)
    power = 10.0 ** math.floor(math.log10(value))
    for factor in (1, 1.2, 1.6, 2, 2.4, 4, 6, 8, 10):
        if value <= factor * power * (1 + 1e-9):
            return factor * power
    return 10 * power


def escape(text):
    """Text for the page: escaped, and without the control characters XML and HTML do not allow."""
    return html.escape("".join(c for c in str(text) if c >= " " or c in "\t\n"))


def clock(t):
    return time.strftime("%H:%M:%S", time.gmtime(t))


def number(v):
    if v == 0 or abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.3g}"
    return f"{v:.2g}"


def series_color(name, index):
    return COLORS.get(name, OTHER_COLORS[index % len(OTHER_COLORS)])


def marks(steps):
    """(t, label, color) for the start of each marked step, and the end of the drain."""
    out = []
    for start, end, name in steps:
        words = name.split()
        if words[0] in MARKS:
            # "switch Nginx to green" -> "switch to green", "drain blue over 10s" -> "drain blue"
            label = f"switch to {words[-1]}" if words[0] == "switch" else " ".join(words[:2])
            out.append((start, label, MARKS[words[0]]))
            if words[0] == "drain":
                out.append((end, "drain ended", MARKS[words[0]]))
    return out


def plot(title, unit, result, start, end, step, steps, error=None):
    """One panel: an SVG plot of each series of a range query's result, and its legend."""
    e = escape
    width, height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    series = []
    for index, item in enumerate(result or ()):
        metric = item.get("metric") or {}
        name = metric.get("color") or ",".join(f"{k}={v}" for k, v in sorted(metric.items())) or "total"
        series.append((name, series_color(name, index), points(item.get("values"))))
    top = nice_ceiling(1.08 * max((v for _, _, pts in series for _, v in pts), default=0))
    span = max(end - start, 1)

    def x(t):
        return LEFT + (min(max(t, start), end) - start) / span * width

    def y(v):
        return TOP + height - min(max(v, 0), top) / top * height

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{e(title)}" class="plot">',
             f'<text x="{LEFT}" y="16" class="title">{e(title)}</text>']
    drain = [(s, t) for s, t, name in steps if name.startswith("drain")]
    for s, t in drain:
        parts.append(f'<rect x="{x(s):.1f}" y="{TOP}" width="{max(x(t) - x(s), 1):.1f}" height="{height}" '
                     f'fill="{MARKS["drain"]}" fill-opacity="0.08"/>')
    for i in range(5):
        value = top * i / 4
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + width}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                     f'class="grid"/><text x="{LEFT - 6}" y="{y(value) + 4:.1f}" class="ytick">'
                     f'{number(value)}</text>')
    tick = next((s for s in TICK_STEPS if span / s <= 10), TICK_STEPS[-1])
    first = math.ceil(start / tick) * tick
    for t in range(int(first), int(end) + 1, tick):
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{TOP + height}" y2="{TOP + height + 4}" '
                     f'class="axis"/><text x="{x(t):.1f}" y="{TOP + height + 17}" class="xtick">'
                     f'{clock(t)}</text>')
    parts.append(f'<text x="{LEFT + width}" y="{HEIGHT - 2}" class="unit" text-anchor="end">UTC</text>'
                 f'<text x="12" y="{TOP + height / 2:.1f}" class="unit" '
                 f'transform="rotate(-90 12 {TOP + height / 2:.1f})" text-anchor="middle">{e(unit)}</text>'
                 f'<line x1="{LEFT}" x2="{LEFT + width}" y1="{TOP + height}" y2="{TOP + height}" '
                 'class="axis"/>'
                 f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{TOP + height}" class="axis"/>')
    gap = max(2.5 * step, 15)  # samples further apart than this are not joined
    for name, color, pts in series:
        path, previous = [], None
        for t, v in pts:
            if not start <= t <= end:
                continue
            command = "L" if previous is not None and t - previous <= gap else "M"
            path.append(f"{command}{x(t):.1f},{y(v):.1f}")
            previous = t
        lone = [p for i, p in enumerate(path)
                if p[0] == "M" and (i + 1 == len(path) or path[i + 1][0] == "M")]
        if path:
            parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="{color}" stroke-width="2" '
                         f'data-series="{e(name)}"/>')
        for p in lone:
            cx, cy = p[1:].split(",")
            parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{color}"/>')
    for row, (t, label, color) in enumerate(m for m in marks(steps) if start <= m[0] <= end):
        # Labels alternate between two rows, and turn left near the right edge, so they do not overlap.
        right = x(t) > LEFT + width - 110
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{TOP}" y2="{TOP + height}" '
                     f'stroke="{color}" stroke-dasharray="4 3" stroke-width="1.5"/>'
                     f'<text x="{x(t) + (-4 if right else 4):.1f}" y="{TOP + 12 + 13 * (row % 2)}" '
                     f'fill="{color}" class="mark" text-anchor="{"end" if right else "start"}">'
                     f"{e(label[:40])}</text>")
    if error is not None or not any(pts for _, _, pts in series):
        note = f"no data: {error}" if error is not None else "no data in the window"
        parts.append(f'<text x="{LEFT + width / 2:.1f}" y="{TOP + height / 2:.1f}" class="empty" '
                     f'text-anchor="middle">{e(note[:120])}</text>')
    parts.append("</svg>")
    legend = "".join(
        f'<span class="key"><span class="swatch" style="background:{color}"></span>{e(name)}: '
        f'max {number(max(v for _, v in pts)) if pts else "-"}, '
        f'last {number(pts[-1][1]) if pts else "-"}</span>'
        for name, color, pts in series)
    return f'<figure>{"".join(parts)}<figcaption>{legend}</figcaption></figure>'


def step_table(steps):
    e = escape
    if not steps:
        return "<p>No steps were recorded.</p>"
    first, last = steps[0][0], max(end for _, end, _ in steps)
    span = max(last - first, 1)
    rows = []
    for start, end, name in steps:
        left, bar = (start - first) / span * 100, max((end - start) / span * 100, 0.4)
        word = name.split()[0]
        rows.append(f'<tr><td class="num">{clock(start)}</td><td class="num">{end - start} s</td>'
                    f'<td>{e(name)}</td><td class="bar">'
                    f'<span style="margin-left:{left:.1f}%;width:{bar:.1f}%;'
                    f'background:{MARKS.get(word, "#57606a")}"></span></td></tr>')
    return ('<table><thead><tr><th>Start (UTC)</th><th>Took</th><th>Step</th><th>Timeline</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#1f2328}
h1{font-size:22px;margin:0 0 4px}
.outcome{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-weight:600}
.ok{background:#1a7f37}.failed{background:#cf222e}
.meta{color:#57606a;margin:4px 0 16px}
table{border-collapse:collapse;width:100%;margin-bottom:20px}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #d0d7de;font-size:13px}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
td.bar{width:35%}td.bar span{display:block;height:10px;border-radius:2px}
figure{margin:0 0 14px;border:1px solid #d0d7de;border-radius:6px;padding:6px 8px}
figcaption{font-size:13px;color:#1f2328}
.key{margin-right:18px;white-space:nowrap}
.swatch{display:inline-block;width:14px;height:4px;margin-right:5px;vertical-align:middle}
svg.plot{width:100%;height:auto;display:block}
svg .title{font:600 14px system-ui,sans-serif;fill:#1f2328}
svg .xtick,svg .ytick,svg .unit{font:11px system-ui,sans-serif;fill:#57606a}
svg .xtick{text-anchor:middle}svg .ytick{text-anchor:end}
svg .mark{font:600 11px system-ui,sans-serif;paint-order:stroke;stroke:#fff;stroke-width:3px}
svg .empty{font:13px system-ui,sans-serif;fill:#8c959f}
svg .grid{stroke:#eaeef2}svg .axis{stroke:#8c959f}
"""


def render(title, outcome, ok, steps, panels, start, end, step):
    """The whole page. panels: [(title, unit, result or None, error or None)]."""
    e = escape
    figures = "".join(plot(t, unit, result, start, end, step, steps, error)
                      for t, unit, result, error in panels)
    took = f"{steps[-1][1] - steps[0][0]} s" if steps else "-"
    began = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(steps[0][0])) if steps else "-"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>"
        f'<h1>{e(title)}</h1><p><span class="outcome {"ok" if ok else "failed"}">{e(outcome)}</span></p>'
        f'<p class="meta">Started {began} UTC, took {took}. Plots from {clock(start)} to {clock(end)} UTC, '
        f"one sample every {step} s;"
        " dashed lines mark the switch and the drain (shaded).</p>"
        f"<h2>Steps</h2>{step_table(steps)}<h2>Across the release</h2>{figures}</body></html>\n"
    )


def report(args, now=None):
    end = int(now or time.time())
    steps = parse_steps(args.steps, args.end or end)
    first = steps[0][0] if steps else end - 60
    deployed = next((s for s, _, name in steps if name.startswith("deploy")), first)
    start = min(deployed - LEAD_SECONDS, end - 60)
    step = max(2, math.ceil((end - start) / 500))
    deadline = time.monotonic() + args.timeout
    panels = []
    for title, unit, expr in PANELS:
        result = error = None
        remaining = deadline - time.monotonic()
        if remaining <= 1:
            error = "out of time"
        else:
            try:
                result = query_range(args.prometheus, expr, start, end, step, min(remaining, 10))
            except Exception as exc:  # noqa: BLE001 - any failure is shown in its plot, never raised
                error = str(exc) or type(exc).__name__
        panels.append((title, unit, result, error))
    return render(args.title, args.outcome, args.ok, steps, panels, start, end, step)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--title", required=True)
    parser.add_argument("--outcome", required=True)
    parser.add_argument("--ok", action="store_true", help="the release succeeded")
    parser.add_argument("--steps", default="", help='"EPOCH NAME" per line, as promote.sh ran them')
    parser.add_argument("--end", type=int, default=0, help="when the last step ended (default: now)")
    parser.add_argument("--timeout", type=float, default=30, help="seconds for every query together")
    sys.stdout.write(report(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
