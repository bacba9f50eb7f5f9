"""One log line of bounded size per record, whatever a client sent (docs/security.md, "Logs").

Django logs a request it refuses with text the client chose: `Not Found: <path>` for a 404 and
`Invalid HTTP_HOST header: '<host>'` with a traceback for a bad Host. Uvicorn, at its info level,
logs the path of every WebSocket handshake. `BoundedRecord`, a logging filter on the console
handler and on Uvicorn's logger (settings.LOGGING), makes each such record one short line:
control characters escaped, the message cut to MAX_CHARS, and no traceback for a request refused
for the client's fault (4xx). A 5xx keeps its traceback: that is the service's own error.
"""

import logging

MAX_CHARS = 500
# Django's loggers whose records carry a request; their exceptions are the client's fault below 500.
REQUEST_LOGGERS = ("django.request", "django.security")


def bounded(text, limit=MAX_CHARS):
    """text on one line (control characters as escapes), at most `limit` characters and a marker."""
    head = text[: limit + 1]
    if not head.isprintable():
        head = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in head)
    if len(head) > limit or len(text) > limit:
        return f"{head[:limit]}... [{len(text)} characters]"
    return head


def clients_fault(record):
    status = getattr(record, "status_code", None)
    if record.name.startswith("django.security"):
        return True
    return record.name.startswith(REQUEST_LOGGERS) and isinstance(status, int) and status < 500


class BoundedRecord(logging.Filter):
    def __init__(self, max_chars=MAX_CHARS):
        super().__init__()
        self.max_chars = max_chars

    def filter(self, record):
        message = record.getMessage()
        line = bounded(message, self.max_chars)
        if line != message:
            record.msg, record.args = line, ()
        if record.exc_info and clients_fault(record):
            record.exc_info, record.exc_text = None, None
        return True
