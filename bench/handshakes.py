"""The handshake alone, for several versions of the service side by side: the CPU each handshake costs
the service's process and Redis, and the rate (docs/performance.md, "The handshake's cost").

Each version (this tree, and every --ref, checked out as `make bench BEFORE=` does) runs one worker on
its own Redis, all pinned to the server core; then RUNS rounds of the handshake phase of bench.load
(2,000 connections, 100 in flight, 20 rooms), each round on every version in turn, the order rotating.
CPU time is read from /proc (psutil) before and after each run: on a machine other work shares it
moves much less than the rate. Prints one JSON line per run and a table of medians.

    .venv-bench/bin/python -m bench.handshakes [--ref 28dc874 ...] [--runs 8] [--connections 2000]
"""

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

from bench.servers import CLIENT_CPU, checkout, commit_of, pinned, start_redis, start_service
from testkit import ROOT


def cpu_of(pid):
    process = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in (process, *process.children(recursive=True)))


def run_once(name, server, redis_pid, connections):
    service0, redis0, t0 = cpu_of(server.pid), cpu_of(redis_pid), time.monotonic()
    args = pinned(CLIENT_CPU, [sys.executable, "-m", "bench.load", "handshakes", server.url,
                               "--connections", connections])
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"handshakes against {name} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    count = result["connections"]
    result |= {
        "who": name,
        "service_us": round((cpu_of(server.pid) - service0) / count * 1e6, 1),
        "redis_us": round((cpu_of(redis_pid) - redis0) / count * 1e6, 1),
        "seconds": round(time.monotonic() - t0, 2),
    }
    print(json.dumps(result), flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ref", action="append", default=[], help="also measure the service at this commit")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    versions = {"this tree": ROOT}
    runs = {}
    with tempfile.TemporaryDirectory(prefix="wsapp-hs-") as workdir, contextlib.ExitStack() as stack:
        for ref in args.ref:
            commit = commit_of(ref)
            versions[commit] = stack.enter_context(checkout(commit, workdir))
        servers = {}
        for name, root in versions.items():
            redis = start_redis()
            stack.callback(redis.stop)
            server = start_service(1, redis.url, workdir, root=root, name=name.replace(" ", "-"))
            stack.callback(server.stop)
            servers[name] = (server, redis.process.pid)
            runs[name] = []
        names = list(servers)
        for i in range(args.runs):
            turn = i % len(names)
            for name in names[turn:] + names[:turn]:
                runs[name].append(run_once(name, *servers[name], args.connections))
    print()
    print(f"{'version':<12} {'hs/s median (best)':>20} {'service us/hs':>14} {'Redis us/hs':>12} "
          f"{'sum':>6}   ({args.runs} runs each, medians)")
    for name, results in runs.items():
        rate = statistics.median(r["handshakes_per_s"] for r in results)
        best = max(r["handshakes_per_s"] for r in results)
        service = statistics.median(r["service_us"] for r in results)
        redis = statistics.median(r["redis_us"] for r in results)
        errors = sum(r["errors"] for r in results)
        print(f"{name:<12} {rate:>12,.0f} ({best:,}) {service:>14.0f} {redis:>12.0f} {service + redis:>6.0f}"
              + (f"   {errors} errors" if errors else ""))


if __name__ == "__main__":
    main()
