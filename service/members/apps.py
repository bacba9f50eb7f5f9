from django.apps import AppConfig


class MembersConfig(AppConfig):
    """Users' rooms and the tickets that let them in; installed only with a database (DATABASE_URL)."""

    name = "members"
    default_auto_field = "django.db.models.BigAutoField"
