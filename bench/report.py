"""The benchmark's report: a table of measures against their targets, as plain text for the terminal
and as Markdown for docs/performance-results.md, which it rewrites between two markers."""

import os
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path

import psutil

from bench.servers import CLIENT_CPU, SERVER_CPU, SERVICE_PYTHON
from testkit import ROOT

DOC = Path(ROOT, "docs", "performance-results.md")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
SERVICE_PACKAGES = (
    "Django",
    "channels",
    "channels-redis",
    "redis",
    "uvicorn",
    "websockets",
    "uvloop",
    "httptools",
)
BENCH_PACKAGES = ("picows", "websockets", "uvloop")
CPU_PHASES = [
    (who, phase) for phase in ("rt", "hs", "fan200", "fan500") for who in ("service", "before", "baseline")
] + [(who, phase) for phase in ("fan200", "fan500") for who in ("service2", "before2")]
HEADER = ("Measure", "Service", "Before", "After/before", "Baseline", "Ratio", "Target", "Met")
BEFORE_COLUMNS = (2, 3)


def fmt(value, unit=""):
    if value is None:
        return "-"
    if isinstance(value, float) and value < 10:
        return f"{value:.2f}{unit}"
    return f"{value:,.0f}{unit}" if isinstance(value, (int, float)) else str(value)


def row(metric, service, baseline="", ratio="", target="", met=None, before="", vs_before=""):
    """A row of HEADER: met is None for a detail without a target; before and vs_before (the
    service's value over the before service's) are empty without a before run."""
    return metric, service, before, vs_before, baseline, ratio, target, met


def before_cells(r, who, key, field, shown=fmt):
    """The before service's value of a measure (a result's field, or a function of the result) and the
    service's over it ({} without a before run)."""
    old = r.get((who.replace("service", "before"), key))
    if old is None:
        return {}
    value = field if callable(field) else lambda result: result[field]
    new, old = value(r[who, key]), value(old)
    return {"before": shown(old), "vs_before": f"{new / old:.0%}" if old else "-"}


def percent(value):
    return f"{value:.2%}"


def ms_per_handshake(result):
    """Server CPU time (its process tree; not Redis) per handshake, with its close: steadier than the
    rate when other work shares the cores."""
    return result["server_cpu_seconds"] / result["connections"] * 1000


def fanout_rows(r, key, label, p99_target):
    rows = []
    for who, name in (("service", "1 worker"), ("service2", "2 workers + Redis")):
        s, b = r[who, key], r["baseline", key]
        with_baseline = who == "service"
        ok = s["delivered"] == 1.0 and s["seq_gaps"] == 0 and s["errors"] == 0
        target = "100%"
        if p99_target and with_baseline:
            ok = ok and s["p99_ms"] < p99_target
            target = f"100%, p99 < {p99_target} ms"
        rows.append(
            row(
                f"Fan-out {label} x 100 msg/s, {name}: delivered",
                percent(s["delivered"]),
                percent(b["delivered"]) if with_baseline else "",
                "",
                target,
                ok,
                **before_cells(r, who, key, "delivered", percent),
            )
        )
        for field in ("deliveries_per_s", "p50_ms", "p99_ms"):
            rows.append(
                row(
                    f"  {field.replace('_', ' ')}",
                    fmt(s[field]),
                    fmt(b[field]) if with_baseline else "",
                    **before_cells(r, who, key, field),
                )
            )
    return rows


def compared(r, label, key, field, minimum):
    """A row comparing the service with the baseline, met when the service reaches `minimum` of it."""
    s, b = r["service", key][field], r["baseline", key][field]
    share = s / b if b else None
    shown = "-" if share is None else f"{share:.0%}"
    return row(
        label,
        fmt(s),
        fmt(b),
        shown,
        f">= {minimum:.0%}",
        share is not None and share >= minimum,
        **before_cells(r, "service", key, field),
    )


def table(r, sizes):
    """The rows of the report, from run()'s results."""
    rows = [compared(r, "Round trips/s, 100 conns, ping->pong", "rt", "roundtrips_per_s", 0.5)]
    for field in ("p50_ms", "p99_ms"):
        rows.append(
            row(
                f"  round trip {field[:3]} (ms)",
                fmt(r["service", "rt"][field]),
                fmt(r["baseline", "rt"][field]),
                **before_cells(r, "service", "rt", field),
            )
        )
    rows += fanout_rows(r, "fan200", "200 members", 50)
    rows += fanout_rows(r, "fan500", "500 members", None)
    per_conn = {}
    for who in ("service", "before", "baseline"):
        if (who, "hold") in r:
            warm, loaded = r[who, "hold"][0], r[who, "hold"][1]
            per_conn[who] = (loaded["rss"] - warm["rss"]) / 1024 / (loaded["held"] - warm["held"])
    before = {}
    if "before" in per_conn:
        before = {
            "before": f"{per_conn['before']:.1f}",
            "vs_before": f"{per_conn['service'] / per_conn['before']:.0%}",
        }
    rows.append(
        row(
            f"RSS per idle connection at {sizes.idle:,} (KiB)",
            f"{per_conn['service']:.1f}",
            f"{per_conn['baseline']:.1f}",
            f"{per_conn['service'] / per_conn['baseline']:.0%}",
            "<= 24 KiB",
            per_conn["service"] <= 24,
            **before,
        )
    )
    rows.append(
        compared(
            r, f"Handshakes/s, {sizes.handshakes:,} conns (100 in flight)", "hs", "handshakes_per_s", 0.6
        )
    )
    rows.append(
        row(
            "  server CPU per handshake (ms)",
            fmt(ms_per_handshake(r["service", "hs"])),
            fmt(ms_per_handshake(r["baseline", "hs"])),
            **before_cells(r, "service", "hs", ms_per_handshake),
        )
    )
    cap = r["service", "hold"][2]
    old_cap = r.get(("before", "hold"), [None] * 3)[2]
    rows.append(
        row(
            f"Concurrent connections, 1 worker (of {sizes.capacity:,})",
            f"{cap['held']:,}, {cap['errors']} errors",
            target=f"{sizes.capacity:,}, 0 errors",
            met=cap["held"] == sizes.capacity and cap["errors"] == 0,
            before="" if old_cap is None else f"{old_cap['held']:,}, {old_cap['errors']} errors",
        )
    )
    return rows


def cpu_rows(r):
    return [
        (f"{who} {phase}", r[who, phase]["client_cpu"], r[who, phase]["server_cpu"])
        for who, phase in CPU_PHASES
        if (who, phase) in r
    ]


def cells(rows, yes, no):
    """The header and each row as strings, Met as yes/no, without the before columns if there was no
    before run."""
    with_before = any(r[BEFORE_COLUMNS[0]] for r in rows)
    keep = [i for i in range(len(HEADER)) if with_before or i not in BEFORE_COLUMNS]
    table = [HEADER]
    for *values, ok in rows:
        table.append((*values, "" if ok is None else (yes if ok else no)))
    return [[str(line[i]) for i in keep] for line in table]


def markdown(rows):
    header, *body = cells(rows, "yes", "**no**")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join([line[0].strip(), *line[1:]]) + " |" for line in body])


def plain(rows):
    table = cells(rows, "yes", "NO")
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)) + "  " + line[-1] for line in table
    )


def versions():
    code = "import importlib.metadata as m\nfor n in %r: print(n + '==' + m.version(n))" % (SERVICE_PACKAGES,)
    service = subprocess.run([SERVICE_PYTHON, "-c", code], capture_output=True, text=True).stdout.split()
    bench = [f"{n}=={version(n)}" for n in BENCH_PACKAGES]
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    return service, bench, " ".join(redis[:3])


def machine():
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    mem = psutil.virtual_memory().total / 2**30
    python = platform.python_version()
    return f"{platform.platform()}, {model}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {python}"


def results_section(rows, cpu, started, seconds, load_before, load_after, command, before=None):
    service, bench_versions, redis = versions()
    compared = []
    if before:
        compared = [
            f"- Before: the service at `{before}` (a temporary `git worktree`, the same `.venv`, its own "
            "Redis). Each phase runs on the baseline, the before service and the service in turn; "
            "After/before is the service's value over the before service's.",
        ]
    return "\n".join(
        [
            f"Measured {started:%Y-%m-%d %H:%M} UTC by `{command}` ({seconds:.0f} s; "
            f"1-minute load average {load_before:.2f} before, {load_after:.2f} after).",
            "",
            f"- Machine: {machine()}.",
            f"- Pinning (`taskset`): servers and Redis on core {SERVER_CPU}, "
            f"the load generator on core {CLIENT_CPU}.",
            f"- Service (`.venv`): {', '.join(service)}; {redis}.",
            f"- Baseline and load generator (`.venv-bench`): {', '.join(bench_versions)}.",
            *compared,
            "",
            markdown(rows),
            "",
            "CPU share over each phase (1.00 = one core busy; the load generator has core "
            f"{CLIENT_CPU} to itself, the servers share core {SERVER_CPU} with Redis):",
            "",
            "| Phase | Load generator | Server |",
            "|---|---|---|",
            *(f"| {k} | {c:.2f} | {s:.2f} |" for k, c, s in cpu),
        ]
    )


def write_doc(text):
    """Replace what stands between the markers of DOC (added at its end where missing)."""
    doc = DOC.read_text() if DOC.exists() else f"# Performance results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in doc or END not in doc:
        doc += f"\n{BEGIN}\n{END}\n"
    head, rest = doc.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
