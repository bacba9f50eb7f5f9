"""The edge exporter (stack/infra.yml, edge-exporter; docs/operations.md, "What is scraped"): this
node's Nginx responses by status, for Prometheus (job edge), counted exactly and without a log line.

Nginx (nginx/nginx.conf, log_format edge_count) appends one byte, a newline, per response it logs to
`responses`, and per 429 and per 5xx also to `rate_limited` and `server_error`, in a tmpfs volume
that only Nginx and this exporter on the node mount. Its writes are buffered (64 KiB, flushed every
second) and O_APPEND, so every worker's bytes land whole. A file's size is then its count: this
exporter reads no line and parses nothing, so a burst cannot outrun it, and it cannot lose a count
or make Nginx log anything.

So that the files never fill the volume, it frees the memory of what it has counted: every second it
punches a hole over each file's whole pages (fallocate PUNCH_HOLE with KEEP_SIZE). The size, and so
the count, stays; Nginx keeps appending at the end. Each file then holds at most a page plus one
second of responses. Without the exporter the files grow a byte per response until the volume is
full (EDGE_COUNTS_BYTES in stack/infra.yml); then Nginx's flushes fail and it logs one error per
failed flush, at most one per second per worker and file.

Python's standard library only: it runs on the Python base image (PYTHON_BASE_IMAGE).
"""

import ctypes
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIRECTORY = os.environ.get("EDGE_COUNTS_DIR", "/run/edge-counts")
PORT = int(os.environ.get("EDGE_EXPORTER_PORT", "9118"))
PUNCH_SECONDS = float(os.environ.get("EDGE_PUNCH_SECONDS", "1"))
PAGE = os.sysconf("SC_PAGE_SIZE")
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02

# The file Nginx appends to, the counter that reads its size, and the counter's help.
COUNTERS = (
    ("responses", "nginx_responses_total",
     "Responses this node's Nginx logged (all statuses; not health, /active-color or /metrics)."),
    ("rate_limited", "nginx_responses_rate_limited_total",
     "Responses this node's Nginx answered 429 (the per-address limits)."),
    ("server_error", "nginx_responses_server_error_total",
     "Responses this node's Nginx answered with a 5xx."),
)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
_reported = set()  # errors already logged once: the exporter's own log stays bounded too


def report_once(message):
    if message not in _reported:
        _reported.add(message)
        print(f"edge-exporter: {message}", file=sys.stderr, flush=True)


def count(directory, name):
    """The number of responses in file `name`: its size (one byte each). 0 before Nginx made it."""
    try:
        return os.stat(os.path.join(directory, name)).st_size
    except FileNotFoundError:
        return 0


def held_bytes(directory, name):
    """The memory file `name` holds (its allocated blocks), which punching keeps small."""
    try:
        return os.stat(os.path.join(directory, name)).st_blocks * 512
    except FileNotFoundError:
        return 0


def punch(directory, name):
    """Free the whole pages of file `name` up to its current size, keeping the size. Opened for
    writing (fallocate needs it) without O_CREAT or O_TRUNC: it never creates, shortens or writes."""
    try:
        fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        end = os.fstat(fd).st_size // PAGE * PAGE
        if end and _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, end) != 0:
            report_once(f"cannot free {name}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def metrics(directory):
    lines = []
    for name, metric, help_text in COUNTERS:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter",
                  f"{metric} {count(directory, name)}"]
    lines += ["# HELP edge_exporter_held_bytes Memory the count files hold on the volume (after punching).",
              "# TYPE edge_exporter_held_bytes gauge"]
    lines += [f'edge_exporter_held_bytes{{file="{name}"}} {held_bytes(directory, name)}'
              for name, _, _ in COUNTERS]
    return ("\n".join(lines) + "\n").encode()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path.split("?")[0] != "/metrics":
            self.send_error(404)
            return
        body = metrics(DIRECTORY)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        """No line per scrape."""


def punch_forever(directory):
    while True:
        for name, _, _ in COUNTERS:
            try:
                punch(directory, name)
            except OSError as error:
                report_once(f"cannot free {name}: {error}")
        time.sleep(PUNCH_SECONDS)


def main():
    threading.Thread(target=punch_forever, args=(DIRECTORY,), daemon=True).start()
    server = ThreadingHTTPServer(("", PORT), Handler)
    print(f"edge-exporter: counting {DIRECTORY}, serving :{PORT}/metrics", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
