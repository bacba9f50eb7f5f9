"""The chat page at / and the static files it is built from (rooms/static/).

The image's root filesystem is read-only and the service runs without collectstatic or a CDN, so
the few static files are read from the package once and served from memory, each with its content
type and an ETag: browsers revalidate them on every load (no-cache) and mostly get a 304, so a
release's new files are used at once.
"""

import hashlib
from functools import cache
from html import escape
from pathlib import Path
from string import Template

from django.conf import settings
from django.http import Http404, HttpResponse

HERE = Path(__file__).resolve().parent
STATIC_TYPES = {
    "wsapp.js": "text/javascript; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
}
# Everything from this origin, nothing from anywhere else; no inline script or style.
PAGE_POLICY = "; ".join([
    "default-src 'self'", "connect-src 'self'", "img-src 'self' data:", "base-uri 'none'",
    "form-action 'self'",
])


@cache
def static_body(name):
    """The file and its ETag."""
    body = (HERE / "static" / name).read_bytes()
    return body, '"%s"' % hashlib.sha256(body).hexdigest()[:32]


@cache
def page_template():
    return Template((HERE / "templates" / "index.html").read_text())


def account_links():
    """With accounts: links to log in and to the admin. The page reads no session (so it needs no
    database): the ticket request says who is logged in."""
    if not settings.ACCOUNTS_ENABLED:
        return ""
    return '<p id="account"><a href="/accounts/login/">Log in</a> · <a href="/admin/">Admin</a></p>'


def index(request):
    page = page_template().substitute(
        color=escape(settings.COLOR), version=escape(settings.APP_VERSION), replica=escape(settings.REPLICA),
        accounts="on" if settings.ACCOUNTS_ENABLED else "off", account=account_links(),
    )
    response = HttpResponse(page, content_type="text/html; charset=utf-8")
    response["Content-Security-Policy"] = PAGE_POLICY
    response["Cache-Control"] = "no-cache"
    return response


def static_file(request, name):
    content_type = STATIC_TYPES.get(name)
    if content_type is None:
        raise Http404(f"no static file {name!r}")
    body, etag = static_body(name)
    if request.headers.get("If-None-Match") == etag:
        response = HttpResponse(status=304)
    else:
        response = HttpResponse(body, content_type=content_type)
    response["ETag"] = etag
    response["Cache-Control"] = "no-cache"
    response["Access-Control-Allow-Origin"] = "*"  # wsapp.js is usable from other pages too
    return response
