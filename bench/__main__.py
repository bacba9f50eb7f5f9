"""`make bench`: the service against a bare websockets baseline, side by side, on this machine.

Starts its own redis-server, the service (entrypoint.sh, .venv) and the baseline (bench.baseline)
on loopback (bench.servers), runs each phase of bench.load against both (bench.phases), prints a
table and writes it into docs/performance-results.md between the markers (bench.report). Servers
and Redis run on core SERVER_CPU, the load generator on core CLIENT_CPU (taskset). Every process
it starts is stopped by its pid.

With --before REF it also measures the service as it was at REF (a temporary `git worktree`,
removed afterwards, the same .venv, its own Redis), each phase on every server in turn, and the
table gains the before service's values and the service's over them.

    .venv-bench/bin/python -m bench [--before REF] [--seconds 5] [--fanout-seconds 10] [--no-write]
        [--smoke]
"""

import argparse
import contextlib
import dataclasses
import datetime
import os
import shlex
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from bench import phases, report
from bench.servers import SERVICE_PYTHON, checkout, commit_of
from testkit import ROOT


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", metavar="REF", help="also measure the service at this commit")
    parser.add_argument("--seconds", type=float, help="measured seconds of the round-trip phase (5)")
    parser.add_argument("--fanout-seconds", type=float, help="sending seconds of each fan-out phase (10)")
    parser.add_argument(
        "--smoke", action="store_true", help="every phase, much smaller (about 1 minute); implies --no-write"
    )
    parser.add_argument(
        "--no-write", action="store_true", help=f"print only; leave {report.DOC.relative_to(ROOT)} alone"
    )
    args = parser.parse_args()
    sizes = phases.SMOKE if args.smoke else phases.Sizes()
    overrides = {"seconds": args.seconds, "fanout_seconds": args.fanout_seconds}
    sizes = dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    return args, sizes


def main():
    args, sizes = parse_args()
    for tool in ("taskset", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is missing (apt-get install util-linux redis-server)")
    if not SERVICE_PYTHON.exists():
        sys.exit("bench: .venv is missing; run `make deps`")
    try:
        before = args.before and commit_of(args.before)
    except ValueError as exc:
        sys.exit(f"bench: --before {exc}")
    # A SIGTERM unwinds like an interrupt: every server is stopped and the worktree removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="wsapp-bench-") as workdir:
        with checkout(before, workdir) if before else contextlib.nullcontext() as before_root:
            results = phases.run(sizes, workdir, before_root)
    load_after = os.getloadavg()[0]
    seconds = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
    rows, cpu = report.table(results, sizes), report.cpu_rows(results)
    print()
    print(report.plain(rows))
    print()
    print(
        "CPU share (1.0 = one core) over each phase: "
        + ", ".join(f"{k} client {c} server {s}" for k, c, s in cpu)
    )
    print(f"load average before {load_before:.2f}, after {load_after:.2f}; {seconds:.0f} s")
    if args.no_write or args.smoke:
        return
    if os.environ.get("MAKELEVEL"):
        command = f"make bench BEFORE={args.before}" if args.before else "make bench"
    else:
        command = shlex.join([sys.argv[0], *sys.argv[1:]])
    report.write_doc(
        report.results_section(rows, cpu, started, seconds, load_before, load_after, command, before)
    )
    print(f"wrote {Path(report.DOC).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
