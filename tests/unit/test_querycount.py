"""Database statements counted by origin (members.querycount, ws_db_queries_total): the scope type
rooms.ops.OpsRouter gives each connection's task, and the wrapper every connection gets."""

import asyncio

from members import querycount
from rooms import metrics
from rooms.ops import OpsRouter


def counted(origin):
    return metrics.DB_QUERIES.labels(origin)._value.get()


async def test_each_connection_counts_its_statements_under_its_scope_type():
    """A statement made while serving a scope, in the connection's task or in a thread of
    sync_to_async, counts under the scope's type; the caller's context is untouched."""
    from asgiref.sync import sync_to_async

    statements = []

    def execute(sql, params, many, context):
        statements.append(sql)
        return "rows"

    async def app(scope, receive, send):
        assert await sync_to_async(querycount.count)(execute, "SELECT 1", None, False, {}) == "rows"

    router = OpsRouter(app)
    before = {origin: counted(origin) for origin in metrics.QUERY_ORIGINS}
    for kind in ("http", "websocket", "websocket"):
        scope = {"type": kind, "path": "/ws/rooms/a/", "headers": [], "query_string": b""}
        await asyncio.create_task(router(scope, None, None))  # uvicorn: a task per connection
    assert metrics.QUERY_ORIGIN.get() == "other"
    querycount.count(execute, "SELECT 2", None, False, {})  # outside any scope: a management command
    after = {origin: counted(origin) - before[origin] for origin in metrics.QUERY_ORIGINS}
    assert after == {"http": 1, "websocket": 2, "lifespan": 0, "other": 1}
    assert statements == ["SELECT 1"] * 3 + ["SELECT 2"]


def test_every_connection_gets_the_wrapper_once():
    class Connection:
        execute_wrappers = []

    connection = Connection()
    querycount.install(None, connection)
    querycount.install(None, connection)  # a reconnect of the same wrapper object
    assert connection.execute_wrappers == [querycount.count]


def test_the_members_app_installs_it_on_connection_created():
    from django.db.backends.signals import connection_created

    from members.apps import MembersConfig

    class Connection:
        execute_wrappers = []

    MembersConfig.ready(None)
    connection = Connection()
    connection_created.send(sender=None, connection=connection)
    assert connection.execute_wrappers == [querycount.count]


async def test_the_room_policies_reload_counts_under_the_lifespan(monkeypatch):
    """rooms.policies loads in a thread of its own executor, which does not carry the context by
    itself: it is passed along, so the reload's statements are the lifespan's, not "other"."""
    from django.conf import settings

    from rooms import policies

    seen = []
    loaded = asyncio.Event()
    loop = asyncio.get_running_loop()

    def load_restricted():
        seen.append(metrics.QUERY_ORIGIN.get())
        loop.call_soon_threadsafe(loaded.set)
        return {}

    monkeypatch.setattr(policies, "load_restricted", load_restricted)
    monkeypatch.setattr(settings, "DATABASES", {"default": {"OPTIONS": {"connect_timeout": 1}}})

    async def lifespan():  # as OpsRouter sets it for the lifespan scope, where startup starts the loop
        metrics.QUERY_ORIGIN.set("lifespan")
        return asyncio.create_task(policies.refresh_loop())

    task = await asyncio.create_task(lifespan())
    try:
        await asyncio.wait_for(loaded.wait(), 5)
    finally:
        task.cancel()
    assert seen[:1] == ["lifespan"]
