"""The mark of a contract migration (docs/operations.md, "Migrations: expand, then contract").

A schema change the color still running cannot survive (a dropped or renamed column or table, a
NOT NULL column without a default) is released in two steps: the expand (additive: the old code
works with it) in one release, and the contract (what the old code would break on) in a later
one, once no color runs code that uses what it removes. The contract migration says so with its
first operation::

    from members.contract import Contract

    operations = [
        Contract(expand=("members", "0003_room_topic")),
        migrations.RemoveField(model_name="room", name="title"),
    ]

django-migration-linter lets such a migration through (Contract is its IgnoreMigration), and
`manage.py checkmigrations` refuses one whose expand is not an earlier migration it depends on,
or, for a release, whose expand the database has not applied yet (both would ship in one release).
"""

from django_migration_linter import IgnoreMigration


class Contract(IgnoreMigration):
    """A no-op operation: this migration is the contract step of the migration `expand`
    ((app_label, name)), released earlier."""

    def __init__(self, expand):
        app_label, name = expand
        self.expand = (app_label, name)

    def describe(self):
        return "Contract step of {}.{}: the migration linter lets it through".format(*self.expand)
