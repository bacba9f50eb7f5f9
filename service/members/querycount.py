"""Database statements counted by the scope they run for (ws_db_queries_total{origin}): the issue's
target for a release is none from WebSocket handshakes, and this makes it a number Prometheus and the
tests read. Every connection Django opens gets the wrapper (connection_created), so no statement of
the process escapes it, whichever code makes it.

rooms.metrics is imported at the first statement, not with this module: the app registry loads this
at django.setup(), which rooms.ctl runs before entrypoint.sh has made PROMETHEUS_MULTIPROC_DIR."""


def count(execute, sql, params, many, context):
    """A connection.execute_wrappers entry: one count under the current origin, then the statement."""
    from rooms import metrics

    metrics.DB_QUERIES.labels(metrics.QUERY_ORIGIN.get()).inc()
    return execute(sql, params, many, context)


def install(sender, connection, **kwargs):
    """connection_created's receiver: count every statement of the new connection."""
    if count not in connection.execute_wrappers:
        connection.execute_wrappers.append(count)
