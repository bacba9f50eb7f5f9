"""DATABASE_URL and its companions: empty keeps the service database-free, exactly as before; set, it
gives one bounded PostgreSQL connection setting, or fails startup naming what to fix."""

import os
import subprocess
import sys

import pytest

from config.database import DatabaseUrlError, databases
from tests.helpers import ROOT


def test_no_url_is_no_database():
    assert databases("") == {}


def test_a_url_gives_postgres_with_a_connect_and_a_statement_timeout():
    (default,) = databases("postgres://wsapp:s%40cret@db.example:6432/chat", connect_timeout=4,
                           statement_timeout=2.5, conn_max_age=30).values()
    assert default["ENGINE"] == "django.db.backends.postgresql"
    assert (default["NAME"], default["USER"], default["PASSWORD"], default["HOST"], default["PORT"]) == (
        "chat", "wsapp", "s@cret", "db.example", "6432")
    assert default["OPTIONS"] == {"connect_timeout": 4, "options": "-c statement_timeout=2500"}
    assert default["CONN_MAX_AGE"] == 30 and default["CONN_HEALTH_CHECKS"] is True


def test_a_lock_timeout_bounds_the_wait_for_a_lock_when_given():
    """promote.sh's migration jobs (DATABASE_LOCK_TIMEOUT=MIGRATE_LOCK_TIMEOUT): a migration queued
    behind a long transaction gives up instead of blocking the serving color's queries behind it."""
    (default,) = databases("postgres://wsapp@db/chat", statement_timeout=300, lock_timeout=2.5).values()
    assert default["OPTIONS"]["options"] == "-c statement_timeout=300000 -c lock_timeout=2500"


def test_the_password_comes_from_a_file_like_the_other_secrets(tmp_path):
    secret = tmp_path / "db.password"
    secret.write_text("from-the-secret\n")
    (default,) = databases("postgresql://wsapp@db/chat?sslmode=require", str(secret)).values()
    assert default["PASSWORD"] == "from-the-secret" and default["PORT"] == "5432"
    assert default["OPTIONS"]["sslmode"] == "require"


@pytest.mark.parametrize(
    ("url", "password_file", "message"),
    [
        ("mysql://u@h/d", "", "DATABASE_URL is not a postgres:// URL"),
        ("postgres://u:hidden@h/", "", "must be postgres://user@host[:port]/database, got 'postgres://u:***@h/'"),
        ("postgres://u@h:99999/d", "", "DATABASE_URL has no valid port"),
        ("postgres://u@h/d?foo=1", "", "unknown option 'foo'"),
        ("postgres://u:p@h/d", "/etc/hostname", "has a password and DATABASE_PASSWORD_FILE is set"),
        ("postgres://u@h/d", "/nonexistent/file", "DATABASE_PASSWORD_FILE=/nonexistent/file cannot be read"),
    ],
)
def test_a_bad_database_setting_says_what_to_fix(url, password_file, message):
    with pytest.raises(DatabaseUrlError) as raised:
        databases(url, password_file)
    assert message in str(raised.value)


def settings_of(**env):
    """The settings a fresh process reads from `env`: DATABASES, INSTALLED_APPS, or its error."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "TICKET_", "DJANGO_DEBUG"))}
    base.update(DJANGO_SECRET_KEY="x", DJANGO_SETTINGS_MODULE="config.settings", **env)
    code = ("from django.conf import settings; print(settings.DATABASES); print(settings.INSTALLED_APPS); "
            "print(settings.TEMPLATES); print(len(settings.MIDDLEWARE)); print(settings.ACCOUNTS_ENABLED)")
    return subprocess.run([sys.executable, "-c", code], cwd=os.path.join(ROOT, "service"), env=base,
                          capture_output=True, text=True, timeout=30)


def test_without_a_database_url_the_settings_are_todays():
    result = settings_of()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["{}", "['channels', 'rooms']", "[]", "2", "False"]


def test_an_empty_database_url_turns_the_database_off_even_with_the_stacks_secrets(tmp_path):
    """stack/app.yml always names the password and ticket-key secrets; DATABASE_URL= in the release
    file must still deploy the app as it was, without a database."""
    keys = tmp_path / "ticket.keys"
    keys.write_text("k" * 32 + "\n" + "o" * 32 + "\n")
    assert databases("", "/etc/hostname") == {}
    result = settings_of(DATABASE_URL="", DATABASE_PASSWORD_FILE="/etc/hostname", TICKET_KEYS_FILE=str(keys))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["{}", "['channels', 'rooms']", "[]", "2", "False"]


def test_with_a_database_url_the_auth_admin_and_rooms_apps_are_installed(tmp_path):
    keys = tmp_path / "ticket.keys"
    keys.write_text("k" * 32 + "\n" + "o" * 32 + "\n")
    result = settings_of(DATABASE_URL="postgres://wsapp@127.0.0.1/wsapp", TICKET_KEYS_FILE=str(keys))
    assert result.returncode == 0, result.stderr
    apps = result.stdout.splitlines()[1]
    for app in ("django.contrib.admin", "django.contrib.auth", "django.contrib.sessions", "members"):
        assert repr(app) in apps


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (None, "DATABASE_URL is set but TICKET_KEYS_FILE is not"),
        ("short\n", "the key on line 1 is shorter than 32 characters"),
        ("\n\n", "holds no key"),
    ],
)
def test_a_database_needs_ticket_keys_from_a_file(tmp_path, keys, message):
    env = {"DATABASE_URL": "postgres://wsapp@127.0.0.1/wsapp"}
    if keys is not None:
        (tmp_path / "keys").write_text(keys)
        env["TICKET_KEYS_FILE"] = str(tmp_path / "keys")
    result = settings_of(**env)
    assert result.returncode != 0 and message in result.stderr


CSRF_CHECK = """
import django
django.setup()
from django.middleware.csrf import CsrfViewMiddleware
from django.test import RequestFactory
request = RequestFactory().post("/accounts/login/", HTTP_HOST="localhost", HTTP_ORIGIN="http://localhost:18080")
request._dont_enforce_csrf_checks = False
answer = CsrfViewMiddleware(lambda r: None)._origin_verified(request)
print(answer)
"""


@pytest.mark.parametrize("origins, verified", [("http://localhost,http://localhost:18080", "True"),
                                               ("http://localhost", "False")])
def test_a_login_post_from_a_public_origin_on_another_port_passes_the_csrf_origin_check(tmp_path, origins,
                                                                                      verified):
    """Nginx passes the Host without its port: a browser at http://localhost:18080 (the e2e tier's
    page) posts with that Origin, which Django trusts only as one of PUBLIC_ORIGINS."""
    keys = tmp_path / "ticket.keys"
    keys.write_text("k" * 32 + "\n" + "o" * 32 + "\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "TICKET_", "DJANGO_DEBUG"))}
    base.update(DJANGO_SECRET_KEY="x", DJANGO_SETTINGS_MODULE="config.settings", PUBLIC_ORIGINS=origins,
                DATABASE_URL="postgres://wsapp@127.0.0.1/wsapp", TICKET_KEYS_FILE=str(keys))
    result = subprocess.run([sys.executable, "-c", CSRF_CHECK], cwd=os.path.join(ROOT, "service"), env=base,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [verified]
