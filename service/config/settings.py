"""Settings, all from the environment.

Development defaults are safe; production secrets have no default: without
DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE) startup fails unless DJANGO_DEBUG=1.
"""

import ipaddress
import os
import resource
import socket
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

import wsserver
from config.database import DatabaseUrlError, databases
from rooms.names import CHANNEL_LAYER_PREFIX, DEFAULT_PORT
from rooms.origins import ANY_ORIGIN, InvalidOrigin, format_origin, origins_from_hosts, parse_origin
from rooms.redis_url import RedisUrlError, layer_host
from rooms.redis_url import redis_sentinels as redis_sentinels_with_password
from rooms.redis_url import redis_url as redis_url_with_password

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name, default=""):
    return os.environ.get(name, default).strip()


def env_int(name, default, minimum=0, maximum=None):
    raw = env_str(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}, got {value}")
    return value


def env_float(name, default, minimum=0.0):
    raw = env_str(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_bool(name, default=False):
    raw = env_str(name).lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


def env_list(name, default):
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def secret_key():
    path = env_str("DJANGO_SECRET_KEY_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"DJANGO_SECRET_KEY_FILE={path} cannot be read: {exc}") from None
    key = env_str("DJANGO_SECRET_KEY")
    if key:
        return key
    if DEBUG:
        return "insecure-development-key-do-not-use-in-production"
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY or DJANGO_SECRET_KEY_FILE must be set (or DJANGO_DEBUG=1 for development)"
    )


def redis_url():
    """REDIS_URL, with the password from REDIS_PASSWORD_FILE (a Swarm secret) when that is set."""
    try:
        return redis_url_with_password()
    except RedisUrlError as exc:
        raise ImproperlyConfigured(str(exc)) from None


def redis_sentinels():
    """REDIS_SENTINELS and REDIS_SENTINEL_MASTER (rooms.redis_url.Sentinels), or None."""
    try:
        return redis_sentinels_with_password()
    except RedisUrlError as exc:
        raise ImproperlyConfigured(str(exc)) from None


def database_settings():
    """DATABASES from DATABASE_URL (and DATABASE_PASSWORD_FILE); {} when DATABASE_URL is empty."""
    try:
        return databases(
            env_str("DATABASE_URL"), env_str("DATABASE_PASSWORD_FILE"),
            connect_timeout=env_int("DATABASE_CONNECT_TIMEOUT", 3, minimum=1),
            statement_timeout=env_float("DATABASE_STATEMENT_TIMEOUT", 5.0, minimum=0.1),
            lock_timeout=env_float("DATABASE_LOCK_TIMEOUT", 0.0, minimum=0.0),
            conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        )
    except DatabaseUrlError as exc:
        raise ImproperlyConfigured(str(exc)) from None


def ticket_keys():
    """The connection tickets' signing keys (members.tickets), from TICKET_KEYS_FILE (a Swarm secret):
    one key a line, the first signs, every one verifies, so a new key is added second, then moved
    first, then the old one removed (docs/accounts.md). Needed only with a database."""
    path = env_str("TICKET_KEYS_FILE")
    if not path:
        if DATABASES and not DEBUG:
            raise ImproperlyConfigured(
                "DATABASE_URL is set but TICKET_KEYS_FILE is not: name a file with the connection tickets' "
                "signing keys, one a line, at least 32 characters each (or DJANGO_DEBUG=1 for development)"
            )
        return [f"development-ticket-key:{SECRET_KEY}"]
    try:
        keys = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise ImproperlyConfigured(f"TICKET_KEYS_FILE={path} cannot be read: {exc}") from None
    if not keys:
        raise ImproperlyConfigured(f"TICKET_KEYS_FILE={path} holds no key")
    short = [n for n, key in enumerate(keys, 1) if len(key) < 32]
    if short:
        raise ImproperlyConfigured(
            f"TICKET_KEYS_FILE={path}: the key on line {short[0]} is shorter than 32 characters"
        )
    return keys


def forwarded_allow_ips():
    raw = env_str("FORWARDED_ALLOW_IPS", "127.0.0.1")
    entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
    if not entries or "*" in raw:
        raise ImproperlyConfigured(
            f"FORWARDED_ALLOW_IPS must list the proxy's addresses or networks, not {raw!r} "
            "(with '*' any client could choose its own address)"
        )
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ImproperlyConfigured(
                f"FORWARDED_ALLOW_IPS: {entry!r} is not an IP address or network"
            ) from None
    return ",".join(entries)


def public_origins():
    """PUBLIC_ORIGINS as parsed origins (rooms.origins), or {ANY_ORIGIN} in development."""
    entries = env_list("PUBLIC_ORIGINS", "") or origins_from_hosts(ALLOWED_HOSTS)
    if ANY_ORIGIN in entries or ANY_ORIGIN in ALLOWED_HOSTS:
        if not DEBUG:
            raise ImproperlyConfigured(
                "'*' in ALLOWED_HOSTS or PUBLIC_ORIGINS turns off the Host and Origin checks: list the "
                "public host names and origins (scheme://host[:port]), or set DJANGO_DEBUG=1 for development"
            )
        if ANY_ORIGIN in entries:
            return frozenset({ANY_ORIGIN})
    try:
        origins = frozenset(parse_origin(entry) for entry in entries)
    except InvalidOrigin as exc:
        raise ImproperlyConfigured(f"PUBLIC_ORIGINS: {exc}") from None
    if not origins:
        raise ImproperlyConfigured(
            f"PUBLIC_ORIGINS is not set and ALLOWED_HOSTS={','.join(ALLOWED_HOSTS)} names no host to derive "
            "it from: list the origins browsers open the site at (scheme://host[:port], comma-separated)"
        )
    return origins


DEBUG = env_bool("DJANGO_DEBUG")
SECRET_KEY = secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
# The origins (scheme, host, port) whose pages may open a WebSocket: PUBLIC_ORIGINS, comma-separated
# scheme://host[:port]; by default each ALLOWED_HOSTS name over http and https on the default ports.
PUBLIC_ORIGINS = public_origins()

# The database (PostgreSQL): users, rooms and the admin (docs/accounts.md). Without DATABASE_URL the
# service keeps no database, has no users, and every room is public, as before. Either way the
# WebSocket handshake never queries it (rooms.generic.DatabaseFreeConsumer, members.tickets).
DATABASES = database_settings()
ACCOUNTS_ENABLED = bool(DATABASES)
INSTALLED_APPS = ["channels", "rooms"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
TEMPLATES = []
if ACCOUNTS_ENABLED:
    INSTALLED_APPS = [
        "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
        "django.contrib.sessions", "django.contrib.messages", "channels", "rooms", "members",
        # `manage.py lintmigrations`: promote.sh and CI refuse migrations that would break the color
        # still running (docs/operations.md, "Migrations: expand, then contract").
        "django_migration_linter",
    ]
    # The linter's cache lives in the user's cache directory: none on the image's read-only root.
    MIGRATION_LINTER_OPTIONS = {"no_cache": True}
    MIDDLEWARE += [
        "members.middleware.DatabaseUnavailable",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ]
    TEMPLATES = [{
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": [
            "django.template.context_processors.request",
            "django.contrib.auth.context_processors.auth",
            "django.contrib.messages.context_processors.messages",
        ]},
    }]
    DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
    LOGIN_URL = "/accounts/login/"
    LOGIN_REDIRECT_URL = "/"
    LOGOUT_REDIRECT_URL = "/accounts/login/"
    STATIC_URL = "/static/"  # the admin's files: /static/admin/... (config.urls)
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    CSRF_COOKIE_SAMESITE = "Lax"
    # A form POST's Origin is checked against the request's own scheme and Host, and Nginx passes the
    # Host without its port ($host): a browser at a non-default port (http://localhost:18080) would get
    # 403 at every login. The origins browsers open the site at are PUBLIC_ORIGINS: trust exactly those.
    CSRF_TRUSTED_ORIGINS = sorted(format_origin(origin) for origin in PUBLIC_ORIGINS if origin != ANY_ORIGIN)
ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
# Connection tickets (members.tickets): signed, short-lived, checked at the handshake without a query.
TICKET_KEYS = ticket_keys()
TICKET_SECONDS = env_int("TICKET_SECONDS", 300, minimum=10)
# A ticket renewed over the socket keeps the time it was first issued over HTTP; after this long the
# page must fetch a new one (and so the database's word on memberships) to go on renewing.
TICKET_RENEW_SECONDS = env_int("TICKET_RENEW_SECONDS", 3600, minimum=60)
# How often each process reloads the restricted rooms (private, or no anonymous posting) from the
# database, so that its handshakes need no query; a process is not ready before its first load.
ROOM_POLICY_SECONDS = env_float("ROOM_POLICY_SECONDS", 5.0, minimum=0.5)
# The publish API (members.api): messages per second per API key, in each process, and its burst.
API_RATE_PER_SECOND = env_float("API_RATE_PER_SECOND", 5.0, minimum=0.1)
API_RATE_BURST = env_int("API_RATE_BURST", 20, minimum=1)
USE_TZ = True
TIME_ZONE = "UTC"
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s"}},
    # One bounded line per record, whatever the client sent (config/logbounds.py).
    "filters": {"bounded": {"()": "config.logbounds.BoundedRecord"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["bounded"]}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO").upper()},
    # Uvicorn keeps its own handler; its protocols log here (the path of every WebSocket at info).
    "loggers": {"uvicorn.error": {"filters": ["bounded"]}},
}

# Identity of this process, shown in /version, welcome frames and metrics.
COLOR = env_str("COLOR", "dev")
APP_VERSION = env_str("APP_VERSION", "dev")
REPLICA = env_str("REPLICA") or socket.gethostname()

# Redis: the channel layer (control messages) and room fan-out (pub/sub) share it. It is either
# one server (REDIS_URL) or whichever primary the Sentinels name (REDIS_SENTINELS), never both.
REDIS_SENTINELS = redis_sentinels()
REDIS_URL = redis_url()
REDIS_ENABLED = bool(REDIS_URL or REDIS_SENTINELS)
REDIS_MAX_CONNECTIONS = env_int("REDIS_MAX_CONNECTIONS", 1000, minimum=10)
# Must stay above the channel layer's 5 s BZPOPMIN wait, or idle receivers die with TimeoutError.
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 15.0, minimum=6.0)
REDIS_CONNECT_TIMEOUT = env_float("REDIS_CONNECT_TIMEOUT", 3.0, minimum=0.1)

if REDIS_ENABLED:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    layer_host(
                        REDIS_URL,
                        REDIS_SENTINELS,
                        REDIS_CONNECT_TIMEOUT,
                        max_connections=REDIS_MAX_CONNECTIONS,
                        socket_timeout=REDIS_SOCKET_TIMEOUT,
                        socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
                        health_check_interval=30,
                    )
                ],
                "prefix": CHANNEL_LAYER_PREFIX,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# WebSocket limits.
MAX_BODY_CHARS = env_int("MAX_BODY_CHARS", 4096, minimum=1)
WS_MAX_MESSAGE_BYTES = env_int("WS_MAX_MESSAGE_BYTES", 65536, minimum=1024)  # Uvicorn's --ws-max-size
RATE_LIMIT_PER_SECOND = env_float("RATE_LIMIT_PER_SECOND", 20.0, minimum=0.1)
RATE_LIMIT_BURST = env_int("RATE_LIMIT_BURST", 40, minimum=1)
# Consecutive rate-limited frames tolerated before the connection is closed with 1008.
RATE_LIMIT_STRIKES = env_int("RATE_LIMIT_STRIKES", 20, minimum=1)
MAX_CONNECTIONS = env_int("MAX_CONNECTIONS", 10000, minimum=1)
# Each WebSocket is a descriptor of its process, and so is each connection of the two Redis pools
# (channel layer, publish); 100 more for listeners, logs and the metrics files.
_NOFILE, _NOFILE_HARD = resource.getrlimit(resource.RLIMIT_NOFILE)
if _NOFILE != _NOFILE_HARD:  # use all the hard limit allows (entrypoint.sh does the same)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_NOFILE_HARD, _NOFILE_HARD))
    _NOFILE = _NOFILE_HARD
if _NOFILE != resource.RLIM_INFINITY and MAX_CONNECTIONS + 2 * REDIS_MAX_CONNECTIONS + 100 > _NOFILE:
    raise ImproperlyConfigured(
        f"MAX_CONNECTIONS={MAX_CONNECTIONS} and REDIS_MAX_CONNECTIONS={REDIS_MAX_CONNECTIONS} do not fit "
        f"this process' open-file limit of {_NOFILE}: lower them or raise the limit (ulimit -n)"
    )
# What may wait for one client before it is closed as a slow consumer (1013): frames, and bytes.
# Room frames are shared between members, but a queue of 1000 of the largest (a 4096-character body
# of escaped emoji is 49 KB) would pin 49 MB; 1 MiB is 21 such frames, or thousands of small ones.
OUTBOUND_QUEUE_MAX = env_int("OUTBOUND_QUEUE_MAX", 1000, minimum=1)
OUTBOUND_QUEUE_BYTES = env_int("OUTBOUND_QUEUE_BYTES", 2**20, minimum=65536)
# Room history for resuming clients (?since=): the newest ROOM_HISTORY_MAX messages of a room, none
# older than ROOM_HISTORY_SECONDS. A room's Redis keys expire that long after its last activity.
ROOM_HISTORY_MAX = env_int("ROOM_HISTORY_MAX", 1000, minimum=1)
ROOM_HISTORY_SECONDS = env_int("ROOM_HISTORY_SECONDS", 600, minimum=1)
# ...and at most ROOM_HISTORY_BYTES of frames (the newest is always kept). Redis must hold this for
# every busy room at once (docs/security.md, "Redis"): 256 KiB is 5 frames of the largest body or
# over a thousand ordinary chat messages, so ROOM_HISTORY_MAX stays the bound for normal rooms.
ROOM_HISTORY_BYTES = env_int("ROOM_HISTORY_BYTES", 262144, minimum=4096)
# Message ids are kept per room and sender (docs/protocol.md, "Message ids") for ROOM_IDS_SECONDS, at most
# ROOM_IDS_MAX per room, whatever the history keeps: a client's resend within that window publishes once.
ROOM_IDS_SECONDS = env_int("ROOM_IDS_SECONDS", 600, minimum=1)
ROOM_IDS_MAX = env_int("ROOM_IDS_MAX", 10000, minimum=1)
# The Redis memory budget (docs/security.md, "Redis memory"). A room is created when a handshake first
# writes its keys: an address (the client's, or X-Forwarded-For from FORWARDED_ALLOW_IPS) may create
# ROOM_CREATIONS_PER_ADDRESS rooms per ROOM_CREATIONS_WINDOW_SECONDS (0: no limit), shared by every
# process through Redis. A room takes ROOM_MESSAGES_PER_SECOND messages a second from all its members
# together (0: no limit), and ROOM_MAX_MEMBERS members per process.
ROOM_CREATIONS_PER_ADDRESS = env_int("ROOM_CREATIONS_PER_ADDRESS", 30)
ROOM_CREATIONS_WINDOW_SECONDS = env_int("ROOM_CREATIONS_WINDOW_SECONDS", 60, minimum=1)
ROOM_MESSAGES_PER_SECOND = env_int("ROOM_MESSAGES_PER_SECOND", 200)
ROOM_MAX_MEMBERS = env_int("ROOM_MAX_MEMBERS", 2000, minimum=1)
# Presence (docs/protocol.md, "Presence"): a connection's entry is refreshed every PRESENCE_TTL_SECONDS / 3
# to expire PRESENCE_TTL_SECONDS later, so the members of a process that died without closing its
# connections are gone within PRESENCE_TTL_SECONDS (their `leave` within 4/3 of it); a closed
# connection's user stays present PRESENCE_GRACE_SECONDS more (a release's reconnect shows no leave and
# join). A room keeps at most PRESENCE_MAX_ENTRIES entries (connections, and closed ones in their grace):
# a flood of handshakes cannot grow it further; connections beyond it are not shown.
PRESENCE_TTL_SECONDS = env_float("PRESENCE_TTL_SECONDS", 15.0, minimum=0.3)
PRESENCE_GRACE_SECONDS = env_float("PRESENCE_GRACE_SECONDS", 10.0, minimum=0.0)
PRESENCE_MAX_ENTRIES = env_int("PRESENCE_MAX_ENTRIES", 10000, minimum=1)
# Shares of Redis's maxmemory: above REDIS_MEMORY_TRIM the history of the rooms that published least
# recently is deleted until used_memory is below it again; above REDIS_MEMORY_REFUSE no room is created.
REDIS_MEMORY_TRIM = env_float("REDIS_MEMORY_TRIM", 0.5, minimum=0.1)
REDIS_MEMORY_REFUSE = env_float("REDIS_MEMORY_REFUSE", 0.7, minimum=0.1)
# ...and, in the rooms it trims, the message ids older than ROOM_IDS_PRESSURE_SECONDS (a client resends
# at once on reconnecting: within that window its resend still publishes once).
ROOM_IDS_PRESSURE_SECONDS = env_int("ROOM_IDS_PRESSURE_SECONDS", 60, minimum=1)
if not REDIS_MEMORY_TRIM <= REDIS_MEMORY_REFUSE <= 0.95:
    raise ImproperlyConfigured(
        f"REDIS_MEMORY_TRIM={REDIS_MEMORY_TRIM} and REDIS_MEMORY_REFUSE={REDIS_MEMORY_REFUSE}: need "
        "REDIS_MEMORY_TRIM <= REDIS_MEMORY_REFUSE <= 0.95, so the control path keeps memory of its own"
    )
# How long a process tries to learn the fate of a publish whose reply was lost (a Redis stall) before it
# has the client resend it on a new connection (docs/protocol.md, "Redis outages").
PUBLISH_SETTLE_SECONDS = env_float("PUBLISH_SETTLE_SECONDS", 10.0, minimum=1.0)
# Fault injection for testing release gates: this share of chat messages is answered with an
# "internal" error instead of being published. Never set it in production.
FAULT_ERROR_SHARE = env_float("FAULT_ERROR_SHARE", 0.0, minimum=0.0)
# Allocations between young garbage collections (CPython's default is 700). Every connection keeps
# a few hundred objects alive, so at the default a handshake storm spends much of its time in the
# collector; see docs/performance.md. Reference counting still frees everything without cycles.
GC_GEN0_THRESHOLD = env_int("GC_GEN0_THRESHOLD", 50000, minimum=100)

# The server. entrypoint.sh validates nothing itself: it runs `python -m rooms.ctl server-args`,
# which imports these settings (so a bad value fails here, with its name) and prints Uvicorn's options.
PORT = env_int("PORT", DEFAULT_PORT, minimum=1, maximum=65535)
WEB_CONCURRENCY = env_int("WEB_CONCURRENCY", 1, minimum=1)
if WEB_CONCURRENCY > 1 and not REDIS_ENABLED:
    raise ImproperlyConfigured(
        f"WEB_CONCURRENCY={WEB_CONCURRENCY} needs REDIS_URL (or REDIS_SENTINELS): without Redis, rooms "
        "exist only inside one process"
    )
GRACEFUL_TIMEOUT = env_int("GRACEFUL_TIMEOUT", 8, minimum=0)  # whole seconds, as Uvicorn takes it
REDIS_WAIT_SECONDS = env_float("REDIS_WAIT_SECONDS", 30.0, minimum=0.0)  # `rooms.ctl wait-redis` at start
WS_PING_INTERVAL = env_float("WS_PING_INTERVAL", 20.0, minimum=0.0)  # 0: no keepalive
WS_PING_TIMEOUT = env_float("WS_PING_TIMEOUT", 20.0, minimum=0.0)
# Unsent bytes per socket (wsserver): over HIGH the connection stops reading, below LOW it resumes, and
# one over HIGH for WS_WRITE_STALL_SECONDS is closed with 1013. The server reads the same variables.
WS_WRITE_BUFFER_HIGH = env_int("WS_WRITE_BUFFER_HIGH", wsserver.WRITE_BUFFER_HIGH, minimum=4096)
WS_WRITE_BUFFER_LOW = env_int("WS_WRITE_BUFFER_LOW", wsserver.WRITE_BUFFER_LOW, minimum=0)
if WS_WRITE_BUFFER_LOW >= WS_WRITE_BUFFER_HIGH:
    raise ImproperlyConfigured(
        f"WS_WRITE_BUFFER_LOW={WS_WRITE_BUFFER_LOW} must be below WS_WRITE_BUFFER_HIGH={WS_WRITE_BUFFER_HIGH}"
    )
WS_WRITE_STALL_SECONDS = env_float("WS_WRITE_STALL_SECONDS", wsserver.WRITE_STALL_SECONDS, minimum=0.1)
# Peers whose X-Forwarded-For/-Proto Uvicorn believes: the proxy only (the stack sets the overlay
# network's subnet). Anyone else's headers are ignored, so a client cannot choose its own address.
FORWARDED_ALLOW_IPS = forwarded_allow_ips()
