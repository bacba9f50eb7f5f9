from django.contrib import admin

from .models import ApiKey, Room


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["name", "private", "allow_anonymous", "created"]
    list_filter = ["private", "allow_anonymous"]
    search_fields = ["name"]
    filter_horizontal = ["members"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are made with `manage.py create_api_key` (the only time the key is shown); here they are
    scoped, deactivated or deleted."""

    list_display = ["name", "prefix", "active", "created"]
    list_filter = ["active"]
    readonly_fields = ["prefix", "created"]

    def has_add_permission(self, request):
        return False
