from django.apps import AppConfig


class MembersConfig(AppConfig):
    """Users' rooms and the tickets that let them in; installed only with a database (DATABASE_URL)."""

    name = "members"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.db.backends.signals import connection_created

        from .querycount import install

        # Statements counted by origin (ws_db_queries_total): the handshakes' must stay at 0.
        connection_created.connect(install, dispatch_uid="members.querycount")
