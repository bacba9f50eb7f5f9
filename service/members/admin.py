from django.contrib import admin

from .models import Room


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["name", "private", "allow_anonymous", "created"]
    list_filter = ["private", "allow_anonymous"]
    search_fields = ["name"]
    filter_horizontal = ["members"]
