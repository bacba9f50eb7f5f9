"""The database, from one URL: DATABASE_URL (postgres://user[:password]@host[:port]/name), with the
password from DATABASE_PASSWORD_FILE (a Swarm secret) when that is set, as for Redis. Plain Python:
the settings and their tests use it without setting Django up.

Every connection is bounded: libpq's connect_timeout, and a statement_timeout on the server, so a
Postgres that stalls makes a view fail within seconds instead of holding its worker (nothing hangs).
"""

from urllib.parse import parse_qsl, unquote, urlsplit

from config.secretfiles import read_secret

SCHEMES = ("postgres", "postgresql")
QUERY_OPTIONS = ("sslmode", "sslrootcert", "application_name")  # passed to libpq as they are


class DatabaseUrlError(ValueError):
    pass


def databases(url, password_file="", connect_timeout=3, statement_timeout=5.0, conn_max_age=60,
              lock_timeout=0.0):
    """Django's DATABASES for `url`; {} (no database) when it is empty, whatever `password_file` says:
    the stack always mounts the password's secret, and an empty DATABASE_URL in the release file is how
    the database is turned off (docs/accounts.md)."""
    if not url:
        return {}
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise DatabaseUrlError(f"DATABASE_URL is not a postgres:// URL: {redacted(url)!r}")
    name = unquote(parts.path.lstrip("/"))
    if not parts.hostname or not name or "/" in name:
        raise DatabaseUrlError(
            f"DATABASE_URL must be postgres://user@host[:port]/database, got {redacted(url)!r}"
        )
    try:
        port = parts.port or 5432
    except ValueError:
        raise DatabaseUrlError(f"DATABASE_URL has no valid port: {redacted(url)!r}") from None
    password = unquote(parts.password) if parts.password is not None else None
    if password_file:
        if password is not None:
            raise DatabaseUrlError("DATABASE_URL has a password and DATABASE_PASSWORD_FILE is set: use one")
        password = read_secret("DATABASE_PASSWORD_FILE", password_file, DatabaseUrlError)
    options = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in QUERY_OPTIONS:
            raise DatabaseUrlError(
                f"DATABASE_URL: unknown option {key!r} (allowed: {', '.join(QUERY_OPTIONS)})"
            )
        options[key] = value
    options["connect_timeout"] = connect_timeout
    # Milliseconds, set for the session at connect: no query of the service can hold a worker longer.
    options["options"] = f"-c statement_timeout={int(statement_timeout * 1000)}"
    # A lock waited for at most this long (0: as long as the statement may run). Promote's migrate job
    # sets it: an ALTER TABLE queued behind a long transaction would otherwise hold up, in Postgres'
    # lock queue, every query of the serving color on that table for as long as it waits.
    if lock_timeout > 0:
        options["options"] += f" -c lock_timeout={int(lock_timeout * 1000)}"
    return {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": password or "",
            "HOST": parts.hostname,
            "PORT": str(port),
            "CONN_MAX_AGE": conn_max_age,
            "CONN_HEALTH_CHECKS": True,  # a connection broken by a Postgres restart is replaced, not used
            "OPTIONS": options,
        }
    }


def redacted(url):
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)
