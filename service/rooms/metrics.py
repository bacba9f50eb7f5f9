"""Prometheus metrics, defined once.

Under several Uvicorn workers PROMETHEUS_MULTIPROC_DIR is set (entrypoint.sh wipes it at
start) and prometheus_client's multiprocess mode sums the workers' files at scrape time.
"""

import contextvars
import glob
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from .names import CLOSE_SERVICE_RESTART

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")

ACTIVE_CONNECTIONS = Gauge(
    "ws_active_connections", "Live WebSocket sessions.", multiprocess_mode="livesum"
)
DRAINING = Gauge(
    "ws_draining", "1 while this process drains its connections.", multiprocess_mode="livemax"
)
MAX_CONNECTIONS = Gauge(
    "ws_max_connections",
    "MAX_CONNECTIONS of each live process, summed: the replica's connection capacity.",
    multiprocess_mode="livesum",
)
READY = Gauge("ws_ready", "1 while this process is ready for traffic.", multiprocess_mode="livemin")
BUILD_INFO = Gauge(
    "ws_build_info",
    "Always 1; labels say which build, color and replica this is.",
    ["color", "version", "replica"],
    multiprocess_mode="max",
)
REDIS_USED_MEMORY = Gauge(
    "ws_redis_used_memory_bytes", "Redis used_memory, as this process read it last.",
    multiprocess_mode="livemax",
)
REDIS_MAXMEMORY = Gauge(
    "ws_redis_maxmemory_bytes", "Redis maxmemory (0: no limit), as this process read it last.",
    multiprocess_mode="livemax",
)
# The process itself, per worker (prometheus_client's process collector does not work in
# multiprocess mode): rooms.lifecycle.process_gauges keeps them current.
PROCESS_RSS = Gauge(
    "ws_process_resident_memory_bytes", "Resident memory of the replica's live processes, summed.",
    multiprocess_mode="livesum",
)
PROCESS_OPEN_FDS = Gauge(
    "ws_process_open_fds", "Open file descriptors of the replica's busiest process.",
    multiprocess_mode="livemax",
)
PROCESS_MAX_FDS = Gauge(
    "ws_process_max_fds", "The open-file limit (soft RLIMIT_NOFILE) of the replica's processes.",
    multiprocess_mode="livemin",
)
EVENT_LOOP_LAG = Gauge(
    "ws_event_loop_lag_seconds",
    "How late the event loop ran a task that was due, worst of the last 5 s, worst worker.",
    multiprocess_mode="livemax",
)
HISTORIES_TRIMMED = Counter(
    "ws_room_histories_trimmed_total", "Room histories deleted because Redis was over REDIS_MEMORY_TRIM."
)
CONNECTIONS_OPENED = Counter("ws_connections_opened_total", "WebSocket handshakes accepted.")
CONNECTIONS_CLOSED = Counter(
    "ws_connections_closed_total", "WebSocket sessions ended, by close code.", ["code"]
)
# The drain's close code exists from the start, at 0: a rate over a series that appears at its first
# increment misses that increment, and the release report plots the drain's closes.
CONNECTIONS_CLOSED.labels(str(CLOSE_SERVICE_RESTART))
HANDSHAKES_REJECTED = Counter(
    "ws_handshakes_rejected_total", "WebSocket handshakes refused, by reason.", ["reason"]
)
MESSAGES_RECEIVED = Counter("ws_messages_received_total", "Frames received from clients.")
MESSAGES_SENT = Counter(
    "ws_messages_sent_total", "Room messages handed to local members (one per member per message)."
)
BROADCASTS = Counter("ws_broadcasts_total", "Room messages published by this process.")
RESUMES = Counter("ws_resumes_total", "WebSocket handshakes accepted with ?since= (a client resuming).")
REPLAYED = Counter("ws_replayed_messages_total", "Room messages sent from the history to resuming clients.")
ERRORS = Counter("ws_errors_total", "Exceptions and rejected input, by kind.", ["kind"])
DB_QUERIES = Counter(
    "ws_db_queries_total",
    "Database statements this process ran, by the ASGI scope they ran for (members.querycount).",
    ["origin"],
)
# The scope a database statement runs for: set per connection by rooms.ops.OpsRouter ("http",
# "websocket", and "lifespan" for the tasks started at startup, such as the room policies' reload);
# "other" outside the server (a management command). asgiref's sync_to_async carries it to the thread;
# a plain run_in_executor does not (rooms.policies passes its context along).
QUERY_ORIGIN = contextvars.ContextVar("query_origin", default="other")
QUERY_ORIGINS = ("http", "websocket", "lifespan", "other")
for _origin in QUERY_ORIGINS:  # every series from the start, at 0: "none from handshakes" is a 0
    DB_QUERIES.labels(_origin)
BROADCAST_DELAY = Histogram(
    "ws_broadcast_delay_seconds",
    "Time from a room message's publication to its fan-out in this process.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


def render():
    """Return (body, content type) for a scrape of this process or, in multiprocess mode, all."""
    if MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def forget_dead_workers():
    """Mark workers that left files behind but no longer run as dead (live gauges drop them)."""
    if not MULTIPROC_DIR:
        return
    for path in glob.glob(os.path.join(MULTIPROC_DIR, "gauge_live*_*.db")):
        pid = int(path.rsplit("_", 1)[1].split(".")[0])
        if pid != os.getpid() and not _running(pid):
            multiprocess.mark_process_dead(pid, MULTIPROC_DIR)


def mark_self_dead():
    if MULTIPROC_DIR:
        multiprocess.mark_process_dead(os.getpid(), MULTIPROC_DIR)


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
