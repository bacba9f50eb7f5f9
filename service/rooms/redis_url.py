"""REDIS_URL with the password from REDIS_PASSWORD_FILE (a Swarm secret) merged in.

Used by the settings (channel layer and room hub) and by `rooms.ctl` (wait-redis, drain,
undrain), so every Redis client of the service authenticates the same way. Plain Python: ctl
runs it without setting Django up.
"""

import os
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

SCHEMES = ("redis://", "rediss://", "unix://")


class RedisUrlError(ValueError):
    pass


def redis_url(environ=None):
    """The URL to connect with; empty when REDIS_URL is empty. Raises RedisUrlError."""
    environ = os.environ if environ is None else environ
    url = environ.get("REDIS_URL", "").strip()
    if url and not url.startswith(SCHEMES):
        raise RedisUrlError(f"REDIS_URL is not a redis://, rediss:// or unix:// URL: {url!r}")
    path = environ.get("REDIS_PASSWORD_FILE", "").strip()
    if not path:
        return url
    if not url:
        raise RedisUrlError("REDIS_PASSWORD_FILE is set but REDIS_URL is empty")
    try:
        password = Path(path).read_text().strip()
    except OSError as exc:
        raise RedisUrlError(f"REDIS_PASSWORD_FILE={path} cannot be read: {exc}") from None
    if not password:
        raise RedisUrlError(f"REDIS_PASSWORD_FILE={path} is empty")
    parts = urlsplit(url)
    if parts.password is not None:
        raise RedisUrlError("REDIS_URL has a password and REDIS_PASSWORD_FILE is set: use one")
    if parts.scheme == "unix":  # urlunsplit would drop the empty host ("unix:///...")
        return f"{url}{'&' if parts.query else '?'}password={quote(password, safe='')}"
    user = quote(parts.username, safe="") if parts.username else ""
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def redacted(url):
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))
