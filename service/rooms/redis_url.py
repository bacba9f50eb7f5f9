"""Where Redis is: REDIS_URL with the user of REDIS_USERNAME and the password from REDIS_PASSWORD_FILE
(a Swarm secret) merged in, or the Sentinels of REDIS_SENTINELS that name the primary of
REDIS_SENTINEL_MASTER. The stack's Redis and Sentinels know the app as the ACL user `wsapp`
(redis/start.sh); without REDIS_USERNAME the connection logs in as Redis' `default` user.

Used by the settings (channel layer and room hub) and by `rooms.ctl` (wait-redis, drain,
undrain), so every Redis client of the service finds Redis and authenticates the same way. Plain
Python: ctl runs it without setting Django up.

With Sentinels, every new connection asks them for the primary (redis-py's SentinelConnectionPool),
so after a failover new connections reach the new primary; a pooled connection to a demoted
primary gets READONLY on its next write, which redis-py turns into a ConnectionError that drops it.
"""

import os
import re
from typing import NamedTuple
from urllib.parse import quote, urlsplit, urlunsplit

from config.secretfiles import read_secret

SCHEMES = ("redis://", "rediss://", "unix://")
DEFAULT_SENTINEL_MASTER = "wsapp"
SENTINEL_PORT = 26379
MASTER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
HOST_NAME = re.compile(r"[A-Za-z0-9._-]{1,253}")
USER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RedisUrlError(ValueError):
    pass


class Sentinels(NamedTuple):
    """REDIS_SENTINELS as (host, port) pairs, the master name, and the user name and password for
    both the Sentinels and Redis (None: the default user, no password). A host name may resolve to
    several Sentinels: every connection resolves it again, so Sentinels that move keep being found."""

    addresses: tuple
    master: str
    password: str | None
    username: str | None = None


def read_username(environ):
    """REDIS_USERNAME, or None when it is not set."""
    name = environ.get("REDIS_USERNAME", "").strip()
    if name and not USER_NAME.fullmatch(name):
        raise RedisUrlError(f"REDIS_USERNAME must be 1-64 characters of [A-Za-z0-9._-], got {name!r}")
    return name or None


def read_password(environ):
    """The password of REDIS_PASSWORD_FILE, or None when it is not set."""
    path = environ.get("REDIS_PASSWORD_FILE", "").strip()
    if not path:
        return None
    return read_secret("REDIS_PASSWORD_FILE", path, RedisUrlError)


def sentinel_address(entry):
    """'host:port', '[v6]:port' or 'host' (port 26379) as (host, port)."""
    host, port = entry, str(SENTINEL_PORT)
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest:
            port = rest[1:] if rest.startswith(":") else ""
    elif ":" in entry:
        host, _, port = entry.rpartition(":")
    if not (host and (":" in host or HOST_NAME.fullmatch(host))):
        raise RedisUrlError(f"REDIS_SENTINELS: {entry!r} is not host:port")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise RedisUrlError(f"REDIS_SENTINELS: {entry!r} has no port between 1 and 65535")
    return host, int(port)


def redis_sentinels(environ=None):
    """Sentinels, or None when REDIS_SENTINELS is empty. Raises RedisUrlError."""
    environ = os.environ if environ is None else environ
    raw = environ.get("REDIS_SENTINELS", "").strip()
    master = environ.get("REDIS_SENTINEL_MASTER", "").strip() or DEFAULT_SENTINEL_MASTER
    if not raw:
        return None
    if environ.get("REDIS_URL", "").strip():
        raise RedisUrlError("REDIS_URL and REDIS_SENTINELS are both set: use one (Sentinels name the "
                            "primary)")
    if not MASTER_NAME.fullmatch(master):
        raise RedisUrlError(f"REDIS_SENTINEL_MASTER must be 1-64 characters of [A-Za-z0-9._-], "
                            f"got {master!r}")
    addresses = tuple(sentinel_address(entry.strip()) for entry in raw.split(",") if entry.strip())
    if not addresses:
        raise RedisUrlError(f"REDIS_SENTINELS lists no Sentinel: {raw!r}")
    return Sentinels(addresses, master, read_password(environ), read_username(environ))


def redis_url(environ=None):
    """The URL to connect with; empty when REDIS_URL is empty. Raises RedisUrlError."""
    environ = os.environ if environ is None else environ
    url = environ.get("REDIS_URL", "").strip()
    if url and not url.startswith(SCHEMES):
        raise RedisUrlError(f"REDIS_URL is not a redis://, rediss:// or unix:// URL: {url!r}")
    if not url and environ.get("REDIS_SENTINELS", "").strip():
        return ""  # redis_sentinels() reads the password
    username = read_username(environ)
    if not environ.get("REDIS_PASSWORD_FILE", "").strip() and not username:
        return url
    if not url:
        raise RedisUrlError("REDIS_PASSWORD_FILE or REDIS_USERNAME is set but REDIS_URL (or REDIS_SENTINELS) "
                            "is empty")
    parts = urlsplit(url)
    if username and parts.username:
        raise RedisUrlError("REDIS_URL has a user name and REDIS_USERNAME is set: use one")
    password = read_password(environ)
    if password is not None and parts.password is not None:
        raise RedisUrlError("REDIS_URL has a password and REDIS_PASSWORD_FILE is set: use one")
    if parts.scheme == "unix":  # urlunsplit would drop the empty host ("unix:///...")
        query = [f"username={quote(username, safe='')}"] if username else []
        query += [f"password={quote(password, safe='')}"] if password is not None else []
        return f"{url}{'&' if parts.query else '?'}{'&'.join(query)}"
    user = quote(username or parts.username or "", safe="")
    if password is None:
        password = parts.password
    secret = f":{quote(password, safe='')}" if password is not None else ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}{secret}@{host}"))


def redacted(url):
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def sentinel_kwargs(sentinels, timeout):
    """Connection options for the Sentinels themselves: their password, and a timeout so that a
    Sentinel that does not answer is given up and the next one asked."""
    return {"username": sentinels.username, "password": sentinels.password, "socket_timeout": timeout,
            "socket_connect_timeout": timeout}


def layer_host(url, sentinels, timeout, **options):
    """The channel layer's host entry (channels_redis.utils.create_pool): a URL, or the Sentinels."""
    if sentinels is None:
        return {"address": url, **options}
    return {
        "sentinels": list(sentinels.addresses),
        "master_name": sentinels.master,
        "sentinel_kwargs": sentinel_kwargs(sentinels, timeout),
        "username": sentinels.username,
        "password": sentinels.password,
        **options,
    }


def describe(url, sentinels):
    """Where Redis is, for messages (no password)."""
    if sentinels is None:
        return redacted(url)
    listed = ",".join(f"{host}:{port}" for host, port in sentinels.addresses)
    return f"the primary {sentinels.master!r} of the Sentinels {listed}"
