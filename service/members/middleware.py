"""Postgres down is not an outage: pages that need the database answer 503 at once, with a page that
says so, instead of a 500 (connect_timeout and statement_timeout bound how long it takes to know)."""

import logging

from django.db import DatabaseError, InterfaceError
from django.template.response import TemplateResponse

log = logging.getLogger(__name__)


class DatabaseUnavailable:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, DatabaseError | InterfaceError):
            return None
        log.warning("%s %s: the database is unavailable: %r", request.method, request.path, exception)
        response = TemplateResponse(request, "members/unavailable.html", status=503)
        response["Retry-After"] = "10"
        response["Cache-Control"] = "no-store"
        return response
