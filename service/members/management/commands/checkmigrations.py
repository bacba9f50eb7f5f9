"""`manage.py checkmigrations [--unapplied-migrations]`: the migration rules of a release.

django-migration-linter (`lintmigrations`) refuses a migration that would break the color still
running; a migration marked `Contract(expand=...)` (members.contract) passes it, and this command
holds the mark to its word: the expand must be an earlier migration the contract depends on, and
for a release (--unapplied-migrations: the migrations the database lacks) one already applied, so
that expand and contract never ship in the same release. promote.sh runs it before the migrations
(docs/operations.md, "Migrations: expand, then contract"); CI runs it over every migration.
"""

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.loader import MigrationLoader

from members.contract import Contract


def contract_problems(loader, unapplied_only):
    """What is wrong with the Contract marks of the migrations on disk, one sentence each."""
    problems = []
    for key, migration in sorted(loader.disk_migrations.items()):
        if unapplied_only and key in loader.applied_migrations:
            continue
        for operation in migration.operations:
            if not isinstance(operation, Contract):
                continue
            expand, name = operation.expand, "{}.{}".format(*key)
            shown = "{}.{}".format(*expand)
            if expand not in loader.graph.nodes:
                problems.append(f"{name} is marked the contract step of {shown}, which does not exist")
            elif expand == key or expand not in loader.graph.forwards_plan(key):
                problems.append(f"{name} is marked the contract step of {shown}, but does not depend on it: "
                                f"the expand must be an earlier migration")
            elif unapplied_only and expand not in loader.applied_migrations:
                problems.append(f"{name} is the contract step of {shown}, which this release applies too: "
                                f"release {shown} first, and {name} in a later release, once no color "
                                f"runs code that uses what it removes")
    return problems


class Command(BaseCommand):
    help = ("Refuse migrations that would break the color still running (django-migration-linter), and "
            "contract steps released with their expand.")

    def add_arguments(self, parser):
        parser.add_argument("--unapplied-migrations", action="store_true",
                            help="only the migrations the database has not applied (a release's)")
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)

    def handle(self, *args, unapplied_migrations=False, database=DEFAULT_DB_ALIAS, **options):
        loader = MigrationLoader(connections[database])
        problems = contract_problems(loader, unapplied_migrations)
        linted = True
        try:
            call_command("lintmigrations", *(["--unapplied-migrations"] if unapplied_migrations else []),
                         database=database, stdout=self.stdout, stderr=self.stderr)
        except SystemExit as exc:  # the linter exits 1 when it refuses a migration
            linted = exc.code in (0, None)
        for problem in problems:
            self.stderr.write(f"refused: {problem}")
        if problems or not linted:
            raise CommandError(
                "migrations refused (above): a change the running color cannot survive is released as an "
                "expand, then a contract in a later release (docs/operations.md, \"Migrations: expand, "
                "then contract\")")
        self.stdout.write("migrations: every one is safe for the color still running, or a contract step "
                          "whose expand was released before")
