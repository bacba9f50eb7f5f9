"""The integration tier's PostgreSQL (testkit.PostgresServer): a real server process, as the app's
database will be, that runs unprivileged and leaves nothing behind."""

import os

import psycopg

from tests.helpers import PostgresServer, require_postgres


def test_the_database_answers_the_app_user_over_tcp_with_its_password(postgres_server):
    with psycopg.connect(postgres_server.url, connect_timeout=5) as connection:
        assert connection.execute("SELECT current_user, current_database()").fetchone() == ("wsapp", "wsapp")


def test_a_wrong_password_is_refused(postgres_server):
    wrong = postgres_server.url.replace(postgres_server.password, "not-the-password")
    try:
        psycopg.connect(wrong, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        assert "password authentication failed" in str(exc)
    else:
        raise AssertionError("a wrong password was accepted")


def test_the_server_runs_unprivileged_and_is_gone_with_its_files_after_stop():
    require_postgres()
    server = PostgresServer()
    server.start()
    try:
        pid, directory = server.process.pid, server.dir
        assert os.stat(f"/proc/{pid}").st_uid != 0
        assert server.sql("SELECT 1") == "1\n"
    finally:
        server.stop()
    assert not os.path.exists(f"/proc/{pid}")
    assert not directory.exists()
