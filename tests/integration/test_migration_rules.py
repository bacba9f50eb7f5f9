"""The migration rules of a release (docs/operations.md, "Migrations: expand, then contract"), checked
by `manage.py checkmigrations` (django-migration-linter, and the contract marks) against a real
PostgreSQL: the repository's migrations pass; in a throwaway app made in a temporary directory, a
change the color still running cannot survive is refused, an additive one passes, and the same
destructive change passes as the contract step of an expand released before it."""

import itertools
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT, PostgresServer, require_postgres

pytestmark = pytest.mark.integration

SERVICE = os.path.join(ROOT, "service")

INITIAL = """
    operations = [migrations.CreateModel(name="Item", fields=[
        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
        ("name", models.CharField(max_length=50)),
    ])]
"""
# Breaking changes for the color still running, as the linter names them.
DESTRUCTIVE = {
    "drop_column": 'operations = [migrations.RemoveField(model_name="item", name="name")]',
    "rename_column": """operations = [migrations.RenameField(model_name="item", old_name="name",
        new_name="title")]""",
    "drop_table": 'operations = [migrations.DeleteModel(name="Item")]',
    "not_null_without_default": """operations = [migrations.AddField(model_name="item", name="size",
        field=models.IntegerField(default=0), preserve_default=False)]""",
}
ADDITIVE = """operations = [migrations.AddField(model_name="item", name="title",
        field=models.CharField(max_length=50, null=True))]"""


def manage(env, *args):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=SERVICE, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def postgres():
    """One server for the module, a database per test (database_url): starting a server costs seconds."""
    require_postgres()
    server = PostgresServer()
    server.start()
    yield server, itertools.count()
    server.stop()


@pytest.fixture
def database_url(postgres):
    server, numbers = postgres
    name = f"probe_{next(numbers)}"
    assert server.sql(f"CREATE DATABASE {name} OWNER {server.user}", database="postgres") is not None
    return server.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def probe(database_url, tmp_path):
    """A Django app `probe` (only migrations) in tmp_path, installed by a settings module there that
    extends the project's; returns (write_migration(name, body, after), environment)."""
    app = tmp_path / "probe"
    (app / "migrations").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "migrations" / "__init__.py").write_text("")
    (tmp_path / "probe_settings.py").write_text(
        "from config.settings import *  # noqa: F403\n"
        "INSTALLED_APPS = [*INSTALLED_APPS, 'probe']  # noqa: F405\n")

    def write_migration(name, body, after=None):
        dependencies = [("probe", after)] if after else []
        (app / "migrations" / f"{name}.py").write_text(
            "from django.db import migrations, models\n"
            "from members.contract import Contract  # noqa: F401\n\n\n"
            "class Migration(migrations.Migration):\n"
            f"    dependencies = {dependencies!r}\n"
            + textwrap.indent(textwrap.dedent(body).strip(), "    ") + "\n")

    write_migration("0001_initial", INITIAL)
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_DEBUG": "1",
           "DJANGO_SETTINGS_MODULE": "probe_settings", "PYTHONPATH": str(tmp_path),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    (tmp_path / "metrics").mkdir()
    return write_migration, env


def test_the_repository_migrations_pass_the_rules(database_url, tmp_path):
    """The CI gate: every migration in the repository is safe for the running color or a contract."""
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_DEBUG": "1",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = manage(env, "checkmigrations")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Erroneous migrations: 0/" in result.stdout


@pytest.mark.parametrize("change", sorted(DESTRUCTIVE))
def test_a_change_the_running_color_cannot_survive_is_refused(probe, change):
    write_migration, env = probe
    write_migration(f"0002_{change}", DESTRUCTIVE[change], after="0001_initial")
    result = manage(env, "checkmigrations")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"(probe, 0002_{change})... ERR" in result.stdout
    assert "expand, then a contract" in result.stderr


def test_an_additive_change_passes(probe):
    write_migration, env = probe
    write_migration("0002_item_title", ADDITIVE, after="0001_initial")
    result = manage(env, "checkmigrations")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(probe, 0002_item_title)... OK" in result.stdout


def test_a_contract_step_passes_only_in_a_release_after_its_expand(probe):
    """Expand (add the new column) in one release, contract (drop the old one) in the next: the
    contract alone passes; shipped together with its expand it is refused."""
    write_migration, env = probe
    write_migration("0002_item_title", ADDITIVE, after="0001_initial")
    write_migration("0003_remove_item_name", """operations = [
        Contract(expand=("probe", "0002_item_title")),
        migrations.RemoveField(model_name="item", name="name"),
    ]""", after="0002_item_title")
    assert manage(env, "checkmigrations").returncode == 0, "CI: every migration, the contract marked"
    assert manage(env, "migrate", "--noinput", "probe", "0001").returncode == 0
    together = manage(env, "checkmigrations", "--unapplied-migrations")
    assert together.returncode == 1, together.stdout + together.stderr
    assert "probe.0003_remove_item_name is the contract step of probe.0002_item_title, which this release " \
           "applies too" in together.stderr
    assert manage(env, "migrate", "--noinput", "probe", "0002").returncode == 0  # the expand's release
    alone = manage(env, "checkmigrations", "--unapplied-migrations")
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "(probe, 0003_remove_item_name)... IGNORE" in alone.stdout
    migrated = manage(env, "migrate", "--noinput")
    assert migrated.returncode == 0 and "Applying probe.0003_remove_item_name... OK" in migrated.stdout


def test_a_contract_mark_must_name_an_earlier_migration(probe):
    write_migration, env = probe
    write_migration("0002_drop_name", """operations = [
        Contract(expand=("probe", "0009_never_written")),
        migrations.RemoveField(model_name="item", name="name"),
    ]""", after="0001_initial")
    result = manage(env, "checkmigrations")
    assert result.returncode == 1
    assert "probe.0002_drop_name is marked the contract step of probe.0009_never_written, which does not " \
           "exist" in result.stderr
