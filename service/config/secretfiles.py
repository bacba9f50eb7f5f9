"""Secrets read from files (Swarm secrets), the same way for every setting that names one. Plain
Python: rooms.redis_url and rooms.ctl use it without setting Django up."""

from pathlib import Path


def read_secret(setting, path, error):
    """The stripped content of the file `path` named by `setting`; `error` (an exception class) says
    what is wrong with it."""
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise error(f"{setting}={path} cannot be read: {exc}") from None
    if not value:
        raise error(f"{setting}={path} is empty")
    return value
